//! Writing XMPP streams: headers, escaped text and attributes, elements.
//!
//! Stanzas are serialised by minidom. The stream header and the stream-level
//! negotiation elements are written here by hand, so the dialback prefix is
//! declared on the header exactly as XEP-0220 and Prosody expect
//! (`xmlns:db='jabber:server:dialback'`, `<db:result/>`).

use crate::ns::{NS_DIALBACK, NS_SERVER, NS_STREAMS};
use xmpp_parsers::minidom::Element;

pub use crate::escape::{escape_attr, escape_text};

/// An s2s stream header. `id` is empty on the initiating side (Prosody
/// does the same) and a fresh random id on the responding side.
pub fn stream_header(from: Option<&str>, to: Option<&str>, id: Option<&str>) -> String {
    let mut h = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_SERVER}' xmlns:stream='{NS_STREAMS}' xmlns:db='{NS_DIALBACK}' version='1.0'"
    );
    if let Some(f) = from {
        h.push_str(&format!(" from='{}'", escape_attr(f)));
    }
    if let Some(t) = to {
        h.push_str(&format!(" to='{}'", escape_attr(t)));
    }
    h.push_str(&format!(" id='{}'>", escape_attr(id.unwrap_or(""))));
    h
}

/// The stream's closing tag.
pub const STREAM_END: &str = "</stream:stream>";

/// Serialises an element (a stanza) to a string.
pub fn element_to_string(el: &Element) -> String {
    let mut out = Vec::with_capacity(256);
    if el.write_to(&mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Moves `el` and every descendant in namespace `from` into namespace `to`
/// (stanzas are `jabber:server` on s2s streams and `jabber:client` inside
/// the ring, where xmpp-parsers' types expect that namespace).
pub fn renamespace(el: Element, from: &str, to: &str) -> Element {
    if el.ns() != from && !el.children().any(|c| c.ns() == from) {
        return el;
    }
    let ns = if el.ns() == from {
        to.to_string()
    } else {
        el.ns()
    };
    let mut out = Element::bare(el.name(), ns);
    for ((ans, name), value) in el.attrs().iter() {
        out.set_attr(ans.clone(), name.clone(), value.clone());
    }
    let mut el = el;
    for node in el.take_nodes() {
        match node {
            xmpp_parsers::minidom::Node::Element(child) => {
                out.append_child(renamespace(child, from, to));
            }
            xmpp_parsers::minidom::Node::Text(t) => out.append_text(t),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_text("a<b&c>'\""), "a&lt;b&amp;c&gt;'\"");
        assert_eq!(escape_attr("a'b\"<"), "a&apos;b&quot;&lt;");
    }

    #[test]
    fn header_declares_dialback() {
        let h = stream_header(Some("ring.test"), Some("a.test"), None);
        assert!(h.contains("xmlns:db='jabber:server:dialback'"));
        assert!(h.contains("id=''"));
        assert!(h.contains("from='ring.test' to='a.test'"));
    }

    #[test]
    fn renamespacing_keeps_foreign_children() {
        let el: Element =
            "<message xmlns='jabber:server' to='a@b'><body>hi</body><x xmlns='urn:x'/></message>"
                .parse()
                .unwrap();
        let c = renamespace(el, NS_SERVER, crate::ns::NS_CLIENT);
        assert_eq!(c.ns(), "jabber:client");
        assert_eq!(
            c.get_child("body", "jabber:client").map(|b| b.text()),
            Some("hi".into())
        );
        assert!(c.get_child("x", "urn:x").is_some());
        assert_eq!(c.attr("to"), Some("a@b"));
    }
}
