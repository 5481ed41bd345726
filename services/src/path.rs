//! The stanza path: where each stanza goes, and what comes back when it
//! cannot get there. A sans-IO machine (see docs/architecture.md, "The
//! data path of an inbound stanza"): the node hands it stanzas and
//! envelopes, it answers with [`PathOutput`]s the node carries out.
//!
//! * To a ring JID: routed as a `Stanza` envelope to the key of its bare
//!   JID (or of the PubSub node it names); the responsible node serves it
//!   ([`PathOutput::Serve`]).
//! * To a remote domain: handed to the edge chosen by rendezvous hashing
//!   ([`crate::edges`]): this node's own edge directly, another as a
//!   `Service(EDGE_OUT)` envelope keyed to that edge's id. An envelope
//!   whose edge has left is re-addressed once, then answered with
//!   `remote-server-timeout`.
//! * One stanza for many recipients ([`StanzaPath::broadcast`]): per
//!   remote domain one fan-out envelope to that domain's edge, ring JIDs
//!   one by one.
//! * Anything that cannot be delivered comes back to its sender as an RFC
//!   6120 stanza error, unless it is an error itself (errors are never
//!   answered, which also ends any loop).
//!
//! The node passes in the live edges it knows (`edges`), itself included
//! when it is one: that is the only view of the ring the path needs.

use crate::fanout::{self, FanoutMsg, MAX_RECIPIENTS_PER_ENVELOPE};
use crate::stanza::{self, DefinedCondition};
use crate::{SERVICE_EDGE_FANOUT, SERVICE_EDGE_OUT, SERVICE_EDGE_OUT_RETRY, edges, services};
use dht::{EnvelopeKind, Key, NodeId, RouteError};
use std::collections::VecDeque;
use xmpp_addr::{Domain, Served};
use xmpp_parsers::minidom::Element;

/// What the node is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum PathOutput {
    /// Route `stanza` through the ring to `key` as an envelope of `kind`;
    /// if the ring refuses it, tell [`StanzaPath::handle_route_error`].
    Route {
        key: Key,
        kind: EnvelopeKind,
        stanza: Element,
    },
    /// Route a fan-out envelope to the edge `edge`.
    RouteFanout { edge: NodeId, msg: FanoutMsg },
    /// Hand `stanza` to this node's own edge; what it refuses goes to
    /// [`StanzaPath::handle_undeliverable`].
    ToEdge(Element),
    /// This node is responsible for the stanza's `to`: serve it (the
    /// services host).
    Serve(Element),
}

/// The stanza path of one node.
pub struct StanzaPath {
    served: Served,
    me: NodeId,
    /// Whether this node runs an edge.
    has_edge: bool,
    out: VecDeque<PathOutput>,
}

impl StanzaPath {
    /// The path of node `me`, serving `served`'s domains.
    pub fn new(served: Served, me: NodeId, has_edge: bool) -> StanzaPath {
        StanzaPath {
            served,
            me,
            has_edge,
            out: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<PathOutput> {
        self.out.pop_front()
    }

    /// Sends a stanza from the ring towards its destination.
    pub fn send(&mut self, st: Element, edges: &[NodeId]) {
        let Some(to) = stanza::to(&st) else {
            tracing::debug!("dropping a stanza without 'to'");
            return;
        };
        let Ok(domain) = Domain::of_jid(to) else {
            return self.reply_error(&st, DefinedCondition::JidMalformed, edges);
        };
        if self.served.contains(&domain) {
            return self.route(st, edges);
        }
        self.send_out(st, &domain, SERVICE_EDGE_OUT, None, edges);
    }

    /// Routes a stanza for a ring JID to its responsible node (a stanza
    /// from the federation, or from a service).
    pub fn route(&mut self, st: Element, edges: &[NodeId]) {
        let key = match services::routing_key(&st, &self.served) {
            Some(k) => k,
            None => match stanza::to(&st).map(dht::keys::jid_key) {
                Some(Ok(k)) => k,
                _ => return self.reply_error(&st, DefinedCondition::JidMalformed, edges),
            },
        };
        self.out.push_back(PathOutput::Route {
            key,
            kind: EnvelopeKind::Stanza,
            stanza: st,
        });
    }

    /// One stanza (without `to`) for many recipients.
    pub fn broadcast(&mut self, template: Element, to: Vec<String>, edges: &[NodeId]) {
        let text = stanza::to_string(&template);
        for (domain, jids) in fanout::by_domain(to) {
            let addressed = |j: &String| {
                let mut st = template.clone();
                stanza::set(&mut st, "to", j);
                st
            };
            if self.served.contains(&domain) {
                for j in &jids {
                    self.route(addressed(j), edges);
                }
                continue;
            }
            let Some(edge) = edges::pick(edges, domain.as_str()) else {
                // Nobody to carry them: each recipient's copy is dropped
                // (a broadcast has no single sender to answer).
                tracing::warn!(%domain, n = jids.len(), "no edge to fan a broadcast out to");
                continue;
            };
            if edge == self.me && self.has_edge {
                for j in &jids {
                    self.out.push_back(PathOutput::ToEdge(addressed(j)));
                }
                continue;
            }
            for chunk in jids.chunks(MAX_RECIPIENTS_PER_ENVELOPE) {
                self.out.push_back(PathOutput::RouteFanout {
                    edge,
                    msg: FanoutMsg {
                        stanza: text.clone(),
                        to: chunk.to_vec(),
                    },
                });
            }
        }
    }

    /// An envelope for which this node is responsible (its key is `key`).
    pub fn handle_delivered(
        &mut self,
        kind: EnvelopeKind,
        key: Key,
        payload: &[u8],
        edges: &[NodeId],
    ) {
        if kind == EnvelopeKind::Service(SERVICE_EDGE_FANOUT) {
            let Some(stanzas) = FanoutMsg::decode(payload).and_then(|m| m.expand()) else {
                tracing::warn!("undecodable fan-out envelope");
                return;
            };
            let mine = key == self.me && self.has_edge;
            for st in stanzas {
                if mine {
                    self.out.push_back(PathOutput::ToEdge(st));
                } else {
                    // The edge it was for has left: one by one through
                    // another.
                    self.forward_out(st, SERVICE_EDGE_OUT_RETRY, Some(key), edges);
                }
            }
            return;
        }
        let Some(st) = stanza::parse(payload) else {
            tracing::warn!(?kind, "undecodable stanza in an envelope");
            return;
        };
        match kind {
            EnvelopeKind::Stanza => self.out.push_back(PathOutput::Serve(st)),
            EnvelopeKind::Service(tag @ (SERVICE_EDGE_OUT | SERVICE_EDGE_OUT_RETRY)) => {
                if key == self.me && self.has_edge {
                    self.out.push_back(PathOutput::ToEdge(st));
                } else if tag == SERVICE_EDGE_OUT {
                    // The chosen edge has left: choose again, once.
                    self.forward_out(st, SERVICE_EDGE_OUT_RETRY, Some(key), edges);
                } else {
                    self.reply_error(&st, DefinedCondition::RemoteServerTimeout, edges);
                }
            }
            _ => {}
        }
    }

    /// An envelope this node sent came back (the dht names the reason's
    /// RFC 6120 condition).
    pub fn handle_bounced(
        &mut self,
        kind: EnvelopeKind,
        payload: &[u8],
        reason: &str,
        edges: &[NodeId],
    ) {
        if !matches!(kind, EnvelopeKind::Stanza | EnvelopeKind::Service(_)) {
            return;
        }
        if kind == EnvelopeKind::Service(SERVICE_EDGE_FANOUT) {
            // A broadcast's copies have no sender to answer.
            return;
        }
        if let Some(st) = stanza::parse(payload) {
            tracing::debug!(reason, "stanza bounced in the ring");
            self.reply_error(&st, stanza::condition(reason), edges);
        }
    }

    /// The ring refused to route a stanza [`PathOutput::Route`] asked for.
    pub fn handle_route_error(&mut self, st: &Element, e: &RouteError, edges: &[NodeId]) {
        tracing::debug!("cannot route a stanza: {e}");
        let condition = match e {
            RouteError::TooLarge(_) => DefinedCondition::PolicyViolation,
            RouteError::Overloaded(_) => DefinedCondition::ResourceConstraint,
            RouteError::ShuttingDown => DefinedCondition::RemoteServerTimeout,
        };
        self.reply_error(st, condition, edges);
    }

    /// This node's edge could not deliver a stanza (at once, or later).
    pub fn handle_undeliverable(
        &mut self,
        st: &Element,
        condition: DefinedCondition,
        edges: &[NodeId],
    ) {
        self.reply_error(st, condition, edges);
    }

    /// Sends a stanza for a remote domain out through an edge other than
    /// `excluding`.
    fn forward_out(&mut self, st: Element, tag: u8, excluding: Option<NodeId>, edges: &[NodeId]) {
        match stanza::to(&st).map(Domain::of_jid) {
            Some(Ok(domain)) => self.send_out(st, &domain, tag, excluding, edges),
            _ => self.reply_error(&st, DefinedCondition::JidMalformed, edges),
        }
    }

    /// Hands a stanza for a remote domain to its edge.
    fn send_out(
        &mut self,
        st: Element,
        domain: &Domain,
        tag: u8,
        excluding: Option<NodeId>,
        edges: &[NodeId],
    ) {
        let candidates: Vec<NodeId> = edges
            .iter()
            .copied()
            .filter(|e| Some(*e) != excluding)
            .collect();
        let Some(edge) = edges::pick(&candidates, domain.as_str()) else {
            tracing::warn!(%domain, "no edge known to carry a stanza out");
            return self.reply_error(&st, DefinedCondition::RemoteServerNotFound, edges);
        };
        tracing::debug!(%domain, edge = %edge.short(), "stanza for the federation");
        if edge == self.me && self.has_edge {
            return self.out.push_back(PathOutput::ToEdge(st));
        }
        self.out.push_back(PathOutput::Route {
            key: edge,
            kind: EnvelopeKind::Service(tag),
            stanza: st,
        });
    }

    /// Answers `st`'s sender with `condition` (never answering an error).
    fn reply_error(&mut self, st: &Element, condition: DefinedCondition, edges: &[NodeId]) {
        if let Some(reply) = stanza::error_reply(st, condition, None) {
            self.send(reply, edges);
        }
    }
}

#[cfg(test)]
mod tests;
