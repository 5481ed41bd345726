//! The streaming XML codec of an XMPP stream (RFC 6120 §4, §11).
//!
//! An XMPP stream is one long XML document: a `<stream:stream>` header, then
//! top-level elements (stanzas, features, TLS and dialback negotiation), then
//! `</stream:stream>`. [`XmlStreamReader`] reads it incrementally with
//! quick-xml's async namespace-aware reader and yields one
//! [`StreamEvent`] per header, per complete top-level element (as a
//! `minidom::Element`, namespaces resolved whatever prefixes the peer used)
//! and for the end of the stream.
//!
//! It is the first thing untrusted bytes meet, so it enforces RFC 6120's
//! *restricted XML* (no DTD, comments, processing instructions or entities
//! other than the five predefined ones → `restricted-xml`), and bounds: the
//! bytes of one top-level element (default 512 KiB; the reader refuses to
//! even buffer more → `policy-violation`), the nodes (elements and text
//! pieces) of one top-level element, so that a stanza of many tiny elements
//! cannot become a tree many times its size, nesting depth and attributes
//! per element (→ `policy-violation`). Everything else that is not XML is
//! `not-well-formed`. The limits can change between elements
//! ([`XmlStreamReader::limit_handle`]): streams read small limits until the
//! peer has authenticated.

use crate::stream_error::Condition;
use quick_xml::XmlVersion;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::minidom::rxml::{Namespace, NcName};

pub use crate::ns::{NS_CLIENT, NS_DIALBACK, NS_SERVER, NS_STREAMS, NS_XML};

/// Bounds on what one peer may make us parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one top-level element (a stanza) including its children.
    pub max_stanza: usize,
    /// Bytes of the stream header (with any XML declaration).
    pub max_header: usize,
    /// Nesting depth below the stream element.
    pub max_depth: usize,
    /// Attributes on one element.
    pub max_attrs: usize,
    /// Nodes (elements and text pieces) in one top-level element.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza: 512 * 1024,
            max_header: 16 * 1024,
            max_depth: 32,
            max_attrs: 64,
            max_nodes: 8192,
        }
    }
}

impl Limits {
    /// The limits before a peer has authenticated: only negotiation
    /// elements (features, STARTTLS, SASL, dialback) are legitimate then,
    /// and none of them comes near these.
    pub fn unauthenticated(self) -> Limits {
        Limits {
            max_stanza: self.max_stanza.min(16 * 1024),
            max_nodes: self.max_nodes.min(256),
            ..self
        }
    }
}

/// The attributes of a stream header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// `to`.
    pub to: Option<String>,
    /// `from`.
    pub from: Option<String>,
    /// `id`.
    pub id: Option<String>,
    /// `version`.
    pub version: Option<String>,
    /// The default namespace declared on the header.
    pub default_ns: Option<String>,
    /// Whether `xmlns:db` (dialback) is declared on the header.
    pub dialback_declared: bool,
    /// `xml:lang`.
    pub lang: Option<String>,
}

/// What the reader produces.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// The stream header.
    Header(StreamHeader),
    /// A complete top-level element.
    Element(Element),
    /// `</stream:stream>`.
    End,
    /// Whitespace between top-level elements (a keepalive): nothing to
    /// process, but proof that the peer is alive.
    Keepalive,
}

/// Why the stream cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// Not XML, or not a well-formed XMPP stream.
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    /// XML that RFC 6120 forbids in streams.
    #[error("restricted XML: {0}")]
    RestrictedXml(String),
    /// Over a size, depth or attribute bound.
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    /// Wrong namespace on the stream element.
    #[error("invalid namespace: {0}")]
    InvalidNamespace(String),
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(io::Error),
    /// The transport ended without `</stream:stream>`.
    #[error("connection closed")]
    Closed,
}

impl XmlError {
    /// The stream error to send for this error, if one can be sent.
    pub fn condition(&self) -> Option<Condition> {
        match self {
            XmlError::NotWellFormed(_) => Some(Condition::NotWellFormed),
            XmlError::RestrictedXml(_) => Some(Condition::RestrictedXml),
            XmlError::PolicyViolation(_) => Some(Condition::PolicyViolation),
            XmlError::InvalidNamespace(_) => Some(Condition::InvalidNamespace),
            XmlError::Io(_) | XmlError::Closed => None,
        }
    }
}

const BUDGET_EXHAUSTED: &str = "xmpp-edge: byte budget exhausted";

/// The limits that may change while an element is being read (when a
/// peer authenticates, the element after its last negotiation element may
/// already be on its way): shared between the reader and its
/// [`LimitHandle`].
#[derive(Debug)]
struct Adjustable {
    max_stanza: AtomicUsize,
    max_nodes: AtomicUsize,
}

/// Changes the byte and node limits of a reader, also while a read is in
/// progress (the reader may be inside a pending future).
#[derive(Clone, Debug)]
pub struct LimitHandle(Arc<Adjustable>);

impl LimitHandle {
    /// Applies `limits`' `max_stanza` and `max_nodes` from now on.
    pub fn set(&self, limits: &Limits) {
        self.0
            .max_stanza
            .store(limits.max_stanza, Ordering::Relaxed);
        self.0.max_nodes.store(limits.max_nodes, Ordering::Relaxed);
    }
}

/// An [`AsyncBufRead`] that hands out at most the current element's
/// allowance, so the XML reader can never buffer more than that.
pub struct Budget<R> {
    inner: R,
    /// Bytes consumed for the current top-level element (or header).
    consumed: usize,
    /// Before the stream header: its own limit.
    header: Option<usize>,
    limits: Arc<Adjustable>,
    exhausted: bool,
}

impl<R> Budget<R> {
    fn new(inner: R, header: usize, limits: Arc<Adjustable>) -> Self {
        Budget {
            inner,
            consumed: 0,
            header: Some(header),
            limits,
            exhausted: false,
        }
    }

    fn remaining(&self) -> usize {
        let cap = self
            .header
            .unwrap_or_else(|| self.limits.max_stanza.load(Ordering::Relaxed));
        cap.saturating_sub(self.consumed)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Budget<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Reading goes through poll_fill_buf; plain reads are not used.
        let this = self.get_mut();
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for Budget<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        let remaining = this.remaining();
        let buf = match Pin::new(&mut this.inner).poll_fill_buf(cx) {
            Poll::Ready(Ok(b)) => b,
            other => return other,
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(buf));
        }
        if remaining == 0 {
            this.exhausted = true;
            return Poll::Ready(Err(io::Error::other(BUDGET_EXHAUSTED)));
        }
        let n = buf.len().min(remaining);
        Poll::Ready(Ok(&buf[..n]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.consumed = this.consumed.saturating_add(amt);
        Pin::new(&mut this.inner).consume(amt);
    }
}

/// Reads an XMPP stream. See the module docs.
pub struct XmlStreamReader<R> {
    reader: NsReader<Budget<R>>,
    buf: Vec<u8>,
    limits: Limits,
    stack: Vec<Element>,
    /// Nodes of the current top-level element so far.
    nodes: usize,
    header_seen: bool,
    ended: bool,
}

fn nc(name: &str) -> Result<NcName, XmlError> {
    NcName::try_from(name).map_err(|_| XmlError::NotWellFormed(format!("invalid name {name:?}")))
}

fn map_err(e: quick_xml::Error, exhausted: bool) -> XmlError {
    use quick_xml::Error as E;
    if exhausted {
        return XmlError::PolicyViolation("element larger than the stanza size limit".into());
    }
    match e {
        E::Io(io) => {
            if io.to_string() == BUDGET_EXHAUSTED {
                XmlError::PolicyViolation("element larger than the stanza size limit".into())
            } else {
                XmlError::Io(io::Error::new(io.kind(), io.to_string()))
            }
        }
        E::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, name)) => {
            XmlError::RestrictedXml(format!("entity reference &{name};"))
        }
        other => XmlError::NotWellFormed(other.to_string()),
    }
}

impl<R: AsyncBufRead + Unpin> XmlStreamReader<R> {
    /// A reader for a new stream (call again after STARTTLS or SASL: every
    /// stream restart starts a new document).
    pub fn new(inner: R, limits: Limits) -> Self {
        let adjustable = Arc::new(Adjustable {
            max_stanza: AtomicUsize::new(limits.max_stanza),
            max_nodes: AtomicUsize::new(limits.max_nodes),
        });
        let mut reader = NsReader::from_reader(Budget::new(inner, limits.max_header, adjustable));
        let cfg = reader.config_mut();
        cfg.trim_text(false);
        cfg.expand_empty_elements = false;
        cfg.check_end_names = true;
        cfg.check_comments = true;
        XmlStreamReader {
            reader,
            buf: Vec::with_capacity(4096),
            limits,
            stack: Vec::new(),
            nodes: 0,
            header_seen: false,
            ended: false,
        }
    }

    /// A handle that changes the byte and node limits, also while a read
    /// is in progress.
    pub fn limit_handle(&self) -> LimitHandle {
        LimitHandle(self.reader.get_ref().limits.clone())
    }

    /// The transport underneath.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader.get_mut().inner
    }

    /// Gives the transport back (for the TLS upgrade).
    pub fn into_inner(self) -> R {
        self.reader.into_inner().inner
    }

    /// The next header, element or end of stream.
    pub async fn next(&mut self) -> Result<StreamEvent, XmlError> {
        let XmlStreamReader {
            reader,
            buf,
            limits,
            stack,
            nodes,
            header_seen,
            ended,
        } = self;
        if *ended {
            return Err(XmlError::Closed);
        }
        loop {
            buf.clear();
            if stack.is_empty() {
                // At stream level only markup may follow whitespace. Text
                // there would otherwise sit unreported until a '<' arrives
                // (a peer sending "hello" would simply hang the stream).
                let peek = tokio::io::AsyncBufReadExt::fill_buf(reader.get_mut()).await;
                if let Ok(bytes) = peek
                    && let Some(b) = bytes.iter().find(|b| !b.is_ascii_whitespace())
                    && *b != b'<'
                {
                    return Err(XmlError::NotWellFormed(if *header_seen {
                        "text at stream level".into()
                    } else {
                        "not an XML stream".into()
                    }));
                }
            }
            let res = reader.read_resolved_event_into_async(buf).await;
            let (ns, ev) = match res {
                Ok((ns, ev)) => {
                    let ns: Option<String> = match ns {
                        ResolveResult::Bound(n) => Some(AsRef::<str>::as_ref(&n).to_string()),
                        ResolveResult::Unbound => None,
                        ResolveResult::Unknown(p) => {
                            return Err(XmlError::NotWellFormed(format!(
                                "undeclared prefix {p:?}"
                            )));
                        }
                    };
                    (ns, ev)
                }
                Err(e) => {
                    let exhausted = reader.get_ref().exhausted;
                    return Err(map_err(e, exhausted));
                }
            };
            match ev {
                Event::Decl(_) if !*header_seen => continue,
                Event::Decl(_) | Event::PI(_) => {
                    return Err(XmlError::RestrictedXml("processing instruction".into()));
                }
                Event::DocType(_) => {
                    return Err(XmlError::RestrictedXml("document type declaration".into()));
                }
                Event::Comment(_) => return Err(XmlError::RestrictedXml("comment".into())),
                Event::Eof => {
                    *ended = true;
                    return Err(if *header_seen && stack.is_empty() {
                        XmlError::Closed
                    } else {
                        XmlError::NotWellFormed("stream ended inside an element".into())
                    });
                }
                Event::Start(e) if !*header_seen => {
                    let header = header(reader, limits, &e, ns)?;
                    *header_seen = true;
                    refill(reader);
                    return Ok(StreamEvent::Header(header));
                }
                Event::Empty(_) if !*header_seen => {
                    return Err(XmlError::NotWellFormed("self-closed stream header".into()));
                }
                Event::Text(t) if !*header_seen => {
                    if !AsRef::<str>::as_ref(&t).chars().all(char::is_whitespace) {
                        return Err(XmlError::NotWellFormed(
                            "text before the stream header".into(),
                        ));
                    }
                }
                Event::Start(e) => {
                    count_node(nodes, reader)?;
                    let el = element(reader, limits, &e, ns)?;
                    if stack.len() >= limits.max_depth {
                        return Err(XmlError::PolicyViolation(format!(
                            "nesting deeper than {}",
                            limits.max_depth
                        )));
                    }
                    stack.push(el);
                }
                Event::Empty(e) => {
                    count_node(nodes, reader)?;
                    let el = element(reader, limits, &e, ns)?;
                    if stack.len() >= limits.max_depth {
                        return Err(XmlError::PolicyViolation(format!(
                            "nesting deeper than {}",
                            limits.max_depth
                        )));
                    }
                    if let Some(done) = close(stack, el) {
                        *nodes = 0;
                        refill(reader);
                        return Ok(StreamEvent::Element(done));
                    }
                }
                Event::End(_) => match stack.pop() {
                    Some(el) => {
                        if let Some(done) = close(stack, el) {
                            *nodes = 0;
                            refill(reader);
                            return Ok(StreamEvent::Element(done));
                        }
                    }
                    None => {
                        *ended = true;
                        return Ok(StreamEvent::End);
                    }
                },
                Event::Text(t) => {
                    let text = t.xml10_content();
                    match stack.last_mut() {
                        Some(el) => {
                            count_text(el, nodes, reader)?;
                            el.append_text(text.into_owned())
                        }
                        None => {
                            if !text.chars().all(char::is_whitespace) {
                                return Err(XmlError::NotWellFormed("text at stream level".into()));
                            }
                            // Whitespace keepalive between stanzas.
                            refill(reader);
                            return Ok(StreamEvent::Keepalive);
                        }
                    }
                }
                Event::CData(t) => {
                    let text = AsRef::<str>::as_ref(&t).to_string();
                    match stack.last_mut() {
                        Some(el) => {
                            count_text(el, nodes, reader)?;
                            el.append_text(text)
                        }
                        None => {
                            return Err(XmlError::NotWellFormed("CDATA at stream level".into()));
                        }
                    }
                }
                Event::GeneralRef(r) => {
                    let text = if r.is_char_ref() {
                        match r.resolve_char_ref() {
                            Ok(Some(c)) => c.to_string(),
                            _ => {
                                return Err(XmlError::NotWellFormed(
                                    "invalid character reference".into(),
                                ));
                            }
                        }
                    } else {
                        match AsRef::<str>::as_ref(&r) {
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "amp" => "&".into(),
                            "apos" => "'".into(),
                            "quot" => "\"".into(),
                            other => {
                                return Err(XmlError::RestrictedXml(format!(
                                    "entity reference &{other};"
                                )));
                            }
                        }
                    };
                    match stack.last_mut() {
                        Some(el) => {
                            count_text(el, nodes, reader)?;
                            el.append_text(text)
                        }
                        None => {
                            return Err(XmlError::NotWellFormed(
                                "reference at stream level".into(),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// Counts one more node of the current element against the budget.
fn count_node<R>(nodes: &mut usize, reader: &NsReader<Budget<R>>) -> Result<(), XmlError> {
    *nodes += 1;
    let max = reader.get_ref().limits.max_nodes.load(Ordering::Relaxed);
    if *nodes > max {
        return Err(XmlError::PolicyViolation(format!(
            "more than {max} nodes in one element"
        )));
    }
    Ok(())
}

/// Counts text about to be appended to `el`: a node unless it extends the
/// text node `el` ends with (minidom merges adjacent text, so `&lt;` after
/// `&lt;` costs nothing).
fn count_text<R>(
    el: &Element,
    nodes: &mut usize,
    reader: &NsReader<Budget<R>>,
) -> Result<(), XmlError> {
    match el.nodes().next_back() {
        Some(xmpp_parsers::minidom::Node::Text(_)) => Ok(()),
        _ => count_node(nodes, reader),
    }
}

/// Gives the next top-level element a fresh byte allowance.
fn refill<R>(reader: &mut NsReader<Budget<R>>) {
    let b = reader.get_mut();
    b.consumed = 0;
    b.header = None;
    b.exhausted = false;
}

/// Completes `el`: appends it to its parent, or returns it when top-level.
fn close(stack: &mut [Element], el: Element) -> Option<Element> {
    match stack.last_mut() {
        Some(parent) => {
            parent.append_child(el);
            None
        }
        None => Some(el),
    }
}

fn header<R>(
    reader: &NsReader<R>,
    limits: &Limits,
    e: &quick_xml::events::BytesStart<'_>,
    ns: Option<String>,
) -> Result<StreamHeader, XmlError> {
    let _ = reader;
    let local = e.local_name();
    let local: &str = local.as_ref();
    if local != "stream" {
        return Err(XmlError::NotWellFormed(format!(
            "expected a stream header, got <{local}>"
        )));
    }
    if ns.as_deref() != Some(NS_STREAMS) {
        return Err(XmlError::InvalidNamespace(format!(
            "stream element in namespace {:?}",
            ns.unwrap_or_default()
        )));
    }
    let mut h = StreamHeader::default();
    for (i, a) in e.attributes().with_checks(true).enumerate() {
        // A header has about eight attributes; stanza limits may be lower.
        if i >= limits.max_attrs.max(32) {
            return Err(XmlError::PolicyViolation(
                "too many attributes on the stream header".into(),
            ));
        }
        let a = a.map_err(|err| XmlError::NotWellFormed(err.to_string()))?;
        let key: &str = a.key.as_ref();
        let key = key.to_string();
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| map_err(err, false))?
            .into_owned();
        match key.as_str() {
            "to" => h.to = Some(value),
            "from" => h.from = Some(value),
            "id" => h.id = Some(value),
            "version" => h.version = Some(value),
            "xml:lang" => h.lang = Some(value),
            "xmlns" => h.default_ns = Some(value),
            "xmlns:db" => h.dialback_declared = value == NS_DIALBACK,
            _ => {}
        }
    }
    Ok(h)
}

fn element<R>(
    reader: &NsReader<R>,
    limits: &Limits,
    e: &quick_xml::events::BytesStart<'_>,
    ns: Option<String>,
) -> Result<Element, XmlError> {
    let local = e.local_name();
    let local: &str = local.as_ref();
    nc(local)?;
    let mut el = Element::bare(local, ns.unwrap_or_default());
    for (i, a) in e.attributes().with_checks(true).enumerate() {
        if i >= limits.max_attrs {
            return Err(XmlError::PolicyViolation(format!(
                "more than {} attributes",
                limits.max_attrs
            )));
        }
        let a = a.map_err(|err| XmlError::NotWellFormed(err.to_string()))?;
        let key = a.key;
        let raw: &str = key.as_ref();
        if raw == "xmlns" || raw.starts_with("xmlns:") {
            continue; // namespace declarations are already resolved
        }
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| map_err(err, false))?
            .into_owned();
        let (ans, alocal) = reader.resolver().resolve_attribute(key);
        let alocal = nc(alocal.as_ref())?;
        match ans {
            ResolveResult::Unbound => el.set_attr(Namespace::NONE, alocal, value),
            ResolveResult::Bound(n) => {
                let n: &str = n.as_ref();
                let ns = if n == NS_XML {
                    Namespace::XML
                } else {
                    Namespace::from(n.to_string())
                };
                el.set_attr(ns, alocal, value)
            }
            ResolveResult::Unknown(p) => {
                return Err(XmlError::NotWellFormed(format!(
                    "undeclared attribute prefix {p:?}"
                )));
            }
        }
    }
    Ok(el)
}

#[cfg(test)]
mod tests;
