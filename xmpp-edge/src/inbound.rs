//! Streams other servers open to us (we are the *receiving* server).
//!
//! A stream goes through phases, each a new XML document on the same TCP
//! connection: plaintext (header, features: STARTTLS required plus
//! dialback), then TLS (features: SASL EXTERNAL when the peer's certificate
//! validates for its domain, and dialback), then, after SASL, the
//! authenticated stream. In every phase after our features the peer may ask
//! us to verify a dialback key (`db:verify`): Prosody does that over its own
//! outgoing stream before that stream is authenticated.
//!
//! Reading happens here; writing goes through a writer task, so answers to
//! dialback verifications running in the background can be written while
//! this loop waits for the next element. Any error in what the peer sends
//! ends this stream alone, with the RFC 6120 stream error for it.

use crate::conn::{
    BoxIo, NS_DIALBACK_FEATURE, NS_SASL, NS_TLS, Write, domain_of, new_stream_id, serves,
    spawn_writer,
};
use crate::dialback::{self, DialbackElement};
use crate::edge::{EdgeEvent, EdgeStats, Shared};
use crate::stream_error::Condition;
use crate::xml::{
    NS_CLIENT, NS_DIALBACK, NS_SERVER, StreamEvent, StreamHeader, XmlError, XmlStreamReader,
};
use crate::xml_write::{STREAM_END, renamespace, stream_header};
use base64::Engine;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{BufReader, ReadHalf};
use tokio::sync::mpsc;
use xmpp_parsers::minidom::Element;

/// How a phase ended.
enum Next {
    /// STARTTLS: upgrade and start over.
    Tls,
    /// SASL succeeded: restart the stream.
    Restart,
    /// The stream is over.
    Done,
}

/// Per-connection state that survives phase changes.
struct Conn {
    peer: SocketAddr,
    tls: bool,
    /// The peer's certificate chain (after TLS).
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Set by SASL EXTERNAL.
    sasl_domain: Option<String>,
    /// Domains allowed as `from` on this stream (dialback or SASL).
    authenticated: Arc<Mutex<HashSet<String>>>,
}

/// Serves one inbound connection until it ends.
pub(crate) async fn serve(io: BoxIo, peer: SocketAddr, shared: Arc<Shared>) {
    let mut conn = Conn {
        peer,
        tls: false,
        chain: Vec::new(),
        sasl_domain: None,
        authenticated: Arc::new(Mutex::new(HashSet::new())),
    };
    let mut io = io;
    loop {
        let (r, w) = tokio::io::split(io);
        let (wtx, whandle) = spawn_writer(w);
        let reader = XmlStreamReader::new(BufReader::new(r), shared.cfg.limits);
        let (next, reader) = phase(&mut conn, reader, &wtx, &shared).await;
        drop(wtx);
        match next {
            Next::Done => {
                let _ = whandle.await;
                return;
            }
            Next::Tls | Next::Restart => {
                let Some(reader) = reader else { return };
                let Ok(Some(w)) = whandle.await else { return };
                let r: ReadHalf<BoxIo> = reader.into_inner().into_inner();
                let plain = r.unsplit(w);
                if matches!(next, Next::Restart) {
                    io = plain;
                    continue;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(shared.server_tls.clone());
                match tokio::time::timeout(shared.cfg.handshake_timeout, acceptor.accept(plain))
                    .await
                {
                    Ok(Ok(tls)) => {
                        conn.chain = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
                        conn.tls = true;
                        io = Box::new(tls);
                    }
                    Ok(Err(e)) => {
                        tracing::info!(peer = %conn.peer, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(peer = %conn.peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        }
    }
}

/// Ends the stream with `cond` (after our header if not yet sent).
fn stream_error(
    wtx: &mpsc::UnboundedSender<Write>,
    shared: &Shared,
    cond: Condition,
    text: &str,
    header_sent: bool,
    our: Option<&str>,
) {
    shared.stats.stream_error(cond.name());
    let mut out = String::new();
    if !header_sent {
        out.push_str(&stream_header(
            our.or(shared.cfg.domains.first().map(String::as_str)),
            None,
            Some(&new_stream_id()),
        ));
    }
    out.push_str(&cond.to_xml(Some(text)));
    out.push_str(STREAM_END);
    let _ = wtx.send(Write::Close(out));
}

type Reader = XmlStreamReader<BufReader<ReadHalf<BoxIo>>>;

async fn phase(
    conn: &mut Conn,
    mut reader: Reader,
    wtx: &mpsc::UnboundedSender<Write>,
    shared: &Arc<Shared>,
) -> (Next, Option<Reader>) {
    let cfg = &shared.cfg;
    let mut shutdown = shared.shutdown.clone();
    // The peer's header.
    // A peer that connects and says nothing waits at most the idle timeout.
    let header = tokio::select! {
        r = tokio::time::timeout(cfg.handshake_timeout.min(cfg.idle_timeout), reader.next()) => r,
        _ = shutdown.changed() => return (Next::Done, None),
    };
    let header: StreamHeader = match header {
        Ok(Ok(StreamEvent::Header(h))) => h,
        Ok(Ok(_)) => {
            stream_error(
                wtx,
                shared,
                Condition::NotWellFormed,
                "expected a stream header",
                false,
                None,
            );
            return (Next::Done, None);
        }
        Ok(Err(e)) => {
            if let Some(c) = e.condition() {
                stream_error(wtx, shared, c, &e.to_string(), false, None);
            }
            return (Next::Done, None);
        }
        Err(_) => {
            stream_error(
                wtx,
                shared,
                Condition::ConnectionTimeout,
                "no stream header in time",
                false,
                None,
            );
            return (Next::Done, None);
        }
    };
    let to = header
        .to
        .as_deref()
        .map(|t| t.trim_end_matches('.').to_ascii_lowercase());
    let our = match &to {
        Some(t) if serves(&cfg.domains, t) => t.clone(),
        _ => {
            stream_error(
                wtx,
                shared,
                Condition::HostUnknown,
                "this server does not serve that domain",
                false,
                None,
            );
            return (Next::Done, None);
        }
    };
    if header.default_ns.as_deref() != Some(NS_SERVER) {
        stream_error(
            wtx,
            shared,
            Condition::InvalidNamespace,
            "s2s streams use jabber:server",
            false,
            Some(&our),
        );
        return (Next::Done, None);
    }
    if header.version.as_deref() != Some("1.0") {
        stream_error(
            wtx,
            shared,
            Condition::UnsupportedVersion,
            "version 1.0 (with STARTTLS) is required",
            false,
            Some(&our),
        );
        return (Next::Done, None);
    }
    let peer_domain = header
        .from
        .as_deref()
        .map(|f| f.trim_end_matches('.').to_ascii_lowercase());
    let stream_id = new_stream_id();
    let external = conn.tls
        && conn.sasl_domain.is_none()
        && match (&shared.roots, &peer_domain) {
            (Some(roots), Some(d)) => crate::tls::cert_valid_for(roots, &conn.chain, d),
            _ => false,
        };
    let mut out = stream_header(Some(&our), peer_domain.as_deref(), Some(&stream_id));
    out.push_str("<stream:features>");
    if !conn.tls {
        out.push_str(&format!(
            "<starttls xmlns='{NS_TLS}'><required/></starttls>"
        ));
    }
    if external {
        out.push_str(&format!(
            "<mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
        ));
    }
    if conn.sasl_domain.is_none() {
        out.push_str(&format!(
            "<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>"
        ));
    }
    out.push_str("</stream:features>");
    let _ = wtx.send(Write::Data(out));

    loop {
        let ev = tokio::select! {
            r = tokio::time::timeout(cfg.idle_timeout, reader.next()) => r,
            _ = shutdown.changed() => {
                stream_error(wtx, shared, Condition::SystemShutdown, "the edge is shutting down", true, Some(&our));
                return (Next::Done, None);
            }
        };
        let el = match ev {
            Err(_) => {
                stream_error(
                    wtx,
                    shared,
                    Condition::ConnectionTimeout,
                    "idle for too long",
                    true,
                    Some(&our),
                );
                return (Next::Done, None);
            }
            Ok(Ok(StreamEvent::Keepalive)) => continue,
            Ok(Ok(StreamEvent::End)) => {
                let _ = wtx.send(Write::Close(STREAM_END.to_string()));
                return (Next::Done, None);
            }
            Ok(Ok(StreamEvent::Header(_))) => {
                stream_error(
                    wtx,
                    shared,
                    Condition::NotWellFormed,
                    "second stream header",
                    true,
                    Some(&our),
                );
                return (Next::Done, None);
            }
            Ok(Ok(StreamEvent::Element(el))) => el,
            Ok(Err(XmlError::Closed)) | Ok(Err(XmlError::Io(_))) => return (Next::Done, None),
            Ok(Err(e)) => {
                if let Some(c) = e.condition() {
                    stream_error(wtx, shared, c, &e.to_string(), true, Some(&our));
                }
                return (Next::Done, None);
            }
        };
        let ns = el.ns();
        match (ns.as_str(), el.name()) {
            (NS_TLS, "starttls") if !conn.tls => {
                let _ = wtx.send(Write::Data(format!("<proceed xmlns='{NS_TLS}'/>")));
                return (Next::Tls, Some(reader));
            }
            (NS_SASL, "auth") if external => {
                let authzid = base64::engine::general_purpose::STANDARD
                    .decode(el.text().trim().trim_end_matches('='))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                let mech_ok = el.attr("mechanism") == Some("EXTERNAL");
                let who = peer_domain.clone().unwrap_or_default();
                if mech_ok && (authzid.is_empty() || authzid.eq_ignore_ascii_case(&who)) {
                    let _ = wtx.send(Write::Data(format!("<success xmlns='{NS_SASL}'/>")));
                    EdgeStats::bump(&shared.stats.sasl_external_ok);
                    if let Ok(mut a) = conn.authenticated.lock() {
                        a.insert(who.clone());
                    }
                    conn.sasl_domain = Some(who);
                    return (Next::Restart, Some(reader));
                }
                let _ = wtx.send(Write::Data(format!(
                    "<failure xmlns='{NS_SASL}'><not-authorized/></failure>"
                )));
            }
            (NS_DIALBACK, _) => match DialbackElement::parse(&el) {
                Some(d) if d.verify && d.kind.is_none() => {
                    // A receiving server asks us (authoritative for d.to) to
                    // check a key one of our edges gave it.
                    let valid = serves(&cfg.domains, &d.to)
                        && d.id
                            .as_deref()
                            .is_some_and(|id| cfg.secret.verify(&d.from, &d.to, id, &d.key));
                    EdgeStats::bump(if valid {
                        &shared.stats.verify_valid
                    } else {
                        &shared.stats.verify_invalid
                    });
                    let _ = wtx.send(Write::Data(dialback::verify_answer(
                        &d.to,
                        &d.from,
                        d.id.as_deref().unwrap_or(""),
                        valid,
                    )));
                }
                Some(d) if !d.verify && d.kind.is_none() => {
                    if !conn.tls {
                        stream_error(
                            wtx,
                            shared,
                            Condition::NotAuthorized,
                            "STARTTLS is required before dialback",
                            true,
                            Some(&our),
                        );
                        return (Next::Done, None);
                    }
                    if !serves(&cfg.domains, &d.to) {
                        let _ =
                            wtx.send(Write::Data(dialback::result_answer(&d.to, &d.from, false)));
                        continue;
                    }
                    // Ask the originating domain's authoritative server.
                    let shared = shared.clone();
                    let wtx = wtx.clone();
                    let auth = conn.authenticated.clone();
                    let id = stream_id.clone();
                    tokio::spawn(async move {
                        let ok =
                            crate::outbound::verify_key(&shared, &d.from, &d.to, &id, &d.key).await;
                        if ok {
                            EdgeStats::bump(&shared.stats.dialback_ok);
                            if let Ok(mut a) = auth.lock() {
                                a.insert(d.from.to_ascii_lowercase());
                            }
                        } else {
                            EdgeStats::bump(&shared.stats.dialback_failed);
                        }
                        let _ = wtx.send(Write::Data(dialback::result_answer(&d.to, &d.from, ok)));
                    });
                }
                _ => {
                    stream_error(
                        wtx,
                        shared,
                        Condition::NotAuthorized,
                        "unexpected dialback element",
                        true,
                        Some(&our),
                    );
                    return (Next::Done, None);
                }
            },
            (NS_SERVER, "message" | "presence" | "iq") => {
                if let Err((c, why)) = check_stanza(conn, &el, &cfg.domains) {
                    stream_error(wtx, shared, c, why, true, Some(&our));
                    return (Next::Done, None);
                }
                EdgeStats::bump(&shared.stats.stanzas_in);
                let stanza = renamespace(el, NS_SERVER, NS_CLIENT);
                // Backpressure: a slow ring slows the peer down (TCP).
                if shared
                    .events
                    .send(EdgeEvent::Inbound(stanza))
                    .await
                    .is_err()
                {
                    stream_error(
                        wtx,
                        shared,
                        Condition::SystemShutdown,
                        "the edge is shutting down",
                        true,
                        Some(&our),
                    );
                    return (Next::Done, None);
                }
            }
            _ => {
                stream_error(
                    wtx,
                    shared,
                    Condition::UnsupportedStanzaType,
                    "unexpected element",
                    true,
                    Some(&our),
                );
                return (Next::Done, None);
            }
        }
    }
}

/// Checks a stanza's addresses against the stream's authentication.
fn check_stanza(
    conn: &Conn,
    el: &Element,
    served: &[String],
) -> Result<(), (Condition, &'static str)> {
    let authenticated = conn
        .authenticated
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    if authenticated.is_empty() {
        return Err((Condition::NotAuthorized, "stanza before authentication"));
    }
    let from = el
        .attr("from")
        .and_then(domain_of)
        .ok_or((Condition::InvalidFrom, "stanza without a valid from"))?;
    if !authenticated.contains(&from) {
        return Err((
            Condition::InvalidFrom,
            "from is not an authenticated domain",
        ));
    }
    let to = el
        .attr("to")
        .and_then(domain_of)
        .ok_or((Condition::HostUnknown, "stanza without a valid to"))?;
    if !serves(served, &to) {
        return Err((Condition::HostUnknown, "to is not a domain of this server"));
    }
    Ok(())
}
