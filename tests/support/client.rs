//! An XMPP client for the tests: a real c2s session (TCP, SASL PLAIN,
//! resource binding, presence) with a Prosody server, written on the
//! project's own stream codec so every byte and every timeout is under the
//! test's control. (tokio-xmpp 6 was tried first: under load it sometimes
//! never surfaced stanzas Prosody's log shows it sent to the session.)

use base64::Engine;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use xmpp_edge::xml::{Limits, StreamEvent, XmlStreamReader};
use xmpp_edge::xml_write::element_to_string;
use xmpp_parsers::minidom::Element;

pub struct XmppClient {
    pub writer: WriteHalf<TcpStream>,
    /// Stanzas received, in order (benchmarks move it into a counting task).
    pub incoming: mpsc::UnboundedReceiver<Element>,
    pub jid: String,
    /// The bound full JID.
    pub full_jid: String,
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

type Reader = XmlStreamReader<BufReader<tokio::io::ReadHalf<TcpStream>>>;

async fn element(r: &mut Reader) -> Element {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), r.next()).await {
            Ok(Ok(StreamEvent::Element(e))) => return e,
            Ok(Ok(StreamEvent::Keepalive)) | Ok(Ok(StreamEvent::Header(_))) => continue,
            other => panic!("c2s stream failed: {other:?}"),
        }
    }
}

impl XmppClient {
    /// Logs in as `jid` (bare) with `password` at `addr` (host:port, plain
    /// c2s) and sends initial presence.
    pub async fn connect(jid: &str, password: &str, addr: &str) -> XmppClient {
        let (user, domain) = jid.split_once('@').expect("user@domain");
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (r, mut writer) = tokio::io::split(tcp);
        let mut reader: Reader = XmlStreamReader::new(BufReader::new(r), Limits::default());
        writer
            .write_all(header(domain).as_bytes())
            .await
            .expect("write");
        let features = element(&mut reader).await;
        assert_eq!(features.name(), "features", "{features:?}");
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        writer
            .write_all(format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>").as_bytes())
            .await
            .expect("write");
        let answer = element(&mut reader).await;
        assert_eq!(
            answer.name(),
            "success",
            "{jid} could not log in: {answer:?}"
        );
        // Stream restart after SASL.
        let mut reader: Reader = XmlStreamReader::new(reader.into_inner(), Limits::default());
        writer
            .write_all(header(domain).as_bytes())
            .await
            .expect("write");
        let _features = element(&mut reader).await;
        writer
            .write_all(b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>test</resource></bind></iq>")
            .await
            .expect("write");
        let bound = element(&mut reader).await;
        let full_jid = bound
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .unwrap_or_else(|| panic!("bind failed: {bound:?}"));
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(StreamEvent::Element(e)) => {
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                    Ok(StreamEvent::Keepalive) => {}
                    _ => return,
                }
            }
        });
        let mut c = XmppClient {
            writer,
            incoming,
            jid: jid.to_string(),
            full_jid,
        };
        c.send(
            "<presence xmlns='jabber:client'/>"
                .parse()
                .expect("presence"),
        )
        .await;
        c
    }

    pub async fn send(&mut self, el: Element) {
        self.send_raw(&element_to_string(&el)).await;
    }

    /// Writes already serialised stanzas (benchmarks batch many per write).
    pub async fn send_raw(&mut self, xml: &str) {
        self.writer.write_all(xml.as_bytes()).await.expect("send");
        self.writer.flush().await.expect("flush");
    }

    /// The next stanza for which `want` is true, within `timeout`.
    pub async fn recv(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Element) -> bool,
    ) -> Option<Element> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(el)) if want(&el) => return Some(el),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    pub async fn disconnect(mut self) {
        let _ = self
            .writer
            .write_all(b"<presence type='unavailable'/></stream:stream>")
            .await;
        let _ = self.writer.shutdown().await;
    }
}
