//! The core's side of the record store: it moves bytes between the
//! replicator state machine (`ring-records`, see docs/architecture.md, "A
//! record write") and the ring, and hands answers to the admin API and the
//! services. No protocol decision is made here.

use super::Core;
use crate::api::{RecordReport, RecordsReport};
use crate::records::{Answer, Output, RecordMsg, RecordOp, RecordOutcome, RequestError};
use bytes::Bytes;
use dht::{BounceReason, Envelope, EnvelopeKind};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::oneshot;

/// The record store's clients on this node: admin requests waiting for
/// their answers.
#[derive(Default)]
pub(crate) struct RecordClients {
    replies: HashMap<u64, oneshot::Sender<RecordReport>>,
    next: u64,
}

/// The admin API's report of `op`'s outcome.
fn report(op: &RecordOp, outcome: Result<RecordOutcome, RequestError>) -> RecordReport {
    let mut r = RecordReport {
        op: match op {
            RecordOp::Put { .. } => "put",
            RecordOp::Create { .. } => "create",
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
        Ok(RecordOutcome::Refused(e)) => r.error = Some(e),
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

fn answer_report(a: Answer) -> RecordReport {
    let mut r = report(&a.op, a.outcome);
    r.hops = a.hops;
    r.attempts = a.attempts;
    r
}

impl Core {
    /// A client's request from the admin API (`local`: this node's own
    /// copy, without asking the ring).
    pub(super) fn record_request(
        &mut self,
        now: Instant,
        op: RecordOp,
        local: bool,
        reply: oneshot::Sender<RecordReport>,
    ) {
        if local {
            let outcome = match self.records.store().get(op.name()) {
                Ok(Some(c)) if !c.deleted => Ok(RecordOutcome::Found {
                    version: c.version,
                    value: c.value,
                }),
                Ok(_) => Ok(RecordOutcome::NotFound),
                Err(e) => Err(RequestError::Limits(e)),
            };
            let _ = reply.send(report(&op, outcome));
            return;
        }
        let c = &mut self.record_clients;
        c.next += 1;
        let client = c.next;
        match self.records.request(now, op, client) {
            Ok(()) => {
                self.record_clients.replies.insert(client, reply);
            }
            Err(a) => {
                let _ = reply.send(answer_report(a));
            }
        }
    }

    /// A `Record` envelope delivered here.
    pub(super) fn on_record_envelope(&mut self, now: Instant, env: &Envelope) {
        let Some(msg) = RecordMsg::decode(&env.payload) else {
            tracing::warn!("undecodable record message");
            return;
        };
        self.records
            .handle_message(now, &self.node, env.key, env.hops, msg);
    }

    /// A `Record` envelope of ours came back.
    pub(super) fn on_record_bounced(&mut self, reason: BounceReason, env: &Envelope) {
        if let Some(msg) = RecordMsg::decode(&env.payload) {
            self.records.handle_bounce(&msg, reason.xmpp_condition());
        }
    }

    /// The record store's timers.
    pub(super) fn on_record_timers(&mut self, now: Instant) {
        if self.records.poll_timeout().is_some_and(|t| t <= now) {
            self.records.handle_timeout(now, &self.node);
        }
    }

    /// Carries out what the replicator asks; returns whether it asked
    /// anything.
    pub(super) fn drain_records(&mut self, now: Instant) -> bool {
        // The turn's writes become durable, in one sync, before anything
        // about them (copies, acknowledgements, answers) is sent.
        if let Err(e) = self.records.commit() {
            // The writes are kept and tried again next turn; until then
            // nothing about them leaves the node.
            tracing::error!("cannot make record writes durable: {e}");
            crate::metrics::record_commit_failed();
            return false;
        }
        let mut any = false;
        while let Some(out) = self.records.poll_output() {
            any = true;
            match out {
                Output::Route { to, msg } => {
                    let payload = Bytes::from(msg.encode());
                    if let Err(e) = self
                        .node
                        .route(now, to, EnvelopeKind::Record, payload, false)
                    {
                        tracing::debug!("cannot route a record message: {e}");
                        self.records.handle_bounce(&msg, "resource-constraint");
                    }
                }
                Output::Answer { client, answer } => {
                    if let Some(reply) = self.record_clients.replies.remove(&client) {
                        let _ = reply.send(answer_report(answer));
                    }
                }
                Output::Confirmed { token } => self.write_stored(token),
                Output::Loaded { token } => {
                    if !self.user_load_done(now, token) {
                        self.service_load_done(now, token);
                    }
                }
            }
        }
        any
    }

    pub(super) fn records_report(&self) -> RecordsReport {
        let s = self.records.store();
        let c = self.records.counters();
        RecordsReport {
            count: s.len(),
            bytes: s.bytes(),
            max_bytes: s.limits().max_store_bytes,
            replicas: self.records.config().replicas,
            requests: c.requests,
            coordinated: c.coordinated,
            replicas_in: c.replicas_in,
            replicas_out: c.replicas_out,
            refused: c.refused,
        }
    }
}
