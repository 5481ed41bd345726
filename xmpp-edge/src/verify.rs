//! Dialback verification (XEP-0220 §2.1.2): to check a key a remote server
//! presented on an inbound stream, we open a stream to the claimed domain's
//! authoritative server and ask it (`db:verify`).
//!
//! Every `db:result` an attacker sends could make us connect to a third
//! party, so these connections are a resource to bound: one verification
//! connection per (our domain, their domain) pair at a time, shared by all
//! requests for that pair (pipelined, answers matched by stream id); at
//! most `max_verifications` pairs at once and a bounded queue per pair;
//! every request answered within the handshake timeout. A request over any
//! bound is answered at once with a dialback error (`resource-constraint`),
//! never queued without limit.

use crate::domain::Domain;
use crate::negotiation::inbound::{Verdict, VerifyRequest};
use crate::negotiation::outbound::{OutboundOutput, Purpose};
use crate::outbound::{RESOLVE_TIMEOUT, establish, spawn_reader, write};
use crate::shared::{EdgeStats, Gauge, Shared};
use crate::xml_write::STREAM_END;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Requests queued per pair of domains.
const QUEUE_PER_PAIR: usize = 32;
/// A verification connection with nothing to do closes after this.
const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// The answer to one request, for the inbound stream that asked.
#[derive(Debug)]
pub(crate) struct VerifyDone {
    pub(crate) originating: Domain,
    pub(crate) receiving: Domain,
    pub(crate) verdict: Verdict,
}

struct Job {
    req: VerifyRequest,
    reply: mpsc::Sender<VerifyDone>,
}

impl Job {
    fn answer(self, verdict: Verdict) {
        let done = VerifyDone {
            originating: self.req.originating,
            receiving: self.req.receiving,
            verdict,
        };
        // The asking stream allows as many answers in flight as it may
        // have requests pending; if it has gone, nobody waits.
        let _ = self.reply.try_send(done);
    }
}

/// The verification connections of an edge.
pub(crate) struct Verifier {
    max_pairs: usize,
    /// (receiving = ours, originating = theirs) -> the pair's queue.
    pairs: Mutex<HashMap<(Domain, Domain), mpsc::Sender<Job>>>,
}

impl Verifier {
    pub(crate) fn new(max_pairs: usize) -> Verifier {
        Verifier {
            max_pairs: max_pairs.max(1),
            pairs: Mutex::new(HashMap::new()),
        }
    }

    /// Starts checking `req`; the verdict goes to `reply`.
    pub(crate) fn start(
        &self,
        shared: &Arc<Shared>,
        req: VerifyRequest,
        reply: mpsc::Sender<VerifyDone>,
    ) {
        let pair = (req.receiving.clone(), req.originating.clone());
        let job = Job { req, reply };
        let Ok(mut pairs) = self.pairs.lock() else {
            return job.answer(Verdict::Error(DefinedCondition::InternalServerError));
        };
        let job = match pairs.get(&pair) {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(job)) => {
                    drop(pairs);
                    EdgeStats::bump(&shared.stats.verifications_refused);
                    return job.answer(Verdict::Error(DefinedCondition::ResourceConstraint));
                }
                Err(mpsc::error::TrySendError::Closed(job)) => job,
            },
            None => job,
        };
        pairs.retain(|_, tx| !tx.is_closed());
        if pairs.len() >= self.max_pairs {
            drop(pairs);
            EdgeStats::bump(&shared.stats.verifications_refused);
            return job.answer(Verdict::Error(DefinedCondition::ResourceConstraint));
        }
        let (tx, rx) = mpsc::channel(QUEUE_PER_PAIR);
        let _ = tx.try_send(job);
        pairs.insert(pair.clone(), tx);
        drop(pairs);
        let shared2 = shared.clone();
        let running = shared.tasks.enter();
        tokio::spawn(async move {
            let _running = running;
            run_pair(&shared2, &pair.0, &pair.1, rx).await;
        });
    }
}

/// One verification connection from `local` (ours) to `remote`'s
/// authoritative server, serving the pair's queue until it is idle.
async fn run_pair(shared: &Shared, local: &Domain, remote: &Domain, mut rx: mpsc::Receiver<Job>) {
    let _open = Gauge::up(&shared.stats.verifications_open);
    let deadline = shared.cfg.handshake_timeout + RESOLVE_TIMEOUT;
    let est =
        tokio::time::timeout(deadline, establish(shared, local, remote, Purpose::Verify)).await;
    let est = match est {
        Ok(Ok(e)) => e,
        Ok(Err(f)) => {
            tracing::info!(%remote, "dialback verification failed: {f}");
            rx.close();
            while let Ok(job) = rx.try_recv() {
                job.answer(Verdict::Error(f.condition()));
            }
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "dialback verification timed out");
            rx.close();
            while let Ok(job) = rx.try_recv() {
                job.answer(Verdict::Error(DefinedCondition::RemoteServerTimeout));
            }
            return;
        }
    };
    let mut machine = est.machine;
    let mut writer = est.writer;
    let mut erx = spawn_reader(est.reader);
    // Requests sent, by stream id, with when they expire.
    let mut waiting: HashMap<String, (Job, Instant)> = HashMap::new();
    let mut shutdown = shared.shutdown.clone();
    let mut open = true;
    while open {
        let expiry = waiting.values().map(|(_, t)| *t).min();
        let idle_until = Instant::now() + IDLE_CLOSE;
        tokio::select! {
            job = rx.recv(), if open => match job {
                Some(job) => {
                    machine.verify(&job.req.stream_id, &job.req.key);
                    let until = Instant::now() + shared.cfg.handshake_timeout;
                    if let Some((old, _)) = waiting.insert(job.req.stream_id.clone(), (job, until)) {
                        old.answer(Verdict::Error(DefinedCondition::Conflict));
                    }
                }
                None => open = false,
            },
            el = erx.recv() => match el.flatten() {
                Some(el) => machine.handle_element(el),
                None => machine.handle_end(),
            },
            _ = tokio::time::sleep_until(expiry.unwrap_or(idle_until).into()) => {
                let now = Instant::now();
                if waiting.is_empty() && rx.is_empty() {
                    let _ = write(shared, &mut writer, STREAM_END).await;
                    open = false;
                }
                let late: Vec<String> = waiting
                    .iter()
                    .filter(|(_, (_, t))| *t <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in late {
                    if let Some((job, _)) = waiting.remove(&id) {
                        job.answer(Verdict::Error(DefinedCondition::RemoteServerTimeout));
                    }
                }
            }
            _ = shutdown.changed() => open = false,
        }
        while let Some(out) = machine.poll_output() {
            match out {
                OutboundOutput::Write(s) => {
                    open &= write(shared, &mut writer, &s).await.is_ok();
                }
                OutboundOutput::Verified { id, valid } => {
                    if let Some((job, _)) = waiting.remove(&id) {
                        job.answer(if valid {
                            Verdict::Valid
                        } else {
                            Verdict::Invalid
                        });
                    }
                }
                OutboundOutput::VerifyAnswered { valid } => EdgeStats::bump(if valid {
                    &shared.stats.verify_valid
                } else {
                    &shared.stats.verify_invalid
                }),
                OutboundOutput::Failed(f) => {
                    tracing::info!(%remote, "verification stream ended: {f}");
                    open = false;
                }
                _ => {}
            }
        }
    }
    // Dropping the receiver ends the reader.
    drop(erx);
    rx.close();
    for (_, (job, _)) in waiting {
        job.answer(Verdict::Error(DefinedCondition::RemoteServerTimeout));
    }
    while let Ok(job) = rx.try_recv() {
        job.answer(Verdict::Error(DefinedCondition::RemoteServerTimeout));
    }
}
