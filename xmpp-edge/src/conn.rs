//! Pieces shared by inbound and outbound streams: the transport type, the
//! writer task, stream ids, feature parsing, domain helpers.

use rand::RngExt;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use xmpp_parsers::minidom::Element;

/// STARTTLS namespace.
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL namespace.
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// The dialback stream feature.
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// A byte stream: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed transport.
pub type BoxIo = Box<dyn Io>;

/// A fresh random stream id.
pub fn new_stream_id() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The domain part of a JID string (lowercased), if it parses.
pub fn domain_of(jid: &str) -> Option<String> {
    let head = jid.split('/').next()?;
    let domain = match head.rsplit_once('@') {
        Some((_, d)) => d,
        None => head,
    };
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    (!d.is_empty()).then_some(d)
}

/// Whether `domain` is one of `served` or a subdomain of one.
pub fn serves(served: &[String], domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    served
        .iter()
        .any(|s| d == *s || d.ends_with(&format!(".{s}")))
}

/// What a peer's `<stream:features>` offer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// STARTTLS offered.
    pub starttls: bool,
    /// SASL EXTERNAL offered.
    pub external: bool,
    /// Dialback offered (as a feature).
    pub dialback: bool,
}

impl Features {
    /// Reads a features element.
    pub fn parse(el: &Element) -> Features {
        let mut f = Features::default();
        for c in el.children() {
            match (c.ns().as_str(), c.name()) {
                (NS_TLS, "starttls") => f.starttls = true,
                (NS_DIALBACK_FEATURE, "dialback") => f.dialback = true,
                (NS_SASL, "mechanisms") => {
                    f.external = c
                        .children()
                        .any(|m| m.name() == "mechanism" && m.text().trim() == "EXTERNAL");
                }
                _ => {}
            }
        }
        f
    }
}

/// A command for a writer task.
pub enum Write {
    /// Bytes to write (then flush).
    Data(String),
    /// Write a stream error and the closing tag, then shut down.
    Close(String),
}

/// Owns the write half of a stream: writes what it is sent, in order. When
/// its channel closes it hands the write half back (for STARTTLS or a
/// stream restart).
pub fn spawn_writer(
    mut w: WriteHalf<BoxIo>,
) -> (
    mpsc::UnboundedSender<Write>,
    JoinHandle<Option<WriteHalf<BoxIo>>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Write>();
    let handle = tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            // Coalesce whatever else is queued into one write; a Close
            // among it ends the stream after what came before it.
            let mut buf = Vec::new();
            let mut close = false;
            let mut next = Some(cmd);
            while let Some(c) = next.take() {
                match c {
                    Write::Data(s) => buf.extend_from_slice(s.as_bytes()),
                    Write::Close(s) => {
                        buf.extend_from_slice(s.as_bytes());
                        close = true;
                        break;
                    }
                }
                next = rx.try_recv().ok();
            }
            if close {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let _ = w.write_all(&buf).await;
                    let _ = w.flush().await;
                    let _ = w.shutdown().await;
                })
                .await;
                return None;
            }
            if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
                return None;
            }
        }
        Some(w)
    });
    (tx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain_of("alice@A.test/res").as_deref(), Some("a.test"));
        assert_eq!(domain_of("a.test").as_deref(), Some("a.test"));
        assert_eq!(domain_of("a.test./x@y").as_deref(), Some("a.test"));
        assert_eq!(domain_of("").as_deref(), None);
        let served = vec!["ring.test".to_string()];
        assert!(serves(&served, "ring.test"));
        assert!(serves(&served, "conference.ring.test"));
        assert!(!serves(&served, "evilring.test"));
        assert!(!serves(&served, "a.test"));
    }

    #[test]
    fn feature_parsing() {
        let el: Element = "<features xmlns='http://etherx.jabber.org/streams'>\
            <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
            <dialback xmlns='urn:xmpp:features:dialback'/>\
            <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>\
            </features>"
            .parse()
            .unwrap();
        assert_eq!(
            Features::parse(&el),
            Features {
                starttls: true,
                external: true,
                dialback: true
            }
        );
        assert_eq!(new_stream_id().len(), 24);
        assert_ne!(new_stream_id(), new_stream_id());
    }
}
