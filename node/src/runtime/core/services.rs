//! The core's side of the services: it hands stanzas, the replicator's
//! `Loaded`/`Confirmed` outputs and timers to the services host
//! ([`ServiceHost`], a sans-IO machine in `ring-services`, see
//! docs/architecture.md, "The services host"), and carries out what the
//! host asks: stanzas to send, broadcasts to fan out per domain.

use super::Core;
use crate::api::ServicesReport;
use crate::xmpp::Action;
use crate::xmpp::host::ServiceHost;
use crate::xmpp::services::Services;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use xmpp_parsers::minidom::Element;

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The fan-out counters (the host counts the rest).
#[derive(Default)]
pub(crate) struct FanoutCounters {
    pub(super) envelopes: u64,
    pub(super) stanzas: u64,
}

pub(crate) fn new_host(
    settings: &crate::config::NodeSettings,
    host: String,
    seed: u64,
    base: u64,
    now: Instant,
) -> ServiceHost {
    let services = Services::new(
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
    );
    ServiceHost::new(services, base, settings.records.sweep_every, now)
}

impl Core {
    /// A stanza for a ring JID this node is responsible for.
    pub(super) fn run_services(&mut self, now: Instant, st: Element) {
        self.host
            .handle_stanza(now, unix_now(), st, &mut self.records, &self.node);
    }

    /// The replicator's answer for a load of the host's.
    pub(super) fn service_load_done(&mut self, now: Instant, token: u64) {
        self.host
            .handle_loaded(now, unix_now(), token, &mut self.records, &self.node);
    }

    /// The replicas confirmed a write of the host's.
    pub(super) fn write_stored(&mut self, token: u64) {
        self.host.handle_confirmed(token);
    }

    /// The host's timers (sweeps, history writes).
    pub(super) fn on_service_timers(&mut self, now: Instant) {
        if self.host.poll_timeout().is_some_and(|t| t <= now) {
            self.host
                .handle_timeout(now, unix_now(), &mut self.records, &self.node);
        }
    }

    /// Ends the services' turn and carries out what the host released.
    /// Returns whether anything was written or sent.
    pub(super) fn end_service_turn(&mut self, now: Instant) -> bool {
        let mut any = self
            .host
            .end_turn(now, unix_now(), &mut self.records, &self.node);
        // What the host releases now (on a ring without other replicas, at
        // once) is answered only once its state is durable here.
        if let Err(e) = self.records.commit() {
            tracing::error!("cannot make service state durable: {e}");
            crate::metrics::record_commit_failed();
            return any;
        }
        while let Some(a) = self.host.poll_action() {
            any = true;
            match a {
                Action::Send(st) => self.send_stanza(st),
                Action::Reroute(st) => self.route_stanza(st),
                Action::Broadcast { stanza, to } => self.broadcast(stanza, to),
            }
        }
        any
    }

    pub(super) fn services_report(&self) -> ServicesReport {
        let services = self.host.services();
        let mut rooms: Vec<String> = services.muc.rooms().cloned().collect();
        rooms.sort();
        let room_count = rooms.len();
        rooms.truncate(100);
        let mut nodes: Vec<String> = services
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
            occupants: services.muc.occupants(),
            pubsub_nodes: nodes,
            pubsub_node_count: node_count,
            subscriptions: services.pubsub.subscriptions(),
            takeovers: self.host.counters().takeovers,
            fanout_envelopes: self.fanout.envelopes,
            fanout_stanzas: self.fanout.stanzas,
        }
    }
}
