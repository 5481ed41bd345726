//! The edge's errors at its boundary, typed: setting up TLS, resolving
//! remote domains, starting the listener.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Certificates, keys and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A certificate file without certificates.
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    /// A CA bundle without CA certificates.
    #[error("{0} holds no CA certificate")]
    NoRoots(PathBuf),
    /// A CA certificate rustls refuses.
    #[error("{path}: bad CA certificate: {why}")]
    BadRoot {
        /// The bundle.
        path: PathBuf,
        /// rustls's complaint.
        why: String,
    },
    /// A self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    /// The certificate and key do not make a TLS configuration.
    #[error("bad certificate or key: {0}")]
    Config(String),
}

impl TlsError {
    pub(crate) fn read(path: &std::path::Path, why: impl std::fmt::Display) -> TlsError {
        TlsError::Read {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }
}

/// Finding a remote domain's server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The configured nameserver cannot be used.
    #[error("cannot set up DNS via {nameserver}: {why}")]
    Setup {
        /// The nameserver.
        nameserver: SocketAddr,
        /// Why.
        why: String,
    },
    /// No resolver could be built from the system's configuration.
    #[error("no DNS resolver configured")]
    NoResolver,
    /// The domain says it has no s2s service (SRV target `.`).
    #[error("{0} does not offer s2s (SRV target '.')")]
    NoService(String),
    /// Nothing resolved.
    #[error("no address for {0}")]
    NoAddress(String),
    /// A host name did not resolve.
    #[error("cannot resolve {host}: {why}")]
    Lookup {
        /// The host.
        host: String,
        /// The resolver's complaint.
        why: String,
    },
    /// A `DOMAIN=HOST:PORT` override that is not one.
    #[error("{0:?} is not DOMAIN=HOST:PORT")]
    BadOverride(String),
}

/// Starting an edge.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configured domain is not a valid domain.
    #[error("the edge's domains: {0}")]
    Domains(#[from] xmpp_addr::AddressError),
    /// TLS cannot be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The s2s port cannot be bound.
    #[error("cannot listen for s2s on {addr}: {why}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The system's complaint.
        why: std::io::Error,
    },
}
