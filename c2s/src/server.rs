//! The tokio driver of client connections: it accepts, applies the
//! connection bounds, runs TLS when the [`C2sStream`] machine says so, and
//! moves bytes and requests between the socket, the machine and the node
//! (through [`C2sEvent`]s). Every protocol decision is the machine's.
//!
//! Bounds, so that no client can cost the node more than its share:
//! * connections in all and per source address (count and rate, the edge's
//!   [`IpLimiter`]), refused before anything is read;
//! * the parser's byte and node limits, small until the client is bound;
//! * each connection's write queue in bytes: a client that does not read
//!   stops being read, and its session's inbox (bounded) refuses further
//!   deliveries, which the node bounces;
//! * every write finishes within the write timeout or the connection ends.
//!
//! Two listeners may feed it ([`Listeners`]): the usual one, where TLS
//! starts with STARTTLS inside the stream, and a direct-TLS one (XEP-0368,
//! `xmpps-client`), where the TLS handshake (ALPN `xmpp-client`) comes
//! before the first byte of XML. Both share every bound above: a second
//! port is not a second allowance.
//!
//! Shutdown (mini-redis style): [`run`] stops accepting when `shutdown`
//! flips, every connection ends its stream with `system-shutdown`, and
//! `run` returns once they all have.

use crate::account::{Account, DEFAULT_ITERATIONS};
use crate::negotiation::{AccountChange, C2sConfig, C2sOutput, C2sStream, Lookup};
use crate::scram::{ChannelBinding, TLS_EXPORTER_LABEL};
use jid::{BareJid, FullJid};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{BufReader, ReadHalf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use xmpp_edge::conn::BoxIo;
use xmpp_edge::ip_limit::{IpLimiter, SourceLimits};
use xmpp_edge::writer::Writer;
use xmpp_edge::xml::{Limits, StreamEvent, XmlError, XmlStreamReader};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// Stanzas waiting in one session's inbox.
pub const SESSION_INBOX: usize = 256;
/// Bytes of each connection's read buffer.
const READ_BUFFER: usize = 2048;
/// Elements read in a row before a connection's task yields.
const YIELD_EVERY: u32 = 32;

/// How the c2s listener behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// What every stream shares.
    pub machine: Arc<C2sConfig>,
    /// The certificate for STARTTLS (`None`: TLS is unavailable).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The same certificate for direct TLS, with ALPN `xmpp-client`
    /// (XEP-0368); see [`direct_tls_config`].
    pub direct_tls: Option<Arc<rustls::ServerConfig>>,
    /// Parser limits once bound (before: [`Limits::unauthenticated`]).
    pub limits: Limits,
    /// Per source address.
    pub per_source: SourceLimits,
    /// Failed logins per source address (a token bucket; `max_open` is
    /// not used): past them the connection that failed is closed, and
    /// every later failure from that address closes its connection at once,
    /// until the bucket refills.
    pub failed_logins: SourceLimits,
    /// In-band registrations and password changes per source address (a
    /// token bucket; past it they are answered `resource-constraint`).
    pub registrations: SourceLimits,
    /// Connections at once.
    pub max_connections: usize,
    /// Bytes queued for one client before it stops being read.
    pub write_queue_bytes: usize,
    /// A write must finish within this.
    pub write_timeout: Duration,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
}

/// What a client connection asks of the node.
#[derive(Debug)]
pub enum C2sEvent {
    /// Fetch `user`'s account.
    LookupAccount {
        /// The user.
        user: BareJid,
        /// Where the answer goes.
        reply: oneshot::Sender<Lookup>,
    },
    /// Store `user`'s account (`None`: delete it); answer once the record
    /// store has, or with the stanza error to give the client (`conflict`
    /// when `create` and the account exists).
    WriteAccount {
        /// The user.
        user: BareJid,
        /// The new account record (keys already derived).
        account: Option<Account>,
        /// Only if no account exists (a registration): decided by the
        /// record's coordinator, so two at once cannot both succeed.
        create: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(), DefinedCondition>>,
    },
    /// Register a session; answer with its full JID or a stanza error
    /// condition. A session already bound to the same full JID is the
    /// node's to replace ([`Session::replace`]).
    Bind {
        /// The full JID asked for.
        full: FullJid,
        /// How to reach the new session.
        session: Session,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<FullJid, DefinedCondition>>,
    },
    /// A stanza from a bound session (`from` stamped).
    Stanza(Element),
    /// A bound session ended.
    Closed {
        /// Its full JID.
        full: FullJid,
        /// Which session (a replaced one must not unregister its
        /// successor).
        id: u64,
    },
}

/// What the node sends a session.
#[derive(Debug)]
enum ToSession {
    Deliver(Element),
    Replaced,
}

/// A handle on one session's connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// Unique per listener.
    pub id: u64,
    tx: mpsc::Sender<ToSession>,
}

impl Session {
    /// Queues a stanza for the client; gives it back when the session is
    /// gone or its inbox is full (the caller bounces it).
    pub fn deliver(&self, el: Element) -> Result<(), Element> {
        self.tx
            .try_send(ToSession::Deliver(el))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(ToSession::Deliver(el))
                | mpsc::error::TrySendError::Closed(ToSession::Deliver(el)) => el,
                _ => unreachable!("only deliveries are given back"),
            })
    }

    /// Ends the session: another connection bound its full JID.
    pub fn replace(&self) {
        let tx = self.tx.clone();
        // The inbox may be full: the notice waits its turn in a task
        // rather than being lost.
        tokio::spawn(async move {
            let _ = tx.send(ToSession::Replaced).await;
        });
    }

    /// Whether the connection behind it has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct C2sStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused by a bound (in all, per address).
    pub refused: AtomicU64,
    /// Successful authentications.
    pub auth_ok: AtomicU64,
    /// Failed authentication attempts.
    pub auth_failed: AtomicU64,
    /// Connections closed for their address's failed logins.
    pub auth_throttled: AtomicU64,
    /// Accounts created by in-band registration.
    pub registered: AtomicU64,
    /// Registrations refused for their address's rate.
    pub registrations_throttled: AtomicU64,
    /// Sessions bound.
    pub bound: AtomicU64,
    /// Stanzas from clients.
    pub stanzas_in: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The ALPN protocol of direct-TLS client connections (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// The direct-TLS variant of a STARTTLS server configuration: the same
/// certificate, ALPN `xmpp-client`. A client that offers ALPN without it
/// is refused in the handshake (RFC 7301); one that offers none is served.
pub fn direct_tls_config(starttls: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut c = starttls.clone();
    c.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    Arc::new(c)
}

/// The `tls-exporter` channel binding of a connection (RFC 9266): 32 bytes
/// exported with the label `EXPORTER-Channel-Binding` and no context. Only
/// under TLS 1.3: with TLS 1.2 the exporter is unique to the connection
/// only with the extended master secret, which cannot be relied on, so no
/// `-PLUS` mechanism is offered there.
pub fn tls_exporter(conn: &rustls::ServerConnection) -> Option<ChannelBinding> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material([0u8; 32], TLS_EXPORTER_LABEL, None)
        .ok()
        .map(|b| ChannelBinding(b.to_vec()))
}

/// Where clients connect.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain TCP; TLS by STARTTLS (port 5222).
    pub starttls: Option<TcpListener>,
    /// TLS from the first byte (XEP-0368, port 5223); needs
    /// [`ServerConfig::direct_tls`].
    pub direct_tls: Option<TcpListener>,
}

/// Accepts from `l`, or never (an absent listener).
async fn accept(l: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts client connections until `shutdown` is true, then waits for
/// the open ones to end.
pub async fn run(
    listeners: Listeners,
    cfg: Arc<ServerConfig>,
    events: mpsc::Sender<C2sEvent>,
    stats: Arc<C2sStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let per_ip = IpLimiter::new(cfg.per_source);
    let failures = IpLimiter::new(SourceLimits {
        max_open: usize::MAX,
        ..cfg.failed_logins
    });
    let registrations = IpLimiter::new(SourceLimits {
        max_open: usize::MAX,
        ..cfg.registrations
    });
    // Every connection holds a clone; `run` returns when all are gone.
    let (running, mut all_done) = mpsc::channel::<()>(1);
    let next_id = AtomicU64::new(1);
    loop {
        let (r, direct) = tokio::select! {
            r = accept(listeners.starttls.as_ref()) => (r, false),
            r = accept(listeners.direct_tls.as_ref()) => (r, true),
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("c2s accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(ip_permit) = per_ip.acquire(peer.ip(), Instant::now()) else {
            bump(&stats.refused);
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            bump(&stats.refused);
            tracing::warn!(%peer, "too many client connections; refusing");
            continue;
        };
        bump(&stats.connections);
        let conn = Connection {
            cfg: cfg.clone(),
            events: events.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            id: next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            failures: failures.clone(),
            registrations: registrations.clone(),
        };
        let running = running.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            conn.stats.open.fetch_add(1, Ordering::Relaxed);
            conn.serve(Box::new(tcp), direct).await;
            conn.stats.open.fetch_sub(1, Ordering::Relaxed);
            drop((permit, ip_permit, running));
        });
    }
    drop(running);
    let _ = all_done.recv().await;
}

/// Derives the keys of a new password off the connection's task (PBKDF2
/// is deliberately slow), then asks the node to store the account.
async fn write_account(
    events: mpsc::Sender<C2sEvent>,
    user: BareJid,
    change: AccountChange,
) -> Result<(), DefinedCondition> {
    let create = matches!(change, AccountChange::Create { .. });
    let account = match change {
        AccountChange::Create { password } | AccountChange::SetPassword { password } => {
            let u = user.clone();
            let derived = tokio::task::spawn_blocking(move || {
                Account::new(&u, &password, DEFAULT_ITERATIONS, &mut rand::rng())
            })
            .await;
            match derived {
                Ok(Ok(a)) => Some(a),
                Ok(Err(_)) => return Err(DefinedCondition::NotAcceptable),
                Err(_) => return Err(DefinedCondition::InternalServerError),
            }
        }
        AccountChange::Remove => None,
    };
    let (reply, answer) = oneshot::channel();
    let ev = C2sEvent::WriteAccount {
        user,
        account,
        create,
        reply,
    };
    if events.send(ev).await.is_err() {
        return Err(DefinedCondition::InternalServerError);
    }
    answer
        .await
        .unwrap_or(Err(DefinedCondition::InternalServerError))
}

type Reader = XmlStreamReader<BufReader<ReadHalf<BoxIo>>>;
type Read = Pin<Box<dyn Future<Output = (Reader, Result<StreamEvent, XmlError>)> + Send>>;
type Pending<T> = Option<Pin<Box<dyn Future<Output = T> + Send>>>;

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

struct Connection {
    cfg: Arc<ServerConfig>,
    events: mpsc::Sender<C2sEvent>,
    stats: Arc<C2sStats>,
    shutdown: watch::Receiver<bool>,
    id: u64,
    peer: SocketAddr,
    /// Failed logins per address (shared by every connection).
    failures: Arc<IpLimiter>,
    /// Registrations per address (shared by every connection).
    registrations: Arc<IpLimiter>,
}

/// Requests to the node in flight, and the session's inbox.
struct Waiting {
    lookup: Pending<(BareJid, Lookup)>,
    write: Pending<Result<(), DefinedCondition>>,
    bind: Pending<Result<FullJid, DefinedCondition>>,
    inbox_tx: mpsc::Sender<ToSession>,
    inbox: mpsc::Receiver<ToSession>,
}

impl Connection {
    /// Serves one connection; `direct`: TLS from the first byte.
    async fn serve(&self, io: BoxIo, direct: bool) {
        let mut machine = C2sStream::new(self.cfg.machine.clone(), Instant::now(), rand::random());
        let (inbox_tx, inbox) = mpsc::channel(SESSION_INBOX);
        let mut waiting = Waiting {
            lookup: None,
            write: None,
            bind: None,
            inbox_tx,
            inbox,
        };
        let mut io = io;
        if direct {
            let Some((tls, binding)) = self.handshake(self.cfg.direct_tls.clone(), io).await else {
                return;
            };
            machine.handle_tls(Instant::now(), binding);
            io = tls;
        }
        loop {
            let (r, w) = tokio::io::split(io);
            let writer = Writer::spawn(w, self.cfg.write_queue_bytes, self.cfg.write_timeout);
            let limits = if machine.bound().is_some() || machine.user().is_some() {
                self.cfg.limits
            } else {
                self.cfg.limits.unauthenticated()
            };
            // A small read buffer: an idle session costs its buffers, and
            // stanzas larger than this are simply read in more calls.
            let reader = XmlStreamReader::new(BufReader::with_capacity(READ_BUFFER, r), limits);
            let next = self
                .document(&mut machine, reader, &writer, &mut waiting)
                .await;
            let (reader, tls) = match next {
                Next::Done => {
                    writer.close().await;
                    break;
                }
                Next::Tls(r) => (r, true),
                Next::Restart(r) => (r, false),
            };
            let Some(w) = writer.finish().await else {
                break;
            };
            let plain = reader.into_inner().into_inner().unsplit(w);
            if !tls {
                io = plain;
                continue;
            }
            let Some((tls, binding)) = self.handshake(self.cfg.tls.clone(), plain).await else {
                break;
            };
            machine.handle_tls(Instant::now(), binding);
            io = tls;
        }
        if let Some(full) = machine.session() {
            let _ = self
                .events
                .send(C2sEvent::Closed {
                    full: full.clone(),
                    id: self.id,
                })
                .await;
        }
    }

    /// The server side of a TLS handshake, bounded in time, and the
    /// connection's `tls-exporter` channel binding; `None` when it failed
    /// (the connection is then simply dropped: there is no stream to send
    /// an error in).
    async fn handshake(
        &self,
        cfg: Option<Arc<rustls::ServerConfig>>,
        io: BoxIo,
    ) -> Option<(BoxIo, Option<ChannelBinding>)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg?);
        match tokio::time::timeout(self.cfg.handshake_timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => {
                let binding = tls_exporter(tls.get_ref().1);
                Some((Box::new(tls), binding))
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, "c2s TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "c2s TLS handshake timed out");
                None
            }
        }
    }

    /// Runs one XML document of the connection.
    async fn document(
        &self,
        machine: &mut C2sStream,
        reader: Reader,
        writer: &Writer,
        waiting: &mut Waiting,
    ) -> Next {
        let limits = reader.limit_handle();
        let mut idle: Option<Reader> = Some(reader);
        let mut reading: Option<Read> = None;
        let mut shutdown = self.shutdown.clone();
        let mut run = 0u32;
        loop {
            while let Some(out) = machine.poll_output() {
                match out {
                    C2sOutput::Write(s) => {
                        writer.write(s);
                    }
                    C2sOutput::StartTls | C2sOutput::Restart => {
                        let Some(r) = idle.take() else {
                            return Next::Done;
                        };
                        return if matches!(out, C2sOutput::StartTls) {
                            Next::Tls(r)
                        } else {
                            Next::Restart(r)
                        };
                    }
                    C2sOutput::LookupAccount(user) => {
                        let (tx, rx) = oneshot::channel();
                        let ev = C2sEvent::LookupAccount {
                            user: user.clone(),
                            reply: tx,
                        };
                        if self.events.send(ev).await.is_err() {
                            machine.handle_shutdown();
                            continue;
                        }
                        waiting.lookup = Some(Box::pin(async move {
                            (user, rx.await.unwrap_or(Lookup::Unavailable))
                        }));
                    }
                    C2sOutput::RegistrationAttempt(user) => {
                        // The permit is not kept: only the rate counts.
                        let allowed = self
                            .registrations
                            .acquire(self.peer.ip(), Instant::now())
                            .is_ok();
                        if !allowed {
                            bump(&self.stats.registrations_throttled);
                            tracing::debug!(%user, peer = %self.peer, "registration rate reached");
                        }
                        machine.handle_registration_allowed(allowed);
                    }
                    C2sOutput::WriteAccount { user, change } => {
                        let create = matches!(change, AccountChange::Create { .. });
                        let (events, stats) = (self.events.clone(), self.stats.clone());
                        waiting.write = Some(Box::pin(async move {
                            let r = write_account(events, user, change).await;
                            if create && r.is_ok() {
                                bump(&stats.registered);
                            }
                            r
                        }));
                    }
                    C2sOutput::Authenticated(user) => {
                        bump(&self.stats.auth_ok);
                        tracing::debug!(%user, peer = %self.peer, "client authenticated");
                    }
                    C2sOutput::AuthFailed => {
                        bump(&self.stats.auth_failed);
                        // The permit is not kept: only the rate counts.
                        if self
                            .failures
                            .acquire(self.peer.ip(), Instant::now())
                            .is_err()
                        {
                            bump(&self.stats.auth_throttled);
                            machine.handle_read_error(
                                Some(xmpp_edge::stream_error::Condition::PolicyViolation),
                                "too many failed logins from this address",
                            );
                        }
                    }
                    C2sOutput::Bind(full) => {
                        let (tx, rx) = oneshot::channel();
                        let session = Session {
                            id: self.id,
                            tx: waiting.inbox_tx.clone(),
                        };
                        let ev = C2sEvent::Bind {
                            full,
                            session,
                            reply: tx,
                        };
                        if self.events.send(ev).await.is_err() {
                            machine.handle_shutdown();
                            continue;
                        }
                        waiting.bind = Some(Box::pin(async move {
                            rx.await
                                .unwrap_or(Err(DefinedCondition::InternalServerError))
                        }));
                    }
                    C2sOutput::Stanza(el) => {
                        bump(&self.stats.stanzas_in);
                        // Backpressure: the next element is read once the
                        // node took this one.
                        tokio::select! {
                            r = self.events.send(C2sEvent::Stanza(el)) => {
                                if r.is_err() {
                                    machine.handle_shutdown();
                                }
                            }
                            _ = shutdown.changed() => machine.handle_shutdown(),
                        }
                    }
                    C2sOutput::Close { .. } => return Next::Done,
                }
            }
            if machine.bound().is_some() {
                limits.set(&self.cfg.limits);
            }
            if writer.is_dead() {
                machine.handle_read_error(None, "write failed");
                continue;
            }
            if machine.is_closed() {
                return Next::Done;
            }
            // A client that does not read is not read, and its inbox is
            // not drained (so deliveries to it are refused).
            let room = writer.queued() <= self.cfg.write_queue_bytes;
            if !room {
                tokio::select! {
                    ok = writer.wait_for_room() => if !ok {
                        machine.handle_read_error(None, "write failed");
                    },
                    _ = shutdown.changed() => machine.handle_shutdown(),
                }
                continue;
            }
            if reading.is_none()
                && let Some(r) = idle.take()
            {
                reading = Some(read_one(r));
            }
            let deadline = machine
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let bound = machine.bound().is_some();
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
                (user, account) = async { match waiting.lookup.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    waiting.lookup = None;
                    machine.handle_account(&user, account);
                }
                result = async { match waiting.write.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    waiting.write = None;
                    machine.handle_account_written(result);
                }
                result = async { match waiting.bind.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    waiting.bind = None;
                    if result.is_ok() {
                        bump(&self.stats.bound);
                    }
                    machine.handle_bound(result);
                }
                msg = waiting.inbox.recv(), if bound => match msg {
                    Some(ToSession::Deliver(el)) => machine.handle_deliver(&el),
                    Some(ToSession::Replaced) => machine.handle_replaced(),
                    // Unreachable: `waiting` holds a sender.
                    None => machine.handle_shutdown(),
                },
                _ = tokio::time::sleep_until(deadline.into()) => machine.handle_timeout(Instant::now()),
                _ = shutdown.changed() => machine.handle_shutdown(),
            }
        }
    }
}
