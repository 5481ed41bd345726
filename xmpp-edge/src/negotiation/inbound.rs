//! The receiving side of an s2s stream (RFC 6120 §4–6, XEP-0220,
//! XEP-0178), one state machine per TCP connection.
//!
//! A connection carries several XML documents: plaintext (header, features
//! with STARTTLS required and dialback), then TLS (features: SASL EXTERNAL
//! when the peer's certificate validates for its domain, and dialback),
//! then, after SASL, the authenticated stream. The phase says which
//! document we are in and what it may contain:
//!
//! ```text
//!  AwaitHeader --header--> Open --<starttls/>--> (StartTls) --> AwaitHeader
//!                          Open --SASL success-> (Restart)  --> AwaitHeader
//!                          Open --stanzas, dialback, db:verify...
//!  any --error, timeout, </stream>--> Closed
//! ```
//!
//! The security rules live here, in one place:
//! * every address is parsed with the `jid` crate ([`Domain`]); the header's
//!   `to` must be ours (`host-unknown`);
//! * a domain the ring serves can never be authenticated on an inbound
//!   stream, by dialback or by SASL: the ring never federates with itself,
//!   so such a claim is always a spoof;
//! * dialback keys are checked against the id *we* issued for this stream;
//! * nothing but negotiation is accepted before TLS; stanzas need an
//!   authenticated `from` domain (`invalid-from`) and one of our `to`s;
//! * a stream must authenticate within the auth timeout of its first
//!   header (whitespace does not extend it), and pending dialback checks
//!   per stream are bounded.

use super::{Features, NS_SASL, NS_TLS, answer_verify};
use crate::dialback::{self, DialbackElement, Secret};
use crate::domain::{Domain, Served};
use crate::stream_error::Condition;
use crate::xml::{NS_CLIENT, NS_DIALBACK, NS_SERVER, NS_STREAMS, StreamHeader};
use crate::xml_write::{STREAM_END, renamespace, stream_header};
use base64::Engine;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// SASL attempts allowed per stream before it is closed.
const MAX_SASL_FAILURES: u32 = 3;
/// `db:verify` requests one stream may make: this many per second,
/// sustained, and [`VERIFY_BURST`] at once. An honest server asks one per
/// stream it opened to us; a flood of them costs us an HMAC and an answer
/// each.
const VERIFY_RATE: f64 = 20.0;
const VERIFY_BURST: f64 = 64.0;

/// What every inbound stream of an edge shares.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    /// The ring's domains.
    pub served: Served,
    /// The ring-wide dialback secret.
    pub secret: Secret,
    /// CA roots that make a peer's certificate authenticate it (SASL
    /// EXTERNAL); `None`: only dialback authenticates.
    pub roots: Option<Arc<RootCertStore>>,
    /// The first header must arrive within this.
    pub header_timeout: Duration,
    /// Some domain must be authenticated within this after the first
    /// header, or the stream is closed.
    pub auth_timeout: Duration,
    /// A stream silent this long is closed.
    pub idle_timeout: Duration,
    /// Dialback checks (`db:result`) one stream may have in flight.
    pub max_pending_dialback: usize,
}

/// How a domain proved itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// XEP-0220 dialback, verified with the domain's authoritative server.
    Dialback,
    /// XEP-0178 SASL EXTERNAL with a certificate our roots validate.
    SaslExternal,
}

/// A dialback key to check with the originating domain's authoritative
/// server (`db:verify`); the answer comes back through
/// [`InboundStream::handle_verified`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyRequest {
    /// The domain that claims to be sending (the peer).
    pub originating: Domain,
    /// Our domain it wants to send to.
    pub receiving: Domain,
    /// The id we gave this stream.
    pub stream_id: String,
    /// The key it presented.
    pub key: String,
}

/// The outcome of a dialback verification.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The authoritative server confirmed the key.
    Valid,
    /// It denied it.
    Invalid,
    /// No answer could be had; the stanza error condition to report.
    Error(DefinedCondition),
}

/// What the driver is asked to do, in order.
#[derive(Debug, PartialEq)]
pub enum InboundOutput {
    /// Write these bytes.
    Write(String),
    /// Everything before this is written: upgrade to TLS (server side),
    /// then call [`InboundStream::handle_tls`] (or drop the connection).
    StartTls,
    /// A new XML document starts (after SASL): read it with a new parser.
    Restart,
    /// Check a dialback key (see [`VerifyRequest`]).
    Verify(VerifyRequest),
    /// A domain authenticated (reads may use the authenticated limits).
    Authenticated {
        /// The domain.
        domain: Domain,
        /// How.
        method: AuthMethod,
    },
    /// An authenticated stanza for the ring, in `jabber:client`.
    Stanza(Element),
    /// A `db:verify` was answered (for counters).
    VerifyAnswered {
        /// Whether we confirmed the key.
        valid: bool,
    },
    /// The stream did not authenticate in time (for counters; a `Close`
    /// follows).
    AuthTimedOut,
    /// A dialback check finished (for counters).
    DialbackDone {
        /// Whether it authenticated the domain.
        ok: bool,
    },
    /// Everything before is written; close the connection. `error`: the
    /// stream error we sent, if any.
    Close {
        /// The condition sent.
        error: Option<Condition>,
    },
}

/// Which document of the connection we are in.
#[derive(Debug)]
enum Phase {
    /// Waiting for the peer's header of a new document.
    AwaitHeader,
    /// Header exchanged, features sent.
    Open {
        /// The id we issued for this document.
        id: String,
        /// Its domain, if its header said.
        peer: Option<Domain>,
        /// Whether we offered SASL EXTERNAL.
        external: bool,
    },
    /// Done: nothing more is read or written.
    Closed,
}

/// One inbound connection's negotiation and authorisation state.
pub struct InboundStream {
    cfg: Arc<InboundConfig>,
    rng: Xoshiro256PlusPlus,
    phase: Phase,
    /// Our header for the current document is written.
    header_sent: bool,
    /// A first header arrived (the auth deadline runs).
    seen_header: bool,
    /// Our domain the peer addressed (for the header of an error).
    our: Option<Domain>,
    tls: bool,
    chain: Vec<CertificateDer<'static>>,
    /// The domain SASL EXTERNAL authenticated (at most one per stream).
    sasl: Option<Domain>,
    sasl_failures: u32,
    /// Domains allowed as `from` on this stream.
    authenticated: BTreeSet<Domain>,
    /// Dialback checks in flight: (originating, receiving).
    pending: BTreeSet<(Domain, Domain)>,
    /// Until the first header; then until some domain authenticates.
    deadline: Option<Instant>,
    /// The `db:verify` allowance (a token bucket) and when it was last
    /// filled.
    verify_tokens: f64,
    verify_at: Instant,
    idle_deadline: Instant,
    out: VecDeque<InboundOutput>,
}

impl InboundStream {
    /// A new connection accepted at `now`; `seed` makes its stream ids.
    pub fn new(cfg: Arc<InboundConfig>, now: Instant, seed: u64) -> InboundStream {
        InboundStream {
            deadline: Some(now + cfg.header_timeout),
            verify_tokens: VERIFY_BURST,
            verify_at: now,
            idle_deadline: now + cfg.idle_timeout,
            cfg,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            phase: Phase::AwaitHeader,
            header_sent: false,
            seen_header: false,
            our: None,
            tls: false,
            chain: Vec::new(),
            sasl: None,
            sasl_failures: 0,
            authenticated: BTreeSet::new(),
            pending: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<InboundOutput> {
        self.out.pop_front()
    }

    /// When [`InboundStream::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Closed) {
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

    /// Whether any domain is authenticated (the driver then allows the
    /// larger stanza limits).
    pub fn is_authenticated(&self) -> bool {
        !self.authenticated.is_empty()
    }

    /// Deadlines passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            let why = if !self.seen_header {
                "no stream header in time"
            } else {
                self.out.push_back(InboundOutput::AuthTimedOut);
                "not authenticated in time"
            };
            return self.fail(Condition::ConnectionTimeout, why);
        }
        if now >= self.idle_deadline {
            self.fail(Condition::ConnectionTimeout, "idle for too long");
        }
    }

    /// The peer sent whitespace: alive, but not yet authenticated.
    pub fn handle_keepalive(&mut self, now: Instant) {
        self.idle_deadline = now + self.cfg.idle_timeout;
    }

    /// The edge is shutting down.
    pub fn handle_shutdown(&mut self) {
        if !self.is_closed() {
            self.fail(Condition::SystemShutdown, "the edge is shutting down");
        }
    }

    /// The peer's XML could not be read: `cond` is the stream error to
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

    /// The peer closed its stream (`</stream:stream>`).
    pub fn handle_end(&mut self) {
        if self.is_closed() {
            return;
        }
        self.out.push_back(InboundOutput::Write(STREAM_END.into()));
        self.close(None);
    }

    /// TLS is up (after [`InboundOutput::StartTls`]); `chain` is the
    /// certificate the peer presented, if any.
    pub fn handle_tls(&mut self, now: Instant, chain: Vec<CertificateDer<'static>>) {
        self.tls = true;
        self.chain = chain;
        self.idle_deadline = now + self.cfg.idle_timeout;
    }

    /// The peer's header of a new document.
    pub fn handle_header(&mut self, now: Instant, h: StreamHeader) {
        if !matches!(self.phase, Phase::AwaitHeader) {
            return self.fail(Condition::NotWellFormed, "second stream header");
        }
        self.idle_deadline = now + self.cfg.idle_timeout;
        if !self.seen_header {
            // From the first header on, the peer has the auth timeout to
            // authenticate some domain (whitespace does not extend it).
            self.seen_header = true;
            self.deadline = Some(now + self.cfg.auth_timeout);
        }
        let our = match h.to.as_deref().map(Domain::parse) {
            Some(Ok(d)) if self.cfg.served.contains(&d) => d,
            Some(Ok(_)) => {
                return self.fail(
                    Condition::HostUnknown,
                    "this server does not serve that domain",
                );
            }
            Some(Err(_)) => return self.fail(Condition::HostUnknown, "invalid 'to' domain"),
            None => return self.fail(Condition::HostUnknown, "the header names no domain"),
        };
        self.our = Some(our.clone());
        if h.default_ns.as_deref() != Some(NS_SERVER) {
            return self.fail(Condition::InvalidNamespace, "s2s streams use jabber:server");
        }
        if h.version.as_deref() != Some("1.0") {
            return self.fail(
                Condition::UnsupportedVersion,
                "version 1.0 (with STARTTLS) is required",
            );
        }
        let peer = match h.from.as_deref().map(Domain::parse) {
            None => None,
            Some(Ok(d)) if self.cfg.served.contains(&d) => {
                return self.fail(Condition::InvalidFrom, "that domain is served here");
            }
            Some(Ok(d)) => Some(d),
            Some(Err(_)) => return self.fail(Condition::InvalidFrom, "invalid 'from' domain"),
        };
        let external = self.tls
            && self.sasl.is_none()
            && match (&self.cfg.roots, &peer) {
                (Some(roots), Some(d)) => {
                    crate::tls::cert_valid_for(roots, &self.chain, d.as_str())
                }
                _ => false,
            };
        let features = Features {
            starttls: !self.tls,
            external,
            dialback: self.sasl.is_none(),
        };
        let id = self.new_stream_id();
        self.header_sent = true;
        let mut out = stream_header(
            Some(our.as_str()),
            peer.as_ref().map(Domain::as_str),
            Some(&id),
        );
        out.push_str(&features.to_xml());
        self.out.push_back(InboundOutput::Write(out));
        self.phase = Phase::Open { id, peer, external };
    }

    /// A complete top-level element.
    pub fn handle_element(&mut self, now: Instant, el: Element) {
        let Phase::Open { external, .. } = &self.phase else {
            if !self.is_closed() {
                self.fail(Condition::NotWellFormed, "element before the stream header");
            }
            return;
        };
        let external = *external;
        self.idle_deadline = now + self.cfg.idle_timeout;
        let ns = el.ns();
        match (ns.as_str(), el.name()) {
            (NS_TLS, "starttls") if !self.tls => {
                self.out
                    .push_back(InboundOutput::Write(format!("<proceed xmlns='{NS_TLS}'/>")));
                self.out.push_back(InboundOutput::StartTls);
                self.new_document();
            }
            (NS_SASL, "auth") => self.on_sasl_auth(&el, external),
            (NS_DIALBACK, _) => self.on_dialback(now, &el),
            (NS_SERVER, "message" | "presence" | "iq") => self.on_stanza(el),
            (NS_STREAMS, "error") => self.close(None),
            _ => self.fail(Condition::UnsupportedStanzaType, "unexpected element"),
        }
    }

    /// A dialback check this stream asked for ([`InboundOutput::Verify`])
    /// finished.
    pub fn handle_verified(&mut self, originating: &Domain, receiving: &Domain, verdict: Verdict) {
        if !self
            .pending
            .remove(&(originating.clone(), receiving.clone()))
            || self.is_closed()
        {
            return;
        }
        let answer = match verdict {
            Verdict::Valid => {
                self.authenticated.insert(originating.clone());
                self.deadline = None;
                self.out.push_back(InboundOutput::Authenticated {
                    domain: originating.clone(),
                    method: AuthMethod::Dialback,
                });
                dialback::result_answer(receiving.as_str(), originating.as_str(), true)
            }
            Verdict::Invalid => {
                dialback::result_answer(receiving.as_str(), originating.as_str(), false)
            }
            Verdict::Error(ref cond) => {
                dialback::result_error(receiving.as_str(), originating.as_str(), cond)
            }
        };
        self.out.push_back(InboundOutput::DialbackDone {
            ok: verdict == Verdict::Valid,
        });
        self.out.push_back(InboundOutput::Write(answer));
    }

    fn on_sasl_auth(&mut self, el: &Element, external: bool) {
        let peer = match &self.phase {
            Phase::Open { peer, .. } => peer.clone(),
            _ => None,
        };
        let failure = |cond: &str| format!("<failure xmlns='{NS_SASL}'><{cond}/></failure>");
        if !external || el.attr("mechanism") != Some("EXTERNAL") {
            self.out
                .push_back(InboundOutput::Write(failure("invalid-mechanism")));
            return self.count_sasl_failure();
        }
        let Some(peer) = peer else {
            self.out
                .push_back(InboundOutput::Write(failure("not-authorized")));
            return self.count_sasl_failure();
        };
        // The authorization identity is empty ("=") or the peer's domain.
        let text = el.text();
        let text = text.trim();
        let ok = text.is_empty()
            || text == "="
            || base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| Domain::parse(&s).ok())
                .is_some_and(|d| d == peer);
        if !ok {
            self.out
                .push_back(InboundOutput::Write(failure("not-authorized")));
            return self.count_sasl_failure();
        }
        self.out.push_back(InboundOutput::Write(format!(
            "<success xmlns='{NS_SASL}'/>"
        )));
        self.authenticated.insert(peer.clone());
        self.sasl = Some(peer.clone());
        self.deadline = None;
        self.out.push_back(InboundOutput::Authenticated {
            domain: peer,
            method: AuthMethod::SaslExternal,
        });
        self.out.push_back(InboundOutput::Restart);
        self.new_document();
    }

    fn count_sasl_failure(&mut self) {
        self.sasl_failures += 1;
        if self.sasl_failures >= MAX_SASL_FAILURES {
            self.fail(Condition::PolicyViolation, "too many failed SASL attempts");
        }
    }

    fn on_dialback(&mut self, now: Instant, el: &Element) {
        let Some(d) = DialbackElement::parse(el) else {
            return self.fail(Condition::NotAuthorized, "unexpected dialback element");
        };
        if d.kind.is_some() {
            return self.fail(
                Condition::NotAuthorized,
                "dialback answers belong on our own streams",
            );
        }
        if !self.tls {
            return self.fail(
                Condition::NotAuthorized,
                "STARTTLS is required before dialback",
            );
        }
        if d.verify {
            let elapsed = now.saturating_duration_since(self.verify_at).as_secs_f64();
            self.verify_tokens = (self.verify_tokens + elapsed * VERIFY_RATE).min(VERIFY_BURST);
            self.verify_at = now;
            if self.verify_tokens < 1.0 {
                return self.fail(
                    Condition::PolicyViolation,
                    "too many dialback verification requests",
                );
            }
            self.verify_tokens -= 1.0;
            let (answer, valid) = answer_verify(&self.cfg.served, &self.cfg.secret, &d);
            self.out.push_back(InboundOutput::VerifyAnswered { valid });
            self.out.push_back(InboundOutput::Write(answer));
            return;
        }
        let Phase::Open { id, .. } = &self.phase else {
            return;
        };
        let id = id.clone();
        // A db:result: the peer claims `from` and wants to send to our `to`.
        let (originating, receiving) = match (Domain::parse(&d.from), Domain::parse(&d.to)) {
            (Ok(o), Ok(r)) => (o, r),
            _ => {
                self.out
                    .push_back(InboundOutput::DialbackDone { ok: false });
                self.out
                    .push_back(InboundOutput::Write(dialback::result_error(
                        &d.to,
                        &d.from,
                        &DefinedCondition::JidMalformed,
                    )));
                return;
            }
        };
        if !self.cfg.served.contains(&receiving) {
            self.out
                .push_back(InboundOutput::DialbackDone { ok: false });
            self.out
                .push_back(InboundOutput::Write(dialback::result_error(
                    receiving.as_str(),
                    originating.as_str(),
                    &DefinedCondition::ItemNotFound,
                )));
            return;
        }
        if self.cfg.served.contains(&originating) || Some(&originating) == self.sasl.as_ref() {
            // Never authenticate one of our own domains from outside; a
            // SASL-authenticated stream has nothing to add by dialback.
            self.out
                .push_back(InboundOutput::DialbackDone { ok: false });
            self.out
                .push_back(InboundOutput::Write(dialback::result_answer(
                    receiving.as_str(),
                    originating.as_str(),
                    false,
                )));
            return;
        }
        if self.authenticated.contains(&originating) {
            self.out
                .push_back(InboundOutput::Write(dialback::result_answer(
                    receiving.as_str(),
                    originating.as_str(),
                    true,
                )));
            return;
        }
        let pair = (originating.clone(), receiving.clone());
        if self.pending.contains(&pair) {
            // Already being checked; its answer will come.
            return;
        }
        if self.pending.len() >= self.cfg.max_pending_dialback {
            self.out
                .push_back(InboundOutput::DialbackDone { ok: false });
            self.out
                .push_back(InboundOutput::Write(dialback::result_error(
                    receiving.as_str(),
                    originating.as_str(),
                    &DefinedCondition::ResourceConstraint,
                )));
            return;
        }
        self.pending.insert(pair);
        self.out.push_back(InboundOutput::Verify(VerifyRequest {
            originating,
            receiving,
            stream_id: id,
            key: d.key,
        }));
    }

    fn on_stanza(&mut self, el: Element) {
        if self.authenticated.is_empty() {
            return self.fail(Condition::NotAuthorized, "stanza before authentication");
        }
        let from = match el.attr("from") {
            None => return self.fail(Condition::ImproperAddressing, "stanza without 'from'"),
            Some(f) => match Domain::of_jid(f) {
                Ok(d) => d,
                Err(_) => return self.fail(Condition::InvalidFrom, "invalid 'from'"),
            },
        };
        if !self.authenticated.contains(&from) {
            return self.fail(
                Condition::InvalidFrom,
                "from is not an authenticated domain",
            );
        }
        let to = match el.attr("to") {
            None => return self.fail(Condition::ImproperAddressing, "stanza without 'to'"),
            Some(t) => match Domain::of_jid(t) {
                Ok(d) => d,
                Err(_) => return self.fail(Condition::HostUnknown, "invalid 'to'"),
            },
        };
        if !self.cfg.served.contains(&to) {
            return self.fail(Condition::HostUnknown, "to is not a domain of this server");
        }
        self.out
            .push_back(InboundOutput::Stanza(renamespace(el, NS_SERVER, NS_CLIENT)));
    }

    fn new_stream_id(&mut self) -> String {
        let b: [u8; 12] = self.rng.random();
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The next document starts: a new header is expected.
    fn new_document(&mut self) {
        self.phase = Phase::AwaitHeader;
        self.header_sent = false;
    }

    /// Ends the stream with `cond` (after our header if none was sent).
    fn fail(&mut self, cond: Condition, text: &str) {
        if !self.header_sent {
            let our = self
                .our
                .as_ref()
                .or(self.cfg.served.first())
                .map(|d| d.as_str().to_string());
            let id = self.new_stream_id();
            self.header_sent = true;
            self.out.push_back(InboundOutput::Write(stream_header(
                our.as_deref(),
                None,
                Some(&id),
            )));
        }
        self.out.push_back(InboundOutput::Write(format!(
            "{}{STREAM_END}",
            cond.to_xml(Some(text))
        )));
        self.close(Some(cond));
    }

    fn close(&mut self, error: Option<Condition>) {
        self.phase = Phase::Closed;
        self.pending.clear();
        self.out.push_back(InboundOutput::Close { error });
    }
}
