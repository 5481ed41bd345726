//! Starting the s2s edge of an `edge` node: identity, dialback secret, CA
//! roots and resolver from the configuration (or generated on first start,
//! with a warning), and a task that feeds the edge's events to the core.

use super::Input;
use crate::config::NodeSettings;
use crate::error::NodeError;
use rand::RngExt;
use std::path::Path;
use tokio::sync::mpsc;
use xmpp_edge::dialback::Secret;
use xmpp_edge::resolve::Resolver;
use xmpp_edge::tls::{self, Identity};
use xmpp_edge::{EdgeConfig, EdgeHandle};

const GENERATED_CERT: &str = "s2s-cert.pem";
const GENERATED_KEY: &str = "s2s-key.pem";
const GENERATED_SECRET: &str = "dialback.secret";

pub(super) fn identity(settings: &NodeSettings) -> Result<Identity, NodeError> {
    let e = &settings.edge;
    if let (Some(c), Some(k)) = (&e.tls_cert, &e.tls_key) {
        return Ok(tls::load_identity(c, k)?);
    }
    let (c, k) = (
        settings.data_dir.join(GENERATED_CERT),
        settings.data_dir.join(GENERATED_KEY),
    );
    if c.is_file() && k.is_file() {
        return Ok(tls::load_identity(&c, &k)?);
    }
    tracing::warn!(
        "no tls_cert/tls_key configured: generated a self-signed certificate for {:?} in {}; \
         peers will authenticate this edge by dialback only",
        settings.domains,
        settings.data_dir.display()
    );
    let (id, cert_pem, key_pem) = tls::self_signed(&settings.domains)?;
    std::fs::write(&c, cert_pem).map_err(|e| NodeError::write(&c, e))?;
    crate::identity::write_private(&k, key_pem.as_bytes())?;
    Ok(id)
}

fn secret(settings: &NodeSettings) -> Result<Secret, NodeError> {
    let read = |p: &Path| -> Result<Secret, NodeError> {
        let bytes = std::fs::read(p).map_err(|e| NodeError::read(p, e))?;
        let trimmed = String::from_utf8_lossy(&bytes).trim().to_string();
        if trimmed.len() < 16 {
            return Err(NodeError::invalid(
                p,
                "a dialback secret needs at least 16 characters",
            ));
        }
        Ok(Secret::new(trimmed.as_bytes()))
    };
    if let Some(p) = &settings.edge.dialback_secret_file {
        return read(p);
    }
    let p = settings.data_dir.join(GENERATED_SECRET);
    if p.is_file() {
        return read(&p);
    }
    tracing::warn!(
        "no dialback_secret_file configured: generated {}; every edge of a ring must share one secret",
        p.display()
    );
    let mut b = [0u8; 32];
    rand::rng().fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    crate::identity::write_private(&p, hex.as_bytes())?;
    Ok(Secret::new(hex.as_bytes()))
}

/// Starts the edge and the task forwarding its events to the core.
pub(crate) async fn start(
    settings: &NodeSettings,
    inbox: mpsc::Sender<Input>,
) -> Result<EdgeHandle, NodeError> {
    let listen = settings
        .s2s_listen
        .ok_or(NodeError::Config("an edge needs s2s_listen"))?;
    let resolver = Resolver::new(settings.edge.dns, settings.edge.s2s_hosts.clone())?;
    let mut cfg = EdgeConfig::new(
        settings.domains.clone(),
        listen,
        identity(settings)?,
        secret(settings)?,
        resolver,
    );
    let e = &settings.edge;
    cfg.roots = tls::trust_roots(e.system_roots, e.tls_ca.as_deref())?;
    cfg.secure_auth = e.secure_auth;
    cfg.require_tls = !e.plaintext;
    cfg.idle_timeout = e.idle_timeout;
    cfg.auth_timeout = e.auth_timeout;
    cfg.write_timeout = e.write_timeout;
    cfg.limits.max_stanza = e.max_stanza_bytes;
    cfg.limits.max_nodes = e.max_stanza_nodes;
    cfg.max_inbound = e.max_inbound;
    cfg.max_inbound_per_ip = e.max_inbound_per_ip;
    cfg.inbound_rate_per_ip = f64::from(e.connection_rate_per_ip);
    cfg.max_verifications = e.max_verifications;
    cfg.inbound_write_queue = e.write_queue_bytes;
    cfg.outbound_queue_bytes = e.outbound_queue_bytes;
    cfg.max_outbound = e.max_outbound;
    let (tx, mut rx) = mpsc::channel(1024);
    let handle = xmpp_edge::start(cfg, tx).await?;
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if inbox.send(Input::Edge(ev)).await.is_err() {
                return;
            }
        }
    });
    Ok(handle)
}
