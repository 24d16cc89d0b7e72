//! TURN over TCP and TLS: a byte stream cut into messages, whatever the
//! stream holds and however the reads split it, under a size limit the
//! input picks. The messages and the verdict (TURN, not TURN, too large)
//! must not depend on the chunking, each message is exactly as long as its
//! header says and within the limit, and the buffer never grows past it.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use turnpike_stun::framing::{Deframer, FrameError, MAX_FRAME, frame_len};

#[derive(Debug, Arbitrary)]
struct Input {
    /// The largest message taken (clamped by the deframer).
    limit: u16,
    /// Sizes of the successive reads (cycled; 0 counts as 1).
    reads: Vec<u16>,
    stream: Vec<u8>,
}

/// The messages and how the stream ended.
fn deframe(
    stream: &[u8],
    reads: &[u16],
    limit: usize,
) -> (Vec<Vec<u8>>, Result<usize, FrameError>) {
    let mut d = Deframer::with_limit(limit);
    let limit = limit.clamp(turnpike_stun::HEADER_LEN, MAX_FRAME);
    let mut messages = Vec::new();
    let mut at = 0;
    let mut i = 0;
    loop {
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    let header = m.get(..4).expect("a message has a header");
                    assert_eq!(frame_len(header), Ok(Some(m.len())));
                    assert!(m.len() <= limit);
                    messages.push(m.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (messages, Err(e)),
            }
        }
        if at == stream.len() {
            return (messages, Ok(d.rest().len()));
        }
        let want = reads
            .get(i % reads.len().max(1))
            .copied()
            .unwrap_or(u16::MAX);
        i += 1;
        let room = d.room();
        assert!(!room.is_empty(), "no room while no message is whole");
        assert!(d.capacity() <= limit, "the buffer grew past the limit");
        let room = d.room();
        let n = usize::from(want.max(1))
            .min(room.len())
            .min(stream.len() - at);
        room[..n].copy_from_slice(&stream[at..at + n]);
        d.filled(n);
        at += n;
    }
}

fuzz_target!(|input: Input| {
    // Limits from the smallest to the largest, most often the default.
    let limit = match input.limit {
        0 => MAX_FRAME,
        n => usize::from(n),
    };
    let (messages, end) = deframe(&input.stream, &input.reads, limit);
    let (whole, whole_end) = deframe(&input.stream, &[], limit);
    assert_eq!(
        messages, whole,
        "the messages depend on how reads split the stream"
    );
    assert_eq!(end, whole_end);
    let taken: usize = messages.iter().map(Vec::len).sum();
    assert_eq!(messages.concat(), input.stream[..taken]);
    match end {
        Ok(rest) => assert_eq!(taken + rest, input.stream.len()),
        Err(FrameError::TooLarge { len, limit: l }) => {
            assert!(len > l);
            let header = &input.stream[taken..taken + 4];
            assert_eq!(frame_len(header), Ok(Some(len)));
        }
        Err(FrameError::NotTurn) => {}
    }
});
