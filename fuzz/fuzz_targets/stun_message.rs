//! The STUN parser on arbitrary bytes: no panic, framing that never
//! reaches past the input, and every attribute that decodes encodes back
//! to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_stun::{Attr, AttrType, Message, MessageWriter, RawAttr};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else {
        return;
    };
    assert!(msg.len() >= 20 && msg.len() <= data.len());
    assert_eq!(msg.len() % 4, 0);
    assert_eq!(msg.as_bytes(), &data[..msg.len()]);
    let _ = msg.verify_integrity(b"a key of some length");
    let _ = msg.unknown_comprehension_required();

    let tid = msg.transaction_id();
    let mut buf = vec![0u8; msg.len() + 64];
    let Ok(mut writer) = MessageWriter::new(&mut buf, msg.typ(), tid) else {
        return;
    };
    let mut decoded = Vec::new();
    for raw in msg.attributes() {
        assert!(raw.value.len() <= msg.len());
        // The accessors agree with the iteration (first of a type counts).
        assert!(msg.raw(raw.typ).is_some());
        let Ok(attr) = Attr::decode(raw, &tid) else {
            continue;
        };
        if matches!(
            raw.typ,
            AttrType::MESSAGE_INTEGRITY
                | AttrType::MESSAGE_INTEGRITY_SHA256
                | AttrType::FINGERPRINT
        ) {
            continue;
        }
        if writer.add(&attr).is_ok() {
            decoded.push(attr);
        }
    }
    let len = writer.finish();
    let again = Message::parse(&buf[..len]).expect("what the writer wrote parses");
    let reparsed: Vec<RawAttr<'_>> = again.attributes().collect();
    assert_eq!(reparsed.len(), decoded.len());
    for (raw, attr) in reparsed.into_iter().zip(decoded) {
        assert_eq!(
            Attr::decode(raw, &tid),
            Ok(attr),
            "round trip of {:?}",
            raw.typ
        );
    }
});
