//! The namespaces of s2s streams: a leaf module every other module may
//! use without depending on the parser or the writer.

/// The streams namespace.
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// The server-to-server content namespace.
pub const NS_SERVER: &str = "jabber:server";
/// The client content namespace (used inside the ring for stanzas).
pub const NS_CLIENT: &str = "jabber:client";
/// The dialback namespace.
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// The XML namespace (for `xml:lang`).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
