//! Differential test: this codec against an independent one (the
//! `stun-types` crate), on messages mutated from real ones.
//!
//! Where both accept a message, they must agree on its transaction, its
//! type and every attribute that counts (those before MESSAGE-INTEGRITY,
//! MESSAGE-INTEGRITY-SHA256 or FINGERPRINT). Where they disagree on
//! accepting it, the reason must be one of the known, deliberate
//! differences listed in `allowed_disagreement`.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use stun_types::message::Message as Theirs;
use turnpike_stun::{
    Attr, Class, DecodeError, Message, MessageType, MessageWriter, Method, TransactionId,
};

/// Attributes that end the part of a message that counts.
const ENDING: [u16; 3] = [0x0008, 0x001C, 0x8028];

fn seeds() -> Vec<Vec<u8>> {
    let tid = TransactionId([7; 12]);
    let peer = "93.184.216.34:40000".parse().unwrap();
    let peer6 = "[2606:2800:220:1::1]:3478".parse().unwrap();
    let build = |method, class, attrs: &[Attr<'_>], key: Option<&[u8]>, fp: bool| {
        let mut buf = vec![0u8; 1024];
        let mut w = MessageWriter::new(&mut buf, MessageType::new(method, class), tid).unwrap();
        for a in attrs {
            w.add(a).unwrap();
        }
        if let Some(k) = key {
            w.message_integrity(k).unwrap();
        }
        if fp {
            w.fingerprint().unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    };
    vec![
        build(Method::BINDING, Class::Request, &[], None, false),
        build(Method::BINDING, Class::Request, &[], None, true),
        build(
            Method::BINDING,
            Class::Success,
            &[Attr::XorMappedAddress(peer6), Attr::Software("x")],
            Some(b"key"),
            true,
        ),
        build(
            Method::ALLOCATE,
            Class::Request,
            &[
                Attr::RequestedTransport(17),
                Attr::Lifetime(600),
                Attr::Username("alice"),
                Attr::Realm("turnpike.test"),
                Attr::Nonce("abcdefgh"),
            ],
            Some(b"0123456789abcdef"),
            true,
        ),
        build(
            Method::CHANNEL_BIND,
            Class::Request,
            &[Attr::ChannelNumber(0x4000), Attr::XorPeerAddress(peer)],
            Some(b"k"),
            false,
        ),
        build(
            Method::SEND,
            Class::Indication,
            &[Attr::XorPeerAddress(peer), Attr::Data(b"hello world")],
            None,
            false,
        ),
    ]
}

fn mutate(rng: &mut StdRng, m: &mut Vec<u8>) {
    for _ in 0..1 + rng.random_range(0..3) {
        match rng.random_range(0..6) {
            0 if !m.is_empty() => {
                let at = rng.random_range(0..m.len());
                m[at] ^= 1 << rng.random_range(0..8);
            }
            1 if !m.is_empty() => {
                let at = rng.random_range(0..m.len());
                m[at] = rng.random();
            }
            2 if m.len() > 20 => {
                let at = rng.random_range(20..m.len());
                m.truncate(at);
            }
            3 => m.extend((0..rng.random_range(1..9)).map(|_| rng.random::<u8>())),
            4 if m.len() > 24 => {
                // An attribute length (at a plausible offset) changes.
                let at = 20 + 4 * rng.random_range(0..(m.len() - 20) / 4);
                if at + 4 <= m.len() {
                    m[at + 3] = m[at + 3].wrapping_add(rng.random_range(1..8));
                }
            }
            _ => {}
        }
    }
    // Keep the header's length consistent with the bytes most of the time,
    // so that the attribute walk is what gets compared.
    if m.len() >= 20 && rng.random_range(0..4) != 0 {
        let body = u16::try_from(m.len() - 20).unwrap_or(u16::MAX);
        m[2..4].copy_from_slice(&body.to_be_bytes());
    }
}

/// Whether a message one codec refuses and the other accepts may be
/// refused, per RFC 8489.
fn allowed_disagreement(ours: DecodeError, theirs: &Theirs<'_>) -> bool {
    match ours {
        // §14.5: after MESSAGE-INTEGRITY(-SHA256) only MI-SHA256 and
        // FINGERPRINT count, and a FINGERPRINT that fails makes it not a
        // STUN message (§7.3). `stun-types` stops at the first other
        // attribute after the integrity, so it never checks a FINGERPRINT
        // that follows one.
        DecodeError::BadFingerprint => !theirs_types(theirs).contains(&0x8028),
        // The same early stop: `stun-types` does not walk the framing of
        // what follows the integrity; this codec refuses a message whose
        // framing is broken anywhere.
        DecodeError::AttributeOverrun => theirs_types(theirs).iter().any(|t| ENDING.contains(t)),
        // §14.7: FINGERPRINT is the last attribute. `stun-types` ignores
        // what follows it; this codec refuses the message.
        DecodeError::AfterFingerprint => true,
        // §5: attributes are padded to 4 bytes, so "the last 2 bits of
        // this field are always zero". `stun-types` does not check.
        DecodeError::UnalignedLength => true,
        _ => false,
    }
}

/// The attribute types `stun-types` walked, in order.
fn theirs_types(m: &Theirs<'_>) -> Vec<u16> {
    m.iter_attributes()
        .map(|(_, a)| a.header.get_type().value())
        .collect()
}

/// The attributes that count, as (type, value).
fn ours_attrs(m: &Message<'_>) -> Vec<(u16, Vec<u8>)> {
    m.attributes()
        .take_while(|a| !ENDING.contains(&a.typ.0))
        .map(|a| (a.typ.0, a.value.to_vec()))
        .collect()
}

fn theirs_attrs(m: &Theirs<'_>) -> Vec<(u16, Vec<u8>)> {
    m.iter_attributes()
        .map(|(_, a)| (a.header.get_type().value(), a.value.to_vec()))
        .take_while(|(t, _)| !ENDING.contains(t))
        .collect()
}

#[test]
fn agrees_with_an_independent_codec() {
    let seeds = seeds();
    let mut rng = StdRng::seed_from_u64(0x5EED_D1FF);
    let (mut both, mut neither, mut allowed) = (0u32, 0u32, 0u32);
    for round in 0..200_000 {
        let mut m = seeds[round % seeds.len()].clone();
        if round >= seeds.len() {
            mutate(&mut rng, &mut m);
        }
        // Compare whole messages only: a datagram is one message.
        let exact = m.len() >= 20 && usize::from(u16::from_be_bytes([m[2], m[3]])) + 20 == m.len();
        if !exact {
            continue;
        }
        let ours = Message::parse(&m);
        let theirs = Theirs::from_bytes(&m);
        match (&ours, &theirs) {
            (Ok(o), Ok(t)) => {
                both += 1;
                assert_eq!(
                    u128::from(t.transaction_id()),
                    u128::from_be_bytes({
                        let mut b = [0u8; 16];
                        b[4..].copy_from_slice(&o.transaction_id().0);
                        b
                    }),
                    "transaction of {m:02x?}"
                );
                assert_eq!(t.get_type().to_bytes(), m[..2], "type of {m:02x?}");
                assert_eq!(ours_attrs(o), theirs_attrs(t), "attributes of {m:02x?}");
                // Both see the same integrity and fingerprint.
                let types = theirs_types(t);
                assert_eq!(
                    o.has_integrity(),
                    types.contains(&0x0008) || types.contains(&0x001C),
                    "integrity of {m:02x?}"
                );
                assert_eq!(
                    o.has_fingerprint(),
                    types.contains(&0x8028),
                    "fingerprint of {m:02x?}"
                );
            }
            (Err(_), Err(_)) => neither += 1,
            (Err(e), Ok(t)) if allowed_disagreement(*e, t) => allowed += 1,
            (Err(e), Ok(_)) => panic!("refused ({e:?}) what stun-types accepts: {m:02x?}"),
            (Ok(_), Err(e)) => panic!("accepted what stun-types refuses ({e:?}): {m:02x?}"),
        }
    }
    // The comparison ran on a good share of both outcomes.
    assert!(both > 20_000, "{both} accepted by both");
    assert!(neither > 20_000, "{neither} refused by both");
    eprintln!("accepted by both {both}, refused by both {neither}, known differences {allowed}");
}
