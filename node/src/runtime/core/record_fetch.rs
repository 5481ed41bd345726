//! Fetch before answering: a coordinator that holds no copy of a record
//! asks the other nodes of the record's replica set for theirs, keeps the
//! copy that supersedes the others, and only then answers the request.
//!
//! Why: the node responsible for a key changes when a closer node joins.
//! The newcomer holds nothing until the re-replication sweep of the old
//! replicas reaches that record; without this, it would answer "not found"
//! to reads, and give a write version 1, which would then lose against the
//! replicas' higher versions: a lost write reported as stored.

use super::Core;
use super::records::CoordinatorRequest;
use crate::records::{Record, RecordMsg};
use bytes::Bytes;
use dht::{EnvelopeKind, Key};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a coordinator waits for the replicas' copies.
const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);
/// Fetches in progress at once; past it, requests are answered from what
/// this node holds.
const MAX_FETCHES: usize = 1024;

/// What waits for a fetch.
pub(super) enum FetchFor {
    /// A client's request at its coordinator.
    Request(CoordinatorRequest),
    /// A service loading a room's or node's state (the entity's name).
    Service(String),
}

struct Fetch {
    name: String,
    then: FetchFor,
    waiting: usize,
    best: Option<Record>,
    deadline: Instant,
}

/// The fetches a coordinator has in progress.
pub(crate) struct Fetches {
    by_id: HashMap<u64, Fetch>,
    next_id: u64,
}

impl Fetches {
    /// Fetch numbers from `base` on (see `RecordStore::counter_base`).
    pub(super) fn starting_at(base: u64) -> Fetches {
        Fetches {
            by_id: HashMap::new(),
            next_id: base,
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.by_id.values().map(|f| f.deadline).min()
    }
}

impl Core {
    /// Asks the replicas for their copies; false when there is nobody to
    /// ask (or too much in progress), and the request is answered at once.
    pub(super) fn start_fetch(&mut self, now: Instant, name: &str, then: FetchFor) -> bool {
        if self.records.fetches.by_id.len() >= MAX_FETCHES {
            return false;
        }
        let name = name.to_string();
        let me = self.node.id();
        let others: Vec<Key> = self
            .replica_set(&crate::records::key_of(&name))
            .into_iter()
            .filter(|id| *id != me)
            .collect();
        if others.is_empty() {
            return false;
        }
        let f = &mut self.records.fetches;
        f.next_id = f.next_id.wrapping_add(1);
        let id = f.next_id;
        let payload = Bytes::from(
            RecordMsg::Fetch {
                fetch: id,
                from: *me.as_bytes(),
                name: name.clone(),
            }
            .encode(),
        );
        let mut sent = 0;
        for other in others {
            if self
                .node
                .route(now, other, EnvelopeKind::Record, payload.clone(), false)
                .is_ok()
            {
                sent += 1;
            }
        }
        if sent == 0 {
            return false;
        }
        self.records.fetches.by_id.insert(
            id,
            Fetch {
                name,
                then,
                waiting: sent,
                best: None,
                deadline: now + FETCH_TIMEOUT,
            },
        );
        true
    }

    /// A coordinator asks for this node's copy.
    pub(super) fn on_fetch(&mut self, now: Instant, fetch: u64, from: [u8; 32], name: &str) {
        let record = self.records.store.get(name).ok().flatten();
        let reply = RecordMsg::FetchReply { fetch, record };
        if let Err(e) = self.node.route(
            now,
            Key::from_bytes(from),
            EnvelopeKind::Record,
            Bytes::from(reply.encode()),
            false,
        ) {
            tracing::debug!("cannot answer a record fetch: {e}");
        }
    }

    /// A replica's copy arrived.
    pub(super) fn on_fetch_reply(&mut self, now: Instant, fetch: u64, record: Option<Record>) {
        let Some(f) = self.records.fetches.by_id.get_mut(&fetch) else {
            return;
        };
        if let Some(r) = record
            && f.best.as_ref().is_none_or(|b| r.supersedes(b))
        {
            f.best = Some(r);
        }
        f.waiting = f.waiting.saturating_sub(1);
        if f.waiting == 0 {
            self.finish_fetch(now, fetch);
        }
    }

    /// Fetches whose replicas did not all answer in time finish with what
    /// came.
    pub(super) fn on_fetch_timers(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .records
            .fetches
            .by_id
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.finish_fetch(now, id);
        }
    }

    fn finish_fetch(&mut self, now: Instant, id: u64) {
        let Some(f) = self.records.fetches.by_id.remove(&id) else {
            return;
        };
        if let Some(best) = &f.best
            && let Err(e) = self.records.store.apply(&f.name, best)
        {
            tracing::warn!(name = f.name, "cannot keep a fetched copy: {e}");
        }
        match f.then {
            FetchFor::Request(r) => self.answer_request(now, r),
            FetchFor::Service(entity) => self.service_fetch_done(&entity),
        }
    }
}
