//! The driver of streams other servers open to us: it moves bytes between
//! the socket and an [`InboundStream`] state machine (which decides
//! everything), runs TLS when the machine says so, starts the dialback
//! verifications it asks for, and applies backpressure:
//!
//! * a peer that does not read our answers stops being read once its
//!   write queue is over its byte bound, and is closed when a write does
//!   not finish within the write timeout;
//! * a stanza is read only after the ring took the previous one (the
//!   owner's bounded channel), so a slow ring slows the peer down (TCP);
//! * before authentication the parser's byte and node limits are the small
//!   [`crate::xml::Limits::unauthenticated`] ones.
//!
//! Reads are never cancelled half-way: the read future owns the parser and
//! hands it back with the event, so a verification answer or a timer that
//! fires meanwhile leaves the parse where it was.

use crate::conn::BoxIo;
use crate::negotiation::inbound::{AuthMethod, InboundOutput, InboundStream};
use crate::shared::{EdgeEvent, EdgeStats, Shared};
use crate::verify::{Verifier, VerifyDone};
use crate::writer::Writer;
use crate::xml::{StreamEvent, XmlError, XmlStreamReader};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{BufReader, ReadHalf};
use tokio::sync::mpsc;

type Reader = XmlStreamReader<BufReader<ReadHalf<BoxIo>>>;

/// Elements read in a row before the connection's task yields.
const YIELD_EVERY: u32 = 32;
type Read = Pin<Box<dyn Future<Output = (Reader, Result<StreamEvent, XmlError>)> + Send>>;

/// Reads one event; the future owns the reader and gives it back.
fn read_one(mut r: Reader) -> Read {
    Box::pin(async move {
        let ev = r.next().await;
        (r, ev)
    })
}

/// How a document ended.
enum Next {
    Tls(Reader),
    Restart(Reader),
    Done,
}

/// Serves one inbound connection until it ends.
pub(crate) async fn serve(
    io: BoxIo,
    peer: SocketAddr,
    shared: Arc<Shared>,
    verifier: Arc<Verifier>,
) {
    let mut machine = InboundStream::new(shared.inbound.clone(), Instant::now(), rand::random());
    let (vtx, mut vrx) = mpsc::channel::<VerifyDone>(shared.cfg.max_pending_dialback.max(1));
    let mut io = io;
    loop {
        let (r, w) = tokio::io::split(io);
        let writer = Writer::spawn(w, shared.cfg.inbound_write_queue, shared.cfg.write_timeout);
        let limits = if machine.is_authenticated() {
            shared.cfg.limits
        } else {
            shared.cfg.limits.unauthenticated()
        };
        let reader = XmlStreamReader::new(BufReader::new(r), limits);
        let next = document(
            &mut machine,
            reader,
            &writer,
            (&vtx, &mut vrx),
            &shared,
            &verifier,
        )
        .await;
        if writer.timed_out() {
            EdgeStats::bump(&shared.stats.write_timeouts);
        }
        let (reader, tls) = match next {
            Next::Done => {
                writer.close().await;
                return;
            }
            Next::Tls(r) => (r, true),
            Next::Restart(r) => (r, false),
        };
        let Some(w) = writer.finish().await else {
            return;
        };
        let plain = reader.into_inner().into_inner().unsplit(w);
        if !tls {
            io = plain;
            continue;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(shared.server_tls.clone());
        match tokio::time::timeout(shared.cfg.handshake_timeout, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                let chain = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                machine.handle_tls(Instant::now(), chain);
                io = Box::new(tls);
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return;
            }
        }
    }
}

/// Runs one XML document of the connection.
async fn document(
    machine: &mut InboundStream,
    reader: Reader,
    writer: &Writer,
    (vtx, vrx): (&mpsc::Sender<VerifyDone>, &mut mpsc::Receiver<VerifyDone>),
    shared: &Arc<Shared>,
    verifier: &Verifier,
) -> Next {
    let limits = reader.limit_handle();
    let mut idle: Option<Reader> = Some(reader);
    let mut reading: Option<Read> = None;
    let mut shutdown = shared.shutdown.clone();
    // Elements handled since this task last gave the thread up: a peer
    // whose bytes are always there must not hold the runtime.
    let mut run = 0u32;
    loop {
        // 1. Do what the machine asks.
        while let Some(out) = machine.poll_output() {
            match out {
                InboundOutput::Write(s) => {
                    writer.write(s);
                }
                InboundOutput::StartTls | InboundOutput::Restart => {
                    // Only ever right after an element was read: the
                    // reader is ours.
                    let Some(r) = idle.take() else {
                        return Next::Done;
                    };
                    return if matches!(out, InboundOutput::StartTls) {
                        Next::Tls(r)
                    } else {
                        Next::Restart(r)
                    };
                }
                InboundOutput::Verify(req) => verifier.start(shared, req, vtx.clone()),
                InboundOutput::Authenticated { domain, method } => {
                    tracing::debug!(%domain, ?method, "inbound stream authenticated");
                    if method == AuthMethod::SaslExternal {
                        EdgeStats::bump(&shared.stats.sasl_external_ok);
                    }
                    limits.set(&shared.cfg.limits);
                }
                InboundOutput::DialbackDone { ok } => EdgeStats::bump(if ok {
                    &shared.stats.dialback_ok
                } else {
                    &shared.stats.dialback_failed
                }),
                InboundOutput::VerifyAnswered { valid } => EdgeStats::bump(if valid {
                    &shared.stats.verify_valid
                } else {
                    &shared.stats.verify_invalid
                }),
                InboundOutput::AuthTimedOut => EdgeStats::bump(&shared.stats.auth_timeouts),
                InboundOutput::Stanza(el) => {
                    EdgeStats::bump(&shared.stats.stanzas_in);
                    // Backpressure: the next element is read once the
                    // ring took this one.
                    tokio::select! {
                        r = shared.events.send(EdgeEvent::Inbound(el)) => {
                            if r.is_err() {
                                machine.handle_shutdown();
                            }
                        }
                        _ = shutdown.changed() => machine.handle_shutdown(),
                    }
                }
                InboundOutput::Close { error } => {
                    if let Some(c) = error {
                        shared.stats.stream_error(c.name());
                    }
                    return Next::Done;
                }
            }
        }
        // 2. A peer that does not read is not read either.
        if writer.is_dead() {
            machine.handle_read_error(None, "write failed");
            continue;
        }
        if writer.queued() > shared.cfg.inbound_write_queue {
            tokio::select! {
                ok = writer.wait_for_room() => if !ok {
                    machine.handle_read_error(None, "write failed");
                    continue;
                },
                _ = shutdown.changed() => machine.handle_shutdown(),
            }
            continue;
        }
        // 3. Read on (the machine may have closed meanwhile).
        if machine.is_closed() {
            return Next::Done;
        }
        if reading.is_none()
            && let Some(r) = idle.take()
        {
            reading = Some(read_one(r));
        }
        let deadline = machine
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            (r, ev) = async { match reading.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                reading = None;
                idle = Some(r);
                run += 1;
                if run >= YIELD_EVERY {
                    run = 0;
                    tokio::task::yield_now().await;
                }
                let now = Instant::now();
                match ev {
                    Ok(StreamEvent::Header(h)) => machine.handle_header(now, h),
                    Ok(StreamEvent::Element(el)) => machine.handle_element(now, el),
                    Ok(StreamEvent::Keepalive) => machine.handle_keepalive(now),
                    Ok(StreamEvent::End) => machine.handle_end(),
                    Err(e) => machine.handle_read_error(e.condition(), &e.to_string()),
                }
            }
            done = vrx.recv() => {
                if let Some(d) = done {
                    machine.handle_verified(&d.originating, &d.receiving, d.verdict);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => machine.handle_timeout(Instant::now()),
            _ = shutdown.changed() => machine.handle_shutdown(),
        }
    }
}
