//! Streams we open to other servers (we are the *initiating* server): the
//! driver around [`OutboundStream`], and the pool of streams.
//!
//! One stream per (local domain, remote domain) pair, created on the first
//! stanza and kept while it is used. Stanzas are serialised when they are
//! queued, so the queue is bounded in stanzas and in bytes; past either
//! bound, or past the number of streams, a stanza is refused at once. While
//! the stream connects they wait: resolve (overrides, SRV, A/AAAA), TCP,
//! then whatever the negotiation machine asks (STARTTLS, SASL EXTERNAL or
//! dialback). If the stream cannot be established, every queued stanza
//! comes back to the owner as undeliverable with `remote-server-not-found`
//! (nothing reachable) or `remote-server-timeout` (reached, but TLS or
//! authentication failed). A write that does not finish within the write
//! timeout ends the stream, and the stanzas of that write bounce too (the
//! XMPP stream cannot tell which of them arrived; XEP-0198 could).
//!
//! [`establish`] also serves dialback verification (see `verify.rs`).

use crate::conn::BoxIo;
use crate::domain::Domain;
use crate::negotiation::outbound::{
    Failure, OutboundAuth, OutboundOutput, OutboundStream, Purpose,
};
use crate::shared::{EdgeEvent, EdgeStats, Gauge, Shared, Undeliverable};
use crate::xml::{NS_CLIENT, NS_SERVER, StreamEvent, XmlStreamReader};
use crate::xml_write::{STREAM_END, element_to_string, renamespace};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

pub(crate) type Reader = XmlStreamReader<BufReader<ReadHalf<BoxIo>>>;

/// How long finding a remote server may take (on top of the handshake).
pub(crate) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stanzas and bytes written at most in one write.
const BATCH_STANZAS: usize = 256;
const BATCH_BYTES: usize = 256 * 1024;

/// A negotiated stream.
pub(crate) struct Established {
    pub(crate) reader: Reader,
    pub(crate) writer: WriteHalf<BoxIo>,
    pub(crate) machine: OutboundStream,
}

/// Writes `s` within the write timeout.
pub(crate) async fn write(
    shared: &Shared,
    w: &mut WriteHalf<BoxIo>,
    s: &str,
) -> Result<(), Failure> {
    match tokio::time::timeout(shared.cfg.write_timeout, async {
        w.write_all(s.as_bytes()).await?;
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Refused(format!("write failed: {e}"))),
        Err(_) => {
            EdgeStats::bump(&shared.stats.write_timeouts);
            Err(Failure::Refused("write timed out".into()))
        }
    }
}

/// Resolves `remote` and connects to the first address that answers.
async fn connect_tcp(shared: &Shared, remote: &Domain) -> Result<TcpStream, Failure> {
    let addrs = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        shared.cfg.resolver.resolve(remote.as_str()),
    )
    .await
    .map_err(|_| Failure::NotFound(format!("resolving {remote} timed out")))?
    .map_err(|e| Failure::NotFound(e.to_string()))?;
    let mut last = String::from("no address");
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{a}: {e}"),
            Err(_) => last = format!("{a}: connect timed out"),
        }
    }
    Err(Failure::NotFound(format!(
        "cannot connect to {remote}: {last}"
    )))
}

/// Connects to `remote` and negotiates a stream for `purpose`, doing what
/// the [`OutboundStream`] machine asks until it is ready or failed.
pub(crate) async fn establish(
    shared: &Shared,
    local: &Domain,
    remote: &Domain,
    purpose: Purpose,
) -> Result<Established, Failure> {
    let tcp = connect_tcp(shared, remote).await?;
    let limits = shared.cfg.limits.unauthenticated();
    let (r, mut writer) = tokio::io::split(Box::new(tcp) as BoxIo);
    let mut reader = XmlStreamReader::new(BufReader::new(r), limits);
    let mut m = OutboundStream::new(
        shared.outbound.clone(),
        local.clone(),
        remote.clone(),
        purpose,
    );
    loop {
        while let Some(out) = m.poll_output() {
            match out {
                OutboundOutput::Write(s) => write(shared, &mut writer, &s).await?,
                OutboundOutput::StartTls => {
                    let io = reader.into_inner().into_inner().unsplit(writer);
                    let name = rustls::pki_types::ServerName::try_from(remote.as_str().to_string())
                        .map_err(|_| {
                            Failure::Refused(format!("{remote} is not a valid TLS server name"))
                        })?;
                    let tls = tokio_rustls::TlsConnector::from(shared.client_tls.clone())
                        .connect(name, io)
                        .await
                        .map_err(|e| Failure::Refused(format!("TLS with {remote} failed: {e}")))?;
                    let chain: Vec<_> = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                        .unwrap_or_default();
                    let (r, w) = tokio::io::split(Box::new(tls) as BoxIo);
                    reader = XmlStreamReader::new(BufReader::new(r), limits);
                    writer = w;
                    m.handle_tls(&chain);
                    if m.is_failed() {
                        EdgeStats::bump(&shared.stats.certificates_refused);
                    }
                }
                OutboundOutput::Restart => {
                    reader = XmlStreamReader::new(reader.into_inner(), limits);
                }
                OutboundOutput::Authenticated(how) => EdgeStats::bump(match how {
                    OutboundAuth::SaslExternal => &shared.stats.sasl_external_ok,
                    OutboundAuth::Dialback => &shared.stats.dialback_ok,
                }),
                OutboundOutput::VerifyAnswered { valid } => EdgeStats::bump(if valid {
                    &shared.stats.verify_valid
                } else {
                    &shared.stats.verify_invalid
                }),
                OutboundOutput::Verified { .. } => {}
                OutboundOutput::Ready => {
                    return Ok(Established {
                        reader,
                        writer,
                        machine: m,
                    });
                }
                OutboundOutput::Failed(f) => {
                    if purpose == Purpose::Stanzas && f.to_string().contains("dialback key") {
                        EdgeStats::bump(&shared.stats.dialback_failed);
                    }
                    return Err(f);
                }
            }
        }
        match reader.next().await {
            Ok(StreamEvent::Header(h)) => m.handle_header(h),
            Ok(StreamEvent::Element(e)) => m.handle_element(e),
            Ok(StreamEvent::Keepalive) => {}
            Ok(StreamEvent::End) => m.handle_end(),
            Err(e) => return Err(Failure::Refused(format!("reading the stream: {e}"))),
        }
    }
}

/// Reads an established stream in a task of its own (writing goes on
/// beside it), forwarding what the remote says.
///
/// The reader ends when the stream does, or as soon as the receiver is
/// dropped (the connection's driver is done with it): no task outlives its
/// connection and none needs aborting.
pub(crate) fn spawn_reader(mut reader: Reader) -> mpsc::Receiver<Option<Element>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = reader.next() => next,
                _ = tx.closed() => return,
            };
            match next {
                Ok(StreamEvent::Element(e)) => {
                    if tx.send(Some(e)).await.is_err() {
                        return;
                    }
                }
                Ok(StreamEvent::Keepalive) => {}
                // `None`: the stream ended or failed.
                _ => {
                    let _ = tx.send(None).await;
                    return;
                }
            }
        }
    });
    rx
}

/// A stanza on its way out, serialised (namespace `jabber:server`).
struct Queued {
    xml: String,
}

impl Queued {
    /// The stanza again, as the owner gave it (for a bounce).
    fn into_stanza(self) -> Option<Element> {
        let el: Element = self.xml.parse().ok()?;
        Some(renamespace(el, NS_SERVER, NS_CLIENT))
    }
}

/// The queue of one outbound stream.
struct StreamQueue {
    tx: mpsc::UnboundedSender<Queued>,
    stanzas: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

/// The receiving end, which keeps the counts right.
struct QueueRx {
    rx: mpsc::UnboundedReceiver<Queued>,
    stanzas: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl QueueRx {
    fn took(&self, q: &Queued) {
        self.stanzas.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(q.xml.len(), Ordering::AcqRel);
    }

    async fn recv(&mut self) -> Option<Queued> {
        let q = self.rx.recv().await?;
        self.took(&q);
        Some(q)
    }

    fn try_recv(&mut self) -> Option<Queued> {
        let q = self.rx.try_recv().ok()?;
        self.took(&q);
        Some(q)
    }

    fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// The outbound streams, one per (local, remote) domain pair.
pub(crate) struct OutboundPool {
    shared: Arc<Shared>,
    streams: Mutex<HashMap<(Domain, Domain), StreamQueue>>,
}

impl OutboundPool {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        OutboundPool {
            shared,
            streams: Mutex::new(HashMap::new()),
        }
    }

    fn refuse(
        &self,
        stanza: Element,
        condition: DefinedCondition,
    ) -> Result<(), Box<Undeliverable>> {
        EdgeStats::bump(&self.shared.stats.stanzas_bounced);
        Err(Box::new(Undeliverable { stanza, condition }))
    }

    /// Hands a stanza of a failed stream back to the owner (awaiting room
    /// in its channel: the stream's task has nothing else to do).
    async fn bounce(&self, q: Queued, condition: DefinedCondition) {
        EdgeStats::bump(&self.shared.stats.stanzas_bounced);
        match q.into_stanza() {
            Some(stanza) => {
                let _ = self
                    .shared
                    .events
                    .send(EdgeEvent::Undeliverable(Undeliverable {
                        stanza,
                        condition,
                    }))
                    .await;
            }
            None => tracing::error!("a queued stanza could not be read back for its bounce"),
        }
    }

    pub(crate) fn send(self: &Arc<Self>, stanza: Element) -> Result<(), Box<Undeliverable>> {
        let cfg = &self.shared.cfg;
        let served = &self.shared.served;
        let local = stanza.attr("from").map(Domain::of_jid);
        let remote = stanza.attr("to").map(Domain::of_jid);
        let (Some(Ok(local)), Some(Ok(remote))) = (local, remote) else {
            return self.refuse(stanza, DefinedCondition::JidMalformed);
        };
        if !served.contains(&local) || served.contains(&remote) {
            return self.refuse(stanza, DefinedCondition::NotAllowed);
        }
        let key = (local, remote);
        let Ok(mut map) = self.streams.lock() else {
            return self.refuse(stanza, DefinedCondition::InternalServerError);
        };
        let (exists, stanzas, bytes) = match map.get(&key) {
            Some(q) if !q.tx.is_closed() => (
                true,
                q.stanzas.load(Ordering::Acquire),
                q.bytes.load(Ordering::Acquire),
            ),
            _ => (false, 0, 0),
        };
        if stanzas >= cfg.outbound_queue {
            return self.refuse(stanza, DefinedCondition::ResourceConstraint);
        }
        if !exists && map.len() >= cfg.max_outbound {
            map.retain(|_, q| !q.tx.is_closed());
            if map.len() >= cfg.max_outbound {
                return self.refuse(stanza, DefinedCondition::ResourceConstraint);
            }
        }
        let q = Queued {
            xml: element_to_string(&renamespace(stanza, NS_CLIENT, NS_SERVER)),
        };
        let n = q.xml.len();
        if stanzas > 0 && bytes + n > cfg.outbound_queue_bytes {
            drop(map);
            return match q.into_stanza() {
                Some(st) => self.refuse(st, DefinedCondition::ResourceConstraint),
                None => Ok(()),
            };
        }
        if exists && let Some(sq) = map.get(&key) {
            sq.stanzas.fetch_add(1, Ordering::AcqRel);
            sq.bytes.fetch_add(n, Ordering::AcqRel);
            // The stream task closes its queue only under this lock, and
            // it was open above: this cannot fail.
            let _ = sq.tx.send(q);
            return Ok(());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let stanzas = Arc::new(AtomicUsize::new(1));
        let bytes = Arc::new(AtomicUsize::new(n));
        let _ = tx.send(q);
        map.insert(
            key.clone(),
            StreamQueue {
                tx,
                stanzas: stanzas.clone(),
                bytes: bytes.clone(),
            },
        );
        drop(map);
        let pool = self.clone();
        let running = self.shared.tasks.enter();
        tokio::spawn(async move {
            let _running = running;
            let rx = QueueRx { rx, stanzas, bytes };
            pool.run_stream(&key.0, &key.1, rx).await;
        });
        Ok(())
    }

    /// Closes the stream's queue (under the pool's lock, so no stanza is
    /// added after) and bounces what is left in it.
    async fn give_up(
        &self,
        key: &(Domain, Domain),
        mut rx: QueueRx,
        pending: VecDeque<Queued>,
        cond: DefinedCondition,
    ) {
        if let Ok(mut m) = self.streams.lock() {
            rx.rx.close();
            m.remove(key);
        }
        for q in pending {
            self.bounce(q, cond.clone()).await;
        }
        while let Some(q) = rx.try_recv() {
            self.bounce(q, cond.clone()).await;
        }
    }

    /// Runs the stream to `remote` while there is work; reconnects when the
    /// peer closes an idle stream and stanzas are waiting.
    async fn run_stream(&self, local: &Domain, remote: &Domain, mut rx: QueueRx) {
        let shared = &self.shared;
        let _open = Gauge::up(&shared.stats.outbound_open);
        let key = (local.clone(), remote.clone());
        let mut failures = 0u32;
        let mut pending: VecDeque<Queued> = VecDeque::new();
        loop {
            let setup = tokio::time::timeout(
                shared.cfg.handshake_timeout + RESOLVE_TIMEOUT,
                establish(shared, local, remote, Purpose::Stanzas),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Refused(format!(
                    "no stream to {remote} within the handshake timeout"
                )))
            });
            let est = match setup {
                Ok(s) => s,
                Err(f) => {
                    tracing::info!(%local, %remote, "outbound stream failed: {f}");
                    return self.give_up(&key, rx, pending, f.condition()).await;
                }
            };
            EdgeStats::bump(&shared.stats.outbound_streams);
            tracing::debug!(%local, %remote, "outbound stream established");
            let started = Instant::now();
            let (wrote, failed) = self.session(est, &mut rx, &mut pending).await;
            for q in failed {
                self.bounce(q, DefinedCondition::RemoteServerTimeout).await;
            }
            let idle = {
                // Decide under the lock whether to end: a stanza queued
                // after this point finds the queue closed and starts anew.
                let Ok(mut m) = self.streams.lock() else {
                    return;
                };
                let idle = pending.is_empty() && rx.is_empty();
                if idle || *shared.shutdown.borrow() {
                    rx.rx.close();
                    m.remove(&key);
                }
                idle
            };
            if idle {
                return;
            }
            if *shared.shutdown.borrow() {
                return self
                    .give_up(&key, rx, pending, DefinedCondition::RemoteServerTimeout)
                    .await;
            }
            // The peer closed while stanzas wait: try again, but not forever
            // if every fresh stream dies before carrying anything.
            if wrote == 0 && started.elapsed() < Duration::from_secs(5) {
                failures += 1;
                if failures >= 3 {
                    return self
                        .give_up(&key, rx, pending, DefinedCondition::RemoteServerTimeout)
                        .await;
                }
            }
        }
    }

    /// Writes stanzas until idle, closed or failed. Returns how many were
    /// written and the stanzas of a write that failed (to bounce);
    /// `pending` keeps stanzas taken but not yet written.
    async fn session(
        &self,
        est: Established,
        rx: &mut QueueRx,
        pending: &mut VecDeque<Queued>,
    ) -> (u64, Vec<Queued>) {
        let shared = &self.shared;
        let Established {
            reader,
            mut writer,
            mut machine,
        } = est;
        // Reading runs beside writing: the peer may end the stream or ask
        // us to verify a dialback key at any time.
        let mut erx = spawn_reader(reader);
        let mut written = 0u64;
        let mut shutdown = shared.shutdown.clone();
        let failed = loop {
            if pending.is_empty() {
                tokio::select! {
                    q = rx.recv() => match q {
                        Some(q) => pending.push_back(q),
                        None => break Vec::new(),
                    },
                    e = erx.recv() => {
                        match e.flatten() {
                            Some(el) => machine.handle_element(el),
                            None => machine.handle_end(),
                        }
                        let mut gone = false;
                        while let Some(out) = machine.poll_output() {
                            match out {
                                OutboundOutput::Write(s) => {
                                    gone |= write(shared, &mut writer, &s).await.is_err();
                                }
                                OutboundOutput::VerifyAnswered { valid } => EdgeStats::bump(if valid {
                                    &shared.stats.verify_valid
                                } else {
                                    &shared.stats.verify_invalid
                                }),
                                OutboundOutput::Failed(f) => {
                                    tracing::info!("outbound stream ended: {f}");
                                    gone = true;
                                }
                                _ => {}
                            }
                        }
                        if gone {
                            break Vec::new();
                        }
                        continue;
                    }
                    _ = tokio::time::sleep(shared.cfg.idle_timeout) => {
                        let _ = write(shared, &mut writer, STREAM_END).await;
                        break Vec::new();
                    }
                    _ = shutdown.changed() => {
                        let _ = write(shared, &mut writer, STREAM_END).await;
                        break Vec::new();
                    }
                }
            }
            // Batch whatever else is queued into one write.
            let mut bytes: usize = pending.iter().map(|q| q.xml.len()).sum();
            while pending.len() < BATCH_STANZAS && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Some(q) => {
                        bytes += q.xml.len();
                        pending.push_back(q);
                    }
                    None => break,
                }
            }
            let batch: Vec<Queued> = pending.drain(..).collect();
            let buf: String = batch.iter().map(|q| q.xml.as_str()).collect();
            tracing::debug!(stanzas = batch.len(), "writing to the outbound stream");
            if let Err(e) = write(shared, &mut writer, &buf).await {
                tracing::info!("outbound write failed: {e}");
                break batch;
            }
            written += batch.len() as u64;
            shared
                .stats
                .stanzas_out
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        };
        // Dropping the receiver ends the reader.
        drop(erx);
        (written, failed)
    }
}
