//! Why a node cannot start or keep its files: typed, so that the command
//! line can say so in one line and tests can tell the cases apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A node's start-up and file errors.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file could not be read.
    #[error("cannot read {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's complaint.
        why: std::io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {path}: {why}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The system's complaint.
        why: std::io::Error,
    },
    /// A file holds something else than it should.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The ring listener could not start.
    #[error("cannot listen on {addr}: {why}")]
    Listen {
        /// The configured address.
        addr: String,
        /// Why.
        why: String,
    },
    /// The admin listener could not start.
    #[error("cannot bind admin address {addr}: {why}")]
    Admin {
        /// The configured address.
        addr: SocketAddr,
        /// The system's complaint.
        why: std::io::Error,
    },
    /// The libp2p transport or behaviour could not be built.
    #[error("cannot build the transport: {0}")]
    Transport(String),
    /// libp2p refused the ring's stream protocol.
    #[error("cannot register the ring protocol: {0}")]
    Protocol(String),
    /// The record store could not be opened.
    #[error("cannot open the record store {path}: {why}")]
    StoreOpen {
        /// The database file.
        path: PathBuf,
        /// redb's complaint.
        why: String,
    },
    /// The record store could not be read.
    #[error("cannot read the record store: {0}")]
    Store(#[from] ring_records::StoreError),
    /// The edge's certificates.
    #[error(transparent)]
    Tls(#[from] xmpp_edge::tls::TlsError),
    /// The edge's resolver.
    #[error(transparent)]
    Resolve(#[from] xmpp_edge::resolve::ResolveError),
    /// The edge could not start.
    #[error(transparent)]
    Edge(#[from] xmpp_edge::StartError),
    /// Settings that contradict each other.
    #[error("{0}")]
    Config(&'static str),
}

impl NodeError {
    /// Reading `path` failed.
    pub fn read(path: &Path, why: std::io::Error) -> NodeError {
        NodeError::Read {
            path: path.to_path_buf(),
            why,
        }
    }

    /// Writing `path` failed.
    pub fn write(path: &Path, why: std::io::Error) -> NodeError {
        NodeError::Write {
            path: path.to_path_buf(),
            why,
        }
    }

    /// `path` holds something invalid.
    pub fn invalid(path: &Path, why: impl std::fmt::Display) -> NodeError {
        NodeError::Invalid {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }
}
