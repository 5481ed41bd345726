//! The initiating side of an s2s stream: negotiation of a stream we open to
//! a remote domain, either to carry stanzas (authenticating ourselves with
//! SASL EXTERNAL or dialback) or to verify a dialback key with that
//! domain's authoritative server (`db:verify`, no authentication needed).
//!
//! ```text
//!  AwaitHeader -> AwaitFeatures -<starttls/>-> AwaitProceed -(StartTls)-> AwaitHeader ...
//!  AwaitFeatures (TLS) -EXTERNAL-> AwaitSasl -success-(Restart)-> AwaitHeader -> AwaitFeatures -> Ready
//!                                 AwaitSasl -failure-> AwaitDialback
//!  AwaitFeatures (TLS) -dialback-> AwaitDialback -valid-> Ready
//! ```
//!
//! The rules that protect the ring live here: after TLS the remote's
//! certificate is checked against our roots for the remote domain, and with
//! `secure_auth` a certificate that does not validate ends the stream
//! (otherwise dialback carries on, as Prosody does by default); the remote's
//! stream id goes into a dialback key only when it is a well-formed token
//! (see [`crate::domain::valid_stream_id`]); and `db:verify` requests on our
//! stream are answered by the same rule as on inbound streams.

use super::{Features, NS_SASL, NS_TLS, answer_verify};
use crate::dialback::{self, DialbackElement, Secret};
use crate::domain::{Domain, Served};
use crate::stream_error::Condition;
use crate::xml::{NS_DIALBACK, NS_SERVER, NS_STREAMS, StreamHeader};
use crate::xml_write::stream_header;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use std::collections::VecDeque;
use std::sync::Arc;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

/// What every outbound stream of an edge shares.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// The ring's domains.
    pub served: Served,
    /// The ring-wide dialback secret.
    pub secret: Secret,
    /// Roots that a remote's certificate is checked against (configured CA
    /// and/or the system's); `None`: no certificate authenticates anyone.
    pub roots: Option<Arc<RootCertStore>>,
    /// Refuse to go on without TLS.
    pub require_tls: bool,
    /// Refuse a remote whose certificate does not validate for its domain
    /// (Prosody's `s2s_secure_auth`); otherwise dialback is used.
    pub secure_auth: bool,
}

/// Why the stream will carry nothing (RFC 6120 stanza error conditions
/// for the stanzas that waited for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing reachable (DNS, TCP).
    NotFound(String),
    /// Reached, but the stream failed (TLS, authentication, protocol).
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound(m) | Failure::Refused(m) => f.write_str(m),
        }
    }
}

impl Failure {
    /// The stanza error condition for stanzas that cannot be delivered.
    pub fn condition(&self) -> DefinedCondition {
        match self {
            Failure::NotFound(_) => DefinedCondition::RemoteServerNotFound,
            Failure::Refused(_) => DefinedCondition::RemoteServerTimeout,
        }
    }
}

/// What the stream is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Carry stanzas from `local` to `remote`: authenticate `local`.
    Stanzas,
    /// Ask `remote`'s authoritative server to verify dialback keys.
    Verify,
}

/// How our domain authenticated to the remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundAuth {
    /// SASL EXTERNAL with our certificate.
    SaslExternal,
    /// Dialback.
    Dialback,
}

/// What the driver is asked to do, in order.
#[derive(Debug, PartialEq)]
pub enum OutboundOutput {
    /// Write these bytes.
    Write(String),
    /// Everything before is written: upgrade to TLS (client side, server
    /// name = the remote domain), then call [`OutboundStream::handle_tls`].
    StartTls,
    /// A new XML document starts: read it with a new parser.
    Restart,
    /// We authenticated (for counters).
    Authenticated(OutboundAuth),
    /// Negotiation is done: stanzas (or `db:verify` requests) may be sent.
    Ready,
    /// An answer to a `db:verify` we sent (verify streams).
    Verified {
        /// The stream id the request named.
        id: String,
        /// Whether the key was confirmed.
        valid: bool,
    },
    /// We answered the remote's `db:verify` (for counters).
    VerifyAnswered {
        /// Whether we confirmed the key.
        valid: bool,
    },
    /// The stream is over and will carry nothing more.
    Failed(Failure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitHeader,
    AwaitFeatures,
    AwaitProceed,
    AwaitSasl,
    AwaitDialback,
    Ready,
    Failed,
}

/// One outbound stream's negotiation.
pub struct OutboundStream {
    cfg: Arc<OutboundConfig>,
    local: Domain,
    remote: Domain,
    purpose: Purpose,
    phase: Phase,
    tls: bool,
    /// SASL EXTERNAL succeeded: the next features end negotiation.
    sasl_done: bool,
    /// The id the remote gave the current document.
    stream_id: Option<String>,
    out: VecDeque<OutboundOutput>,
}

impl OutboundStream {
    /// A stream from `local` (ours) to `remote`; queues our header.
    pub fn new(
        cfg: Arc<OutboundConfig>,
        local: Domain,
        remote: Domain,
        purpose: Purpose,
    ) -> OutboundStream {
        let mut s = OutboundStream {
            cfg,
            local,
            remote,
            purpose,
            phase: Phase::AwaitHeader,
            tls: false,
            sasl_done: false,
            stream_id: None,
            out: VecDeque::new(),
        };
        s.write_header();
        s
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<OutboundOutput> {
        self.out.pop_front()
    }

    /// Whether stanzas (or verify requests) may be sent.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Whether the stream failed.
    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// Whether TLS protects the stream.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The remote's header of a new document.
    pub fn handle_header(&mut self, h: StreamHeader) {
        if self.phase != Phase::AwaitHeader {
            return self.fail("unexpected stream header");
        }
        if h.default_ns.as_deref() != Some(NS_SERVER) {
            return self.fail("the remote's stream is not jabber:server");
        }
        self.stream_id = h.id;
        if h.version.as_deref() == Some("1.0") {
            self.phase = Phase::AwaitFeatures;
        } else {
            // A pre-1.0 server sends no features (RFC 3920 style).
            self.after_features(Features::default());
        }
    }

    /// A complete top-level element from the remote.
    pub fn handle_element(&mut self, el: Element) {
        if self.phase == Phase::Failed {
            return;
        }
        if el.is("error", NS_STREAMS) {
            let cond = Condition::from_element(&el).unwrap_or_default();
            return self.fail(&format!("stream error from the remote: {cond}"));
        }
        if el.ns() == NS_DIALBACK {
            return self.on_dialback(&el);
        }
        match (self.phase, el.ns().as_str(), el.name()) {
            (Phase::AwaitFeatures, NS_STREAMS, "features") => {
                self.after_features(Features::parse(&el))
            }
            (Phase::AwaitProceed, NS_TLS, "proceed") => {
                self.out.push_back(OutboundOutput::StartTls)
            }
            (Phase::AwaitProceed, NS_TLS, _) => self.fail("the remote refused STARTTLS"),
            (Phase::AwaitSasl, NS_SASL, "success") => {
                self.out
                    .push_back(OutboundOutput::Authenticated(OutboundAuth::SaslExternal));
                self.sasl_done = true;
                self.restart();
            }
            (Phase::AwaitSasl, NS_SASL, _) => {
                tracing::info!(remote = %self.remote, "SASL EXTERNAL refused; falling back to dialback");
                self.dialback();
            }
            // Servers may send other things on a stream they receive on
            // (nothing flows that way in XMPP): ignored once negotiated.
            (Phase::Ready, _, _) => {}
            _ => self.fail(&format!("unexpected <{}> during negotiation", el.name())),
        }
    }

    /// TLS is up; `chain` is the certificate the remote presented.
    pub fn handle_tls(&mut self, chain: &[CertificateDer<'static>]) {
        self.tls = true;
        let valid = self
            .cfg
            .roots
            .as_ref()
            .is_some_and(|r| crate::tls::cert_valid_for(r, chain, self.remote.as_str()));
        if !valid && self.cfg.secure_auth {
            return self.fail(&format!(
                "the certificate of {} does not validate (s2s_secure_auth)",
                self.remote
            ));
        }
        self.restart();
    }

    /// The remote ended its stream.
    pub fn handle_end(&mut self) {
        self.fail("the remote closed the stream");
    }

    /// Asks the remote (authoritative for `originating`, the remote) to
    /// verify `key`, given for the stream `id` we issued (verify streams,
    /// once ready).
    pub fn verify(&mut self, id: &str, key: &str) {
        self.out
            .push_back(OutboundOutput::Write(dialback::verify_request(
                self.local.as_str(),
                self.remote.as_str(),
                id,
                key,
            )));
    }

    fn on_dialback(&mut self, el: &Element) {
        let Some(d) = DialbackElement::parse(el) else {
            return self.fail("malformed dialback element");
        };
        if d.verify && d.kind.is_none() {
            // Some servers verify keys over this stream (Prosody does,
            // before it is itself authenticated): answer like inbound.
            let (answer, valid) = answer_verify(&self.cfg.served, &self.cfg.secret, &d);
            self.out.push_back(OutboundOutput::VerifyAnswered { valid });
            self.out.push_back(OutboundOutput::Write(answer));
            return;
        }
        if d.verify {
            if self.purpose == Purpose::Verify && self.phase == Phase::Ready {
                let from_remote = Domain::parse(&d.from).is_ok_and(|f| f == self.remote);
                if from_remote && let Some(id) = d.id {
                    self.out.push_back(OutboundOutput::Verified {
                        id,
                        valid: d.kind.as_deref() == Some("valid"),
                    });
                }
            }
            return;
        }
        if self.phase != Phase::AwaitDialback || d.kind.is_none() {
            return;
        }
        let ours = Domain::parse(&d.from).is_ok_and(|f| f == self.remote)
            && Domain::parse(&d.to).is_ok_and(|t| t == self.local);
        if !ours {
            return;
        }
        if d.kind.as_deref() == Some("valid") {
            self.out
                .push_back(OutboundOutput::Authenticated(OutboundAuth::Dialback));
            self.ready();
        } else {
            self.fail(&format!(
                "{} refused our dialback key ({})",
                self.remote,
                d.kind.as_deref().unwrap_or("?")
            ));
        }
    }

    fn after_features(&mut self, f: Features) {
        if !self.tls {
            if f.starttls {
                self.out.push_back(OutboundOutput::Write(format!(
                    "<starttls xmlns='{NS_TLS}'/>"
                )));
                self.phase = Phase::AwaitProceed;
                return;
            }
            if self.cfg.require_tls {
                return self.fail(&format!("{} does not offer STARTTLS", self.remote));
            }
        }
        if self.sasl_done || self.purpose == Purpose::Verify {
            return self.ready();
        }
        if f.external {
            self.out.push_back(OutboundOutput::Write(format!(
                "<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>"
            )));
            self.phase = Phase::AwaitSasl;
            return;
        }
        self.dialback();
    }

    fn dialback(&mut self) {
        let key = self
            .stream_id
            .as_deref()
            .and_then(|id| self.cfg.secret.key(&self.remote, &self.local, id));
        let Some(key) = key else {
            return self.fail("the remote's stream id cannot be used for dialback");
        };
        self.out
            .push_back(OutboundOutput::Write(dialback::result_request(
                self.local.as_str(),
                self.remote.as_str(),
                &key,
            )));
        self.phase = Phase::AwaitDialback;
    }

    fn write_header(&mut self) {
        self.out.push_back(OutboundOutput::Write(stream_header(
            Some(self.local.as_str()),
            Some(self.remote.as_str()),
            None,
        )));
    }

    fn restart(&mut self) {
        self.out.push_back(OutboundOutput::Restart);
        self.write_header();
        self.stream_id = None;
        self.phase = Phase::AwaitHeader;
    }

    fn ready(&mut self) {
        self.phase = Phase::Ready;
        self.out.push_back(OutboundOutput::Ready);
    }

    fn fail(&mut self, why: &str) {
        if self.phase == Phase::Failed {
            return;
        }
        self.phase = Phase::Failed;
        self.out
            .push_back(OutboundOutput::Failed(Failure::Refused(why.to_string())));
    }
}
