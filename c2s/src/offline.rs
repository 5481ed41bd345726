//! Messages kept for a user with no available session (RFC 6121 §8.5.2.1.1
//! allows offline storage), delivered with an XEP-0203 delay stamp when a
//! session of theirs becomes available.
//!
//! The queue is one record, `offline:<bare JID>`, at the user's home node
//! (keyed on the bare JID, replicated like every record); bounded in
//! messages here and in bytes by the record store's `record_max_bytes`.

use ring_services::stanza::set as set_attr;
use serde::{Deserialize, Serialize};
use xmpp_parsers::minidom::Element;

/// The record name prefix of offline queues.
pub use ring_records::OFFLINE_PREFIX;

/// The delay namespace (XEP-0203).
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// One kept message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    /// The stanza as received.
    xml: String,
    /// When it arrived, Unix seconds.
    stamp: u64,
}

/// A user's offline messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineQueue {
    kept: Vec<Kept>,
}

/// Whether a message is worth keeping: `chat` or `normal` with a body
/// (chat states and receipts alone are not).
pub fn worth_keeping(st: &Element) -> bool {
    st.name() == "message"
        && matches!(st.attr("type"), None | Some("chat") | Some("normal"))
        && st.children().any(|c| c.name() == "body")
}

impl OfflineQueue {
    /// The record name of `bare`'s queue.
    pub fn record_name(bare: &str) -> String {
        format!("{OFFLINE_PREFIX}{bare}")
    }

    /// Reads a record value (`None`, or unreadable: an empty queue).
    pub fn decode(bytes: Option<&[u8]>) -> OfflineQueue {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Keeps `st` (arrived at `now_unix`); false when `max` are kept
    /// already.
    pub fn push(&mut self, st: &Element, now_unix: u64, max: usize) -> bool {
        if self.kept.len() >= max {
            return false;
        }
        self.kept.push(Kept {
            xml: ring_services::stanza::to_string(st),
            stamp: now_unix,
        });
        true
    }

    /// The kept messages, addressed to `to` (the session that became
    /// available) and stamped with when `domain` received them.
    pub fn deliver(self, to: &str, domain: &str) -> Vec<Element> {
        self.kept
            .into_iter()
            .filter_map(|k| {
                let mut st: Element = k.xml.parse().ok()?;
                set_attr(&mut st, "to", to);
                let mut delay = Element::bare("delay", NS_DELAY);
                set_attr(&mut delay, "from", domain);
                set_attr(&mut delay, "stamp", &stamp(k.stamp));
                st.append_child(delay);
                Some(st)
            })
            .collect()
    }
}

/// `YYYY-MM-DDThh:mm:ssZ` (XEP-0082) of Unix seconds, by the days-to-civil
/// conversion of the proleptic Gregorian calendar.
pub fn stamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml.parse().expect("xml")
    }

    #[test]
    fn stamps_are_xep_0082_utc() {
        assert_eq!(stamp(0), "1970-01-01T00:00:00Z");
        // XEP-0203's example instant.
        assert_eq!(stamp(1_031_699_305), "2002-09-10T23:08:25Z");
        assert_eq!(stamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(stamp(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn kept_messages_come_back_stamped_in_order_and_bounded() {
        let mut q = OfflineQueue::default();
        let m = |b: &str| {
            el(&format!(
                "<message xmlns='jabber:client' from='bob@ring.test/x' to='alice@ring.test' type='chat'><body>{b}</body></message>"
            ))
        };
        assert!(q.push(&m("one"), 1_031_699_305, 2));
        assert!(q.push(&m("two"), 1_031_699_306, 2));
        assert!(!q.push(&m("three"), 1_031_699_307, 2));
        let q = OfflineQueue::decode(Some(&q.encode()));
        assert_eq!(q.len(), 2);
        let out = q.deliver("alice@ring.test/phone", "ring.test");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].attr("to"), Some("alice@ring.test/phone"));
        assert_eq!(
            out[0]
                .get_child("body", "jabber:client")
                .map(|b| b.text())
                .as_deref(),
            Some("one")
        );
        let d = out[1].get_child("delay", NS_DELAY).expect("delay");
        assert_eq!(d.attr("stamp"), Some("2002-09-10T23:08:26Z"));
        assert_eq!(d.attr("from"), Some("ring.test"));
        assert!(OfflineQueue::decode(Some(b"junk")).is_empty());
        assert!(OfflineQueue::decode(None).is_empty());
    }

    #[test]
    fn only_chat_and_normal_messages_with_a_body_are_kept() {
        for (xml, keep) in [
            (
                "<message xmlns='jabber:client'><body>x</body></message>",
                true,
            ),
            (
                "<message xmlns='jabber:client' type='chat'><body>x</body></message>",
                true,
            ),
            (
                "<message xmlns='jabber:client' type='headline'><body>x</body></message>",
                false,
            ),
            (
                "<message xmlns='jabber:client' type='groupchat'><body>x</body></message>",
                false,
            ),
            (
                "<message xmlns='jabber:client' type='error'><body>x</body></message>",
                false,
            ),
            (
                "<message xmlns='jabber:client' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                false,
            ),
            ("<presence xmlns='jabber:client'/>", false),
        ] {
            assert_eq!(worth_keeping(&el(xml)), keep, "{xml}");
        }
    }
}
