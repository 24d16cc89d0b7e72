//! Where one message ends on a byte stream (TURN over TCP and TLS).
//!
//! A stream carries STUN messages (RFC 8489 §6.2.2: the header says the
//! length) and ChannelData messages padded to four bytes (RFC 8656 §12.5).
//! Anything else means the stream is not TURN, or has lost its framing,
//! and cannot be recovered: the connection has to be closed.

use crate::{FirstByte, HEADER_LEN, channel_data, padded};

/// The stream does not carry TURN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTurn;

impl std::fmt::Display for NotTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a STUN or ChannelData message")
    }
}

impl std::error::Error for NotTurn {}

/// The largest message a stream can carry: a STUN header and the largest
/// body its 16-bit length allows.
pub const MAX_FRAME: usize = HEADER_LEN + 0xFFFF;

/// The length of the message at the start of `head`, padding included, or
/// `None` when fewer than four bytes are there to tell.
pub fn frame_len(head: &[u8]) -> Result<Option<usize>, NotTurn> {
    let Some(&[b0, b1, l0, l1]) = head.first_chunk::<4>() else {
        return if head.is_empty() || FirstByte::of(head) != FirstByte::Other {
            Ok(None)
        } else {
            Err(NotTurn)
        };
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    match FirstByte::of(&[b0, b1]) {
        FirstByte::Stun if len.is_multiple_of(4) => Ok(Some(HEADER_LEN + len)),
        FirstByte::ChannelData => Ok(Some(channel_data::HEADER_LEN + padded(len))),
        _ => Err(NotTurn),
    }
}

/// Why a stream cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The stream does not carry TURN.
    NotTurn,
    /// A message announces `len` bytes, more than the `limit` taken.
    TooLarge { len: usize, limit: usize },
}

impl From<NotTurn> for FrameError {
    fn from(_: NotTurn) -> Self {
        Self::NotTurn
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotTurn => NotTurn.fmt(f),
            Self::TooLarge { len, limit } => {
                write!(f, "a message of {len} bytes, above the limit of {limit}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// What a deframer's buffer starts at: a media packet with its TURN
/// framing, and any request, fit.
pub const INITIAL_BUFFER: usize = 2048;

/// Splits a byte stream into whole messages: bytes go in through
/// [`Deframer::room`] and [`Deframer::filled`], whole messages come out of
/// [`Deframer::next_message`].
///
/// The buffer starts at [`INITIAL_BUFFER`] bytes and grows only when a
/// message announces more, never past the limit: whatever a peer
/// declares, a connection holds at most `limit` bytes, and an idle one
/// holds 2 KiB.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Where the first byte not yet handed out is.
    start: usize,
    /// How many bytes of `buf` hold data.
    filled: usize,
    /// The largest message taken, padding included.
    limit: usize,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    /// A deframer that takes any message the protocol allows.
    #[must_use]
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME)
    }

    /// A deframer that takes messages of up to `limit` bytes (at most
    /// [`MAX_FRAME`], at least [`HEADER_LEN`]); a larger one is an error.
    #[must_use]
    pub fn with_limit(limit: usize) -> Self {
        let limit = limit.clamp(HEADER_LEN, MAX_FRAME);
        Self {
            buf: vec![0; INITIAL_BUFFER.min(limit)],
            start: 0,
            filled: 0,
            limit,
        }
    }

    /// The next whole message, or `None` until more bytes come; an error
    /// when the stream is not TURN or a message is above the limit (the
    /// connection cannot recover).
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let pending = self.buf.get(self.start..self.filled).unwrap_or_default();
        let Some(len) = frame_len(pending)? else {
            return Ok(None);
        };
        if len > self.limit {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        let Some(message) = pending.get(..len) else {
            return Ok(None);
        };
        self.start += len;
        Ok(Some(message))
    }

    /// Space to read the next bytes into, after moving what is pending to
    /// the front, and growing the buffer if the message begun needs more.
    /// Never empty while [`Deframer::next_message`] has nothing to give.
    pub fn room(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.buf.len()
            && let Ok(Some(len)) = frame_len(self.buf.get(..self.filled).unwrap_or_default())
            && len > self.buf.len()
        {
            // Doubling, to what the message needs at least, to the limit
            // at most (a message above it was refused already).
            let grown = len.max(self.buf.len() * 2).min(self.limit);
            self.buf.resize(grown, 0);
        }
        self.buf.get_mut(self.filled..).unwrap_or_default()
    }

    /// Records that `n` bytes were read into [`Deframer::room`].
    pub fn filled(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// The bytes past the messages handed out.
    #[must_use]
    pub fn rest(&self) -> &[u8] {
        self.buf.get(self.start..self.filled).unwrap_or_default()
    }

    /// The buffer's size now.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` to a deframer `chunk` bytes at a time; returns the
    /// messages, and the error if the stream turned out not to be TURN.
    fn deframe(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
        deframe_with(Deframer::new(), stream, chunk)
    }

    fn deframe_with(
        mut d: Deframer,
        stream: &[u8],
        chunk: usize,
    ) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            loop {
                match d.next_message() {
                    Ok(Some(m)) => out.push(m.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
            if at == stream.len() {
                return (out, None);
            }
            let room = d.room();
            assert!(!room.is_empty());
            let n = chunk.min(room.len()).min(stream.len() - at);
            room[..n].copy_from_slice(&stream[at..at + n]);
            d.filled(n);
            at += n;
        }
    }

    #[test]
    fn deframes_across_any_chunking() {
        let mut stream = Vec::new();
        // A Binding request with no attributes, ChannelData of 5 bytes
        // (padded to 8 on a stream), and the largest ChannelData.
        stream.extend_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]);
        stream.extend_from_slice(&[7; 12]);
        stream.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        stream.extend_from_slice(&[0x40, 0x01, 0xFF, 0xFF]);
        stream.extend(std::iter::repeat_n(9, 0x10000));
        for chunk in [1, 3, 4, 7, 1000, MAX_FRAME] {
            let (messages, err) = deframe(&stream, chunk);
            assert_eq!(err, None);
            let lens: Vec<usize> = messages.iter().map(Vec::len).collect();
            assert_eq!(lens, [20, 12, 4 + 0x10000], "chunks of {chunk}");
            assert_eq!(messages.concat(), stream);
        }
    }

    #[test]
    fn a_stream_that_is_not_turn_fails_after_its_good_messages() {
        let mut stream = vec![0x40, 0x00, 0x00, 0x01, 0xAA, 0, 0, 0];
        stream.extend_from_slice(&[0x16, 0x03, 0x01, 0x00]);
        let (messages, err) = deframe(&stream, 5);
        assert_eq!(messages.len(), 1);
        assert_eq!(err, Some(FrameError::NotTurn));
    }

    #[test]
    fn the_buffer_grows_to_what_a_message_needs_and_no_further() {
        let small = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        let mut big = vec![0x40, 0x01, 0x0F, 0xFC];
        big.extend(std::iter::repeat_n(9, 0x0FFC));
        let stream = [small.as_slice(), &big, &small].concat();
        for chunk in [1, 1000, 5000] {
            let mut d = Deframer::new();
            assert_eq!(d.capacity(), INITIAL_BUFFER);
            let mut at = 0;
            let mut lens = Vec::new();
            while at < stream.len() {
                let room = d.room();
                let n = chunk.min(room.len()).min(stream.len() - at);
                room[..n].copy_from_slice(&stream[at..at + n]);
                d.filled(n);
                at += n;
                while let Some(m) = d.next_message().unwrap() {
                    lens.push(m.len());
                }
            }
            assert_eq!(lens, [12, 0x1000, 12], "chunks of {chunk}");
            // 2048 doubled is 4096, exactly the large message.
            assert_eq!(d.capacity(), 0x1000, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_message_above_the_limit_is_refused_before_it_is_read() {
        let limit = 1500;
        let mut stream = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        stream.extend_from_slice(&[7; 12]);
        // ChannelData of 1496 bytes is exactly 1500: taken.
        stream.extend_from_slice(&[0x40, 0x00, 0x05, 0xD8]);
        stream.extend(std::iter::repeat_n(1, 1496));
        // A STUN message of 20 + 1484 = 1504 bytes is not.
        stream.extend_from_slice(&[0x00, 0x03, 0x05, 0xCC]);
        for chunk in [1, 4, 1000, 3000] {
            let (messages, err) = deframe_with(Deframer::with_limit(limit), &stream, chunk);
            let lens: Vec<usize> = messages.iter().map(Vec::len).collect();
            assert_eq!(lens, [20, 1500], "chunks of {chunk}");
            assert_eq!(err, Some(FrameError::TooLarge { len: 1504, limit }));
        }
        let d = Deframer::with_limit(limit);
        assert!(d.capacity() <= limit);
        assert_eq!(Deframer::with_limit(0).limit, HEADER_LEN);
        assert_eq!(Deframer::with_limit(usize::MAX).limit, MAX_FRAME);
    }

    #[test]
    fn rest_is_what_follows_the_messages_taken() {
        let mut d = Deframer::new();
        let bytes = [
            0x40, 0x00, 0x00, 0x01, 0xAA, 0, 0, 0, b'p', b'e', b'e', b'r',
        ];
        d.room()[..bytes.len()].copy_from_slice(&bytes);
        d.filled(bytes.len());
        assert_eq!(d.next_message().unwrap().unwrap().len(), 8);
        assert_eq!(d.rest(), b"peer");
    }

    #[test]
    fn frames_stun_and_padded_channel_data() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x00, 0x01]), Ok(None));
        assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x08]), Ok(Some(28)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05]), Ok(Some(12)));
        assert_eq!(frame_len(&[0x7F, 0xFF, 0x00, 0x00]), Ok(Some(4)));
        assert_eq!(frame_len(&[0x40, 0x00, 0xFF, 0xFF]), Ok(Some(4 + 0x10000)));
        assert!(frame_len(&[0x40, 0x00, 0xFF, 0xFF]).unwrap().unwrap() <= MAX_FRAME);
    }

    #[test]
    fn refuses_what_is_not_turn() {
        // Letters fall in the ChannelData range: telling HTTP from TURN is
        // done on a connection's first byte, which is STUN for TURN.
        assert_eq!(frame_len(b"GET / HTTP/1.1"), Ok(Some(4 + 0x5420)));
        assert_eq!(frame_len(&[0x16, 0x03, 0x01, 0x00]), Err(NotTurn));
        assert_eq!(frame_len(&[0x16]), Err(NotTurn));
        assert_eq!(
            frame_len(&[0x00, 0x01, 0x00, 0x06]),
            Err(NotTurn),
            "unaligned STUN length"
        );
        assert_eq!(frame_len(&[0x80, 0x00, 0x00, 0x00]), Err(NotTurn));
    }
}
