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

#[cfg(test)]
mod tests {
    use super::*;

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
