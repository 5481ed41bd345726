//! The record store of one node as a state machine: the requests of its
//! clients, its work as the coordinator of the names it is responsible for,
//! its copies as a replica, and the sweep that restores `r` copies after
//! membership changes.
//!
//! Inputs: [`Replicator::request`] (a client's operation, routed to the
//! name's coordinator), [`Replicator::write_local`] and
//! [`Replicator::load`] (a service writing or loading its own records, as
//! their coordinator), [`Replicator::handle_message`] (a `Record`
//! envelope delivered here), [`Replicator::handle_bounce`] (one of ours
//! came back), [`Replicator::handle_timeout`]. Outputs
//! ([`Replicator::poll_output`]): messages to route, answers to clients,
//! confirmations of local writes, finished loads. `now` is passed in and
//! the ring is seen through [`Ring`], so the node, the simulator and the
//! tests drive the same code.

#[cfg(test)]
mod tests;

use crate::store::{Backend, Store, StoreError, StoreLimits};
use crate::{Record, RecordMsg, RecordOp, RecordOutcome, Ring, WriteId, key_of};
use dht::{Key, NodeId};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// The replicator's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Copies of each record, the coordinator's included.
    pub replicas: usize,
    /// A batch of records is checked for changed replica sets this often.
    pub sweep_every: Duration,
    /// Records checked per sweep (bounds the pushes one sweep can cause).
    pub sweep_batch: usize,
    /// A client request without an answer this long fails.
    pub request_timeout: Duration,
    /// A request without an answer is sent again after this long (then
    /// twice that), at most `max_attempts` times in all: an answer can be
    /// lost with a node that crashed holding it. Writes are idempotent per
    /// request (see [`WriteId`]).
    pub retry_after: Duration,
    /// See `retry_after`.
    pub max_attempts: u32,
    /// How long a coordinator waits for the replicas to confirm a write
    /// before it answers with the confirmations it has.
    pub stored_wait: Duration,
    /// How long a coordinator without a copy waits for the replicas'.
    pub fetch_timeout: Duration,
    /// Client requests in flight at once.
    pub max_pending: usize,
    /// Fetches in flight at once; past it, requests are answered from what
    /// this node holds.
    pub max_fetches: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            replicas: 3,
            sweep_every: Duration::from_secs(1),
            sweep_batch: 256,
            request_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(2),
            max_attempts: 3,
            stored_wait: Duration::from_secs(1),
            fetch_timeout: Duration::from_millis(1500),
            max_pending: 10_000,
            max_fetches: 1024,
        }
    }
}

/// Why a client's request has no outcome from a coordinator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Clients may read service records, not write them.
    #[error("records of rooms and PubSub nodes are written by their service only")]
    ServiceRecord,
    /// The request breaks this node's store limits (checked before
    /// sending).
    #[error(transparent)]
    Limits(#[from] StoreError),
    /// [`Config::max_pending`] requests are in flight.
    #[error("too many record requests in flight")]
    Busy,
    /// The ring could not deliver it (the dht's RFC 6120 condition).
    #[error("the request could not be delivered ({0})")]
    Undelivered(String),
    /// No coordinator answered in time, after every retry.
    #[error("no answer within {0} s")]
    Timeout(u64),
}

/// The end of a client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// What was asked.
    pub op: RecordOp,
    /// The coordinator's outcome, or why there is none.
    pub outcome: Result<RecordOutcome, RequestError>,
    /// Hops the request took to the coordinator.
    pub hops: Option<u8>,
    /// Requests sent (retries included).
    pub attempts: u32,
}

/// What the driver is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Route `msg` (a `Record` envelope) to the node responsible for `to`:
    /// a record's key, or a node's id.
    Route {
        /// The key.
        to: Key,
        /// The message.
        msg: RecordMsg,
    },
    /// A request of client `client` finished.
    Answer {
        /// The tag the client gave [`Replicator::request`].
        client: u64,
        /// The answer.
        answer: Answer,
    },
    /// A local write (token from [`Replicator::write_local`]) is confirmed
    /// by its replicas, or waited for them long enough.
    Confirmed {
        /// Its token.
        token: u64,
    },
    /// A load (token from [`Replicator::load`]) has fetched what it could:
    /// the store holds the best copies found.
    Loaded {
        /// Its token.
        token: u64,
    },
}

/// What became of a local write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalWrite {
    /// Stored here and pushed; [`Output::Confirmed`] follows.
    Waiting,
    /// Stored here, nobody else to wait for.
    Done,
    /// Not stored: the reason.
    Refused(String),
}

/// Counters of `/status`, `/metrics` and the simulator.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Client requests started here.
    pub requests: u64,
    /// Requests coordinated here.
    pub coordinated: u64,
    /// Copies received as a replica.
    pub replicas_in: u64,
    /// Copies pushed to replicas.
    pub replicas_out: u64,
    /// Bytes of copies pushed by the re-replication sweep.
    pub sweep_bytes: u64,
    /// Writes refused (limits, storage).
    pub refused: u64,
}

/// A request at its coordinator.
#[derive(Clone, Debug)]
struct CoordinatorRequest {
    req: u64,
    origin: [u8; 32],
    hops: u8,
    op: RecordOp,
}

/// A client's request in flight.
struct Pending {
    op: RecordOp,
    client: u64,
    sent: Instant,
    attempts: u32,
    retry_at: Instant,
}

/// Who waits for a coordinator's write.
enum WriteDone {
    /// A client's request: answered with the confirmations.
    Answer(CoordinatorRequest),
    /// A local write: confirmed to the driver.
    Local(u64),
}

/// A write at its coordinator, waiting for the replicas' commits.
struct WaitingWrite {
    done: WriteDone,
    version: u64,
    pushed: usize,
    stored: usize,
    deadline: Instant,
}

/// What waits for a fetch.
enum FetchFor {
    /// A client's request at its coordinator.
    Request(CoordinatorRequest),
    /// A load (its token).
    Load(u64),
}

struct Fetch {
    name: String,
    then: FetchFor,
    waiting: usize,
    best: Option<Record>,
    deadline: Instant,
}

/// The replicated record store of one node (see the module docs).
pub struct Replicator<B> {
    cfg: Config,
    /// This node's id: where answers to its requests go.
    me: NodeId,
    store: Store<B>,
    counters: Counters,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    waiting_writes: HashMap<u64, WaitingWrite>,
    next_ack: u64,
    fetches: HashMap<u64, Fetch>,
    next_fetch: u64,
    /// Loads waiting for fetches: token -> fetches left.
    loads: HashMap<u64, usize>,
    /// Numbers local writes (with this node's id, their write id).
    next_local: u64,
    /// Per record, a hash of the replica set its copy was last pushed to.
    pushed: HashMap<String, u64>,
    cursor: Option<String>,
    next_sweep: Instant,
    out: VecDeque<Output>,
}

fn set_hash(ids: &[NodeId]) -> u64 {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let mut h = DefaultHasher::new();
    sorted.hash(&mut h);
    h.finish()
}

/// Why a client may not do `op`: the records of rooms, PubSub nodes and
/// registries are written by their service only (through
/// [`Replicator::write_local`] at their host).
fn client_may_not(op: &RecordOp) -> Option<&'static str> {
    (crate::is_service_record(op.name()) && !matches!(op, RecordOp::Get { .. }))
        .then_some("records of rooms and PubSub nodes are written by their service only")
}

/// The outcome the limits give `op` before it is sent anywhere.
fn check_limits<B: Backend>(store: &Store<B>, op: &RecordOp) -> Result<(), StoreError> {
    let probe = match op {
        RecordOp::Put { value, .. } | RecordOp::Create { value, .. } => Record {
            version: 0,
            deleted: false,
            value: value.clone(),
            write: None,
        },
        _ => Record {
            version: 0,
            deleted: true,
            value: vec![],
            write: None,
        },
    };
    match store.check(op.name(), &probe) {
        // Only the per-record limits: this node's fill level is not the
        // coordinator's.
        Err(e @ (StoreError::TooLarge { .. } | StoreError::BadName)) => Err(e),
        _ => Ok(()),
    }
}

impl<B: Backend> Replicator<B> {
    /// A replicator over `backend`. Its counters (request, acknowledgement,
    /// fetch and local write numbers) start at the store's counter base,
    /// so a node restarted with the same id never repeats one.
    pub fn new(
        cfg: Config,
        me: NodeId,
        backend: B,
        limits: StoreLimits,
        now: Instant,
    ) -> Result<Replicator<B>, StoreError> {
        let store = Store::new(backend, limits)?;
        let base = store.counter_base();
        Ok(Replicator {
            next_sweep: now + cfg.sweep_every,
            cfg,
            me,
            store,
            counters: Counters::default(),
            pending: HashMap::new(),
            next_req: base,
            waiting_writes: HashMap::new(),
            next_ack: base,
            fetches: HashMap::new(),
            next_fetch: base,
            loads: HashMap::new(),
            next_local: base,
            pushed: HashMap::new(),
            cursor: None,
            out: VecDeque::new(),
        })
    }

    /// This node's copies.
    pub fn store(&self) -> &Store<B> {
        &self.store
    }

    /// Makes this node's writes so far durable; call it before routing the
    /// outputs that report them (see [`Backend::commit`]).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.store.commit()
    }

    /// The parameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Gives the store back (a restart in tests and the simulator).
    pub fn into_store(self) -> Store<B> {
        self.store
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether something waits in [`Replicator::poll_output`].
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// When [`Replicator::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| (p.sent + self.cfg.request_timeout).min(p.retry_at))
            .chain(self.fetches.values().map(|f| f.deadline))
            .chain(self.waiting_writes.values().map(|w| w.deadline))
            .chain(std::iter::once(self.next_sweep))
            .min()
    }

    /// Client requests in flight.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// A client's operation: routed to the name's coordinator; the answer
    /// comes back as [`Output::Answer`] with `client`. Refused at once
    /// (`Err`) when it breaks a per-record limit or too much is in flight.
    pub fn request(&mut self, now: Instant, op: RecordOp, client: u64) -> Result<(), Answer> {
        self.counters.requests += 1;
        let refuse = |op: RecordOp, why: RequestError| Answer {
            op,
            outcome: Err(why),
            hops: None,
            attempts: 0,
        };
        if client_may_not(&op).is_some() {
            return Err(refuse(op, RequestError::ServiceRecord));
        }
        if let Err(e) = check_limits(&self.store, &op) {
            return Err(refuse(op, e.into()));
        }
        if self.pending.len() >= self.cfg.max_pending {
            return Err(refuse(op, RequestError::Busy));
        }
        let req = self.next_req;
        self.next_req += 1;
        self.send_request(req, &op);
        self.pending.insert(
            req,
            Pending {
                op,
                client,
                sent: now,
                attempts: 1,
                retry_at: now + self.cfg.retry_after,
            },
        );
        Ok(())
    }

    /// Routes request `req` to the coordinator of `op`'s record.
    fn send_request(&mut self, req: u64, op: &RecordOp) {
        self.out.push_back(Output::Route {
            to: key_of(op.name()),
            msg: RecordMsg::Request {
                req,
                origin: *self.me.as_bytes(),
                op: op.clone(),
            },
        });
    }

    /// A write by this node as the coordinator of `op`'s record (a
    /// service's own state). Stored and pushed at once; see [`LocalWrite`].
    pub fn write_local(
        &mut self,
        now: Instant,
        ring: &impl Ring,
        op: &RecordOp,
        token: u64,
    ) -> LocalWrite {
        self.next_local += 1;
        let write = (*ring.me().as_bytes(), self.next_local);
        let ack = self.next_ack();
        match self.coordinate(ring, op, write, Some(ack)) {
            RecordOutcome::Refused(e) => LocalWrite::Refused(e),
            outcome => {
                if self.wait_for_replicas(now, ack, &outcome, WriteDone::Local(token)) {
                    LocalWrite::Waiting
                } else {
                    LocalWrite::Done
                }
            }
        }
    }

    /// Makes sure this node holds the best copies of `names` before a
    /// service loads them: those it has no copy of are fetched from the
    /// other replicas. Returns false when nothing needs fetching (the store
    /// is ready now); otherwise [`Output::Loaded`] with `token` follows.
    pub fn load(&mut self, now: Instant, ring: &impl Ring, names: &[String], token: u64) -> bool {
        let mut fetching = 0;
        let missing: Vec<&String> = names.iter().filter(|n| !self.store.contains(n)).collect();
        for name in missing {
            if self.start_fetch(now, ring, name, FetchFor::Load(token)) {
                fetching += 1;
            }
        }
        if fetching > 0 {
            self.loads.insert(token, fetching);
        }
        fetching > 0
    }

    /// A `Record` envelope for key `key` delivered here (this node is
    /// responsible for the key), having taken `hops` hops.
    pub fn handle_message(
        &mut self,
        now: Instant,
        ring: &impl Ring,
        key: Key,
        hops: u8,
        msg: RecordMsg,
    ) {
        let me = ring.me();
        match msg {
            RecordMsg::Request { req, origin, op } => {
                self.counters.coordinated += 1;
                let request = CoordinatorRequest {
                    req,
                    origin,
                    hops,
                    op,
                };
                // Without a copy of its own, this node may have just become
                // responsible for the key: ask the replicas first.
                if let Some(why) = client_may_not(&request.op) {
                    return self.send_answer(ring, request, RecordOutcome::Refused(why.into()));
                }
                let name = request.op.name().to_string();
                if !self.store.contains(&name)
                    && self.start_fetch(now, ring, &name, FetchFor::Request(request.clone()))
                {
                    return;
                }
                self.answer_request(now, ring, request);
            }
            RecordMsg::Fetch { fetch, from, name } => {
                let record = self.store.get(&name).ok().flatten();
                self.out.push_back(Output::Route {
                    to: Key::from_bytes(from),
                    msg: RecordMsg::FetchReply { fetch, record },
                });
            }
            // Answers are addressed to a node's id; after a reroute one can
            // end at a neighbour of a node that left, which must not take
            // it for its own.
            RecordMsg::FetchReply { fetch, record } if key == me => {
                self.on_fetch_reply(now, ring, fetch, record)
            }
            RecordMsg::Stored { ack } if key == me => self.on_stored(now, ring, ack),
            RecordMsg::Reply { req, hops, outcome } if key == me => {
                self.on_reply(req, hops, outcome)
            }
            RecordMsg::FetchReply { .. } | RecordMsg::Stored { .. } | RecordMsg::Reply { .. } => {}
            RecordMsg::Replicate { name, record, ack } => match self.store.apply(&name, &record) {
                Ok(changed) => {
                    self.counters.replicas_in += 1;
                    // Committed (or superseded by the copy held here).
                    if let Some((ack, coordinator)) = ack {
                        self.out.push_back(Output::Route {
                            to: Key::from_bytes(coordinator),
                            msg: RecordMsg::Stored { ack },
                        });
                    }
                    if changed {
                        // The sender pushed to the set it sees; do not echo
                        // the copy back unless the set changes later.
                        let set = ring.replica_set(&key_of(&name), self.cfg.replicas);
                        self.pushed.insert(name, set_hash(&set));
                    }
                }
                Err(_) => self.counters.refused += 1,
            },
        }
    }

    /// One of this node's `Record` envelopes came back undelivered (or
    /// could not be routed at all): `why` says why.
    pub fn handle_bounce(&mut self, msg: &RecordMsg, why: &str) {
        if let RecordMsg::Request { req, .. } = msg
            && let Some(p) = self.pending.remove(req)
        {
            self.out.push_back(Output::Answer {
                client: p.client,
                answer: Answer {
                    op: p.op,
                    outcome: Err(RequestError::Undelivered(why.to_string())),
                    hops: None,
                    attempts: p.attempts,
                },
            });
        }
    }

    /// A contact stopped answering (or the node's view changed otherwise):
    /// replica sets that held it have changed, so the sweep runs now
    /// rather than at its next turn. Bursts of changes coalesce into one
    /// sweep.
    pub fn handle_membership(&mut self, now: Instant) {
        self.next_sweep = self.next_sweep.min(now);
    }

    /// Timers: fetches, writes waiting for replicas, client requests
    /// (retries and timeouts), and one sweep batch when it is due.
    pub fn handle_timeout(&mut self, now: Instant, ring: &impl Ring) {
        let due: Vec<u64> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.finish_fetch(now, ring, id);
        }
        let late: Vec<u64> = self
            .waiting_writes
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(a, _)| *a)
            .collect();
        for ack in late {
            if let Some(w) = self.waiting_writes.remove(&ack) {
                self.finish_write(ring, w);
            }
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.sent + self.cfg.request_timeout)
            .map(|(r, _)| *r)
            .collect();
        for req in expired {
            if let Some(p) = self.pending.remove(&req) {
                self.out.push_back(Output::Answer {
                    client: p.client,
                    answer: Answer {
                        op: p.op,
                        outcome: Err(RequestError::Timeout(self.cfg.request_timeout.as_secs())),
                        hops: None,
                        attempts: p.attempts,
                    },
                });
            }
        }
        let retries: Vec<(u64, RecordOp)> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.retry_at && p.attempts < self.cfg.max_attempts)
            .map(|(r, p)| (*r, p.op.clone()))
            .collect();
        for (req, op) in retries {
            self.send_request(req, &op);
            if let Some(p) = self.pending.get_mut(&req) {
                p.attempts += 1;
                p.retry_at = if p.attempts >= self.cfg.max_attempts {
                    p.sent + self.cfg.request_timeout
                } else {
                    now + self.cfg.retry_after * p.attempts
                };
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + self.cfg.sweep_every;
            if ring.is_joined() {
                self.sweep(ring);
            }
        }
    }

    /// One batch of the re-replication sweep: every record whose replica
    /// set changed since its copy was last pushed is pushed again to the
    /// members of the new set.
    fn sweep(&mut self, ring: &impl Ring) {
        let names = self
            .store
            .names_after(self.cursor.as_deref(), self.cfg.sweep_batch);
        self.cursor = if names.len() < self.cfg.sweep_batch {
            None
        } else {
            names.last().cloned()
        };
        for name in names {
            let set = ring.replica_set(&key_of(&name), self.cfg.replicas);
            let h = set_hash(&set);
            if self.pushed.get(&name) == Some(&h) {
                continue;
            }
            let Ok(Some(record)) = self.store.get(&name) else {
                continue;
            };
            let n = self.push_copies(ring, &name, &record, &set, None);
            self.counters.sweep_bytes += (n * (name.len() + record.value.len())) as u64;
            self.pushed.insert(name, h);
        }
    }

    fn next_ack(&mut self) -> u64 {
        let ack = self.next_ack;
        self.next_ack = self.next_ack.wrapping_add(1);
        ack
    }

    /// Coordinates `r` and answers its origin: a read at once, a write
    /// once the replicas have committed their copies (or after the stored
    /// wait with the confirmations that came).
    fn answer_request(&mut self, now: Instant, ring: &impl Ring, r: CoordinatorRequest) {
        let write = !matches!(r.op, RecordOp::Get { .. });
        let ack = self.next_ack();
        let outcome = self.coordinate(ring, &r.op, (r.origin, r.req), write.then_some(ack));
        if write && self.wait_for_replicas(now, ack, &outcome, WriteDone::Answer(r.clone())) {
            return;
        }
        self.send_answer(ring, r, outcome);
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
        if replicas == 0 || self.waiting_writes.len() >= self.cfg.max_pending {
            return false;
        }
        self.waiting_writes.insert(
            ack,
            WaitingWrite {
                done,
                version,
                pushed: replicas,
                stored: 0,
                deadline: now + self.cfg.stored_wait,
            },
        );
        true
    }

    fn on_stored(&mut self, _now: Instant, ring: &impl Ring, ack: u64) {
        let Some(w) = self.waiting_writes.get_mut(&ack) else {
            return;
        };
        w.stored += 1;
        if w.stored >= w.pushed
            && let Some(w) = self.waiting_writes.remove(&ack)
        {
            self.finish_write(ring, w);
        }
    }

    fn finish_write(&mut self, ring: &impl Ring, w: WaitingWrite) {
        match w.done {
            WriteDone::Answer(request) => {
                let outcome = RecordOutcome::Written {
                    version: w.version,
                    replicas: w.stored,
                };
                self.send_answer(ring, request, outcome);
            }
            WriteDone::Local(token) => self.out.push_back(Output::Confirmed { token }),
        }
    }

    /// Sends `outcome` to the request's origin.
    fn send_answer(&mut self, ring: &impl Ring, r: CoordinatorRequest, outcome: RecordOutcome) {
        let origin = Key::from_bytes(r.origin);
        if origin == ring.me() {
            return self.on_reply(r.req, r.hops, outcome);
        }
        self.out.push_back(Output::Route {
            to: origin,
            msg: RecordMsg::Reply {
                req: r.req,
                hops: r.hops,
                outcome,
            },
        });
    }

    fn on_reply(&mut self, req: u64, hops: u8, outcome: RecordOutcome) {
        if let Some(p) = self.pending.remove(&req) {
            self.out.push_back(Output::Answer {
                client: p.client,
                answer: Answer {
                    op: p.op,
                    outcome: Ok(outcome),
                    hops: Some(hops),
                    attempts: p.attempts,
                },
            });
        }
    }

    /// The coordinator's side of a request. `ack`: the number replicas
    /// acknowledge a write with.
    fn coordinate(
        &mut self,
        ring: &impl Ring,
        op: &RecordOp,
        write: WriteId,
        ack: Option<u64>,
    ) -> RecordOutcome {
        let name = op.name();
        let current = match self.store.get(name) {
            Ok(c) => c,
            Err(e) => return RecordOutcome::Refused(e.to_string()),
        };
        // A retry (or a rerouted duplicate) of a write that already
        // happened: the same answer, and the copies pushed again in case
        // they were lost.
        if !matches!(op, RecordOp::Get { .. })
            && let Some(c) = current.as_ref().filter(|c| c.write == Some(write))
        {
            let set = ring.replica_set(&key_of(name), self.cfg.replicas);
            let replicas = self.push_copies(ring, name, c, &set, ack);
            return RecordOutcome::Written {
                version: c.version,
                replicas,
            };
        }
        // A creation of a name that is taken writes nothing.
        if let (RecordOp::Create { .. }, Some(c)) = (op, current.as_ref().filter(|c| !c.deleted)) {
            return RecordOutcome::Found {
                version: c.version,
                value: c.value.clone(),
            };
        }
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
            _ => {
                let Some(version) = Record::next_version(current.as_ref()) else {
                    self.counters.refused += 1;
                    return RecordOutcome::Refused(format!("record {name:?} has no versions left"));
                };
                match op {
                    RecordOp::Put { value, .. } | RecordOp::Create { value, .. } => Record {
                        version,
                        deleted: false,
                        value: value.clone(),
                        write: Some(write),
                    },
                    _ => Record {
                        version,
                        deleted: true,
                        value: Vec::new(),
                        write: Some(write),
                    },
                }
            }
        };
        if let Err(e) = self.store.apply(name, &record) {
            self.counters.refused += 1;
            return RecordOutcome::Refused(e.to_string());
        }
        let set = ring.replica_set(&key_of(name), self.cfg.replicas);
        let replicas = self.push_copies(ring, name, &record, &set, ack);
        self.pushed.insert(name.to_string(), set_hash(&set));
        RecordOutcome::Written {
            version: record.version,
            replicas,
        }
    }

    /// Pushes `record` to every member of `set` but this node; returns
    /// how many.
    fn push_copies(
        &mut self,
        ring: &impl Ring,
        name: &str,
        record: &Record,
        set: &[NodeId],
        ack: Option<u64>,
    ) -> usize {
        let me = ring.me();
        let mut n = 0;
        for id in set.iter().filter(|id| **id != me) {
            self.out.push_back(Output::Route {
                to: *id,
                msg: RecordMsg::Replicate {
                    name: name.to_string(),
                    record: record.clone(),
                    ack: ack.map(|a| (a, *me.as_bytes())),
                },
            });
            n += 1;
        }
        self.counters.replicas_out += n as u64;
        n
    }

    /// Asks the replicas for their copies; false when there is nobody to
    /// ask (or too much in progress), and the caller goes on at once.
    fn start_fetch(&mut self, now: Instant, ring: &impl Ring, name: &str, then: FetchFor) -> bool {
        if self.fetches.len() >= self.cfg.max_fetches {
            return false;
        }
        let me = ring.me();
        let others: Vec<Key> = ring
            .replica_set(&key_of(name), self.cfg.replicas)
            .into_iter()
            .filter(|id| *id != me)
            .collect();
        if others.is_empty() {
            return false;
        }
        self.next_fetch = self.next_fetch.wrapping_add(1);
        let id = self.next_fetch;
        for other in &others {
            self.out.push_back(Output::Route {
                to: *other,
                msg: RecordMsg::Fetch {
                    fetch: id,
                    from: *me.as_bytes(),
                    name: name.to_string(),
                },
            });
        }
        self.fetches.insert(
            id,
            Fetch {
                name: name.to_string(),
                then,
                waiting: others.len(),
                best: None,
                deadline: now + self.cfg.fetch_timeout,
            },
        );
        true
    }

    fn on_fetch_reply(
        &mut self,
        now: Instant,
        ring: &impl Ring,
        fetch: u64,
        record: Option<Record>,
    ) {
        let Some(f) = self.fetches.get_mut(&fetch) else {
            return;
        };
        if let Some(r) = record
            && f.best.as_ref().is_none_or(|b| r.supersedes(b))
        {
            f.best = Some(r);
        }
        f.waiting = f.waiting.saturating_sub(1);
        if f.waiting == 0 {
            self.finish_fetch(now, ring, fetch);
        }
    }

    fn finish_fetch(&mut self, now: Instant, ring: &impl Ring, id: u64) {
        let Some(f) = self.fetches.remove(&id) else {
            return;
        };
        if let Some(best) = &f.best
            && self.store.apply(&f.name, best).is_err()
        {
            self.counters.refused += 1;
        }
        match f.then {
            FetchFor::Request(r) => self.answer_request(now, ring, r),
            FetchFor::Load(token) => {
                if let Some(left) = self.loads.get_mut(&token) {
                    *left -= 1;
                    if *left == 0 {
                        self.loads.remove(&token);
                        self.out.push_back(Output::Loaded { token });
                    }
                }
            }
        }
    }
}
