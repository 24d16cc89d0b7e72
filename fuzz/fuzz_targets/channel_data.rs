//! ChannelData parsing on arbitrary bytes: no panic, a payload inside the
//! input and exactly as long as the header says, and a header that writes
//! back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_stun::channel_data;

fuzz_target!(|data: &[u8]| {
    let Ok(cd) = channel_data::parse(data) else {
        return;
    };
    assert!(channel_data::is_valid_channel(cd.channel));
    let declared = usize::from(u16::from_be_bytes([data[2], data[3]]));
    assert_eq!(cd.payload.len(), declared);
    assert_eq!(cd.payload, &data[4..4 + declared]);
    let header = channel_data::header(cd.channel, cd.payload.len()).expect("a length that fit");
    assert_eq!(&header[..], &data[..4]);
    // On a stream the frame is the padded length, never past 64 KiB + 4.
    let frame = channel_data::stream_frame_len(header);
    assert!(frame >= 4 + declared && frame < 4 + declared + 4 && frame % 4 == 0);
});
