//! Stanzas in the core: the stanza path ([`StanzaPath`], a sans-IO machine
//! in `ring-services`, see docs/architecture.md, "The data path of an
//! inbound stanza") decides where each goes and what error comes back;
//! this file carries its decisions out (routes envelopes, hands stanzas to
//! this node's edge or to the services host) and feeds it what happens.

use super::Core;
use crate::xmpp::path::{PathOutput, StanzaPath};
use crate::xmpp::{
    SERVICE_C2S_DELIVER, SERVICE_C2S_LEASE, SERVICE_C2S_OUTBOUND, SERVICE_EDGE_FANOUT, stanza,
};
use bytes::Bytes;
use dht::{BounceReason, Envelope, EnvelopeKind, NodeId, Role};
use std::time::Instant;
use xmpp_edge::EdgeEvent;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// The stanza path of a node with these settings.
pub(crate) fn new_path(
    settings: &crate::config::NodeSettings,
    me: NodeId,
    has_edge: bool,
) -> StanzaPath {
    StanzaPath::new(settings.served.clone(), me, has_edge)
}

impl Core {
    /// Live edges this node knows (itself included when it is one).
    pub(super) fn known_edges(&self) -> Vec<NodeId> {
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
        out
    }

    /// Sends a stanza from the ring towards its destination.
    pub(super) fn send_stanza(&mut self, st: Element) {
        let edges = self.known_edges();
        self.path.send(st, &edges);
    }

    /// Routes a stanza for a ring JID to its responsible node.
    pub(super) fn route_stanza(&mut self, st: Element) {
        let edges = self.known_edges();
        self.path.route(st, &edges);
    }

    /// One stanza to many JIDs.
    pub(super) fn broadcast(&mut self, template: Element, to: Vec<String>) {
        let edges = self.known_edges();
        self.path.broadcast(template, to, &edges);
    }

    /// A stanza or fan-out envelope for which this node is responsible.
    pub(super) fn on_delivered_stanza(&mut self, now: Instant, env: &Envelope) {
        tracing::debug!(kind = ?env.kind, hops = env.hops, "envelope delivered here");
        match env.kind {
            EnvelopeKind::Service(SERVICE_C2S_LEASE) => {
                return self.on_lease(now, env.origin, &env.payload);
            }
            EnvelopeKind::Service(SERVICE_C2S_DELIVER) => {
                return self.on_forwarded(now, env.key, &env.payload);
            }
            EnvelopeKind::Service(SERVICE_C2S_OUTBOUND) => {
                return self.on_outbound(now, &env.payload);
            }
            _ => {}
        }
        let edges = self.known_edges();
        self.path
            .handle_delivered(env.kind, env.key, &env.payload, &edges);
    }

    /// A stanza envelope this node sent came back.
    pub(super) fn on_bounced_stanza(&mut self, reason: BounceReason, env: &Envelope) {
        let edges = self.known_edges();
        self.path
            .handle_bounced(env.kind, &env.payload, reason.xmpp_condition(), &edges);
    }

    /// Something from this node's s2s edge.
    pub(super) fn on_edge_event(&mut self, ev: EdgeEvent) {
        let edges = self.known_edges();
        match ev {
            EdgeEvent::Inbound(st) => match self.local_target(&st) {
                // A full JID of a session on this very node.
                Some(id) => self.hand_to_local(id, st),
                None => self.path.route(st, &edges),
            },
            EdgeEvent::Undeliverable(u) => {
                self.path
                    .handle_undeliverable(&u.stanza, u.condition, &edges)
            }
        }
    }

    /// Carries out what the stanza path asks; returns whether it asked
    /// anything.
    pub(super) fn drain_path(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(o) = self.path.poll_output() {
            any = true;
            match o {
                PathOutput::Route { key, kind, stanza } => {
                    tracing::debug!(to = stanza::to(&stanza), key = %key.short(), "routing a stanza");
                    if let Err(e) =
                        self.node
                            .route(now, key, kind, stanza::to_bytes(&stanza), false)
                    {
                        let edges = self.known_edges();
                        self.path.handle_route_error(&stanza, &e, &edges);
                    }
                }
                PathOutput::RouteFanout { edge, msg } => {
                    let n = msg.to.len() as u64;
                    match self.node.route(
                        now,
                        edge,
                        EnvelopeKind::Service(SERVICE_EDGE_FANOUT),
                        Bytes::from(msg.encode()),
                        false,
                    ) {
                        Ok(_) => {
                            self.fanout.envelopes += 1;
                            self.fanout.stanzas += n;
                        }
                        Err(e) => tracing::warn!("cannot fan a broadcast out: {e}"),
                    }
                }
                PathOutput::ToEdge(st) => {
                    let refused = match &self.edge {
                        Some(edge) => edge.send(st).err().map(|u| (u.stanza, u.condition)),
                        None => Some((st, DefinedCondition::RemoteServerNotFound)),
                    };
                    if let Some((st, condition)) = refused {
                        let edges = self.known_edges();
                        self.path.handle_undeliverable(&st, condition, &edges);
                    }
                }
                PathOutput::Serve(st) => {
                    self.net.stanzas_handled += 1;
                    self.serve(now, st);
                }
            }
        }
        any
    }
}
