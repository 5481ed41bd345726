//! The services' driver in the core: loading a room's or PubSub node's
//! state from the record store before its first stanza, writing back what
//! changed, fanning broadcasts out per domain, and moving rooms and nodes
//! when responsibility for their key moves.
//!
//! A service's records are keyed on the service's own key
//! ([`crate::records::key_of`]), so the host is also their coordinator: it
//! writes them locally (one redb commit per record and turn) and pushes
//! copies to the next nodes in line, which are exactly the nodes that take
//! over when it dies.

use super::Core;
use crate::api::ServicesReport;
use crate::records::{LocalWrite, MUC_PREFIX, RecordOp, Ring, key_of};
use crate::xmpp::fanout::{self, FanoutMsg, MAX_RECIPIENTS_PER_ENVELOPE};
use crate::xmpp::muc::room::RoomState;
use crate::xmpp::services::{Load, Services};
use crate::xmpp::{Action, SERVICE_EDGE_FANOUT, SERVICE_EDGE_OUT_RETRY, edges, stanza};
use bytes::Bytes;
use dht::{Envelope, EnvelopeKind};
use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use xmpp_parsers::minidom::Element;

/// Rooms checked for a dead host per sweep.
const TAKEOVER_BATCH: usize = 256;
/// Rooms without occupants and PubSub nodes unused this long are dropped
/// from memory.
const IDLE_UNLOAD_SECS: u64 = 300;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The driver's own state.
pub(crate) struct ServiceDriver {
    /// Loads waiting for the replicator's fetches: token -> (entity,
    /// record names).
    loads: HashMap<u64, (String, Vec<String>)>,
    next_load: u64,
    pub(super) takeovers: u64,
    pub(super) fanout_envelopes: u64,
    pub(super) fanout_stanzas: u64,
    /// Outputs held until the writes they depend on are stored by the
    /// replicas, oldest first. Later outputs queue behind earlier ones, so
    /// everything a service sends keeps its order.
    held: VecDeque<HeldBatch>,
    next_batch: u64,
    /// This turn's steps, whose outputs are sent at its end.
    turn: Vec<Step>,
    /// Where the takeover sweep goes on from (a room record name).
    room_cursor: Option<String>,
    /// When the hosts' check is next due.
    next_check: Instant,
}

impl ServiceDriver {
    /// When the hosts' check (takeovers, unloading) is next due.
    pub(crate) fn next_check(&self) -> Instant {
        self.next_check
    }

    /// The check ran at `now`; the next one in `every`.
    pub(crate) fn checked(&mut self, now: Instant, every: std::time::Duration) {
        self.next_check = now + every;
    }

    /// A driver whose write numbers start at `base` (so that they never
    /// repeat those of a previous life of this node).
    pub(crate) fn new(base: u64) -> ServiceDriver {
        ServiceDriver {
            loads: HashMap::new(),
            next_load: base,
            takeovers: 0,
            fanout_envelopes: 0,
            fanout_stanzas: 0,
            held: VecDeque::new(),
            next_batch: 0,
            turn: Vec::new(),
            room_cursor: None,
            next_check: Instant::now(),
        }
    }
}

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

/// The outputs of one service step and how many of its writes the replicas
/// have yet to confirm.
struct HeldBatch {
    id: u64,
    pending: usize,
    actions: Vec<Action>,
}

pub(crate) fn new_services(
    settings: &crate::config::NodeSettings,
    host: String,
    seed: u64,
) -> Services {
    Services::new(
        settings.served.clone(),
        host,
        crate::xmpp::pubsub::Limits {
            max_items: settings.records.pubsub_max_items,
            max_item_bytes: settings.records.pubsub_max_item_bytes,
            max_record_bytes: settings.records.limits.max_record_bytes,
        },
        crate::xmpp::services::Quotas {
            muc: crate::xmpp::directory::Quotas {
                per_owner: settings.services.max_rooms_per_user,
                total: settings.services.max_rooms,
            },
            pubsub: crate::xmpp::directory::Quotas {
                per_owner: settings.services.max_nodes_per_user,
                total: settings.services.max_nodes,
            },
        },
        seed,
    )
}

impl Core {
    /// A stanza for a ring JID this node is responsible for.
    pub(super) fn run_services(&mut self, now: Instant, st: Element) {
        let entity = self.services.entity_of(&st);
        // Internal registry messages are never answered with an error.
        let shell = (!crate::xmpp::directory::is_internal(&st)).then(|| stanza::shell(&st));
        let mut out = Vec::new();
        let load = self.services.handle(unix_now(), st, &mut out);
        self.push_step(entity, shell, out);
        if let Some(load) = load {
            self.start_service_load(now, load);
        }
    }

    /// Records what serving `shell` did, for the end of the turn.
    fn push_step(&mut self, entity: Option<String>, shell: Option<Element>, actions: Vec<Action>) {
        let mut triggers = self.services.take_answered();
        if triggers.is_empty() {
            triggers.extend(shell);
        }
        self.service_driver.turn.push(Step {
            entity,
            triggers,
            actions,
        });
    }

    /// Queues outputs that no stanza caused (takeovers, timers) for the
    /// end of the turn.
    fn emit(&mut self, out: Vec<Action>) {
        self.service_driver.turn.push(Step {
            entity: None,
            triggers: Vec::new(),
            actions: out,
        });
    }

    /// Ends a turn of the services: stores what they changed (one write
    /// per changed record, however many stanzas changed it), then sends
    /// the turn's outputs once the replicas hold the change, so that a
    /// success answered (a publish, a subscription, a configuration)
    /// survives the host's death at once. Replicas that do not confirm
    /// within a second hold it up no longer. Returns whether it sent or
    /// wrote anything.
    pub(super) fn end_service_turn(&mut self, now: Instant) -> bool {
        let steps = std::mem::take(&mut self.service_driver.turn);
        let writes = self.services.take_writes();
        if steps.is_empty() && writes.is_empty() {
            return false;
        }
        let batch = self.service_driver.next_batch;
        self.service_driver.next_batch += 1;
        let mut pending = 0;
        // Entities whose state the store refused, and why.
        let mut refused: HashMap<String, String> = HashMap::new();
        for (name, value) in writes {
            let entity = crate::xmpp::services::entity_of_record(&name);
            let op = match value {
                Some(value) => RecordOp::Put { name, value },
                None => RecordOp::Delete { name },
            };
            match self.records.write_local(now, &self.node, &op, batch) {
                LocalWrite::Waiting => pending += 1,
                LocalWrite::Done => {}
                LocalWrite::Refused(why) => {
                    tracing::error!(name = op.name(), "service state not stored: {why}");
                    refused.insert(entity, why);
                }
            }
        }
        // What could not be stored is forgotten (the next stanza loads the
        // stored state again) and its steps answer with an error instead of
        // their outputs: never a success for a change that was not kept.
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
                Action::Send(m) => {
                    crate::xmpp::directory::refuse_reserved(&m, &text).map(Action::Send)
                }
                _ => None,
            }));
            for t in &step.triggers {
                out.extend(
                    stanza::error_reply(t, "resource-constraint", Some(&text)).map(Action::Send),
                );
            }
        }
        if pending == 0 && self.service_driver.held.is_empty() {
            self.apply_actions(now, out);
            return true;
        }
        self.service_driver.held.push_back(HeldBatch {
            id: batch,
            pending,
            actions: out,
        });
        self.release_held(now);
        true
    }

    /// A write of batch `batch` is stored by its replicas (or stopped
    /// waiting for them).
    pub(super) fn write_stored(&mut self, now: Instant, batch: u64) {
        if let Some(b) = self.service_driver.held.iter_mut().find(|b| b.id == batch) {
            b.pending = b.pending.saturating_sub(1);
        }
        self.release_held(now);
    }

    /// Sends the held batches that wait for nothing, in order.
    fn release_held(&mut self, now: Instant) {
        while self
            .service_driver
            .held
            .front()
            .is_some_and(|b| b.pending == 0)
        {
            if let Some(b) = self.service_driver.held.pop_front() {
                self.apply_actions(now, b.actions);
            }
        }
    }

    fn apply_actions(&mut self, now: Instant, out: Vec<Action>) {
        for a in out {
            match a {
                Action::Send(st) => self.send_stanza(now, st),
                Action::Reroute(st) => self.route_stanza(now, st),
                Action::Broadcast { stanza, to } => self.broadcast(now, stanza, to),
            }
        }
    }

    /// Reads the load's records; those this node has no copy of are
    /// fetched from the other replicas first (this node may have just
    /// become responsible for the key).
    fn start_service_load(&mut self, now: Instant, load: Load) {
        let token = self.service_driver.next_load;
        self.service_driver.next_load += 1;
        if self.records.load(now, &self.node, &load.names, token) {
            self.service_driver
                .loads
                .insert(token, (load.entity, load.names));
        } else {
            self.finish_service_load(&load.entity, &load.names);
        }
    }

    /// A load's fetches finished.
    pub(super) fn service_load_done(&mut self, token: u64) {
        if let Some((entity, names)) = self.service_driver.loads.remove(&token) {
            self.finish_service_load(&entity, &names);
        }
    }

    fn finish_service_load(&mut self, entity: &str, names: &[String]) {
        let values: Vec<(String, Option<Vec<u8>>)> = names
            .iter()
            .map(|n| {
                let v = match self.records.store().get(n) {
                    Ok(Some(r)) if !r.deleted => Some(r.value),
                    _ => None,
                };
                (n.clone(), v)
            })
            .collect();
        let mut out = Vec::new();
        // A room whose host died with occupants in it, reached by a stanza
        // before the sweep noticed: taken over the same way.
        if let (Some(room), Some((_, Some(value)))) =
            (entity.strip_prefix(MUC_PREFIX), values.first())
            && self.room_host_gone(value)
        {
            match self.services.muc.take_over(room, value, &mut out) {
                Ok(()) => self.service_driver.takeovers += 1,
                Err(e) => tracing::error!("{e}"),
            }
        }
        let waiting = self.services.loaded(entity, &values, &mut out);
        self.emit(out);
        for st in waiting {
            let entity = self.services.entity_of(&st);
            // Internal registry messages are never answered with an error.
            let shell = (!crate::xmpp::directory::is_internal(&st)).then(|| stanza::shell(&st));
            let mut out = Vec::new();
            self.services.handle_loaded(unix_now(), st, &mut out);
            self.push_step(entity, shell, out);
        }
    }

    /// One stanza to many JIDs: per remote domain one fan-out envelope
    /// (per batch) to that domain's edge; ring JIDs one by one.
    fn broadcast(&mut self, now: Instant, template: Element, to: Vec<String>) {
        let text = crate::xmpp::stanza::to_string(&template);
        for (domain, jids) in fanout::by_domain(to) {
            if self.settings.served.contains(&domain) {
                for j in jids {
                    let mut st = template.clone();
                    stanza::set(&mut st, "to", &j);
                    self.route_stanza(now, st);
                }
                continue;
            }
            let Some(edge_id) = edges::pick(&self.known_edges(None), domain.as_str()) else {
                tracing::warn!(%domain, n = jids.len(), "no edge to fan a broadcast out to");
                continue;
            };
            if edge_id == self.node.id() && self.edge.is_some() {
                for j in jids {
                    let mut st = template.clone();
                    stanza::set(&mut st, "to", &j);
                    self.send_via_own_edge(now, st);
                }
                continue;
            }
            for chunk in jids.chunks(MAX_RECIPIENTS_PER_ENVELOPE) {
                let msg = FanoutMsg {
                    stanza: text.clone(),
                    to: chunk.to_vec(),
                };
                match self.node.route(
                    now,
                    edge_id,
                    EnvelopeKind::Service(SERVICE_EDGE_FANOUT),
                    Bytes::from(msg.encode()),
                    false,
                ) {
                    Ok(_) => {
                        self.service_driver.fanout_envelopes += 1;
                        self.service_driver.fanout_stanzas += chunk.len() as u64;
                    }
                    Err(e) => tracing::warn!(%domain, "cannot fan a broadcast out: {e}"),
                }
            }
        }
    }

    /// A fan-out envelope delivered here: written out by this edge, or, if
    /// the edge it was for has left, sent on one by one through another.
    pub(super) fn on_fanout(&mut self, now: Instant, env: &Envelope) {
        let Some(stanzas) = FanoutMsg::decode(&env.payload).and_then(|m| m.expand()) else {
            tracing::warn!("undecodable fan-out envelope");
            return;
        };
        if env.key == self.node.id() && self.edge.is_some() {
            for st in stanzas {
                self.send_via_own_edge(now, st);
            }
            return;
        }
        for st in stanzas {
            self.forward_out(now, st, SERVICE_EDGE_OUT_RETRY, Some(env.key));
        }
    }

    /// Once per sweep: rooms and nodes whose key another node is now
    /// closer to are dropped from memory (their state is stored; the new
    /// host loads it), and rooms whose host died are taken over.
    pub(super) fn check_service_hosts(&mut self, now: Instant) {
        // Creations the registries did not answer in time fail.
        let mut out = Vec::new();
        self.services.tick(unix_now(), &mut out);
        self.emit(out);
        // What changed this turn is stored before anything is dropped.
        self.end_service_turn(now);
        let me = self.node.id();
        for name in self.services.entities() {
            if self
                .node
                .replica_set(&key_of(&name), self.records.config().replicas)
                .first()
                != Some(&me)
            {
                tracing::info!(%name, "no longer responsible: unloading");
                self.services.unload(&name);
            }
        }
        // Empty rooms and unused nodes leave memory (they are stored and
        // load again with their next stanza): memory follows activity, not
        // the number of rooms and nodes ever created.
        for name in self.services.idle(unix_now(), IDLE_UNLOAD_SECS) {
            tracing::debug!(%name, "idle: unloading");
            self.services.unload(&name);
        }
        // Rooms with occupants whose host is gone: this node, now the
        // closest, tells the occupants (332) so they can join again here.
        // A batch per sweep, going on where the last one stopped.
        let names = self.records.store().prefixed_batch(
            MUC_PREFIX,
            &mut self.service_driver.room_cursor,
            TAKEOVER_BATCH,
        );
        let mut out = Vec::new();
        for name in names {
            let room = &name[MUC_PREFIX.len()..];
            if self.services.muc.is_loaded(room)
                || self
                    .node
                    .replica_set(&key_of(&name), self.records.config().replicas)
                    .first()
                    != Some(&me)
            {
                continue;
            }
            let Ok(Some(rec)) = self.records.store().get(&name) else {
                continue;
            };
            if rec.deleted {
                continue;
            }
            if !self.room_host_gone(&rec.value) {
                continue;
            }
            tracing::info!(%room, "taking over a room whose host is gone");
            match self.services.muc.take_over(room, &rec.value, &mut out) {
                Ok(()) => self.service_driver.takeovers += 1,
                Err(e) => tracing::error!("{e}"),
            }
        }
        self.emit(out);
    }

    /// Whether a stored room has occupants and names as its host a node
    /// other than this one that is not live in the routing table.
    fn room_host_gone(&self, value: &[u8]) -> bool {
        let Ok(state) = serde_json::from_slice::<RoomState>(value) else {
            return false;
        };
        if state.occupants.is_empty() || state.host == self.node.id().to_hex() {
            return false;
        }
        !self
            .node
            .table()
            .iter()
            .any(|e| e.failures == 0 && e.contact.id.to_hex() == state.host)
    }

    pub(super) fn services_report(&self) -> ServicesReport {
        let mut rooms: Vec<String> = self.services.muc.rooms().cloned().collect();
        rooms.sort();
        let room_count = rooms.len();
        rooms.truncate(100);
        let mut nodes: Vec<String> = self
            .services
            .pubsub
            .loaded()
            .map(|n| {
                n.trim_start_matches(crate::records::PUBSUB_PREFIX)
                    .to_string()
            })
            .collect();
        nodes.sort();
        let node_count = nodes.len();
        nodes.truncate(100);
        ServicesReport {
            rooms,
            room_count,
            occupants: self.services.muc.occupants(),
            pubsub_nodes: nodes,
            pubsub_node_count: node_count,
            subscriptions: self.services.pubsub.subscriptions(),
            takeovers: self.service_driver.takeovers,
            fanout_envelopes: self.service_driver.fanout_envelopes,
            fanout_stanzas: self.service_driver.fanout_stanzas,
        }
    }
}
