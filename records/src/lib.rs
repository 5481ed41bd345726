//! # ring-records: the replicated record store of xmpp-ring
//!
//! Named values kept on the `r` nodes closest to each name's key, as a
//! sans-IO state machine ([`Replicator`]) that the node drives over libp2p
//! and redb and the simulator drives under churn: a change to replication
//! measured in the simulator is a change of the product.
//!
//! How a request travels: the node where it starts routes a
//! [`RecordMsg::Request`] to the name's key; the responsible node (the
//! *coordinator*) answers from its own copy, or for a write gives the
//! record the next version, stores it and pushes [`RecordMsg::Replicate`]
//! to the `r - 1` other nodes closest to the key that it knows, answering
//! once they confirm ([`RecordMsg::Stored`]). The answer travels back as a
//! [`RecordMsg::Reply`] routed to the requesting node's id. Each node also
//! re-checks, a batch at a time, which nodes should hold its records and
//! pushes a copy to any that changed (joins, crashes), so `r` copies exist
//! again after membership changes. A coordinator that holds no copy asks
//! the replicas for theirs ([`RecordMsg::Fetch`]) before it answers.
//! Conflicting copies resolve by [`Record::supersedes`], the same on every
//! node. See docs/architecture.md, "A record write".

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod replicator;
mod ring;
mod store;

pub use replicator::{Answer, Config, Counters, LocalWrite, Output, Replicator, RequestError};
pub use ring::{ListRing, Ring};
pub use store::{Backend, MemBackend, Store, StoreError, StoreLimits};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One copy of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Increases with every write.
    pub version: u64,
    /// A tombstone: the record was deleted at this version.
    pub deleted: bool,
    /// The value (empty for tombstones).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The write that made this version: the requesting node's id and its
    /// request number. A retried or duplicated request finds its own write
    /// here and does not make another version.
    pub write: Option<WriteId>,
}

/// Who asked for a write: (requesting node id, request number).
pub type WriteId = ([u8; 32], u64);

/// Names of the records that hold the state of a ring service: a MUC room
/// (`muc:` + its bare JID, plus its occupant shards and history), a PubSub
/// node's configuration and affiliations (`pubsub:` + service JID + `/` +
/// node name), its subscription shards and its items (`pubsub-items:`
/// ...). A shard's name ends in `#<depth>.<index>`. They are ordinary records (an operator can read
/// them with `xmpp-ring record get`), but keyed on the *service's* key, so
/// that their replicas are the nodes next in line to host the room or node:
/// after the host dies its successor already holds the state.
pub const MUC_PREFIX: &str = "muc:";
/// A room's occupants, in shards (see [`MUC_PREFIX`]).
pub const MUC_OCCUPANTS_PREFIX: &str = "muc-occ:";
/// A room's discussion history (see [`MUC_PREFIX`]).
pub const MUC_HISTORY_PREFIX: &str = "muc-hist:";
/// See [`MUC_PREFIX`].
pub const PUBSUB_PREFIX: &str = "pubsub:";
/// A PubSub node's subscriptions, in shards (see [`MUC_PREFIX`]).
pub const PUBSUB_SUBSCRIPTIONS_PREFIX: &str = "pubsub-subs:";
/// See [`MUC_PREFIX`].
pub const PUBSUB_ITEMS_PREFIX: &str = "pubsub-items:";
/// The registry of a service's rooms or nodes (`dir:` + service JID + `#`
/// + shard), keyed on the service JID.
pub const DIRECTORY_PREFIX: &str = "dir:";

/// A ring user's account (`account:` + bare JID): keyed on the bare JID,
/// so its replicas are the user's home node and the nodes next in line.
/// Written by the operator (`xmpp-ring user`), read by access nodes.
pub const ACCOUNT_PREFIX: &str = "account:";

/// A ring user's offline messages (`offline:` + bare JID), kept by the
/// home node (keyed on the bare JID).
pub const OFFLINE_PREFIX: &str = "offline:";

/// A ring user's roster (`roster:` + bare JID), kept by the home node.
pub const ROSTER_PREFIX: &str = "roster:";

/// The available sessions of a ring user and their last presence
/// (`presence:` + bare JID), kept by the home node so that its successor
/// can tell the contacts when sessions die with it.
pub const PRESENCE_PREFIX: &str = "presence:";

/// Whether `name` is a service's record (written by the service only).
pub fn is_service_record(name: &str) -> bool {
    [
        MUC_PREFIX,
        MUC_OCCUPANTS_PREFIX,
        MUC_HISTORY_PREFIX,
        PUBSUB_PREFIX,
        PUBSUB_SUBSCRIPTIONS_PREFIX,
        PUBSUB_ITEMS_PREFIX,
        DIRECTORY_PREFIX,
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// The key a record called `name` lives at (the record key of
/// docs/architecture.md, "Keys and distance", except
/// for the service records of [`MUC_PREFIX`]).
pub fn key_of(name: &str) -> dht::Key {
    if let Some(jid) = name
        .strip_prefix(MUC_PREFIX)
        .or_else(|| name.strip_prefix(MUC_HISTORY_PREFIX))
        .or_else(|| name.strip_prefix(ACCOUNT_PREFIX))
        .or_else(|| name.strip_prefix(OFFLINE_PREFIX))
        .or_else(|| name.strip_prefix(ROSTER_PREFIX))
        .or_else(|| name.strip_prefix(PRESENCE_PREFIX))
    {
        return dht::keys::jid_key_normalised(jid);
    }
    if let Some(rest) = name.strip_prefix(MUC_OCCUPANTS_PREFIX) {
        // `muc-occ:<room>#<depth>.<index>`: every shard lives at the room.
        let room = rest.rsplit_once('#').map_or(rest, |(r, _)| r);
        return dht::keys::jid_key_normalised(room);
    }
    if let Some(rest) = name.strip_prefix(PUBSUB_SUBSCRIPTIONS_PREFIX) {
        let node = rest.rsplit_once('#').map_or(rest, |(n, _)| n);
        if let Some((service, node)) = node.split_once('/') {
            return dht::keys::pubsub_key(service, node);
        }
    }
    if let Some(rest) = name.strip_prefix(DIRECTORY_PREFIX) {
        // `dir:<service>#<shard>`: every shard lives at the service JID.
        let service = rest.rsplit_once('#').map_or(rest, |(s, _)| s);
        return dht::keys::jid_key_normalised(service);
    }
    let node = name
        .strip_prefix(PUBSUB_ITEMS_PREFIX)
        .or_else(|| name.strip_prefix(PUBSUB_PREFIX));
    if let Some((service, node)) = node.and_then(|n| n.split_once('/')) {
        return dht::keys::pubsub_key(service, node);
    }
    dht::keys::record_key(name)
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1024 * 1024 }>()
}

impl Record {
    /// The version a write over `current` gets: one more, or `None` when
    /// `current` is at `u64::MAX` (a peer could hand us such a copy; wrapping
    /// to 0 would make the new write lose to every copy and vanish).
    pub fn next_version(current: Option<&Record>) -> Option<u64> {
        current.map_or(Some(1), |c| c.version.checked_add(1))
    }

    /// The deterministic order of copies: higher version first; at equal
    /// versions a tombstone, then the larger SHA-256 of the value.
    pub fn supersedes(&self, other: &Record) -> bool {
        self.rank() > other.rank()
    }

    fn rank(&self) -> (u64, bool, [u8; 32]) {
        (
            self.version,
            self.deleted,
            Sha256::digest(&self.value).into(),
        )
    }

    /// Encodes a copy for storage.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode_config()).unwrap_or_default()
    }

    /// Decodes a stored copy; malformed input is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        bincode::serde::decode_from_slice(bytes, bincode_config())
            .ok()
            .map(|(r, _)| r)
    }
}

/// An operation a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordOp {
    /// Write a value.
    Put {
        /// Record name.
        name: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Read.
    Get {
        /// Record name.
        name: String,
    },
    /// Delete (writes a tombstone).
    Delete {
        /// Record name.
        name: String,
    },
    /// Write a value only if no live record has the name (a tombstone does
    /// not count): the coordinator, which every write of the name goes
    /// through, decides, so two creations of one name cannot both succeed.
    /// Answered `Written` when created, `Found` (with the existing value)
    /// when not.
    Create {
        /// Record name.
        name: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
}

impl RecordOp {
    /// The record's name.
    pub fn name(&self) -> &str {
        match self {
            RecordOp::Put { name, .. }
            | RecordOp::Create { name, .. }
            | RecordOp::Get { name }
            | RecordOp::Delete { name } => name,
        }
    }
}

/// What the coordinator answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordOutcome {
    /// Written (put or delete) with this version, and stored by this many
    /// other replicas.
    Written {
        /// New version.
        version: u64,
        /// Copies committed besides the coordinator's own (those that
        /// acknowledged within the coordinator's wait).
        replicas: usize,
    },
    /// The current value.
    Found {
        /// Its version.
        version: u64,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// No such record (or it was deleted).
    NotFound,
    /// Refused, with a readable reason (limits, storage).
    Refused(String),
}

/// Record-store messages, carried as `Record` envelopes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordMsg {
    /// A client's request, routed to the name's key.
    Request {
        /// Matches the reply.
        req: u64,
        /// The requesting node's id, where the reply goes.
        origin: [u8; 32],
        /// What to do.
        op: RecordOp,
    },
    /// A copy for a replica, routed to that replica's id.
    Replicate {
        /// Record name.
        name: String,
        /// The copy.
        record: Record,
        /// For a client's write: the coordinator's id and the number to
        /// acknowledge with [`RecordMsg::Stored`] once the copy is committed
        /// (the coordinator answers the client after the replicas' commits).
        ack: Option<(u64, [u8; 32])>,
    },
    /// A replica holds the copy of [`RecordMsg::Replicate`] `ack` (or a
    /// newer one), routed to the coordinator's id.
    Stored {
        /// The number from the `Replicate`.
        ack: u64,
    },
    /// A coordinator without a copy asks a replica for its copy before it
    /// answers (a node that has just become responsible for the key).
    Fetch {
        /// Matches the answer.
        fetch: u64,
        /// The asking node's id, where the answer goes.
        from: [u8; 32],
        /// Record name.
        name: String,
    },
    /// A replica's copy (or none), routed to the asking node's id.
    FetchReply {
        /// The fetch's id.
        fetch: u64,
        /// The replica's copy, tombstones included.
        record: Option<Record>,
    },
    /// The coordinator's answer.
    Reply {
        /// The request's id.
        req: u64,
        /// Hops the request took to the coordinator.
        hops: u8,
        /// The outcome.
        outcome: RecordOutcome,
    },
}

impl RecordMsg {
    /// Encodes for an envelope payload.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode_config()).unwrap_or_default()
    }

    /// Decodes an envelope payload; malformed or oversized input is `None`.
    pub fn decode(bytes: &[u8]) -> Option<RecordMsg> {
        bincode::serde::decode_from_slice(bytes, bincode_config())
            .ok()
            .map(|(m, _)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        let msgs = [
            RecordMsg::Request {
                req: 7,
                origin: [3; 32],
                op: RecordOp::Put {
                    name: "n".into(),
                    value: b"v".to_vec(),
                },
            },
            RecordMsg::Replicate {
                name: "n".into(),
                record: Record {
                    version: 2,
                    deleted: true,
                    value: vec![],
                    write: Some(([1; 32], 4)),
                },
                ack: Some((9, [2; 32])),
            },
            RecordMsg::Stored { ack: 9 },
            RecordMsg::Fetch {
                fetch: 3,
                from: [9; 32],
                name: "n".into(),
            },
            RecordMsg::FetchReply {
                fetch: 3,
                record: None,
            },
            RecordMsg::Reply {
                req: 9,
                hops: 2,
                outcome: RecordOutcome::Refused("full".into()),
            },
        ];
        for m in msgs {
            assert_eq!(RecordMsg::decode(&m.encode()), Some(m));
        }
    }

    #[test]
    fn truncated_messages_are_rejected() {
        let m = RecordMsg::Reply {
            req: 1,
            hops: 3,
            outcome: RecordOutcome::Found {
                version: 1,
                value: b"hello".to_vec(),
            },
        };
        let b = m.encode();
        for cut in 0..b.len() {
            assert_eq!(RecordMsg::decode(&b[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn every_record_of_a_service_lives_at_the_service_key() {
        use dht::keys::{jid_key_normalised, pubsub_key, record_key};
        let room = jid_key_normalised("r#1@conference.a.test");
        let node = pubsub_key("pubsub.a.test", "news/x#2");
        let service = jid_key_normalised("conference.a.test");
        for (name, key) in [
            ("muc:r#1@conference.a.test", room),
            ("muc-hist:r#1@conference.a.test", room),
            ("muc-occ:r#1@conference.a.test#0.0", room),
            ("muc-occ:r#1@conference.a.test#12.4095", room),
            ("pubsub:pubsub.a.test/news/x#2", node),
            ("pubsub-items:pubsub.a.test/news/x#2", node),
            ("pubsub-subs:pubsub.a.test/news/x#2#3.7", node),
            ("dir:conference.a.test#5", service),
            ("plain", record_key("plain")),
        ] {
            assert_eq!(key_of(name), key, "{name}");
            assert_eq!(is_service_record(name), name != "plain", "{name}");
        }
        // An account lives at its user's key: the home node holds it.
        let alice = key_of("account:alice@a.test");
        assert_eq!(alice, jid_key_normalised("alice@a.test"));
        assert!(!is_service_record("account:alice@a.test"));
        assert_eq!(key_of("offline:alice@a.test"), alice);
        assert_eq!(key_of("roster:alice@a.test"), alice);
        assert_eq!(key_of("presence:alice@a.test"), alice);
    }

    #[test]
    fn versions_never_wrap() {
        let at = |v| Record {
            version: v,
            deleted: false,
            value: vec![],
            write: None,
        };
        assert_eq!(Record::next_version(None), Some(1));
        assert_eq!(Record::next_version(Some(&at(7))), Some(8));
        assert_eq!(Record::next_version(Some(&at(u64::MAX))), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = RecordMsg::decode(&b);
            let _ = Record::decode(&b);
        }

        #[test]
        fn supersedes_is_a_strict_total_order(
            v1 in 0u64..4, v2 in 0u64..4, d1: bool, d2: bool,
            a in proptest::collection::vec(any::<u8>(), 0..4),
            b in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let x = Record { version: v1, deleted: d1, value: a, write: None };
            let y = Record { version: v2, deleted: d2, value: b, write: None };
            prop_assert!(!(x.supersedes(&y) && y.supersedes(&x)));
            if x != y {
                prop_assert!(x.supersedes(&y) || y.supersedes(&x));
            }
        }
    }
}
