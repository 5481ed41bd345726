//! The record store in the core: clients' requests (admin API), the
//! coordinator's work at a name's responsible node, replica pushes, and the
//! sweep that restores `r` copies after membership changes. The protocol is
//! described in [`crate::records`].

use super::Core;
use super::record_fetch::FetchFor;
use crate::api::{RecordReport, RecordsReport};
use crate::records::{Record, RecordMsg, RecordOp, RecordOutcome, RecordStore, WriteId};
use bytes::Bytes;
use dht::{BounceReason, Envelope, EnvelopeKind, Key, NodeId};
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A client request without an answer this long fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Records checked per sweep (bounds the pushes one sweep can cause).
const SWEEP_BATCH: usize = 256;
/// Client requests in flight at once.
const MAX_PENDING: usize = 10_000;
/// A request without an answer is sent again after this long (doubling),
/// at most [`MAX_ATTEMPTS`] times in all: an answer can be lost with a node
/// that crashed holding it. Writes are idempotent per request (see
/// [`crate::records::WriteId`]).
const RETRY_AFTER: Duration = Duration::from_secs(2);
const MAX_ATTEMPTS: u32 = 3;
/// How long a coordinator waits for the replicas to confirm a write before
/// it answers with the confirmations it has (well under [`RETRY_AFTER`]).
const STORED_WAIT: Duration = Duration::from_secs(1);

/// What waits for a write's replicas.
enum WriteDone {
    /// A client's request: answered with the confirmations.
    Answer(CoordinatorRequest),
    /// A service's batch of outputs, held until its writes are stored (see
    /// `ServiceDriver`).
    Release(u64),
}

/// A write at its coordinator, waiting for the replicas' commits.
struct WaitingWrite {
    done: WriteDone,
    version: u64,
    pushed: usize,
    stored: usize,
    deadline: Instant,
}

/// A request at its coordinator.
#[derive(Clone)]
pub(super) struct CoordinatorRequest {
    pub(super) req: u64,
    pub(super) origin: [u8; 32],
    pub(super) hops: u8,
    pub(super) op: RecordOp,
}

struct Pending {
    op: RecordOp,
    /// The latest envelope carrying the request.
    envelope: u64,
    sent: Instant,
    /// Requests sent so far, and when the next one goes if no answer came.
    attempts: u32,
    retry_at: Instant,
    reply: oneshot::Sender<RecordReport>,
}

/// Counters of `/status` and `/metrics`.
#[derive(Default, Clone, Copy)]
pub(crate) struct RecordCounters {
    pub requests: u64,
    pub coordinated: u64,
    pub replicas_in: u64,
    pub replicas_out: u64,
    pub refused: u64,
}

pub(crate) struct Records {
    pub(super) store: RecordStore,
    replicas: usize,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    /// Per record, a hash of the replica set its copy was last pushed to.
    pushed: HashMap<String, u64>,
    cursor: Option<String>,
    /// How often a batch is checked.
    sweep_every: Duration,
    pub(super) next_sweep: Instant,
    pub(crate) counters: RecordCounters,
    /// Copies this coordinator is asking replicas for.
    pub(super) fetches: super::record_fetch::Fetches,
    /// Writes waiting for their replicas, by acknowledgement number.
    waiting_writes: HashMap<u64, WaitingWrite>,
    next_ack: u64,
}

impl Records {
    pub(crate) fn new(
        store: RecordStore,
        replicas: usize,
        sweep_every: Duration,
        now: Instant,
    ) -> Records {
        let base = store.counter_base();
        Records {
            store,
            replicas,
            pending: HashMap::new(),
            // Request numbers start at a random point, so that numbers from
            // a node's earlier life (a restart) do not match new requests.
            next_req: rand::random::<u64>() >> 1,
            pushed: HashMap::new(),
            cursor: None,
            sweep_every,
            next_sweep: now + sweep_every,
            counters: RecordCounters::default(),
            fetches: super::record_fetch::Fetches::starting_at(base),
            waiting_writes: HashMap::new(),
            // Acknowledgements from a previous life of this node must not
            // match new writes.
            next_ack: base,
        }
    }

    pub(super) fn next_deadline(&self) -> Instant {
        self.pending
            .values()
            .map(|p| (p.sent + REQUEST_TIMEOUT).min(p.retry_at))
            .chain(self.fetches.next_deadline())
            .chain(self.waiting_writes.values().map(|w| w.deadline))
            .min()
            .map_or(self.next_sweep, |t| t.min(self.next_sweep))
    }

    pub(super) fn report(&self) -> RecordsReport {
        RecordsReport {
            count: self.store.len(),
            bytes: self.store.bytes(),
            max_bytes: self.store.limits().max_store_bytes,
            replicas: self.replicas,
            requests: self.counters.requests,
            coordinated: self.counters.coordinated,
            replicas_in: self.counters.replicas_in,
            replicas_out: self.counters.replicas_out,
            refused: self.counters.refused,
        }
    }
}

/// The client's answer to `op`.
fn answer_for(op: &RecordOp, outcome: Result<RecordOutcome, String>) -> RecordReport {
    let mut r = RecordReport {
        op: match op {
            RecordOp::Put { .. } => "put",
            RecordOp::Get { .. } => "get",
            RecordOp::Delete { .. } => "delete",
        }
        .to_string(),
        name: op.name().to_string(),
        ..RecordReport::default()
    };
    match outcome {
        Ok(RecordOutcome::Written { version, replicas }) => {
            r.ok = true;
            r.found = true;
            r.version = Some(version);
            r.replicas = Some(replicas);
        }
        Ok(RecordOutcome::Found { version, value }) => {
            r.ok = true;
            r.found = true;
            r.version = Some(version);
            r.value = Some(String::from_utf8_lossy(&value).into_owned());
        }
        Ok(RecordOutcome::NotFound) => r.ok = true,
        Ok(RecordOutcome::Refused(e)) | Err(e) => r.error = Some(e),
    }
    r
}

fn set_hash(ids: &[NodeId]) -> u64 {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let mut h = DefaultHasher::new();
    sorted.hash(&mut h);
    h.finish()
}

impl Core {
    /// The nodes that should hold `key`'s record as this node sees the ring:
    /// the `r` closest live, responsibility-taking nodes, itself included
    /// when it is among them.
    pub(super) fn replica_set(&self, key: &Key) -> Vec<NodeId> {
        let r = self.records.replicas;
        let mut ids: Vec<NodeId> = self
            .node
            .table()
            .closest(key, r, |e| {
                e.failures == 0 && e.contact.role.takes_responsibility()
            })
            .into_iter()
            .map(|c| c.id)
            .collect();
        if self.node.contact().role.takes_responsibility() {
            ids.push(self.node.id());
        }
        ids.sort_by_key(|id| id.distance(key));
        ids.truncate(r);
        ids
    }

    /// A client's request from the admin API.
    pub(super) fn record_request(
        &mut self,
        now: Instant,
        op: RecordOp,
        local: bool,
        reply: oneshot::Sender<RecordReport>,
    ) {
        if local {
            // This node's own copy, without asking the ring (operators and
            // tests checking where the copies are).
            let outcome = match self.records.store.get(op.name()) {
                Ok(Some(c)) if !c.deleted => Ok(RecordOutcome::Found {
                    version: c.version,
                    value: c.value,
                }),
                Ok(_) => Ok(RecordOutcome::NotFound),
                Err(e) => Err(e.to_string()),
            };
            let _ = reply.send(answer_for(&op, outcome));
            return;
        }
        self.records.counters.requests += 1;
        if crate::records::is_service_record(op.name()) && !matches!(op, RecordOp::Get { .. }) {
            let _ = reply.send(answer_for(
                &op,
                Err("records of rooms and PubSub nodes are written by their service only".into()),
            ));
            return;
        }
        let local_check = match &op {
            RecordOp::Put { name, value } => self.records.store.check(
                name,
                &Record {
                    version: 0,
                    deleted: false,
                    value: value.clone(),
                    write: None,
                },
            ),
            other => self.records.store.check(
                other.name(),
                &Record {
                    version: 0,
                    deleted: true,
                    value: vec![],
                    write: None,
                },
            ),
        };
        // Only the per-record limits: this node's fill level is not the
        // coordinator's.
        if let Err(
            e @ (crate::records::StoreError::TooLarge { .. } | crate::records::StoreError::BadName),
        ) = local_check
        {
            let _ = reply.send(answer_for(&op, Err(e.to_string())));
            return;
        }
        if self.records.pending.len() >= MAX_PENDING {
            let _ = reply.send(answer_for(
                &op,
                Err("too many record requests in flight".into()),
            ));
            return;
        }
        let req = self.records.next_req;
        self.records.next_req += 1;
        match self.send_request(now, req, &op) {
            Ok(envelope) => {
                tracing::debug!(req, envelope, "record request sent");
                self.records.pending.insert(
                    req,
                    Pending {
                        op,
                        envelope,
                        sent: now,
                        attempts: 1,
                        retry_at: now + RETRY_AFTER,
                        reply,
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(answer_for(
                    &op,
                    Err(format!("cannot route the request: {e}")),
                ));
            }
        }
    }

    /// Routes request `req` to the coordinator of `op`'s record; returns
    /// the envelope's id.
    fn send_request(
        &mut self,
        now: Instant,
        req: u64,
        op: &RecordOp,
    ) -> Result<u64, dht::RouteError> {
        let msg = RecordMsg::Request {
            req,
            origin: *self.node.id().as_bytes(),
            op: op.clone(),
        };
        let key = crate::records::key_of(op.name());
        self.node.route(
            now,
            key,
            EnvelopeKind::Record,
            Bytes::from(msg.encode()),
            false,
        )
    }

    /// A `Record` envelope delivered here.
    pub(super) fn on_record_envelope(&mut self, now: Instant, env: Envelope) {
        let Some(msg) = RecordMsg::decode(&env.payload) else {
            tracing::warn!("undecodable record message");
            return;
        };
        match msg {
            RecordMsg::Request { req, origin, op } => {
                tracing::debug!(req, origin = %Key::from_bytes(origin).short(), hops = env.hops, "record request to coordinate");
                self.records.counters.coordinated += 1;
                let request = CoordinatorRequest {
                    req,
                    origin,
                    hops: env.hops,
                    op,
                };
                // Without a copy of its own, this node may have just become
                // responsible for the key: ask the replicas first.
                let name = request.op.name().to_string();
                if matches!(self.records.store.get(&name), Ok(None))
                    && self.start_fetch(now, &name, FetchFor::Request(request.clone()))
                {
                    return;
                }
                self.answer_request(now, request);
            }
            RecordMsg::Fetch { fetch, from, name } => self.on_fetch(now, fetch, from, &name),
            RecordMsg::FetchReply { fetch, record } => {
                if env.key == self.node.id() {
                    self.on_fetch_reply(now, fetch, record);
                }
            }
            RecordMsg::Stored { ack } => {
                if env.key == self.node.id() {
                    self.on_stored(now, ack);
                }
            }
            RecordMsg::Replicate { name, record, ack } => {
                match self.records.store.apply(&name, &record) {
                    Ok(changed) => {
                        self.records.counters.replicas_in += 1;
                        // Committed (or superseded by the copy held here).
                        if let Some((ack, coordinator)) = ack
                            && let Err(e) = self.node.route(
                                now,
                                Key::from_bytes(coordinator),
                                EnvelopeKind::Record,
                                Bytes::from(RecordMsg::Stored { ack }.encode()),
                                false,
                            )
                        {
                            tracing::debug!("cannot acknowledge a replica: {e}");
                        }
                        if changed {
                            // The sender pushed to the set it sees; do not echo
                            // the copy back unless the set changes later.
                            let set = self.replica_set(&crate::records::key_of(&name));
                            self.records.pushed.insert(name, set_hash(&set));
                        }
                    }
                    Err(e) => {
                        self.records.counters.refused += 1;
                        tracing::warn!(%name, "replica refused: {e}");
                    }
                }
            }
            RecordMsg::Reply { req, hops, outcome } => {
                // A reply is addressed to the requesting node's id. After a
                // reroute it can end at a neighbour of a node that left or
                // was unreachable; that neighbour must not take it for an
                // answer to its own request with the same number.
                if env.key == self.node.id() {
                    self.on_record_reply(req, hops, outcome);
                } else {
                    tracing::debug!(req, to = %env.key.short(), "record reply for another node");
                }
            }
        }
    }

    /// Coordinates `r` and answers its origin: a read at once, a write
    /// once the replicas have committed their copies (or after
    /// [`STORED_WAIT`] with the confirmations that came).
    pub(super) fn answer_request(&mut self, now: Instant, r: CoordinatorRequest) {
        let write = !matches!(r.op, RecordOp::Get { .. });
        let ack = self.records.next_ack;
        self.records.next_ack = self.records.next_ack.wrapping_add(1);
        let outcome = self.coordinate(now, &r.op, (r.origin, r.req), write.then_some(ack));
        if write && self.wait_for_replicas(now, ack, &outcome, WriteDone::Answer(r.clone())) {
            return;
        }
        self.send_answer(now, r, outcome);
    }

    /// After a write with acknowledgement number `ack`: when copies were
    /// pushed, `done` waits for the replicas' confirmations (true).
    fn wait_for_replicas(
        &mut self,
        now: Instant,
        ack: u64,
        outcome: &RecordOutcome,
        done: WriteDone,
    ) -> bool {
        let RecordOutcome::Written { version, replicas } = *outcome else {
            return false;
        };
        if replicas == 0 || self.records.waiting_writes.len() >= MAX_PENDING {
            return false;
        }
        self.records.waiting_writes.insert(
            ack,
            WaitingWrite {
                done,
                version,
                pushed: replicas,
                stored: 0,
                deadline: now + STORED_WAIT,
            },
        );
        true
    }

    /// A service's write, as its records' coordinator: `Ok(true)` when
    /// batch `batch` must wait for the replicas to confirm it, `Err` with
    /// the reason when the store refused it.
    pub(super) fn service_write(
        &mut self,
        now: Instant,
        op: &RecordOp,
        write: WriteId,
        batch: u64,
    ) -> Result<bool, String> {
        let ack = self.records.next_ack;
        self.records.next_ack = self.records.next_ack.wrapping_add(1);
        let outcome = self.coordinate(now, op, write, Some(ack));
        if let RecordOutcome::Refused(e) = &outcome {
            tracing::error!(name = op.name(), "service state not stored: {e}");
            return Err(e.clone());
        }
        Ok(self.wait_for_replicas(now, ack, &outcome, WriteDone::Release(batch)))
    }

    /// A replica confirmed a copy.
    fn on_stored(&mut self, now: Instant, ack: u64) {
        let Some(w) = self.records.waiting_writes.get_mut(&ack) else {
            return;
        };
        w.stored += 1;
        if w.stored >= w.pushed
            && let Some(w) = self.records.waiting_writes.remove(&ack)
        {
            self.finish_write(now, w);
        }
    }

    fn finish_write(&mut self, now: Instant, w: WaitingWrite) {
        match w.done {
            WriteDone::Answer(request) => {
                let outcome = RecordOutcome::Written {
                    version: w.version,
                    replicas: w.stored,
                };
                self.send_answer(now, request, outcome);
            }
            WriteDone::Release(batch) => self.write_stored(now, batch),
        }
    }

    /// Sends `outcome` to the request's origin.
    fn send_answer(&mut self, now: Instant, r: CoordinatorRequest, outcome: RecordOutcome) {
        let origin = Key::from_bytes(r.origin);
        if origin == self.node.id() {
            self.on_record_reply(r.req, r.hops, outcome);
            return;
        }
        let reply = RecordMsg::Reply {
            req: r.req,
            hops: r.hops,
            outcome,
        };
        if let Err(e) = self.node.route(
            now,
            origin,
            EnvelopeKind::Record,
            Bytes::from(reply.encode()),
            false,
        ) {
            tracing::warn!("cannot send a record reply: {e}");
        }
    }

    fn on_record_reply(&mut self, req: u64, hops: u8, outcome: RecordOutcome) {
        tracing::debug!(
            req,
            pending = self.records.pending.contains_key(&req),
            "record reply"
        );
        if let Some(p) = self.records.pending.remove(&req) {
            let mut r = answer_for(&p.op, Ok(outcome));
            r.hops = Some(hops);
            r.attempts = p.attempts;
            let _ = p.reply.send(r);
        }
    }

    /// The coordinator's side of a request.
    /// `ack`: the number replicas acknowledge a client's write with.
    fn coordinate(
        &mut self,
        now: Instant,
        op: &RecordOp,
        write: WriteId,
        ack: Option<u64>,
    ) -> RecordOutcome {
        let name = op.name();
        let current = match self.records.store.get(name) {
            Ok(c) => c,
            Err(e) => return RecordOutcome::Refused(e.to_string()),
        };
        // A retry (or a rerouted duplicate) of a write that already happened:
        // the same answer, and the copies pushed again in case they were lost.
        if !matches!(op, RecordOp::Get { .. })
            && let Some(c) = current.as_ref().filter(|c| c.write == Some(write))
        {
            let set = self.replica_set(&crate::records::key_of(name));
            let replicas = self.push_copies(now, name, c, &set, ack);
            return RecordOutcome::Written {
                version: c.version,
                replicas,
            };
        }
        let Some(next) = Record::next_version(current.as_ref()) else {
            self.records.counters.refused += 1;
            return RecordOutcome::Refused(format!("record {name:?} has no versions left"));
        };
        let record = match op {
            RecordOp::Get { .. } => {
                return match current {
                    Some(c) if !c.deleted => RecordOutcome::Found {
                        version: c.version,
                        value: c.value,
                    },
                    _ => RecordOutcome::NotFound,
                };
            }
            RecordOp::Delete { .. } if current.as_ref().is_none_or(|c| c.deleted) => {
                return RecordOutcome::NotFound;
            }
            RecordOp::Delete { .. } => Record {
                version: next,
                deleted: true,
                value: Vec::new(),
                write: Some(write),
            },
            RecordOp::Put { value, .. } => Record {
                version: next,
                deleted: false,
                value: value.clone(),
                write: Some(write),
            },
        };
        if let Err(e) = self.records.store.apply(name, &record) {
            self.records.counters.refused += 1;
            return RecordOutcome::Refused(e.to_string());
        }
        let set = self.replica_set(&crate::records::key_of(name));
        let replicas = self.push_copies(now, name, &record, &set, ack);
        self.records.pushed.insert(name.to_string(), set_hash(&set));
        RecordOutcome::Written {
            version: record.version,
            replicas,
        }
    }

    /// Pushes `record` to every member of `set` but this node.
    fn push_copies(
        &mut self,
        now: Instant,
        name: &str,
        record: &Record,
        set: &[NodeId],
        ack: Option<u64>,
    ) -> usize {
        let me = self.node.id();
        let payload = Bytes::from(
            RecordMsg::Replicate {
                name: name.to_string(),
                record: record.clone(),
                ack: ack.map(|a| (a, *me.as_bytes())),
            }
            .encode(),
        );
        let mut n = 0;
        for id in set.iter().filter(|id| **id != me) {
            match self
                .node
                .route(now, *id, EnvelopeKind::Record, payload.clone(), false)
            {
                Ok(_) => n += 1,
                Err(e) => tracing::debug!("cannot push a replica: {e}"),
            }
        }
        self.records.counters.replicas_out += n as u64;
        n
    }

    /// A `Record` envelope of ours came back.
    pub(super) fn on_record_bounced(&mut self, reason: BounceReason, env: &Envelope) {
        let Some(req) = self
            .records
            .pending
            .iter()
            .find(|(_, p)| p.envelope == env.id)
            .map(|(r, _)| *r)
        else {
            return;
        };
        if let Some(p) = self.records.pending.remove(&req) {
            let _ = p.reply.send(answer_for(
                &p.op,
                Err(format!(
                    "the request could not be delivered ({})",
                    reason.xmpp_condition()
                )),
            ));
        }
    }

    /// Timeouts of client requests and one sweep batch.
    pub(super) fn on_record_timers(&mut self, now: Instant) {
        self.on_fetch_timers(now);
        let late: Vec<u64> = self
            .records
            .waiting_writes
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(a, _)| *a)
            .collect();
        for ack in late {
            if let Some(w) = self.records.waiting_writes.remove(&ack) {
                tracing::debug!(
                    stored = w.stored,
                    pushed = w.pushed,
                    "write answered without every replica"
                );
                self.finish_write(now, w);
            }
        }
        let expired: Vec<u64> = self
            .records
            .pending
            .iter()
            .filter(|(_, p)| now >= p.sent + REQUEST_TIMEOUT)
            .map(|(r, _)| *r)
            .collect();
        for req in expired {
            if let Some(p) = self.records.pending.remove(&req) {
                let _ = p
                    .reply
                    .send(answer_for(&p.op, Err("no answer within 10 s".into())));
            }
        }
        let retries: Vec<(u64, RecordOp)> = self
            .records
            .pending
            .iter()
            .filter(|(_, p)| now >= p.retry_at && p.attempts < MAX_ATTEMPTS)
            .map(|(r, p)| (*r, p.op.clone()))
            .collect();
        for (req, op) in retries {
            let sent = self.send_request(now, req, &op);
            if let Some(p) = self.records.pending.get_mut(&req) {
                p.attempts += 1;
                p.retry_at = if p.attempts >= MAX_ATTEMPTS {
                    p.sent + REQUEST_TIMEOUT
                } else {
                    now + RETRY_AFTER * p.attempts
                };
                if let Ok(envelope) = sent {
                    tracing::debug!(req, attempt = p.attempts, "record request sent again");
                    p.envelope = envelope;
                }
            }
        }
        if now < self.records.next_sweep {
            return;
        }
        self.records.next_sweep = now + self.records.sweep_every;
        if !self.node.is_joined() {
            return;
        }
        self.check_service_hosts(now);
        let names = self
            .records
            .store
            .names_after(self.records.cursor.as_deref(), SWEEP_BATCH);
        self.records.cursor = if names.len() < SWEEP_BATCH {
            None
        } else {
            names.last().cloned()
        };
        for name in names {
            let set = self.replica_set(&crate::records::key_of(&name));
            let h = set_hash(&set);
            if self.records.pushed.get(&name) == Some(&h) {
                continue;
            }
            let Ok(Some(record)) = self.records.store.get(&name) else {
                continue;
            };
            self.push_copies(now, &name, &record, &set, None);
            self.records.pushed.insert(name, h);
        }
    }
}
