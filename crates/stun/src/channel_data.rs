//! TURN ChannelData messages (RFC 8656 §12.4).
//!
//! Four bytes of header (channel number, payload length) and the payload.
//! Over UDP the datagram may carry padding after the payload; over TCP and
//! TLS the message is always padded to a multiple of four bytes.

/// Length of the ChannelData header.
pub const HEADER_LEN: usize = 4;

/// The channel numbers a server accepts: RFC 5766's 0x4000–0x7FFF.
///
/// RFC 8656 §12 narrowed the range to 0x4000–0x4FFF and reserved the rest,
/// so that a *client* multiplexing TURN with DTLS-SRTP on one socket can
/// tell them apart (RFC 7983). A server's listener carries no DTLS, and
/// deployed RFC 5766 clients (coturn's among them) pick channels anywhere
/// up to 0x7FFF: refusing those would break them for no gain.
pub const CHANNEL_RANGE: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// Whether `number` is a channel a server accepts.
#[must_use]
pub const fn is_valid_channel(number: u16) -> bool {
    number >= *CHANNEL_RANGE.start() && number <= *CHANNEL_RANGE.end()
}

/// A ChannelData message, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub payload: &'a [u8],
}

/// Why bytes are not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelDataError {
    /// Fewer than four bytes.
    TooShort,
    /// The channel number is outside 0x4000–0x7FFF.
    BadChannel,
    /// The length field runs past the bytes given.
    Truncated,
}

impl std::fmt::Display for ChannelDataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooShort => "shorter than a ChannelData header",
            Self::BadChannel => "channel number outside 0x4000-0x7FFF",
            Self::Truncated => "length runs past the end of the data",
        })
    }
}

impl std::error::Error for ChannelDataError {}

/// Parses a ChannelData message from the start of `bytes`; bytes past the
/// payload (UDP padding) are ignored.
pub fn parse(bytes: &[u8]) -> Result<ChannelData<'_>, ChannelDataError> {
    let (header, rest) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(ChannelDataError::TooShort)?;
    let [c0, c1, l0, l1] = *header;
    let channel = u16::from_be_bytes([c0, c1]);
    if !is_valid_channel(channel) {
        return Err(ChannelDataError::BadChannel);
    }
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let payload = rest.get(..len).ok_or(ChannelDataError::Truncated)?;
    Ok(ChannelData { channel, payload })
}

/// The header of a ChannelData message carrying `payload_len` bytes on
/// `channel`; `None` when the payload does not fit the 16-bit length.
#[must_use]
pub fn header(channel: u16, payload_len: usize) -> Option<[u8; HEADER_LEN]> {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = u16::try_from(payload_len).ok()?.to_be_bytes();
    Some([c0, c1, l0, l1])
}

/// The number of bytes a ChannelData message with this header occupies on a
/// stream transport, padding included (RFC 8656 §12.5).
#[must_use]
pub fn stream_frame_len(header: [u8; HEADER_LEN]) -> usize {
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    HEADER_LEN + crate::padded(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_ignores_padding() {
        let msg = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
        let cd = parse(&msg).unwrap();
        assert_eq!(cd.channel, 0x4001);
        assert_eq!(cd.payload, b"abc");
        assert_eq!(stream_frame_len([0x40, 0x01, 0x00, 0x03]), 8);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(&[0x40, 0x00, 0x00]), Err(ChannelDataError::TooShort));
        assert_eq!(
            parse(&[0x80, 0x00, 0x00, 0x00]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            parse(&[0x3F, 0xFF, 0x00, 0x00]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(
            parse(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4]),
            Err(ChannelDataError::Truncated)
        );
        assert_eq!(parse(&[0x7F, 0xFF, 0x00, 0x00]).unwrap().payload, b"");
    }

    #[test]
    fn header_round_trips() {
        let h = header(0x4ABC, 1200).unwrap();
        let mut msg = h.to_vec();
        msg.extend(std::iter::repeat_n(7u8, 1200));
        assert_eq!(parse(&msg).unwrap().payload.len(), 1200);
        assert!(header(0x4000, 70_000).is_none());
    }
}
