//! What a test packet carries, so that its echo can be matched and timed
//! without any lookup: a tag of the run, the allocation's index, a sequence
//! number, how long the echo peer held it, and the send time.
//!
//! ```text
//! 0       4            8            12           16               24
//! | tag   | allocation | sequence   | held_ns    | sent_ns (u64)  | filler...
//! ```
//!
//! All big-endian. `sent_ns` counts from the run's epoch (a monotonic
//! clock shared by every thread). The echo peer writes `held_ns`, the time
//! between the kernel receiving the packet and the peer sending it back,
//! so that the round trip counts the server's time and not the peer's.

/// The bytes a payload needs; `--size` may not be smaller.
pub const MIN_SIZE: usize = 24;

/// The fields of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub allocation: u32,
    /// Per allocation; wraps after 2^32 packets.
    pub sequence: u32,
    pub held_ns: u32,
    pub sent_ns: u64,
}

/// Writes the fields into the first [`MIN_SIZE`] bytes of `buf`; the rest
/// is left as it is (the caller fills it once). `false` when `buf` is too
/// short.
#[inline]
pub(crate) fn encode(buf: &mut [u8], tag: u32, p: &Payload) -> bool {
    let Some(head) = buf.first_chunk_mut::<MIN_SIZE>() else {
        return false;
    };
    let [t0, t1, t2, t3] = tag.to_be_bytes();
    let [a0, a1, a2, a3] = p.allocation.to_be_bytes();
    let [s0, s1, s2, s3] = p.sequence.to_be_bytes();
    let [h0, h1, h2, h3] = p.held_ns.to_be_bytes();
    let [n0, n1, n2, n3, n4, n5, n6, n7] = p.sent_ns.to_be_bytes();
    *head = [
        t0, t1, t2, t3, a0, a1, a2, a3, s0, s1, s2, s3, h0, h1, h2, h3, n0, n1, n2, n3, n4, n5, n6,
        n7,
    ];
    true
}

/// Writes `held_ns` into a payload in place (the echo peer's part).
#[inline]
pub(crate) fn set_held(buf: &mut [u8], held_ns: u32) {
    if let Some(h) = buf.get_mut(12..16) {
        h.copy_from_slice(&held_ns.to_be_bytes());
    }
}

/// Reads a payload written by [`encode`] with the same tag; `None` for
/// anything else (a stray datagram, another run's packet).
#[inline]
#[must_use]
pub(crate) fn decode(buf: &[u8], tag: u32) -> Option<Payload> {
    let head = buf.first_chunk::<MIN_SIZE>()?;
    let (t, rest) = head.split_first_chunk::<4>()?;
    let (a, rest) = rest.split_first_chunk::<4>()?;
    let (s, rest) = rest.split_first_chunk::<4>()?;
    let (h, rest) = rest.split_first_chunk::<4>()?;
    let n = rest.first_chunk::<8>()?;
    if u32::from_be_bytes(*t) != tag {
        return None;
    }
    Some(Payload {
        allocation: u32::from_be_bytes(*a),
        sequence: u32::from_be_bytes(*s),
        held_ns: u32::from_be_bytes(*h),
        sent_ns: u64::from_be_bytes(*n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut buf = [0xEEu8; 160];
        let mut p = Payload {
            allocation: 0x0102_0304,
            sequence: u32::MAX - 5,
            held_ns: 0,
            sent_ns: 123_456_789_012,
        };
        assert!(encode(&mut buf, 0xCAFE_F00D, &p));
        assert_eq!(decode(&buf, 0xCAFE_F00D), Some(p));
        set_held(&mut buf, 4321);
        p.held_ns = 4321;
        assert_eq!(decode(&buf, 0xCAFE_F00D), Some(p));
        assert_eq!(&buf[MIN_SIZE..], &[0xEE; 160 - MIN_SIZE], "filler kept");
        // The exact minimum works too.
        assert_eq!(decode(&buf[..MIN_SIZE], 0xCAFE_F00D), Some(p));
    }

    #[test]
    fn rejects_other_tags_and_short_buffers() {
        let mut buf = [0u8; MIN_SIZE];
        let p = Payload {
            allocation: 1,
            sequence: 2,
            held_ns: 0,
            sent_ns: 3,
        };
        assert!(encode(&mut buf, 7, &p));
        assert_eq!(decode(&buf, 8), None);
        assert_eq!(decode(&buf[..MIN_SIZE - 1], 7), None);
        assert!(!encode(&mut [0u8; MIN_SIZE - 1], 7, &p));
    }
}
