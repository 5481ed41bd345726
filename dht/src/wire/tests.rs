use super::*;
use crate::contact::Role;
use crate::envelope::{BounceReason, EnvelopeKind, TraceHop};
use bytes::Bytes;
use proptest::prelude::*;

fn key(b: u8) -> Key {
    Key([b; 32])
}

fn envelope(payload: &[u8]) -> Envelope {
    Envelope {
        key: key(1),
        kind: EnvelopeKind::Stanza,
        origin: key(2),
        id: 42,
        ttl: 31,
        hops: 1,
        trace: Some(vec![TraceHop {
            node: key(3),
            at_us: 1_700_000_000_000_000,
        }]),
        orig: None,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Every message kind, for table-driven round trips.
fn samples() -> Vec<Frame<u32>> {
    vec![
        Frame::Hello(Contact::new(key(9), 7, Role::Edge)),
        Frame::Msg(Message::Ping { nonce: 1 }),
        Frame::Msg(Message::Pong { nonce: u64::MAX }),
        Frame::Msg(Message::FindNode {
            req: 5,
            target: key(4),
        }),
        Frame::Msg(Message::Nodes {
            req: 5,
            contacts: vec![
                Contact::new(key(5), 1, Role::Application),
                Contact::new(key(6), 2, Role::Router),
            ],
        }),
        Frame::Msg(Message::Route {
            seq: 0,
            env: envelope(b"<message/>"),
        }),
        Frame::Msg(Message::Route {
            seq: 9,
            env: Envelope {
                kind: EnvelopeKind::Bounce(BounceReason::TtlExpired),
                orig: Some((key(8), EnvelopeKind::Stanza)),
                trace: None,
                ..envelope(&[])
            },
        }),
        Frame::Msg(Message::Ack { first: 3, last: 10 }),
        Frame::Msg(Message::Goodbye),
    ]
}

#[test]
fn round_trip_every_message() {
    for f in samples() {
        let bytes = encode(&f).unwrap();
        assert_eq!(bytes[0], WIRE_VERSION);
        let back: Frame<u32> = decode(&bytes).unwrap();
        assert_eq!(back, f);
    }
}

#[test]
fn truncated_frames_are_errors() {
    for f in samples() {
        let bytes = encode(&f).unwrap();
        for cut in 0..bytes.len() {
            let r: Result<Frame<u32>, _> = decode(&bytes[..cut]);
            assert!(r.is_err(), "{f:?} cut at {cut} decoded");
        }
    }
}

#[test]
fn invalid_input_table() {
    let good = encode(&Frame::<u32>::Msg(Message::Ping { nonce: 1 })).unwrap();
    let mut wrong_version = good.clone();
    wrong_version[0] = 99;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut bad_variant = good.clone();
    bad_variant[1] = 0xfa; // not a valid enum discriminant
    type Check = fn(&DecodeError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("empty", vec![], |e| matches!(e, DecodeError::Empty)),
        ("version", wrong_version, |e| {
            matches!(e, DecodeError::Version(99))
        }),
        ("trailing", trailing, |e| {
            matches!(e, DecodeError::Trailing(1))
        }),
        ("variant", bad_variant, |e| {
            matches!(e, DecodeError::Malformed(_))
        }),
        ("oversized", vec![WIRE_VERSION; MAX_FRAME_BYTES + 1], |e| {
            matches!(e, DecodeError::TooLarge(_))
        }),
    ];
    for (name, bytes, ok) in cases {
        let err = decode::<u32>(&bytes).expect_err(name);
        assert!(ok(&err), "{name}: unexpected {err:?}");
    }
}

#[test]
fn forged_length_prefix_does_not_allocate() {
    // A Route whose payload claims 2^62 bytes: bincode's varint for u64
    // (tag 253) followed by the length. Decoding must fail fast.
    let mut bytes = encode(&Frame::<u32>::Msg(Message::Route {
        seq: 0,
        env: envelope(b""),
    }))
    .unwrap();
    // Replace the trailing empty-payload length (a single 0 byte) by a huge one.
    assert_eq!(bytes.pop(), Some(0));
    bytes.push(253);
    bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let err = decode::<u32>(&bytes).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
}

#[test]
fn too_many_contacts_rejected() {
    let contacts = (0..=MAX_CONTACTS_PER_ANSWER as u32)
        .map(|i| Contact::new(key(i as u8), i, Role::Application))
        .collect();
    let bytes = encode(&Frame::Msg(Message::Nodes { req: 1, contacts })).unwrap();
    assert!(matches!(
        decode::<u32>(&bytes),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn oversized_encode_refused() {
    let env = envelope(&vec![0u8; MAX_FRAME_BYTES]);
    let mut out = vec![1, 2, 3];
    let err =
        encode_into(&Frame::<u32>::Msg(Message::Route { seq: 1, env }), &mut out).unwrap_err();
    assert!(matches!(err, EncodeError::TooLarge(_)));
    assert_eq!(
        out,
        vec![1, 2, 3],
        "a refused frame leaves the buffer as it was"
    );
}

fn arb_kind() -> impl Strategy<Value = EnvelopeKind> {
    prop_oneof![
        Just(EnvelopeKind::Stanza),
        Just(EnvelopeKind::Probe),
        Just(EnvelopeKind::ProbeReply),
        Just(EnvelopeKind::Record),
        any::<u8>().prop_map(EnvelopeKind::Service),
        Just(EnvelopeKind::Bounce(BounceReason::Timeout)),
        Just(EnvelopeKind::Bounce(BounceReason::Overloaded)),
    ]
}

prop_compose! {
    fn arb_envelope()(
        k in any::<[u8; 32]>(), o in any::<[u8; 32]>(), kind in arb_kind(), id in any::<u64>(),
        ttl in any::<u8>(), hops in any::<u8>(),
        trace in proptest::option::of(proptest::collection::vec((any::<[u8; 32]>(), any::<u64>()), 0..5)),
        orig in proptest::option::of((any::<[u8; 32]>(), arb_kind())),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) -> Envelope {
        Envelope {
            key: Key(k), kind, origin: Key(o), id, ttl, hops,
            trace: trace.map(|t| t.into_iter().map(|(n, at_us)| TraceHop { node: Key(n), at_us }).collect()),
            orig: orig.map(|(k, kind)| (Key(k), kind)),
            payload: Bytes::from(payload),
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<u32>(&bytes);
        let _ = decode::<Vec<u8>>(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_version_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut framed = vec![WIRE_VERSION];
        framed.extend(bytes);
        let _ = decode::<u32>(&framed);
    }

    #[test]
    fn envelopes_round_trip(env in arb_envelope(), seq in any::<u64>()) {
        let f: Frame<u32> = Frame::Msg(Message::Route { seq, env });
        let bytes = encode(&f).unwrap();
        prop_assert_eq!(decode::<u32>(&bytes).unwrap(), f);
    }

    #[test]
    fn mutated_frames_never_panic(env in arb_envelope(), pos in any::<usize>(), val in any::<u8>()) {
        let mut bytes = encode(&Frame::<u32>::Msg(Message::Route { seq: 1, env })).unwrap();
        let i = pos % bytes.len();
        bytes[i] = val;
        let _ = decode::<u32>(&bytes);
    }
}
