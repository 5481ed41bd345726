//! The services' host: the state machine between the services
//! ([`Services`]), the record store ([`Replicator`]) and the ring.
//!
//! It owns what used to be the node's service driver, as a sans-IO
//! machine the node and the tests drive the same way (see
//! docs/architecture.md, "The services host"):
//!
//! * **Loading.** A room's or node's records are read before its first
//!   stanza ([`Services::handle`] asks for a [`Load`]); the replicator
//!   fetches what this node has no copy of; shards follow in further
//!   rounds ([`LoadStep::More`]). Stanzas wait meanwhile (bounded in
//!   [`Services`]).
//! * **Writing, and holding outputs.** At the end of a turn
//!   ([`ServiceHost::end_turn`]) every record the turn changed is written
//!   once, locally first (the host is the coordinator of its services'
//!   keys), and the turn's outputs are held until the replicas confirm,
//!   so that a success answered survives the host's death at once. Later
//!   turns queue behind earlier ones: everything keeps its order. A
//!   write the store refuses turns the steps that caused it into
//!   `resource-constraint` errors and unloads the entity.
//! * **Moving.** Every sweep ([`ServiceHost::handle_timeout`]) drops what
//!   another node is now closer to, unloads what has been idle, and takes
//!   over rooms whose host died with occupants in them (they are told,
//!   status 332, and may join again here).
//!
//! Inputs: [`ServiceHost::handle_stanza`], [`ServiceHost::handle_loaded`]
//! and [`ServiceHost::handle_confirmed`] (the replicator's `Loaded` and
//! `Confirmed` outputs), [`ServiceHost::handle_timeout`]. Outputs:
//! [`ServiceHost::poll_action`] (stanzas to send, broadcast or reroute)
//! and [`ServiceHost::poll_timeout`]. Time comes in as `now` (for
//! timers) and `now_unix` (for what the services stamp and expire).

use crate::muc::room::RoomState;
use crate::services::{Load, LoadStep, Services};
use crate::{Action, directory, stanza};
use ring_records::{Backend, LocalWrite, MUC_PREFIX, RecordOp, Replicator, Ring, key_of};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Rooms checked for a dead host per sweep.
pub const TAKEOVER_BATCH: usize = 256;
/// Rooms without occupants and PubSub nodes unused this long are dropped
/// from memory.
pub const IDLE_UNLOAD_SECS: u64 = 300;
/// The batch token of writes nothing waits for.
const NO_BATCH: u64 = u64::MAX;

/// What one stanza made a service do, kept with what is needed to take it
/// back: if the state it changed cannot be stored, its outputs are
/// replaced by an error to its sender.
struct Step {
    /// The room, node or registry it changed (its main record's name).
    entity: Option<String>,
    /// The stanzas it answered, without their payloads: the stanza itself,
    /// or those that waited for it (a registry answer).
    triggers: Vec<Element>,
    actions: Vec<Action>,
}

/// The outputs of one turn and how many of its writes the replicas have
/// yet to confirm.
struct HeldBatch {
    id: u64,
    pending: usize,
    actions: Vec<Action>,
}

/// The host's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Rooms taken over from a dead host.
    pub takeovers: u64,
    /// Writes the store refused (their steps were answered with errors).
    pub refused_writes: u64,
    /// Turns whose outputs waited for replicas.
    pub held_batches: u64,
    /// Records written (puts and deletes).
    pub records_written: u64,
    /// Bytes of the values written (each replica receives as many).
    pub bytes_written: u64,
}

/// The services of one ring node, with their storage and their moves.
pub struct ServiceHost {
    services: Services,
    /// Loads waiting for the replicator: token -> (entity, record names).
    loads: HashMap<u64, (String, Vec<String>)>,
    next_load: u64,
    /// Outputs held until the writes they depend on are confirmed, oldest
    /// first.
    held: VecDeque<HeldBatch>,
    next_batch: u64,
    /// This turn's steps, whose outputs are released at its end.
    turn: Vec<Step>,
    /// Where the takeover sweep goes on from (a room record name).
    room_cursor: Option<String>,
    /// When the next sweep is due.
    next_check: Instant,
    check_every: Duration,
    /// When writes that wait for time (history) are next due.
    next_flush: Option<Instant>,
    outputs: VecDeque<Action>,
    counters: HostCounters,
}

impl ServiceHost {
    /// A host for `services`, sweeping every `check_every`. `base` starts
    /// its load tokens (so that they never repeat those of a previous
    /// life of this node, see `Store::counter_base`).
    pub fn new(services: Services, base: u64, check_every: Duration, now: Instant) -> ServiceHost {
        ServiceHost {
            services,
            loads: HashMap::new(),
            next_load: base,
            held: VecDeque::new(),
            next_batch: 0,
            turn: Vec::new(),
            room_cursor: None,
            next_check: now + check_every,
            check_every,
            next_flush: None,
            outputs: VecDeque::new(),
            counters: HostCounters::default(),
        }
    }

    /// The services (for reports).
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The services, to change directly (tests).
    pub fn services_mut(&mut self) -> &mut Services {
        &mut self.services
    }

    /// The counters.
    pub fn counters(&self) -> HostCounters {
        self.counters
    }

    /// Turns whose outputs wait for replicas.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Loads in progress.
    pub fn loading(&self) -> usize {
        self.loads.len()
    }

    /// The next output.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.outputs.pop_front()
    }

    /// When [`ServiceHost::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(match self.next_flush {
            Some(f) => f.min(self.next_check),
            None => self.next_check,
        })
    }

    /// A stanza for a ring JID this node is responsible for.
    pub fn handle_stanza<B: Backend>(
        &mut self,
        now: Instant,
        now_unix: u64,
        st: Element,
        records: &mut Replicator<B>,
        ring: &impl Ring,
    ) {
        let entity = self.services.entity_of(&st);
        // Internal registry messages are never answered with an error.
        let shell = (!directory::is_internal(&st)).then(|| stanza::shell(&st));
        let mut out = Vec::new();
        let load = self.services.handle(now_unix, st, &mut out);
        self.push_step(entity, shell, out);
        if let Some(load) = load {
            self.start_load(now, now_unix, load, records, ring);
        }
    }

    /// The replicator finished the fetches of load `token`.
    pub fn handle_loaded<B: Backend>(
        &mut self,
        now: Instant,
        now_unix: u64,
        token: u64,
        records: &mut Replicator<B>,
        ring: &impl Ring,
    ) {
        if let Some((entity, names)) = self.loads.remove(&token) {
            self.finish_load(now, now_unix, &entity, &names, records, ring);
        }
    }

    /// The replicas confirmed a write of batch `token` (or stopped being
    /// waited for).
    pub fn handle_confirmed(&mut self, token: u64) {
        if let Some(b) = self.held.iter_mut().find(|b| b.id == token) {
            b.pending = b.pending.saturating_sub(1);
        }
        self.release_held();
    }

    /// Timers: writes that waited for time, and the sweep.
    pub fn handle_timeout<B: Backend>(
        &mut self,
        now: Instant,
        now_unix: u64,
        records: &mut Replicator<B>,
        ring: &impl Ring,
    ) {
        if self.next_flush.is_some_and(|t| t <= now) {
            self.next_flush = None;
            self.end_turn(now, now_unix, records, ring);
        }
        if now >= self.next_check {
            self.next_check = now + self.check_every;
            if ring.is_joined() {
                self.sweep(now, now_unix, records, ring);
            }
        }
    }

    /// Records what serving a stanza did, for the end of the turn.
    fn push_step(&mut self, entity: Option<String>, shell: Option<Element>, actions: Vec<Action>) {
        let mut triggers = self.services.take_answered();
        if triggers.is_empty() {
            triggers.extend(shell);
        }
        self.turn.push(Step {
            entity,
            triggers,
            actions,
        });
    }

    /// Queues outputs that no stanza caused (takeovers, timers).
    fn emit(&mut self, actions: Vec<Action>) {
        if !actions.is_empty() {
            self.turn.push(Step {
                entity: None,
                triggers: Vec::new(),
                actions,
            });
        }
    }

    /// Ends a turn: stores what the services changed (one write per
    /// changed record, however many stanzas changed it), then releases
    /// the turn's outputs once the replicas hold the change. Returns
    /// whether it released or wrote anything.
    pub fn end_turn<B: Backend>(
        &mut self,
        now: Instant,
        now_unix: u64,
        records: &mut Replicator<B>,
        ring: &impl Ring,
    ) -> bool {
        let steps = std::mem::take(&mut self.turn);
        let writes = self.services.take_writes(now_unix);
        if self.services.writes_pending() && self.next_flush.is_none() {
            self.next_flush = Some(now + Duration::from_secs(crate::muc::HISTORY_WRITE_SECS));
        }
        if steps.is_empty() && writes.is_empty() {
            return false;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let mut pending = 0;
        // Entities whose state the store refused, and why.
        let mut refused: HashMap<String, String> = HashMap::new();
        for w in writes {
            let entity = crate::services::entity_of_record(&w.name);
            let op = match w.value {
                Some(value) => RecordOp::Put {
                    name: w.name,
                    value,
                },
                None => RecordOp::Delete { name: w.name },
            };
            let token = if w.holds { batch } else { NO_BATCH };
            self.counters.records_written += 1;
            if let RecordOp::Put { value, .. } = &op {
                self.counters.bytes_written += value.len() as u64;
            }
            match records.write_local(now, ring, &op, token) {
                LocalWrite::Waiting if w.holds => pending += 1,
                LocalWrite::Waiting | LocalWrite::Done => {}
                LocalWrite::Refused(why) if w.holds => {
                    tracing::error!(name = op.name(), "service state not stored: {why}");
                    self.counters.refused_writes += 1;
                    refused.insert(entity, why);
                }
                LocalWrite::Refused(why) => {
                    tracing::warn!(name = op.name(), "background write not stored: {why}");
                }
            }
        }
        // What could not be stored is forgotten (the next stanza loads the
        // stored state again) and its steps answer with an error instead
        // of their outputs: never a success for a change that was not kept.
        for entity in refused.keys() {
            self.services.unload(entity);
        }
        let mut out = Vec::new();
        for step in steps {
            let Some(why) = step.entity.as_ref().and_then(|e| refused.get(e)) else {
                out.extend(step.actions);
                continue;
            };
            let text = format!("the change could not be stored: {why}");
            // A registry that could not store a reservation refuses it.
            out.extend(step.actions.into_iter().filter_map(|a| match a {
                Action::Send(m) => directory::refuse_reserved(&m, &text).map(Action::Send),
                _ => None,
            }));
            for t in &step.triggers {
                out.extend(
                    stanza::error_reply(t, DefinedCondition::ResourceConstraint, Some(&text))
                        .map(Action::Send),
                );
            }
        }
        if pending == 0 && self.held.is_empty() {
            self.outputs.extend(out);
            return true;
        }
        self.counters.held_batches += 1;
        self.held.push_back(HeldBatch {
            id: batch,
            pending,
            actions: out,
        });
        self.release_held();
        true
    }

    /// Releases the held batches that wait for nothing, in order.
    fn release_held(&mut self) {
        while self.held.front().is_some_and(|b| b.pending == 0) {
            if let Some(b) = self.held.pop_front() {
                self.outputs.extend(b.actions);
            }
        }
    }

    /// Reads a load's records; those this node has no copy of are
    /// fetched from the other replicas first (this node may have just
    /// become responsible for the key).
    fn start_load<B: Backend>(
        &mut self,
        now: Instant,
        now_unix: u64,
        load: Load,
        records: &mut Replicator<B>,
        ring: &impl Ring,
    ) {
        let token = self.next_load;
        self.next_load += 1;
        if records.load(now, ring, &load.names, token) {
            self.loads.insert(token, (load.entity, load.names));
        } else {
            self.finish_load(now, now_unix, &load.entity, &load.names, records, ring);
        }
    }

    /// A load's records are here: the next round, or the entity is ready
    /// and the stanzas that waited for it are served.
    fn finish_load<B: Backend>(
        &mut self,
        now: Instant,
        now_unix: u64,
        entity: &str,
        names: &[String],
        records: &mut Replicator<B>,
        ring: &impl Ring,
    ) {
        let values: Vec<(String, Option<Vec<u8>>)> = names
            .iter()
            .map(|n| {
                let v = match records.store().get(n) {
                    Ok(Some(r)) if !r.deleted => Some(r.value),
                    _ => None,
                };
                (n.clone(), v)
            })
            .collect();
        let mut out = Vec::new();
        let waiting = match self.services.loaded(entity, &values, &mut out) {
            LoadStep::More(names) => {
                self.emit(out);
                let load = Load {
                    entity: entity.to_string(),
                    names,
                };
                return self.start_load(now, now_unix, load, records, ring);
            }
            LoadStep::Ready(waiting) => waiting,
        };
        // A room whose host died with occupants in it (reached by a stanza
        // or by the sweep): its occupants are told before anything else.
        if let Some(room) = entity.strip_prefix(MUC_PREFIX)
            && let Some(previous) = self.services.muc.take_previous_host(room)
            && !host_is_live(&previous, ring)
        {
            tracing::info!(%room, "taking over a room whose host is gone");
            self.services.muc.take_over(room, &mut out);
            self.counters.takeovers += 1;
        }
        self.emit(out);
        for st in waiting {
            let entity = self.services.entity_of(&st);
            let shell = (!directory::is_internal(&st)).then(|| stanza::shell(&st));
            let mut out = Vec::new();
            self.services.handle_loaded(now_unix, st, &mut out);
            self.push_step(entity, shell, out);
        }
    }

    /// Once per sweep: rooms and nodes whose key another node is now
    /// closer to are dropped from memory (their state is stored; the new
    /// host loads it), idle ones too, and rooms whose host died are
    /// loaded to be taken over.
    fn sweep<B: Backend>(
        &mut self,
        now: Instant,
        now_unix: u64,
        records: &mut Replicator<B>,
        ring: &impl Ring,
    ) {
        // Creations the registries did not answer in time fail.
        let mut out = Vec::new();
        self.services.tick(now_unix, &mut out);
        self.emit(out);
        // What changed is stored before anything is dropped.
        self.end_turn(now, now_unix, records, ring);
        let replicas = records.config().replicas;
        let me = ring.me();
        for name in self.services.entities() {
            if ring.replica_set(&key_of(&name), replicas).first() != Some(&me) {
                tracing::info!(%name, "no longer responsible: unloading");
                self.services.unload(&name);
            }
        }
        // Empty rooms and unused nodes leave memory (they are stored and
        // load again with their next stanza): memory follows activity,
        // not the number of rooms and nodes ever created.
        for name in self.services.idle(now_unix, IDLE_UNLOAD_SECS) {
            tracing::debug!(%name, "idle: unloading");
            self.services.unload(&name);
        }
        // Rooms with occupants whose host is gone: this node, now the
        // closest, loads them and tells the occupants. A batch per sweep,
        // going on where the last one stopped.
        let names =
            records
                .store()
                .prefixed_batch(MUC_PREFIX, &mut self.room_cursor, TAKEOVER_BATCH);
        for name in names {
            let room = &name[MUC_PREFIX.len()..];
            if self.services.muc.is_loaded(room)
                || ring.replica_set(&key_of(&name), replicas).first() != Some(&me)
            {
                continue;
            }
            let Ok(Some(rec)) = records.store().get(&name) else {
                continue;
            };
            if rec.deleted {
                continue;
            }
            let Ok(state) = serde_json::from_slice::<RoomState>(&rec.value) else {
                continue;
            };
            if !state.has_occupants() || host_is_live(&state.host, ring) {
                continue;
            }
            if let Some(load) = self.services.load_room(room) {
                self.start_load(now, now_unix, load, records, ring);
            }
        }
    }
}

/// Whether the node whose id is `hex` is alive as `ring` sees it (this
/// node included).
fn host_is_live(hex: &str, ring: &impl Ring) -> bool {
    dht::Key::from_hex(hex).is_some_and(|id| ring.is_live(&id))
}

#[cfg(test)]
mod tests;
