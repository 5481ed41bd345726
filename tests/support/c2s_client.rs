//! A c2s client for the benchmarks, on the project's stream codec: STARTTLS
//! (any certificate: the servers' are self-signed or from a test CA), SASL
//! SCRAM with xmpp-rs's `sasl` crate (SCRAM-SHA-256 when offered, else
//! SCRAM-SHA-1; SCRAM-SHA-256-PLUS with `tls-exporter` when asked for),
//! resource binding, initial presence; or direct TLS (XEP-0368) instead of
//! STARTTLS. The salted password
//! may be given precomputed, as real clients cache it, so that the load
//! generator does not spend its CPU on PBKDF2 at every login.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sasl::client::Mechanism;
use sasl::client::mechanisms::Scram;
use sasl::common::scram::{Sha1, Sha256};
use sasl::common::{ChannelBinding, Credentials};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use xmpp_edge::conn::BoxIo;
use xmpp_edge::xml::{Limits, StreamEvent, XmlStreamReader};
use xmpp_parsers::minidom::Element;

type Reader = XmlStreamReader<BufReader<ReadHalf<BoxIo>>>;

/// A logged-in session.
pub struct C2sClient {
    writer: WriteHalf<BoxIo>,
    /// Stanzas received.
    pub incoming: mpsc::UnboundedReceiver<Element>,
    /// The bound full JID.
    pub full_jid: String,
    /// The SASL mechanism that authenticated.
    pub mechanism: String,
}

/// How to log in.
#[derive(Clone)]
pub struct Login {
    /// host:port.
    pub addr: String,
    /// The user's bare JID.
    pub jid: String,
    /// The password.
    pub password: String,
    /// SCRAM-SHA-256's salted password, if known (salt, iterations, key).
    pub salted_sha256: Option<(Vec<u8>, u32, Vec<u8>)>,
    /// Send initial presence after binding.
    pub presence: bool,
    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
    /// Insist on SCRAM-SHA-256-PLUS with the connection's `tls-exporter`
    /// data (fail when it is not offered).
    pub channel_binding: bool,
}

impl Login {
    /// STARTTLS and SCRAM without channel binding.
    pub fn new(addr: &str, jid: &str, password: &str) -> Login {
        Login {
            addr: addr.into(),
            jid: jid.into(),
            password: password.into(),
            salted_sha256: None,
            presence: false,
            direct_tls: false,
            channel_binding: false,
        }
    }
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

async fn element(r: &mut Reader) -> Result<Element, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), r.next()).await {
            Ok(Ok(StreamEvent::Element(e))) => return Ok(e),
            Ok(Ok(StreamEvent::Keepalive)) | Ok(Ok(StreamEvent::Header(_))) => continue,
            other => return Err(format!("c2s stream failed: {other:?}")),
        }
    }
}

/// The TLS config of the benchmark clients (any server certificate).
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let (id, _, _) = xmpp_edge::tls::self_signed(&["client.test".into()]).expect("identity");
    xmpp_edge::tls::client_config(&id).expect("client config")
}

fn text(s: &str) -> String {
    s.to_string()
}

/// SCRAM-SHA-256 with a cached salted password (what clients keep after
/// their first login). The `sasl` crate's client has this too, but 0.5.2
/// refuses a cached password exactly when the server's salt matches it.
struct CachedScram {
    bare: String,
    nonce: String,
    /// Salt, iterations, salted password.
    cached: (Vec<u8>, u32, Vec<u8>),
    server_signature: Vec<u8>,
}

impl CachedScram {
    fn new(user: &str, cached: (Vec<u8>, u32, Vec<u8>)) -> CachedScram {
        let nonce: [u8; 18] = rand::random();
        let nonce = B64.encode(nonce);
        CachedScram {
            bare: format!("n={user},r={nonce}"),
            nonce,
            cached,
            server_signature: Vec::new(),
        }
    }
}

impl Mechanism for CachedScram {
    fn name(&self) -> &str {
        "SCRAM-SHA-256"
    }

    fn from_credentials(_: Credentials) -> Result<Self, sasl::client::MechanismError> {
        Err(sasl::client::MechanismError::ScramRequiresPassword)
    }

    fn initial(&mut self) -> Vec<u8> {
        format!("n,,{}", self.bare).into_bytes()
    }

    fn response(&mut self, challenge: &[u8]) -> Result<Vec<u8>, sasl::client::MechanismError> {
        use ring_c2s::ScramHash::Sha256 as H;
        let bad = || sasl::client::MechanismError::CannotDecodeChallenge;
        let server_first = std::str::from_utf8(challenge).map_err(|_| bad())?;
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(k))
                .map(str::to_string)
        };
        let r = field("r=").ok_or_else(bad)?;
        let salt = B64
            .decode(field("s=").ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let i: u32 = field("i=").and_then(|i| i.parse().ok()).ok_or_else(bad)?;
        if !r.starts_with(&self.nonce) || salt != self.cached.0 || i != self.cached.1 {
            return Err(bad());
        }
        let without_proof = format!("c=biws,r={r}");
        let auth = format!("{},{server_first},{without_proof}", self.bare);
        let salted = &self.cached.2;
        let client_key = H.hmac(salted, b"Client Key");
        let signature = H.hmac(&H.hash(&client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        self.server_signature = H.hmac(&H.hmac(salted, b"Server Key"), auth.as_bytes());
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    fn success(&mut self, data: &[u8]) -> Result<(), sasl::client::MechanismError> {
        let expected = format!("v={}", B64.encode(&self.server_signature));
        if data == expected.as_bytes() {
            Ok(())
        } else {
            Err(sasl::client::MechanismError::InvalidSignatureInSuccessResponse)
        }
    }
}

async fn send(w: &mut WriteHalf<BoxIo>, s: String) -> Result<(), String> {
    w.write_all(s.as_bytes()).await.map_err(|e| e.to_string())
}

impl C2sClient {
    /// Logs in (see the module docs).
    pub async fn login(l: &Login, tls: Arc<rustls::ClientConfig>) -> Result<C2sClient, String> {
        let (user, domain) = l.jid.split_once('@').ok_or("user@domain")?;
        let tcp = TcpStream::connect(&l.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", l.addr))?;
        let _ = tcp.set_nodelay(true);
        let plain: BoxIo = if l.direct_tls {
            Box::new(tcp)
        } else {
            let io: BoxIo = Box::new(tcp);
            let (r, mut w) = tokio::io::split(io);
            let mut reader: Reader = XmlStreamReader::new(BufReader::new(r), Limits::default());
            send(&mut w, header(domain)).await?;
            let _features = element(&mut reader).await?;
            send(
                &mut w,
                text("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
            )
            .await?;
            let proceed = element(&mut reader).await?;
            if proceed.name() != "proceed" {
                return Err(format!("no STARTTLS: {proceed:?}"));
            }
            reader.into_inner().into_inner().unsplit(w)
        };
        let name = rustls::pki_types::ServerName::try_from(domain.to_string())
            .map_err(|e| e.to_string())?;
        let tls_config = if l.direct_tls {
            let mut c = (*tls).clone();
            c.alpn_protocols = vec![b"xmpp-client".to_vec()];
            Arc::new(c)
        } else {
            tls
        };
        let tls = tokio_rustls::TlsConnector::from(tls_config)
            .connect(name, plain)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        // RFC 9266: 32 bytes exported under this label, no context.
        let exporter = tls
            .get_ref()
            .1
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .map_err(|e| format!("exporter: {e}"))?;
        let io: BoxIo = Box::new(tls);
        let (r, mut w) = tokio::io::split(io);
        let mut reader: Reader = XmlStreamReader::new(BufReader::new(r), Limits::default());
        send(&mut w, header(domain)).await?;
        let features = element(&mut reader).await?;
        let offers = |m: &str| {
            features
                .children()
                .any(|c| c.name() == "mechanisms" && c.children().any(|x| x.text().trim() == m))
        };
        // Without binding this client says `n` (it does not bind): `y`
        // (the `sasl` crate's default) would claim it could, which a server
        // offering -PLUS must refuse as a downgrade.
        let creds = || {
            Credentials::default()
                .with_username(user)
                .with_channel_binding(ChannelBinding::None)
        };
        let mut mech: Box<dyn Mechanism + Send> = if l.channel_binding {
            if !offers("SCRAM-SHA-256-PLUS") {
                return Err(format!("no SCRAM-SHA-256-PLUS offered: {features:?}"));
            }
            Box::new(
                Scram::<Sha256>::from_credentials(
                    creds()
                        .with_password(l.password.clone())
                        .with_channel_binding(ChannelBinding::TlsExporter(exporter.to_vec())),
                )
                .map_err(|e| format!("{e:?}"))?,
            )
        } else if offers("SCRAM-SHA-256") {
            match &l.salted_sha256 {
                Some(cached) => Box::new(CachedScram::new(user, cached.clone())),
                None => Box::new(
                    Scram::<Sha256>::from_credentials(creds().with_password(l.password.clone()))
                        .map_err(|e| format!("{e:?}"))?,
                ),
            }
        } else {
            Box::new(
                Scram::<Sha1>::from_credentials(creds().with_password(l.password.clone()))
                    .map_err(|e| format!("{e:?}"))?,
            )
        };
        let name = mech.name().to_string();
        send(
            &mut w,
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{name}'>{}</auth>",
                B64.encode(mech.initial())
            ),
        )
        .await?;
        loop {
            let e = element(&mut reader).await?;
            let data = B64.decode(e.text().trim()).unwrap_or_default();
            match e.name() {
                "challenge" => {
                    let resp = mech.response(&data).map_err(|e| format!("{e:?}"))?;
                    send(
                        &mut w,
                        format!(
                            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                            B64.encode(resp)
                        ),
                    )
                    .await?;
                }
                "success" => {
                    mech.success(&data)
                        .map_err(|e| format!("server proof: {e:?}"))?;
                    break;
                }
                _ => return Err(format!("{} could not log in: {e:?}", l.jid)),
            }
        }
        let mut reader: Reader = XmlStreamReader::new(reader.into_inner(), Limits::default());
        send(&mut w, header(domain)).await?;
        let _features = element(&mut reader).await?;
        send(
            &mut w,
            text("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"),
        )
        .await?;
        let bound = element(&mut reader).await?;
        let full_jid = bound
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .ok_or_else(|| format!("bind failed: {bound:?}"))?;
        if l.presence {
            send(&mut w, text("<presence/>")).await?;
        }
        w.flush().await.map_err(|e| e.to_string())?;
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ok = match reader.next().await {
                    Ok(StreamEvent::Element(e)) => tx.send(e).is_ok(),
                    Ok(StreamEvent::End) | Err(_) => false,
                    Ok(_) => true,
                };
                if !ok {
                    return;
                }
            }
        });
        Ok(C2sClient {
            writer: w,
            incoming,
            full_jid,
            mechanism: name,
        })
    }

    /// Writes already serialised stanzas.
    pub async fn send_raw(&mut self, xml: &str) -> Result<(), String> {
        self.writer
            .write_all(xml.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.writer.flush().await.map_err(|e| e.to_string())
    }

    /// Ends the stream.
    pub async fn close(mut self) {
        let _ = self.writer.write_all(b"</stream:stream>").await;
        let _ = self.writer.shutdown().await;
    }
}
