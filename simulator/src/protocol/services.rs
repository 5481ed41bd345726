//! The services host on every simulated node, and the MUC workload's users
//! around them: stanzas for ring JIDs travel as envelopes to the node
//! closest to their key, which hands them to its host; what the host sends
//! to users (who live outside the ring) reaches them directly, as an edge
//! would deliver it.

use super::{Intent, Sim, SimEvent, SimNode, Time, us};
use crate::rooms_load::{RoomParams, Rooms};
use dht::{EnvelopeKind, Key};
use rand::RngExt;
use ring_services::host::ServiceHost;
use ring_services::services::{Quotas, Services, routing_key};
use ring_services::{Action, stanza};
use std::time::{Duration, Instant};
use xmpp_addr::{Domain, Served};
use xmpp_parsers::minidom::Element;

/// The envelope kind of stanzas in the simulated ring (the lookups of the
/// routing workload use `Stanza`).
pub(super) const STANZA: EnvelopeKind = EnvelopeKind::Service(8);

/// The ring's domain.
pub(super) fn served() -> Served {
    Served::new(&["ring.test"]).expect("a valid domain")
}

/// A node's services host.
pub(super) fn host(id: Key, seed: u64, p: &super::ProtocolParams, now: Instant) -> ServiceHost {
    let services = Services::new(
        served(),
        id.to_hex(),
        ring_services::pubsub::Limits {
            max_items: 10,
            max_item_bytes: 32 * 1024,
            max_record_bytes: 64 * 1024,
        },
        // Every simulated room must be allowed.
        Quotas {
            muc: ring_services::directory::Quotas {
                per_owner: 1,
                total: p.rooms.rooms.max(1) * 2,
            },
            pubsub: Quotas::default().pubsub,
        },
        seed,
    );
    ServiceHost::new(services, 0, p.records.config.sweep_every, now)
}

/// Ends the host's turn on `sn` and routes what it released: stanzas for
/// ring JIDs into the ring, the others (for users) returned.
pub(super) fn drain_host(
    sn: &mut SimNode,
    served: &Served,
    now: Instant,
    unix: u64,
) -> Vec<Element> {
    let (Some(host), Some(rep)) = (sn.host.as_mut(), sn.rep.as_mut()) else {
        return Vec::new();
    };
    host.end_turn(now, unix, rep, &sn.node);
    let mut out = Vec::new();
    while let Some(a) = host.poll_action() {
        match a {
            Action::Send(st) | Action::Reroute(st) => out.push(st),
            Action::Broadcast {
                stanza: template,
                to,
            } => {
                for t in to {
                    let mut st = template.clone();
                    stanza::set(&mut st, "to", &t);
                    out.push(st);
                }
            }
        }
    }
    let mut to_users = Vec::new();
    for st in out {
        match ring_key(&st, served) {
            Some(key) => {
                // Refused only when the node is overloaded or leaving: the
                // stanza (for a ring JID, from a service) is dropped, and
                // what waits for it times out.
                let _ = sn
                    .node
                    .route(now, key, STANZA, stanza::to_bytes(&st), false);
            }
            None => to_users.push(st),
        }
    }
    to_users
}

/// The key of a stanza for a ring JID, or `None` for a user's.
fn ring_key(st: &Element, served: &Served) -> Option<Key> {
    let to = stanza::to(st)?;
    let domain = Domain::of_jid(to).ok()?;
    if !served.contains(&domain) {
        return None;
    }
    routing_key(st, served).or_else(|| dht::keys::jid_key(to).ok())
}

/// Schedules the rooms' creation from `start`; returns when the last
/// member has had time to join.
pub(super) fn schedule_rooms(sim: &mut Sim, p: &RoomParams, start: Time) -> Time {
    sim.rooms = Some(Rooms::new(p));
    let spread = us(Duration::from_millis(50));
    for room in 0..p.rooms as u32 {
        let at = start + u64::from(room) * spread;
        sim.schedule(
            at,
            SimEvent::Room {
                intent: Intent::Join { room, member: 0 },
            },
        );
        sim.schedule(
            at + us(Duration::from_secs(3)),
            SimEvent::Room {
                intent: Intent::Configure { room },
            },
        );
        for member in 1..p.members as u32 {
            let jitter = sim.rng.random_range(0..us(Duration::from_secs(3)));
            sim.schedule(
                at + us(Duration::from_secs(6)) + jitter,
                SimEvent::Room {
                    intent: Intent::Join { room, member },
                },
            );
        }
    }
    start + p.rooms as u64 * spread + us(Duration::from_secs(15))
}

/// Schedules the measured phase's messages.
pub(super) fn schedule_talk(sim: &mut Sim, p: &RoomParams, t0: Time, span: Time) {
    if let Some(r) = sim.rooms.as_mut() {
        r.start_measuring();
    }
    let count = (p.messages_per_s * span as f64 / 1e6) as u64;
    for _ in 0..count {
        let at = t0 + sim.rng.random_range(0..span.max(1));
        sim.schedule(at, SimEvent::RoomTalk);
    }
}

impl Sim {
    /// Stanzas reached users: they react (joining again after a takeover
    /// or a refused join, two seconds later).
    pub(super) fn deliver_to_users(&mut self, stanzas: Vec<Element>) {
        let Some(rooms) = self.rooms.as_mut() else {
            return;
        };
        let mut again = Vec::new();
        for st in &stanzas {
            again.extend(rooms.received(st, self.now));
        }
        let at = self.now + us(Duration::from_secs(2));
        for intent in again {
            self.schedule(at, SimEvent::Room { intent });
        }
    }

    /// A stanza envelope reached the node responsible for its key.
    pub(super) fn stanza_delivered(&mut self, slot: u32, payload: &[u8]) {
        let Some(st) = stanza::parse(payload) else {
            return;
        };
        if let Some(rooms) = self.rooms.as_mut() {
            rooms.accepted(&st, slot);
        }
        let (now, unix) = (self.instant(), super::unix(self.now));
        if let Some(sn) = self.slots[slot as usize].as_mut()
            && let (Some(host), Some(rep)) = (sn.host.as_mut(), sn.rep.as_mut())
        {
            host.handle_stanza(now, unix, st, rep, &sn.node);
        }
    }

    /// A stanza envelope came back: a user's gets the error its entry node
    /// would answer with.
    pub(super) fn stanza_bounced(&mut self, payload: &[u8]) {
        let Some(st) = stanza::parse(payload) else {
            return;
        };
        let Some(rooms) = self.rooms.as_mut() else {
            return;
        };
        let again = rooms.bounced(&st);
        let at = self.now + us(Duration::from_secs(2));
        for intent in again {
            self.schedule(at, SimEvent::Room { intent });
        }
    }

    /// A user's stanza enters the ring at a random live node.
    pub(super) fn room_send(&mut self, intent: Intent) {
        if self.live.is_empty() {
            return;
        }
        let entry = self.live[self.rng.random_range(0..self.live.len())];
        let now_us = self.now;
        let Some(st) = self
            .rooms
            .as_mut()
            .and_then(|r| r.stanza(intent, entry, now_us))
        else {
            return;
        };
        let Some(key) = ring_key(&st, &self.served) else {
            return;
        };
        let now = self.instant();
        let routed = self.slots[entry as usize].as_mut().map(|sn| {
            sn.node
                .route(now, key, STANZA, stanza::to_bytes(&st), false)
        });
        if !matches!(routed, Some(Ok(_))) {
            self.stanza_bounced(stanza::to_string(&st).as_bytes());
        }
        self.flush(entry);
    }

    /// A random member of a random room says something (if it is in).
    pub(super) fn room_talk(&mut self) {
        let Some(rooms) = self.rooms.as_ref() else {
            return;
        };
        let n = self.p.rooms.rooms as u32;
        let room = self.rng.random_range(0..n.max(1));
        let present = rooms.present(room);
        if present.is_empty() {
            return;
        }
        let member = present[self.rng.random_range(0..present.len())];
        self.room_send(Intent::Say { room, member });
    }
}
