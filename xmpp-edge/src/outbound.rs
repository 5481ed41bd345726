//! Streams we open to other servers (we are the *initiating* server).
//!
//! One stream per (local domain, remote domain) pair, created on the first
//! stanza and kept while it is used. Stanzas queue (bounded) while it
//! connects: resolve (overrides, SRV, A/AAAA), TCP, STARTTLS (required
//! unless configured otherwise), then SASL EXTERNAL if the peer offers it,
//! falling back to dialback on the same stream (no restart) when EXTERNAL
//! fails. If the stream cannot be established, every queued stanza comes
//! back to the owner as undeliverable with `remote-server-not-found`
//! (nothing reachable) or `remote-server-timeout` (reached, but TLS or
//! authentication failed).
//!
//! The same handshake, minus authentication, serves dialback verification:
//! to check a key a remote server presented on an inbound stream, we open
//! a short stream to that server's domain and ask it (`db:verify`).

use crate::conn::{BoxIo, Features, NS_SASL, NS_TLS, domain_of, serves};
use crate::dialback::{self, DialbackElement};
use crate::edge::{EdgeEvent, EdgeStats, Shared};
use crate::xml::{NS_CLIENT, NS_DIALBACK, NS_SERVER, NS_STREAMS, StreamEvent, XmlStreamReader};
use crate::xml_write::{STREAM_END, element_to_string, renamespace, stream_header};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use xmpp_parsers::minidom::Element;

type Reader = XmlStreamReader<BufReader<ReadHalf<BoxIo>>>;

/// How long finding a remote server may take (on top of the handshake).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream could not be established.
#[derive(Debug)]
enum Failure {
    /// Nothing reachable (DNS, TCP).
    NotFound(String),
    /// Reached, but the stream failed (TLS, authentication, protocol).
    Timeout(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound(m) | Failure::Timeout(m) => f.write_str(m),
        }
    }
}

impl Failure {
    fn condition(&self) -> &'static str {
        match self {
            Failure::NotFound(_) => "remote-server-not-found",
            Failure::Timeout(_) => "remote-server-timeout",
        }
    }
}

/// An established, negotiated stream.
struct Stream {
    reader: Reader,
    writer: WriteHalf<BoxIo>,
    /// The id the remote server gave the (latest) stream.
    id: String,
    features: Features,
}

async fn write(w: &mut WriteHalf<BoxIo>, s: &str) -> Result<(), Failure> {
    w.write_all(s.as_bytes())
        .await
        .map_err(|e| Failure::Timeout(format!("write failed: {e}")))?;
    w.flush()
        .await
        .map_err(|e| Failure::Timeout(format!("write failed: {e}")))
}

/// Reads the next element, skipping keepalives; stream ends are failures.
async fn read_element(r: &mut Reader) -> Result<Element, Failure> {
    loop {
        match r.next().await {
            Ok(StreamEvent::Element(e)) => {
                if e.ns() == NS_STREAMS && e.name() == "error" {
                    let cond = crate::stream_error::Condition::from_element(&e).unwrap_or_default();
                    return Err(Failure::Timeout(format!("stream error from peer: {cond}")));
                }
                return Ok(e);
            }
            Ok(StreamEvent::Keepalive) => continue,
            Ok(StreamEvent::Header(_)) => {
                return Err(Failure::Timeout("unexpected stream header".into()));
            }
            Ok(StreamEvent::End) => return Err(Failure::Timeout("peer closed the stream".into())),
            Err(e) => return Err(Failure::Timeout(format!("reading the stream: {e}"))),
        }
    }
}

/// Sends our header and reads the peer's header and features.
async fn open(io: BoxIo, shared: &Shared, local: &str, remote: &str) -> Result<Stream, Failure> {
    let (r, mut writer) = tokio::io::split(io);
    let mut reader = XmlStreamReader::new(BufReader::new(r), shared.cfg.limits);
    write(&mut writer, &stream_header(Some(local), Some(remote), None)).await?;
    let id = loop {
        match reader.next().await {
            Ok(StreamEvent::Header(h)) => {
                if h.default_ns.as_deref() != Some(NS_SERVER) {
                    return Err(Failure::Timeout(
                        "peer's stream is not jabber:server".into(),
                    ));
                }
                break h.id.unwrap_or_default();
            }
            Ok(StreamEvent::Keepalive) => continue,
            Ok(_) => return Err(Failure::Timeout("expected a stream header".into())),
            Err(e) => return Err(Failure::Timeout(format!("reading the stream header: {e}"))),
        }
    };
    let features_el = read_element(&mut reader).await?;
    if !(features_el.ns() == NS_STREAMS && features_el.name() == "features") {
        return Err(Failure::Timeout("expected stream features".into()));
    }
    Ok(Stream {
        reader,
        writer,
        id,
        features: Features::parse(&features_el),
    })
}

fn reunite(s: Stream) -> BoxIo {
    let r = s.reader.into_inner().into_inner();
    r.unsplit(s.writer)
}

/// Connects to `remote` and negotiates TLS; returns the stream after the
/// post-TLS features.
async fn connect(shared: &Shared, local: &str, remote: &str) -> Result<Stream, Failure> {
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, shared.cfg.resolver.resolve(remote))
        .await
        .map_err(|_| Failure::NotFound(format!("resolving {remote} timed out")))?
        .map_err(Failure::NotFound)?;
    let mut last = String::from("no address");
    let mut tcp = None;
    for a in addrs {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: connect timed out"),
        }
    }
    let tcp =
        tcp.ok_or_else(|| Failure::NotFound(format!("cannot connect to {remote}: {last}")))?;
    let _ = tcp.set_nodelay(true);
    let mut s = open(Box::new(tcp), shared, local, remote).await?;
    if !s.features.starttls {
        if shared.cfg.require_tls {
            return Err(Failure::Timeout(format!(
                "{remote} does not offer STARTTLS"
            )));
        }
        return Ok(s);
    }
    write(&mut s.writer, &format!("<starttls xmlns='{NS_TLS}'/>")).await?;
    let answer = read_element(&mut s.reader).await?;
    if !(answer.ns() == NS_TLS && answer.name() == "proceed") {
        return Err(Failure::Timeout(format!("{remote} refused STARTTLS")));
    }
    let io = reunite(s);
    let name = rustls::pki_types::ServerName::try_from(remote.to_string())
        .map_err(|_| Failure::Timeout(format!("{remote} is not a valid TLS server name")))?;
    let tls = tokio_rustls::TlsConnector::from(shared.client_tls.clone())
        .connect(name, io)
        .await
        .map_err(|e| Failure::Timeout(format!("TLS with {remote} failed: {e}")))?;
    open(Box::new(tls), shared, local, remote).await
}

/// Authenticates an outbound stream: SASL EXTERNAL if offered, else (or on
/// its failure) dialback.
async fn authenticate(
    shared: &Shared,
    mut s: Stream,
    local: &str,
    remote: &str,
) -> Result<Stream, Failure> {
    if s.features.external {
        write(
            &mut s.writer,
            &format!("<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>"),
        )
        .await?;
        let answer = read_element(&mut s.reader).await?;
        if answer.ns() == NS_SASL && answer.name() == "success" {
            EdgeStats::bump(&shared.stats.sasl_external_ok);
            let io = reunite(s);
            return open(io, shared, local, remote).await;
        }
        tracing::info!(remote, "SASL EXTERNAL refused; falling back to dialback");
    }
    tracing::debug!(local, remote, "authenticating by dialback");
    let key = shared.cfg.secret.key(remote, local, &s.id);
    write(
        &mut s.writer,
        &dialback::result_request(local, remote, &key),
    )
    .await?;
    loop {
        let el = read_element(&mut s.reader).await?;
        if el.ns() != NS_DIALBACK {
            return Err(Failure::Timeout(format!(
                "unexpected <{}> while waiting for dialback",
                el.name()
            )));
        }
        let Some(d) = DialbackElement::parse(&el) else {
            return Err(Failure::Timeout("malformed dialback answer".into()));
        };
        if d.verify && d.kind.is_none() {
            // Some servers verify keys over this stream; answer like inbound.
            let valid = serves(&shared.cfg.domains, &d.to)
                && d.id
                    .as_deref()
                    .is_some_and(|id| shared.cfg.secret.verify(&d.from, &d.to, id, &d.key));
            write(
                &mut s.writer,
                &dialback::verify_answer(&d.to, &d.from, d.id.as_deref().unwrap_or(""), valid),
            )
            .await?;
            continue;
        }
        if !d.verify && d.from.eq_ignore_ascii_case(remote) && d.to.eq_ignore_ascii_case(local) {
            return match d.kind.as_deref() {
                Some("valid") => {
                    EdgeStats::bump(&shared.stats.dialback_ok);
                    Ok(s)
                }
                other => {
                    EdgeStats::bump(&shared.stats.dialback_failed);
                    Err(Failure::Timeout(format!(
                        "{remote} refused our dialback key ({other:?})"
                    )))
                }
            };
        }
    }
}

/// Asks `orig`'s authoritative server whether `key` is the key it gave for
/// the stream `id` it opened to us (`recv`).
pub(crate) async fn verify_key(
    shared: &Arc<Shared>,
    orig: &str,
    recv: &str,
    id: &str,
    key: &str,
) -> bool {
    let work = async {
        let mut s = connect(shared, recv, orig).await?;
        write(
            &mut s.writer,
            &dialback::verify_request(recv, orig, id, key),
        )
        .await?;
        loop {
            let el = read_element(&mut s.reader).await?;
            if let Some(d) = DialbackElement::parse(&el)
                && d.verify
                && d.id.as_deref() == Some(id)
            {
                let _ = write(&mut s.writer, STREAM_END).await;
                return Ok::<bool, Failure>(d.kind.as_deref() == Some("valid"));
            }
        }
    };
    match tokio::time::timeout(shared.cfg.handshake_timeout + RESOLVE_TIMEOUT, work).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::info!(orig, "dialback verification failed: {e}");
            false
        }
        Err(_) => {
            tracing::info!(orig, "dialback verification timed out");
            false
        }
    }
}

/// The outbound streams, one per (local, remote) domain pair.
pub(crate) struct OutboundPool {
    shared: Arc<Shared>,
    streams: Mutex<HashMap<(String, String), mpsc::Sender<Element>>>,
}

impl OutboundPool {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        OutboundPool {
            shared,
            streams: Mutex::new(HashMap::new()),
        }
    }

    fn bounce(&self, stanza: Element, condition: &'static str) {
        EdgeStats::bump(&self.shared.stats.stanzas_bounced);
        if let Err(mpsc::error::TrySendError::Full(ev)) = self
            .shared
            .events
            .try_send(EdgeEvent::Undeliverable { stanza, condition })
        {
            // The owner is busy: hand it over without blocking the caller.
            let events = self.shared.events.clone();
            tokio::spawn(async move {
                let _ = events.send(ev).await;
            });
        }
    }

    pub(crate) fn send(self: &Arc<Self>, stanza: Element) {
        let cfg = &self.shared.cfg;
        let local = stanza.attr("from").and_then(domain_of);
        let remote = stanza.attr("to").and_then(domain_of);
        let (Some(local), Some(remote)) = (local, remote) else {
            return self.bounce(stanza, "jid-malformed");
        };
        if !serves(&cfg.domains, &local) || serves(&cfg.domains, &remote) {
            return self.bounce(stanza, "not-allowed");
        }
        let key = (local, remote);
        tracing::debug!(local = %key.0, remote = %key.1, "stanza for an outbound stream");
        let mut map = match self.streams.lock() {
            Ok(m) => m,
            Err(_) => return self.bounce(stanza, "internal-server-error"),
        };
        let stanza = match map.get(&key) {
            Some(tx) => match tx.try_send(stanza) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(s)) => {
                    drop(map);
                    return self.bounce(s, "resource-constraint");
                }
                Err(mpsc::error::TrySendError::Closed(s)) => s,
            },
            None => stanza,
        };
        let (tx, rx) = mpsc::channel(cfg.outbound_queue.max(1));
        let _ = tx.try_send(stanza);
        map.insert(key.clone(), tx.clone());
        drop(map);
        let pool = self.clone();
        tokio::spawn(async move {
            pool.run_stream(key.0.clone(), key.1.clone(), rx).await;
            if let Ok(mut m) = pool.streams.lock()
                && m.get(&key).is_some_and(|t| t.same_channel(&tx))
            {
                m.remove(&key);
            }
        });
    }

    /// Runs the stream to `remote` while there is work; reconnects when the
    /// peer closes an idle stream and stanzas are waiting.
    async fn run_stream(&self, local: String, remote: String, mut rx: mpsc::Receiver<Element>) {
        let shared = &self.shared;
        let mut failures = 0u32;
        let mut pending: Option<Element> = None;
        loop {
            let setup =
                tokio::time::timeout(shared.cfg.handshake_timeout + RESOLVE_TIMEOUT, async {
                    let s = connect(shared, &local, &remote).await?;
                    authenticate(shared, s, &local, &remote).await
                })
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Timeout(format!(
                        "no stream to {remote} within the handshake timeout"
                    )))
                });
            let s = match setup {
                Ok(s) => s,
                Err(f) => {
                    tracing::info!(%local, %remote, "outbound stream failed: {f}");
                    let cond = f.condition();
                    rx.close();
                    if let Some(p) = pending.take() {
                        self.bounce(p, cond);
                    }
                    while let Ok(st) = rx.try_recv() {
                        self.bounce(st, cond);
                    }
                    return;
                }
            };
            EdgeStats::bump(&shared.stats.outbound_streams);
            tracing::debug!(%local, %remote, "outbound stream established");
            let started = Instant::now();
            let (wrote, leftover) = self.session(s, &mut rx, pending.take()).await;
            pending = leftover;
            if pending.is_none() && rx.is_empty() {
                return;
            }
            // The peer closed while stanzas wait: try again, but not forever
            // if every fresh stream dies before carrying anything.
            if wrote == 0 && started.elapsed() < Duration::from_secs(5) {
                failures += 1;
                if failures >= 3 {
                    rx.close();
                    if let Some(p) = pending.take() {
                        self.bounce(p, "remote-server-timeout");
                    }
                    while let Ok(st) = rx.try_recv() {
                        self.bounce(st, "remote-server-timeout");
                    }
                    return;
                }
            }
        }
    }

    /// Writes stanzas until idle, closed or failed. Returns how many were
    /// written and a stanza that was taken but not written.
    async fn session(
        &self,
        s: Stream,
        rx: &mut mpsc::Receiver<Element>,
        first: Option<Element>,
    ) -> (u64, Option<Element>) {
        let shared = &self.shared;
        let Stream {
            mut reader,
            mut writer,
            ..
        } = s;
        // Reading runs beside writing: the peer may end the stream or ask
        // us to verify a dialback key at any time.
        let (etx, mut erx) = mpsc::channel::<Element>(16);
        let reader_task = tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(StreamEvent::Element(e)) => {
                        if etx.send(e).await.is_err() {
                            return;
                        }
                    }
                    Ok(StreamEvent::Keepalive) => {}
                    _ => return,
                }
            }
        });
        let mut written = 0u64;
        let mut next = first;
        let mut shutdown = shared.shutdown.clone();
        let result = loop {
            let stanza = match next.take() {
                Some(s) => s,
                None => tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => s,
                        None => break None,
                    },
                    e = erx.recv() => match e {
                        Some(el) => {
                            if let Some(d) = DialbackElement::parse(&el)
                                && d.verify
                                && d.kind.is_none()
                            {
                                let valid = serves(&shared.cfg.domains, &d.to)
                                    && d.id.as_deref().is_some_and(|id| shared.cfg.secret.verify(&d.from, &d.to, id, &d.key));
                                let ans = dialback::verify_answer(&d.to, &d.from, d.id.as_deref().unwrap_or(""), valid);
                                if write(&mut writer, &ans).await.is_err() {
                                    break None;
                                }
                            } else if el.ns() == NS_STREAMS && el.name() == "error" {
                                tracing::info!("peer ended the stream: {:?}", crate::stream_error::Condition::from_element(&el));
                                break None;
                            }
                            continue;
                        }
                        None => break None,
                    },
                    _ = tokio::time::sleep(shared.cfg.idle_timeout) => {
                        let _ = write(&mut writer, STREAM_END).await;
                        break None;
                    }
                    _ = shutdown.changed() => {
                        let _ = write(&mut writer, STREAM_END).await;
                        break None;
                    }
                },
            };
            // Batch whatever else is queued into one write.
            let mut buf = element_to_string(&renamespace(stanza, NS_CLIENT, NS_SERVER));
            let mut n = 1;
            while n < 256 {
                match rx.try_recv() {
                    Ok(more) => {
                        buf.push_str(&element_to_string(&renamespace(more, NS_CLIENT, NS_SERVER)));
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            tracing::debug!(stanzas = n, "writing to the outbound stream");
            if let Err(e) = write(&mut writer, &buf).await {
                // Written stanzas may or may not have arrived; the XMPP
                // stream gives no way to know (XEP-0198 would).
                tracing::info!("outbound write failed: {e}");
                break None;
            }
            written += n as u64;
            for _ in 0..n {
                EdgeStats::bump(&shared.stats.stanzas_out);
            }
        };
        reader_task.abort();
        (written, result)
    }
}
