//! Stanzas in the core: where each one goes, what comes back.
//!
//! * To a ring JID: routed as a `Stanza` envelope to the key of its bare
//!   JID; the responsible node answers through [`services`].
//! * To a remote domain: handed to the edge chosen by rendezvous hashing
//!   (directly when that is this node, else as a `Service(EDGE_OUT)`
//!   envelope keyed to that edge's id).
//! * Anything that cannot be delivered comes back to its sender as an RFC
//!   6120 stanza error, unless it is an error itself (errors are never
//!   answered, which also ends any loop).

use super::Core;
use crate::xmpp::{
    SERVICE_EDGE_FANOUT, SERVICE_EDGE_OUT, SERVICE_EDGE_OUT_RETRY, edges, services, stanza,
};
use dht::{BounceReason, Envelope, EnvelopeKind, NodeId, Role};
use std::time::Instant;
use xmpp_addr::Domain;
use xmpp_edge::EdgeEvent;
use xmpp_parsers::minidom::Element;

impl Core {
    /// Live edges this node knows (itself included when it is one).
    pub(super) fn known_edges(&self, excluding: Option<NodeId>) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self
            .node
            .table()
            .iter()
            .filter(|e| e.contact.role == Role::Edge && e.failures == 0)
            .map(|e| e.contact.id)
            .collect();
        if self.edge.is_some() {
            out.push(self.node.id());
        }
        out.retain(|id| Some(*id) != excluding);
        out
    }

    /// Sends a stanza from the ring towards its destination.
    pub(super) fn send_stanza(&mut self, now: Instant, st: Element) {
        let Some(to) = stanza::to(&st).map(str::to_string) else {
            tracing::debug!("dropping a stanza without 'to'");
            return;
        };
        let Ok(domain) = Domain::of_jid(&to) else {
            return self.reply_error(now, &st, "jid-malformed");
        };
        if self.settings.served.contains(&domain) {
            return self.route_stanza(now, st);
        }
        self.send_out(now, st, &domain, SERVICE_EDGE_OUT, None);
    }

    /// Sends a stanza for a remote domain out through an edge (its `to`
    /// names the domain).
    pub(super) fn forward_out(
        &mut self,
        now: Instant,
        st: Element,
        tag: u8,
        excluding: Option<NodeId>,
    ) {
        match stanza::to(&st).map(Domain::of_jid) {
            Some(Ok(domain)) => self.send_out(now, st, &domain, tag, excluding),
            _ => self.reply_error(now, &st, "jid-malformed"),
        }
    }

    /// Hands a stanza to this node's own edge; what it refuses at once
    /// goes back to its sender.
    pub(super) fn send_via_own_edge(&mut self, now: Instant, st: Element) {
        let refused = match &self.edge {
            Some(edge) => edge.send(st).err(),
            None => Some(Box::new(xmpp_edge::Undeliverable {
                stanza: st,
                condition: "remote-server-not-found",
            })),
        };
        if let Some(u) = refused {
            self.reply_error(now, &u.stanza, u.condition);
        }
    }

    /// Routes a stanza for a ring JID to its responsible node.
    pub(super) fn route_stanza(&mut self, now: Instant, st: Element) {
        let key = match services::routing_key(&st, &self.settings.served) {
            Some(k) => k,
            None => match stanza::to(&st).map(dht::keys::jid_key) {
                Some(Ok(k)) => k,
                _ => return self.reply_error(now, &st, "jid-malformed"),
            },
        };
        tracing::debug!(to = stanza::to(&st), key = %key.short(), "routing a stanza");
        if let Err(e) =
            self.node
                .route(now, key, EnvelopeKind::Stanza, stanza::to_bytes(&st), false)
        {
            tracing::debug!("cannot route a stanza: {e}");
            let cond = match e {
                dht::RouteError::TooLarge(_) => "policy-violation",
                dht::RouteError::Overloaded(_) => "resource-constraint",
                dht::RouteError::ShuttingDown => "remote-server-timeout",
            };
            self.reply_error(now, &st, cond);
        }
    }

    /// Hands a stanza for a remote domain to its edge.
    pub(super) fn send_out(
        &mut self,
        now: Instant,
        st: Element,
        domain: &Domain,
        tag: u8,
        excluding: Option<NodeId>,
    ) {
        let Some(edge_id) = edges::pick(&self.known_edges(excluding), domain.as_str()) else {
            tracing::warn!(%domain, "no edge known to carry a stanza out");
            return self.reply_error(now, &st, "remote-server-not-found");
        };
        tracing::debug!(%domain, edge = %edge_id.short(), "stanza for the federation");
        if edge_id == self.node.id() && self.edge.is_some() {
            return self.send_via_own_edge(now, st);
        }
        if self
            .node
            .route(
                now,
                edge_id,
                EnvelopeKind::Service(tag),
                stanza::to_bytes(&st),
                false,
            )
            .is_err()
        {
            self.reply_error(now, &st, "resource-constraint");
        }
    }

    /// Answers `st`'s sender with `condition` (never answering an error).
    pub(super) fn reply_error(&mut self, now: Instant, st: &Element, condition: &str) {
        if let Some(reply) = stanza::error_reply(st, condition, None) {
            self.send_stanza(now, reply);
        }
    }

    /// An envelope for which this node is responsible.
    pub(super) fn on_delivered(&mut self, now: Instant, env: Envelope) {
        if env.kind == EnvelopeKind::Record {
            return self.on_record_envelope(now, &env);
        }
        if env.kind == EnvelopeKind::Service(SERVICE_EDGE_FANOUT) {
            return self.on_fanout(now, &env);
        }
        let Some(st) = stanza::parse(&env.payload) else {
            if matches!(env.kind, EnvelopeKind::Stanza | EnvelopeKind::Service(_)) {
                tracing::warn!(kind = ?env.kind, "undecodable stanza in an envelope");
            }
            return;
        };
        tracing::debug!(kind = ?env.kind, to = stanza::to(&st), hops = env.hops, "stanza delivered here");
        match env.kind {
            EnvelopeKind::Stanza => {
                self.net.stanzas_handled += 1;
                self.run_services(now, st);
            }
            EnvelopeKind::Service(tag @ (SERVICE_EDGE_OUT | SERVICE_EDGE_OUT_RETRY)) => {
                if env.key == self.node.id() && self.edge.is_some() {
                    self.send_via_own_edge(now, st);
                } else if tag == SERVICE_EDGE_OUT {
                    // The chosen edge has left: choose again, once.
                    self.forward_out(now, st, SERVICE_EDGE_OUT_RETRY, Some(env.key));
                } else {
                    self.reply_error(now, &st, "remote-server-timeout");
                }
            }
            _ => {}
        }
    }

    /// An envelope this node sent came back.
    pub(super) fn on_bounced(&mut self, now: Instant, reason: BounceReason, env: Envelope) {
        if env.kind == EnvelopeKind::Record {
            return self.on_record_bounced(reason, &env);
        }
        if !matches!(env.kind, EnvelopeKind::Stanza | EnvelopeKind::Service(_)) {
            return;
        }
        if let Some(st) = stanza::parse(&env.payload) {
            tracing::debug!(?reason, "stanza bounced in the ring");
            self.reply_error(now, &st, reason.xmpp_condition());
        }
    }

    /// Something from this node's s2s edge.
    pub(super) fn on_edge_event(&mut self, now: Instant, ev: EdgeEvent) {
        match ev {
            EdgeEvent::Inbound(st) => self.route_stanza(now, st),
            EdgeEvent::Undeliverable(u) => self.reply_error(now, &u.stanza, u.condition),
        }
    }
}
