//! The transport type shared by inbound and outbound streams.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed transport.
pub type BoxIo = Box<dyn Io>;
