//! TURN over TCP and TLS: a byte stream cut into messages, whatever the
//! stream holds and however the reads split it. The messages and the
//! verdict (TURN or not) must not depend on the chunking, each message is
//! exactly as long as its header says, and the buffer never needs to grow.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use turnpike_stun::framing::{Deframer, MAX_FRAME, NotTurn, frame_len};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Sizes of the successive reads (cycled; 0 counts as 1).
    reads: Vec<u16>,
    stream: Vec<u8>,
}

/// The messages and how the stream ended.
fn deframe(stream: &[u8], reads: &[u16]) -> (Vec<Vec<u8>>, Result<usize, NotTurn>) {
    let mut d = Deframer::new();
    let mut messages = Vec::new();
    let mut at = 0;
    let mut i = 0;
    loop {
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    let header = m.get(..4).expect("a message has a header");
                    assert_eq!(frame_len(header), Ok(Some(m.len())));
                    assert!(m.len() <= MAX_FRAME);
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
        let n = usize::from(want.max(1))
            .min(room.len())
            .min(stream.len() - at);
        room[..n].copy_from_slice(&stream[at..at + n]);
        d.filled(n);
        at += n;
    }
}

fuzz_target!(|input: Input| {
    let (messages, end) = deframe(&input.stream, &input.reads);
    let (whole, whole_end) = deframe(&input.stream, &[]);
    assert_eq!(
        messages, whole,
        "the messages depend on how reads split the stream"
    );
    assert_eq!(end, whole_end);
    let taken: usize = messages.iter().map(Vec::len).sum();
    assert_eq!(messages.concat(), input.stream[..taken]);
    if let Ok(rest) = end {
        assert_eq!(taken + rest, input.stream.len());
    }
});
