//! The server side of a client-to-server stream (RFC 6120 §4–7), one
//! sans-IO state machine per TCP connection, shaped like the s2s machines
//! of `xmpp-edge`: `handle_*` with `now` passed in, `poll_output` for what
//! to do, a seeded rng for stream ids, nonces and generated resources.
//!
//! ```text
//!  AwaitHeader --header--> PreTls --<starttls/>--> (StartTls) --> AwaitHeader
//!                          PreAuth --<auth/>--> (LookupAccount) --> Sasl
//!                          Sasl --<response/> ok--> (Restart) --> AwaitHeader
//!                          PreBind --<iq><bind/></iq>--> (Bind) --> Bound
//!                          Bound --stanzas-->
//!  any --error, timeout, </stream>--> Closed
//! ```
//!
//! The rules live here, in one place:
//! * the header's `to` must be a domain the ring serves (`host-unknown`),
//!   in `jabber:client`, version 1.0;
//! * with TLS required (the default) nothing but STARTTLS is accepted
//!   before TLS, and PLAIN is never offered without it;
//! * an unknown user answers exactly like a wrong password (decoy SCRAM
//!   salts); three failures end the stream;
//! * a stream must be authenticated *and* bound within the auth timeout
//!   of its first header; whitespace keeps an authenticated stream alive
//!   but does not extend that deadline;
//! * every stanza of a bound stream leaves with the session's full JID as
//!   `from` (a different `from` is `invalid-from`), and a `to` that is not
//!   a JID is answered with `jid-malformed`.

mod registration;
#[cfg(test)]
mod tests;

use crate::account::Account;
use crate::register::NS_REGISTER_FEATURE;
use crate::scram::{
    ChannelBinding, ClientFirst, Gs2Flag, ScramError, ScramExchange, ScramHash, TLS_EXPORTER,
    decoy_keys,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use jid::{BareJid, FullJid, Jid};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use ring_services::stanza::error_reply;
use ring_services::stanza::set as set_attr;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xmpp_addr::{Domain, Served};
use xmpp_edge::stream_error::Condition;
use xmpp_edge::xml::{NS_CLIENT, NS_STREAMS, StreamHeader};
use xmpp_edge::xml_write::{STREAM_END, escape_attr, escape_text};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// STARTTLS namespace.
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL namespace.
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// SASL channel binding type advertisement (XEP-0440).
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// Resource binding namespace.
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// RFC 3921 session establishment (still sent by some clients).
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

/// Roster versioning (XEP-0237) stream feature.
pub const NS_ROSTER_VER: &str = "urn:xmpp:features:rosterver";

/// Subscription pre-approval (RFC 6121 §3.4) stream feature.
pub const NS_PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";

/// Longest resource accepted from a client, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 256;

/// What every c2s stream of a node shares.
#[derive(Clone, Debug)]
pub struct C2sConfig {
    /// Domains users log in to.
    pub served: Served,
    /// Whether STARTTLS is required before authentication (PLAIN is only
    /// offered inside TLS either way).
    pub require_tls: bool,
    /// Whether STARTTLS is available at all (a certificate is loaded).
    pub tls_available: bool,
    /// The first header must arrive within this.
    pub header_timeout: Duration,
    /// Authenticated and bound within this after the first header.
    pub auth_timeout: Duration,
    /// A stream silent this long (not even whitespace) is closed.
    pub idle_timeout: Duration,
    /// Failed authentication attempts before the stream is closed.
    pub max_auth_failures: u32,
    /// Makes the decoy salts of unknown users (see [`decoy_keys`]).
    pub decoy_secret: Vec<u8>,
    /// In-band registration of new accounts (XEP-0077) before
    /// authentication, inside TLS. Off by default.
    pub registration: bool,
}

impl C2sConfig {
    /// Defaults for `served`: TLS required, 10 s for a header, 30 s to log
    /// in, 10 minutes of silence, 3 attempts.
    pub fn new(served: Served, decoy_secret: Vec<u8>) -> C2sConfig {
        C2sConfig {
            served,
            require_tls: true,
            tls_available: true,
            header_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_auth_failures: 3,
            decoy_secret,
            registration: false,
        }
    }
}

/// What an account lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The account.
    Found(Account),
    /// There is no such account.
    NotFound,
    /// The record store could not say (unreachable, or a corrupt record):
    /// nobody logs in with it and nobody registers over it.
    Unavailable,
}

/// A change to an account, asked of the driver with
/// [`C2sOutput::WriteAccount`].
#[derive(Clone, PartialEq, Eq)]
pub enum AccountChange {
    /// A new account with this password (in-band registration; the lookup
    /// found none).
    Create {
        /// The password.
        password: String,
    },
    /// The user's own account, with a new password.
    SetPassword {
        /// The password.
        password: String,
    },
    /// Delete the user's own account.
    Remove,
}

impl std::fmt::Debug for AccountChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Passwords never reach a log.
        f.write_str(match self {
            AccountChange::Create { .. } => "Create",
            AccountChange::SetPassword { .. } => "SetPassword",
            AccountChange::Remove => "Remove",
        })
    }
}

/// What the driver is asked to do, in order.
#[derive(Debug, PartialEq)]
pub enum C2sOutput {
    /// Write these bytes.
    Write(String),
    /// Everything before this is written: upgrade to TLS (server side),
    /// then call [`C2sStream::handle_tls`].
    StartTls,
    /// A new XML document starts (after SASL): read it with a new parser.
    Restart,
    /// Fetch the account of this user and answer with
    /// [`C2sStream::handle_account`].
    LookupAccount(BareJid),
    /// An in-band registration for this user, or a new password for the
    /// bound user (each costs a key derivation), is asked for: check the
    /// source's rate and answer with
    /// [`C2sStream::handle_registration_allowed`] (before anything is
    /// looked up, so that the rate also bounds probing for taken names).
    RegistrationAttempt(BareJid),
    /// Store this change to `user`'s account (derive the keys of a new
    /// password first) and answer with [`C2sStream::handle_account_written`].
    WriteAccount {
        /// Whose account.
        user: BareJid,
        /// What changes.
        change: AccountChange,
    },
    /// The user proved who they are (for counters; the driver may allow
    /// the larger read limits).
    Authenticated(BareJid),
    /// A failed authentication attempt (for counters and throttling).
    AuthFailed,
    /// Register a session for this full JID and answer with
    /// [`C2sStream::handle_bound`]. The resource was asked for by the
    /// client or generated here.
    Bind(FullJid),
    /// A stanza from the bound session, `from` stamped, in `jabber:client`.
    Stanza(Element),
    /// Everything before is written; close the connection. `error`: the
    /// stream error sent, if any.
    Close {
        /// The condition sent.
        error: Option<Condition>,
    },
}

/// Where an authentication attempt is.
#[derive(Debug)]
enum Sasl {
    /// `<auth mechanism='SCRAM-…'/>` came without its first message; an
    /// empty challenge asked for it. `bool`: a `-PLUS` mechanism.
    AwaitFirst(ScramHash, bool),
    /// Waiting for the account (SCRAM).
    LookupScram(ScramHash, ClientFirst, BareJid),
    /// Waiting for the account (PLAIN).
    LookupPlain(Password, BareJid),
    /// The challenge went out; the proof is awaited.
    Scram {
        exchange: Box<ScramExchange>,
        user: BareJid,
        /// The account exists (an unknown user fails at the end, exactly
        /// like a wrong password).
        exists: bool,
    },
}

/// Which part of the negotiation the current document is in.
#[derive(Debug)]
enum Phase {
    /// Waiting for the client's header of a new document.
    AwaitHeader,
    /// Only STARTTLS is allowed.
    PreTls,
    /// Authentication may start.
    PreAuth,
    /// An authentication attempt is under way.
    Sasl(Sasl),
    /// Authenticated, after the restart: waiting for a bind request.
    PreBind,
    /// A bind request waits for the driver (`iq id`).
    Binding(String),
    /// An in-band registration waits for the driver.
    Register(Registering),
    /// A session: stanzas flow.
    Bound(FullJid),
    /// Done.
    Closed,
}

/// Where an in-band registration is. The IQ is kept as its addressing
/// only ([`registration::skeleton`]); the password until it is handed to
/// the driver, and never shown by `Debug`.
#[derive(Debug)]
enum Registering {
    /// Whether the source may register now (the IQ, the user, the
    /// password).
    Allowing(Element, BareJid, Password),
    /// Whether the name is free (the IQ, the user, the password).
    Lookup(Element, BareJid, Password),
    /// The new account is being stored.
    Writing(Element),
}

/// A bound session's change to its own account.
#[derive(Debug)]
struct BoundChange {
    /// The IQ's addressing ([`registration::skeleton`]).
    iq: Element,
    /// It removes the account.
    remove: bool,
    /// A new password waiting for the source's rate (see
    /// [`C2sOutput::RegistrationAttempt`]); `None` once it went out.
    waiting: Option<Password>,
}

/// A password on its way to the driver; `Debug` does not show it.
struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// One client connection's negotiation and session state.
pub struct C2sStream {
    cfg: Arc<C2sConfig>,
    rng: Xoshiro256PlusPlus,
    phase: Phase,
    header_sent: bool,
    seen_header: bool,
    tls: bool,
    /// The TLS connection's `tls-exporter` data: `-PLUS` is offered.
    binding: Option<ChannelBinding>,
    /// The domain the client addressed.
    domain: Option<Domain>,
    /// The authenticated user.
    user: Option<BareJid>,
    /// The full JID this stream was bound to (kept after it closes, so
    /// the driver can unregister the session).
    session: Option<FullJid>,
    failures: u32,
    /// An account was registered on this stream (one per stream).
    registered: bool,
    /// A bound session's change to its account in flight.
    account_write: Option<BoundChange>,
    /// Until the first header; then until bound.
    deadline: Option<Instant>,
    idle_deadline: Instant,
    out: VecDeque<C2sOutput>,
}

impl C2sStream {
    /// A connection accepted at `now`; `seed` makes ids, nonces and
    /// generated resources.
    pub fn new(cfg: Arc<C2sConfig>, now: Instant, seed: u64) -> C2sStream {
        C2sStream {
            deadline: Some(now + cfg.header_timeout),
            idle_deadline: now + cfg.idle_timeout,
            cfg,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            phase: Phase::AwaitHeader,
            header_sent: false,
            seen_header: false,
            tls: false,
            binding: None,
            domain: None,
            user: None,
            session: None,
            failures: 0,
            registered: false,
            account_write: None,
            out: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<C2sOutput> {
        self.out.pop_front()
    }

    /// When [`C2sStream::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        Some(match self.deadline {
            Some(d) => d.min(self.idle_deadline),
            None => self.idle_deadline,
        })
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The authenticated user, once SASL succeeded.
    pub fn user(&self) -> Option<&BareJid> {
        self.user.as_ref()
    }

    /// The session's full JID, once bound.
    pub fn bound(&self) -> Option<&FullJid> {
        match &self.phase {
            Phase::Bound(j) => Some(j),
            _ => None,
        }
    }

    /// The full JID this stream was bound to, also after it closed.
    pub fn session(&self) -> Option<&FullJid> {
        self.session.as_ref()
    }

    /// Deadlines passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            let why = if self.seen_header {
                "not logged in in time"
            } else {
                "no stream header in time"
            };
            return self.fail(Condition::ConnectionTimeout, why);
        }
        if now >= self.idle_deadline {
            self.fail(Condition::ConnectionTimeout, "idle for too long");
        }
    }

    /// The client sent whitespace (a keepalive).
    pub fn handle_keepalive(&mut self, now: Instant) {
        self.idle_deadline = now + self.cfg.idle_timeout;
    }

    /// The server is shutting down.
    pub fn handle_shutdown(&mut self) {
        if !self.is_closed() {
            self.fail(Condition::SystemShutdown, "the server is shutting down");
        }
    }

    /// Another stream bound the same full JID and replaced this one.
    pub fn handle_replaced(&mut self) {
        if !self.is_closed() {
            self.fail(Condition::Conflict, "replaced by a new connection");
        }
    }

    /// The client's XML could not be read: `cond` is the stream error to
    /// send, or `None` when the transport itself failed.
    pub fn handle_read_error(&mut self, cond: Option<Condition>, text: &str) {
        if self.is_closed() {
            return;
        }
        match cond {
            Some(c) => self.fail(c, text),
            None => self.close(None),
        }
    }

    /// The client closed its stream.
    pub fn handle_end(&mut self) {
        if self.is_closed() {
            return;
        }
        self.out.push_back(C2sOutput::Write(STREAM_END.into()));
        self.close(None);
    }

    /// TLS is up (after [`C2sOutput::StartTls`], or from the start on a direct-TLS port);
    /// `binding`: the connection's `tls-exporter` channel binding data,
    /// when it has one (TLS 1.3), which makes `-PLUS` mechanisms available.
    pub fn handle_tls(&mut self, now: Instant, binding: Option<ChannelBinding>) {
        self.tls = true;
        self.binding = binding;
        self.idle_deadline = now + self.cfg.idle_timeout;
    }

    /// The client's header of a new document.
    pub fn handle_header(&mut self, now: Instant, h: StreamHeader) {
        if !matches!(self.phase, Phase::AwaitHeader) {
            return self.fail(Condition::NotWellFormed, "second stream header");
        }
        self.idle_deadline = now + self.cfg.idle_timeout;
        if !self.seen_header {
            self.seen_header = true;
            self.deadline = Some(now + self.cfg.auth_timeout);
        }
        let domain = match h.to.as_deref().map(Domain::parse) {
            Some(Ok(d)) if self.cfg.served.contains(&d) => d,
            Some(_) => return self.fail(Condition::HostUnknown, "no such domain here"),
            None => return self.fail(Condition::HostUnknown, "the header names no domain"),
        };
        if self.domain.as_ref().is_some_and(|d| d != &domain) {
            return self.fail(Condition::HostUnknown, "the domain changed mid-stream");
        }
        self.domain = Some(domain);
        if h.default_ns.as_deref() != Some(NS_CLIENT) {
            return self.fail(Condition::InvalidNamespace, "c2s streams use jabber:client");
        }
        if !h.version.as_deref().is_some_and(|v| v.starts_with("1.")) {
            return self.fail(Condition::UnsupportedVersion, "version 1.0 is required");
        }
        self.send_header();
        let features = if self.user.is_some() {
            self.phase = Phase::PreBind;
            format!(
                "<bind xmlns='{NS_BIND}'/><session xmlns='{NS_SESSION}'><optional/></session><ver xmlns='{NS_ROSTER_VER}'/><sub xmlns='{NS_PRE_APPROVAL}'/>"
            )
        } else if !self.tls && self.cfg.require_tls && self.cfg.tls_available {
            self.phase = Phase::PreTls;
            format!("<starttls xmlns='{NS_TLS}'><required/></starttls>")
        } else if !self.tls && self.cfg.require_tls {
            // TLS is required but impossible: nobody can log in here.
            return self.fail(
                Condition::UndefinedCondition,
                "TLS is required but not set up",
            );
        } else {
            self.phase = Phase::PreAuth;
            let mut f = String::new();
            if !self.tls && self.cfg.tls_available {
                f.push_str(&format!("<starttls xmlns='{NS_TLS}'/>"));
            }
            f.push_str(&format!("<mechanisms xmlns='{NS_SASL}'>"));
            for m in self.mechanisms() {
                f.push_str(&format!("<mechanism>{m}</mechanism>"));
            }
            f.push_str("</mechanisms>");
            if self.cfg.registration && self.tls {
                f.push_str(&format!("<register xmlns='{NS_REGISTER_FEATURE}'/>"));
            }
            if self.binding.is_some() {
                // XEP-0440: which channel binding types the -PLUS
                // mechanisms accept.
                f.push_str(&format!(
                    "<sasl-channel-binding xmlns='{NS_SASL_CB}'><channel-binding type='{TLS_EXPORTER}'/></sasl-channel-binding>"
                ));
            }
            f
        };
        self.write(format!("<stream:features>{features}</stream:features>"));
    }

    /// The mechanisms offered now, strongest first.
    fn mechanisms(&self) -> Vec<&'static str> {
        let mut m = Vec::with_capacity(5);
        if self.binding.is_some() {
            m.extend(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"]);
        }
        m.extend(["SCRAM-SHA-256", "SCRAM-SHA-1"]);
        if self.tls {
            m.push("PLAIN");
        }
        m
    }

    /// A top-level element.
    pub fn handle_element(&mut self, now: Instant, el: Element) {
        if self.is_closed() {
            return;
        }
        self.idle_deadline = now + self.cfg.idle_timeout;
        let ns = el.ns();
        match (&self.phase, ns.as_str()) {
            (Phase::AwaitHeader, _) => {
                self.fail(Condition::NotWellFormed, "element before the stream header")
            }
            (Phase::PreTls, NS_TLS) if el.name() == "starttls" => {
                self.write(format!("<proceed xmlns='{NS_TLS}'/>"));
                self.out.push_back(C2sOutput::StartTls);
                self.new_document();
            }
            (Phase::PreTls, _) => self.fail(Condition::PolicyViolation, "STARTTLS is required"),
            (Phase::PreAuth, NS_TLS) if el.name() == "starttls" && !self.tls => {
                self.write(format!("<proceed xmlns='{NS_TLS}'/>"));
                self.out.push_back(C2sOutput::StartTls);
                self.new_document();
            }
            (Phase::PreAuth | Phase::Sasl(_), NS_SASL) => self.on_sasl(el),
            (Phase::PreAuth, NS_CLIENT) if crate::register::query(&el).is_some() => {
                self.on_register(el)
            }
            (Phase::Register(_), _) => {
                self.fail(Condition::PolicyViolation, "element while registering")
            }
            (Phase::PreAuth | Phase::Sasl(_), _) => {
                self.fail(Condition::NotAuthorized, "not authenticated")
            }
            (Phase::PreBind | Phase::Binding(_), NS_CLIENT) => self.on_pre_bind(el),
            (Phase::Bound(_), NS_CLIENT) => self.on_stanza(el),
            (Phase::Closed, _) => {}
            _ => self.fail(Condition::UnsupportedStanzaType, "unexpected element"),
        }
    }

    fn on_sasl(&mut self, el: Element) {
        let sasl = match std::mem::replace(&mut self.phase, Phase::PreAuth) {
            Phase::Sasl(s) => Some(s),
            _ => None,
        };
        match (el.name(), sasl) {
            ("abort", _) => self.sasl_failure("aborted", false),
            ("auth", None) => self.on_auth(&el),
            ("response", Some(s)) => self.on_response(&el, s),
            ("auth", Some(_)) => self.sasl_failure("malformed-request", true),
            (_, s) => {
                // A `<response/>` out of turn, or a SASL element we do
                // not know; a lookup in flight stays in flight.
                if let Some(s @ (Sasl::LookupPlain(..) | Sasl::LookupScram(..))) = s {
                    self.phase = Phase::Sasl(s);
                    return self.fail(Condition::PolicyViolation, "SASL element out of turn");
                }
                self.sasl_failure("malformed-request", true)
            }
        }
    }

    fn on_auth(&mut self, el: &Element) {
        let mech = el.attr("mechanism").unwrap_or_default();
        let hash = match mech {
            "SCRAM-SHA-256" => Some((ScramHash::Sha256, false)),
            "SCRAM-SHA-1" => Some((ScramHash::Sha1, false)),
            "SCRAM-SHA-256-PLUS" if self.binding.is_some() => Some((ScramHash::Sha256, true)),
            "SCRAM-SHA-1-PLUS" if self.binding.is_some() => Some((ScramHash::Sha1, true)),
            "PLAIN" if self.tls => None,
            "PLAIN" => return self.sasl_failure("encryption-required", true),
            _ => return self.sasl_failure("invalid-mechanism", true),
        };
        let Some(data) = decode_payload(&el.text()) else {
            return self.sasl_failure("incorrect-encoding", true);
        };
        match hash {
            Some((h, plus)) if data.is_empty() => {
                self.write(format!("<challenge xmlns='{NS_SASL}'/>"));
                self.phase = Phase::Sasl(Sasl::AwaitFirst(h, plus));
            }
            Some((h, plus)) => self.on_client_first(h, plus, &data),
            None => self.on_plain(&data),
        }
    }

    fn on_client_first(&mut self, hash: ScramHash, plus: bool, data: &[u8]) {
        let first = match ClientFirst::parse(data) {
            Ok(f) => f,
            Err(ScramError::Malformed(_)) => return self.sasl_failure("malformed-request", true),
            Err(ScramError::NotAuthorized) => return self.sasl_failure("not-authorized", true),
        };
        // RFC 5802 §6 and RFC 9266: a -PLUS mechanism binds with
        // tls-exporter and nothing else; a plain one does not bind, and
        // `y` (the client could have bound) while -PLUS was offered means
        // the offer was stripped on the way.
        match (&first.flag, plus) {
            (Gs2Flag::Uses(t), true) if t == TLS_EXPORTER => {}
            (Gs2Flag::Uses(_), _) | (Gs2Flag::No | Gs2Flag::ClientSupports, true) => {
                return self.sasl_failure("malformed-request", true);
            }
            (Gs2Flag::ClientSupports, false) if self.binding.is_some() => {
                return self.sasl_failure("not-authorized", true);
            }
            (Gs2Flag::No | Gs2Flag::ClientSupports, false) => {}
        }
        let Some(user) = self.user_of(&first.username) else {
            return self.sasl_failure("not-authorized", true);
        };
        if first.authzid.as_deref().is_some_and(|a| a != user.as_str()) {
            return self.sasl_failure("invalid-authzid", true);
        }
        self.out.push_back(C2sOutput::LookupAccount(user.clone()));
        self.phase = Phase::Sasl(Sasl::LookupScram(hash, first, user));
    }

    fn on_plain(&mut self, data: &[u8]) {
        // message = [authzid] NUL authcid NUL passwd (RFC 4616)
        let mut parts = data.split(|b| *b == 0);
        let (Some(authzid), Some(authcid), Some(passwd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.sasl_failure("malformed-request", true);
        };
        let (Ok(authzid), Ok(authcid), Ok(passwd)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(passwd),
        ) else {
            return self.sasl_failure("malformed-request", true);
        };
        let Some(user) = self.user_of(authcid) else {
            return self.sasl_failure("not-authorized", true);
        };
        if !authzid.is_empty() && authzid != user.as_str() {
            return self.sasl_failure("invalid-authzid", true);
        }
        self.out.push_back(C2sOutput::LookupAccount(user.clone()));
        self.phase = Phase::Sasl(Sasl::LookupPlain(Password(passwd.to_string()), user));
    }

    /// The account asked for with [`C2sOutput::LookupAccount`].
    pub fn handle_account(&mut self, user: &BareJid, lookup: Lookup) {
        if let Phase::Register(Registering::Lookup(_, u, _)) = &self.phase
            && u == user
        {
            return self.on_register_lookup(lookup);
        }
        let unavailable = lookup == Lookup::Unavailable;
        let account = match lookup {
            Lookup::Found(a) => Some(a),
            Lookup::NotFound | Lookup::Unavailable => None,
        };
        let sasl = match &self.phase {
            Phase::Sasl(Sasl::LookupScram(_, _, u) | Sasl::LookupPlain(_, u)) if u == user => {
                match std::mem::replace(&mut self.phase, Phase::PreAuth) {
                    Phase::Sasl(s) => s,
                    _ => return,
                }
            }
            // A stale answer (the stream moved on): ignore it.
            _ => return,
        };
        let account = account.filter(|a| a.jid == user.as_str());
        if unavailable {
            // RFC 6120 §6.5.12: the store did not answer; not the client's
            // fault, and not counted against it.
            return self.sasl_failure("temporary-auth-failure", false);
        }
        match sasl {
            Sasl::LookupPlain(password, user) => {
                if account.is_some_and(|a| a.check_password(&password.0)) {
                    self.succeed(user, None);
                } else {
                    self.sasl_failure("not-authorized", true);
                }
            }
            Sasl::LookupScram(hash, first, user) => {
                let exists = account.is_some();
                let keys = match account {
                    Some(a) => a.keys(hash).clone(),
                    None => decoy_keys(
                        hash,
                        &self.cfg.decoy_secret,
                        user.as_str(),
                        crate::account::DEFAULT_ITERATIONS,
                    ),
                };
                let nonce_bytes: [u8; 18] = self.rng.random();
                let nonce = B64.encode(nonce_bytes);
                let cb_data = match (&first.flag, &self.binding) {
                    (Gs2Flag::Uses(_), Some(b)) => b.0.clone(),
                    _ => Vec::new(),
                };
                let (exchange, server_first) =
                    ScramExchange::new(hash, keys, first, &nonce, &cb_data);
                self.write(format!(
                    "<challenge xmlns='{NS_SASL}'>{}</challenge>",
                    B64.encode(server_first)
                ));
                self.phase = Phase::Sasl(Sasl::Scram {
                    exchange: Box::new(exchange),
                    user,
                    exists,
                });
            }
            other => self.phase = Phase::Sasl(other),
        }
    }

    fn on_response(&mut self, el: &Element, sasl: Sasl) {
        let Some(data) = decode_payload(&el.text()) else {
            return self.sasl_failure("incorrect-encoding", true);
        };
        match sasl {
            Sasl::AwaitFirst(hash, plus) => self.on_client_first(hash, plus, &data),
            Sasl::Scram {
                exchange,
                user,
                exists,
            } => match exchange.finish(&data) {
                Ok(server_final) if exists => self.succeed(user, Some(server_final)),
                Ok(_) | Err(ScramError::NotAuthorized) => self.sasl_failure("not-authorized", true),
                Err(_) => self.sasl_failure("malformed-request", true),
            },
            s @ (Sasl::LookupPlain(..) | Sasl::LookupScram(..)) => {
                self.phase = Phase::Sasl(s);
                self.fail(Condition::PolicyViolation, "SASL element out of turn");
            }
        }
    }

    fn succeed(&mut self, user: BareJid, additional: Option<String>) {
        let body = additional.map(|d| B64.encode(d)).unwrap_or_default();
        self.write(format!("<success xmlns='{NS_SASL}'>{body}</success>"));
        self.out.push_back(C2sOutput::Authenticated(user.clone()));
        self.user = Some(user);
        self.out.push_back(C2sOutput::Restart);
        self.new_document();
    }

    /// A SASL `<failure/>`; `counts`: it is a failed attempt (an abort is
    /// not). Past the allowed failures the stream ends.
    fn sasl_failure(&mut self, condition: &str, counts: bool) {
        self.write(format!(
            "<failure xmlns='{NS_SASL}'><{condition}/></failure>"
        ));
        self.phase = Phase::PreAuth;
        if counts {
            self.failures += 1;
            self.out.push_back(C2sOutput::AuthFailed);
            if self.failures >= self.cfg.max_auth_failures {
                self.fail(
                    Condition::PolicyViolation,
                    "too many failed authentication attempts",
                );
            }
        }
    }

    /// The bare JID a SASL user name names on this stream's domain.
    fn user_of(&self, username: &str) -> Option<BareJid> {
        let domain = self.domain.as_ref()?;
        if username.is_empty() || username.contains(['@', '/']) {
            return None;
        }
        BareJid::new(&format!("{username}@{}", domain.as_str())).ok()
    }

    fn on_pre_bind(&mut self, el: Element) {
        if matches!(self.phase, Phase::Binding(_)) {
            return self.fail(Condition::PolicyViolation, "stanza while binding");
        }
        let is_set = el.name() == "iq" && el.attr("type") == Some("set");
        let bind = el.get_child("bind", NS_BIND);
        let (true, Some(bind), Some(id)) = (is_set, bind, el.attr("id")) else {
            return self.fail(Condition::NotAuthorized, "bind a resource first");
        };
        let Some(user) = self.user.clone() else {
            return self.fail(Condition::NotAuthorized, "not authenticated");
        };
        let requested = bind
            .get_child("resource", NS_BIND)
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let full = match requested {
            Some(r) if r.len() > MAX_RESOURCE_BYTES => None,
            Some(r) => user.with_resource_str(r.trim()).ok(),
            None => {
                let b: [u8; 8] = self.rng.random();
                let r: String = b.iter().map(|x| format!("{x:02x}")).collect();
                user.with_resource_str(&r).ok()
            }
        };
        let Some(full) = full else {
            if let Some(reply) = error_reply(&el, DefinedCondition::BadRequest, None) {
                self.write_stanza(&reply);
            }
            return;
        };
        self.phase = Phase::Binding(id.to_string());
        self.out.push_back(C2sOutput::Bind(full));
    }

    /// The driver's answer to [`C2sOutput::Bind`]: the session is
    /// registered under `full`, or refused with `condition` (`conflict`,
    /// `resource-constraint`, ...).
    pub fn handle_bound(&mut self, result: Result<FullJid, DefinedCondition>) {
        let Phase::Binding(id) = &self.phase else {
            return;
        };
        let id = id.clone();
        match result {
            Ok(full) => {
                self.write(format!(
                    "<iq xmlns='{NS_CLIENT}' type='result' id='{}'><bind xmlns='{NS_BIND}'><jid>{}</jid></bind></iq>",
                    escape_attr(&id),
                    escape_text(full.as_str())
                ));
                self.deadline = None;
                self.session = Some(full.clone());
                self.phase = Phase::Bound(full);
            }
            Err(cond) => {
                let mut iq = Element::bare("iq", NS_CLIENT);
                set_attr(&mut iq, "type", "set");
                set_attr(&mut iq, "id", &id);
                iq.append_child(Element::bare("bind", NS_BIND));
                if let Some(reply) = error_reply(&iq, cond, None) {
                    self.write_stanza(&reply);
                }
                self.phase = Phase::PreBind;
            }
        }
    }

    fn on_stanza(&mut self, mut el: Element) {
        let Phase::Bound(full) = &self.phase else {
            return;
        };
        let full = full.clone();
        if !matches!(el.name(), "message" | "presence" | "iq") {
            return self.fail(Condition::UnsupportedStanzaType, "not a stanza");
        }
        if let Some(from) = el.attr("from") {
            let ok = match Jid::new(from) {
                Ok(j) => j == full || j == full.to_bare(),
                Err(_) => false,
            };
            if !ok {
                return self.fail(Condition::InvalidFrom, "from is not this session");
            }
        }
        set_attr(&mut el, "from", full.as_str());
        // An IQ session request (RFC 3921) is answered here.
        if el.name() == "iq"
            && el.attr("type") == Some("set")
            && el.get_child("session", NS_SESSION).is_some()
        {
            let reply = ring_services::stanza::iq_result(&el, None);
            return self.write_stanza(&reply);
        }
        if let Some(to) = el.attr("to")
            && Jid::new(to).is_err()
        {
            if let Some(reply) = error_reply(&el, DefinedCondition::JidMalformed, None) {
                self.write_stanza(&reply);
            }
            return;
        }
        if self.is_own_registration(&el, &full) {
            return self.on_bound_register(el, full);
        }
        self.out.push_back(C2sOutput::Stanza(el));
    }

    /// A stanza for this session's client.
    pub fn handle_deliver(&mut self, el: &Element) {
        if matches!(self.phase, Phase::Bound(_)) {
            self.write_stanza(el);
        }
    }

    fn write_stanza(&mut self, el: &Element) {
        self.write(ring_services::stanza::to_string(el));
    }

    fn write(&mut self, s: String) {
        self.out.push_back(C2sOutput::Write(s));
    }

    fn send_header(&mut self) {
        if self.header_sent {
            return;
        }
        self.header_sent = true;
        let id: [u8; 12] = self.rng.random();
        let id: String = id.iter().map(|x| format!("{x:02x}")).collect();
        let from = self
            .domain
            .as_ref()
            .or(self.cfg.served.first())
            .map(|d| format!(" from='{}'", escape_attr(d.as_str())))
            .unwrap_or_default();
        self.write(format!(
            "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}' version='1.0' xml:lang='en' id='{id}'{from}>"
        ));
    }

    fn new_document(&mut self) {
        self.phase = Phase::AwaitHeader;
        self.header_sent = false;
    }

    fn fail(&mut self, cond: Condition, text: &str) {
        self.send_header();
        self.write(format!("{}{STREAM_END}", cond.to_xml(Some(text))));
        self.close(Some(cond));
    }

    fn close(&mut self, error: Option<Condition>) {
        self.phase = Phase::Closed;
        self.out.push_back(C2sOutput::Close { error });
    }
}

/// A SASL payload: base64, or `=` for an empty one (RFC 6120 §6.4.2).
fn decode_payload(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    match t {
        "" | "=" => Some(Vec::new()),
        _ => B64.decode(t).ok(),
    }
}
