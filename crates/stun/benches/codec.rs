//! Micro-benchmarks of the STUN codec's hot paths: `Message::parse` of an
//! authenticated Allocate request and of a Binding request, attribute
//! lookups and XOR-PEER-ADDRESS decoding, `MessageWriter` encoding an
//! Allocate success, MESSAGE-INTEGRITY(-SHA256) verification, long-term key
//! derivation, FINGERPRINT, and ChannelData framing at 160 and 1200 bytes.
//!
//! The global allocator counts allocations, so the report shows that none of
//! these allocates. Run with `cargo bench -p turnpike-stun --bench codec`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_debug_implementations,
    unreachable_pub
)]

use std::net::SocketAddr;

use divan::{Bencher, black_box};
use turnpike_stun::attr::TRANSPORT_UDP;
use turnpike_stun::channel_data;
use turnpike_stun::integrity::LongTermKey;
use turnpike_stun::{
    Attr, AttrType, Class, Message, MessageType, MessageWriter, Method, PasswordAlgorithm, RawAttr,
    TransactionId,
};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

const USERNAME: &str = "1800003600:alice";
const REALM: &str = "turnpike.example";
const PASSWORD: &str = "c2VjcmV0LXBhc3N3b3JkLWJhc2U2NA==";
/// A nonce of the length and shape the server issues (nonce cookie, then
/// 22 characters of base64).
const NONCE: &str = "obMatJos2AAACAAAAGVp4cTwJLeRmX3qBQ";
const TID: TransactionId = TransactionId([0x5A; 12]);

fn key() -> LongTermKey {
    LongTermKey::derive(PasswordAlgorithm::MD5, USERNAME, REALM, PASSWORD).unwrap()
}

fn peer_v4() -> SocketAddr {
    "93.184.216.34:40000".parse().unwrap()
}

fn peer_v6() -> SocketAddr {
    "[2001:db8:85a3::8a2e:370:7334]:40000".parse().unwrap()
}

/// Writes a request and returns its bytes.
fn build(
    method: Method,
    attrs: &[Attr<'_>],
    sha1: Option<&[u8]>,
    sha256: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let typ = MessageType::new(method, Class::Request);
    let mut w = MessageWriter::new(&mut buf, typ, TID).unwrap();
    for a in attrs {
        w.add(a).unwrap();
    }
    if let Some(key) = sha1 {
        w.message_integrity(key).unwrap();
    }
    if let Some(key) = sha256 {
        w.message_integrity_sha256(key).unwrap();
    }
    if fingerprint {
        w.fingerprint().unwrap();
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// An Allocate request as a browser sends it once it has a nonce:
/// REQUESTED-TRANSPORT, USERNAME, REALM, NONCE, MESSAGE-INTEGRITY,
/// FINGERPRINT.
fn allocate_request() -> Vec<u8> {
    let key = key();
    build(
        Method::ALLOCATE,
        &allocate_attrs(),
        Some(key.as_bytes()),
        None,
        true,
    )
}

fn allocate_attrs() -> [Attr<'static>; 4] {
    [
        Attr::RequestedTransport(TRANSPORT_UDP),
        Attr::Username(USERNAME),
        Attr::Realm(REALM),
        Attr::Nonce(NONCE),
    ]
}

/// A Binding request with FINGERPRINT, as ICE agents send them.
fn binding_request() -> Vec<u8> {
    build(Method::BINDING, &[], None, None, true)
}

mod parse {
    use super::*;

    /// Framing, attribute walk and FINGERPRINT check of an Allocate.
    #[divan::bench]
    fn allocate(bencher: Bencher) {
        let bytes = allocate_request();
        bencher
            .counter(divan::counter::BytesCount::new(bytes.len()))
            .bench(|| Message::parse(black_box(&bytes)).map(|m| m.len()));
    }

    #[divan::bench]
    fn binding(bencher: Bencher) {
        let bytes = binding_request();
        bencher.bench(|| Message::parse(black_box(&bytes)).map(|m| m.len()));
    }

    /// The lookups the server makes on an Allocate it authenticates and
    /// serves (USERNAME, USERHASH, NONCE, REALM, PASSWORD-ALGORITHMS,
    /// PASSWORD-ALGORITHM, REQUESTED-TRANSPORT, EVEN-PORT,
    /// RESERVATION-TOKEN, REQUESTED-ADDRESS-FAMILY,
    /// ADDITIONAL-ADDRESS-FAMILY, DONT-FRAGMENT, LIFETIME): each is a scan
    /// of the attributes.
    #[divan::bench]
    fn allocate_lookups(bencher: Bencher) {
        let bytes = allocate_request();
        let msg = Message::parse(&bytes).unwrap();
        let wanted = [
            AttrType::USERNAME,
            AttrType::USERHASH,
            AttrType::NONCE,
            AttrType::REALM,
            AttrType::PASSWORD_ALGORITHMS,
            AttrType::PASSWORD_ALGORITHM,
            AttrType::REQUESTED_TRANSPORT,
            AttrType::EVEN_PORT,
            AttrType::RESERVATION_TOKEN,
            AttrType::REQUESTED_ADDRESS_FAMILY,
            AttrType::ADDITIONAL_ADDRESS_FAMILY,
            AttrType::DONT_FRAGMENT,
            AttrType::LIFETIME,
        ];
        bencher.bench(|| {
            let msg = black_box(&msg);
            wanted
                .iter()
                .filter(|&&t| matches!(msg.get(t), Some(Ok(_))))
                .count()
        });
    }
}

mod attr {
    use super::*;

    fn xor_peer_address(bencher: Bencher, peer: SocketAddr) {
        let bytes = build(
            Method::SEND,
            &[Attr::XorPeerAddress(peer)],
            None,
            None,
            false,
        );
        let msg = Message::parse(&bytes).unwrap();
        let raw = msg.raw(AttrType::XOR_PEER_ADDRESS).unwrap();
        let tid = msg.transaction_id();
        bencher.bench(|| {
            let raw = RawAttr {
                typ: raw.typ,
                value: black_box(raw.value),
            };
            Attr::decode(raw, &tid)
        });
    }

    #[divan::bench]
    fn decode_xor_peer_address_v4(bencher: Bencher) {
        xor_peer_address(bencher, peer_v4());
    }

    #[divan::bench]
    fn decode_xor_peer_address_v6(bencher: Bencher) {
        xor_peer_address(bencher, peer_v6());
    }
}

mod write {
    use super::*;

    /// An Allocate success: XOR-RELAYED-ADDRESS, LIFETIME,
    /// XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT.
    #[divan::bench]
    fn allocate_success(bencher: Bencher) {
        let key = key();
        let relayed: SocketAddr = "203.0.113.10:50000".parse().unwrap();
        let mapped: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let mut out = [0u8; 1500];
        bencher.bench_local(|| {
            let typ = MessageType::new(Method::ALLOCATE, Class::Success);
            let mut w = MessageWriter::new(&mut out, typ, black_box(TID)).unwrap();
            w.add(&Attr::XorRelayedAddress(relayed)).unwrap();
            w.add(&Attr::Lifetime(600)).unwrap();
            w.add(&Attr::XorMappedAddress(mapped)).unwrap();
            w.message_integrity(key.as_bytes()).unwrap();
            w.fingerprint().unwrap();
            w.finish()
        });
    }

    /// The same without MESSAGE-INTEGRITY and FINGERPRINT: the cost of the
    /// writer itself.
    #[divan::bench]
    fn allocate_success_unsigned(bencher: Bencher) {
        let relayed: SocketAddr = "203.0.113.10:50000".parse().unwrap();
        let mapped: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let mut out = [0u8; 1500];
        bencher.bench_local(|| {
            let typ = MessageType::new(Method::ALLOCATE, Class::Success);
            let mut w = MessageWriter::new(&mut out, typ, black_box(TID)).unwrap();
            w.add(&Attr::XorRelayedAddress(relayed)).unwrap();
            w.add(&Attr::Lifetime(600)).unwrap();
            w.add(&Attr::XorMappedAddress(mapped)).unwrap();
            w.finish()
        });
    }

    /// A Data indication wrapped in place around a payload already in the
    /// buffer, as the relay does for a peer without a channel.
    #[divan::bench(consts = [160, 1200])]
    fn data_indication_in_place<const LEN: usize>(bencher: Bencher) {
        let mut buf = vec![0x55u8; 64 + LEN + 3];
        let peer = peer_v4();
        bencher.bench_local(|| {
            let typ = MessageType::new(Method::DATA, Class::Indication);
            // Header, XOR-PEER-ADDRESS (IPv4) and the DATA header.
            let start = 64 - (20 + 12 + 4);
            let mut w = MessageWriter::new(&mut buf[start..], typ, black_box(TID)).unwrap();
            w.add(&Attr::XorPeerAddress(peer)).unwrap();
            w.add_in_place(AttrType::DATA, LEN).unwrap();
            w.finish()
        });
    }
}

mod integrity {
    use super::*;

    /// HMAC-SHA1 over an Allocate request (about 100 bytes), keyed with a
    /// 16-byte MD5 long-term key.
    #[divan::bench]
    fn verify_message_integrity(bencher: Bencher) {
        let key = key();
        let bytes = allocate_request();
        let msg = Message::parse(&bytes).unwrap();
        bencher.bench(|| black_box(&msg).verify_integrity(black_box(key.as_bytes())));
    }

    /// HMAC-SHA256 over the same request, with MESSAGE-INTEGRITY-SHA256 only.
    #[divan::bench]
    fn verify_message_integrity_sha256(bencher: Bencher) {
        let key = key();
        let bytes = build(
            Method::ALLOCATE,
            &allocate_attrs(),
            None,
            Some(key.as_bytes()),
            true,
        );
        let msg = Message::parse(&bytes).unwrap();
        bencher.bench(|| black_box(&msg).verify_integrity(black_box(key.as_bytes())));
    }

    /// Keying HMAC-SHA1 alone (hashing the padded key's two blocks), which
    /// `verify_integrity` and `MessageWriter::message_integrity` redo on
    /// every call: the share of a verification that a cached, keyed state
    /// would save.
    #[divan::bench]
    fn hmac_sha1_keying(bencher: Bencher) {
        use hmac::{Hmac, KeyInit};
        let key = key();
        bencher.bench(|| <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(black_box(key.as_bytes())));
    }

    /// MD5 of `username:realm:password` (RFC 8489 §9.2.2).
    #[divan::bench]
    fn long_term_key_md5() -> Option<LongTermKey> {
        LongTermKey::derive(
            PasswordAlgorithm::MD5,
            black_box(USERNAME),
            black_box(REALM),
            black_box(PASSWORD),
        )
    }

    /// SHA-256 of `username:realm:password`.
    #[divan::bench]
    fn long_term_key_sha256() -> Option<LongTermKey> {
        LongTermKey::derive(
            PasswordAlgorithm::SHA256,
            black_box(USERNAME),
            black_box(REALM),
            black_box(PASSWORD),
        )
    }

    /// Appending FINGERPRINT (CRC-32) to a message of LEN bytes of DATA:
    /// the writer's header work is a few nanoseconds, the rest is the CRC.
    #[divan::bench(consts = [0, 160, 1200])]
    fn fingerprint<const LEN: usize>(bencher: Bencher) {
        let mut buf = vec![0x55u8; 20 + 4 + LEN + 8];
        bencher
            .counter(divan::counter::BytesCount::new(20 + 4 + LEN))
            .bench_local(|| {
                let typ = MessageType::new(Method::DATA, Class::Indication);
                let mut w = MessageWriter::new(&mut buf, typ, black_box(TID)).unwrap();
                if LEN > 0 {
                    w.add_in_place(AttrType::DATA, LEN).unwrap();
                }
                w.fingerprint().unwrap();
                w.finish()
            });
    }
}

mod channel {
    use super::*;

    #[divan::bench(consts = [160, 1200])]
    fn parse<const LEN: usize>(bencher: Bencher) {
        let mut msg = channel_data::header(0x4000, LEN).unwrap().to_vec();
        msg.resize(channel_data::HEADER_LEN + LEN, 0x55);
        bencher.bench(|| channel_data::parse(black_box(&msg)).map(|cd| cd.payload.len()));
    }

    #[divan::bench(consts = [160, 1200])]
    fn header<const LEN: usize>() -> Option<[u8; channel_data::HEADER_LEN]> {
        channel_data::header(black_box(0x4000), black_box(LEN))
    }
}
