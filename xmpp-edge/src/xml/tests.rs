use super::*;
use proptest::prelude::*;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// Serves `data` in pieces ending at the given offsets (then the rest).
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    cuts: Vec<usize>,
    consumed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let next_cut = self
            .cuts
            .iter()
            .copied()
            .find(|c| *c > self.pos)
            .unwrap_or(self.data.len());
        let end = next_cut
            .min(self.pos + buf.remaining())
            .min(self.data.len());
        let start = self.pos;
        buf.put_slice(&self.data[start..end]);
        self.pos = end;
        self.consumed
            .store(end, std::sync::atomic::Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

fn reader(data: &[u8], cuts: Vec<usize>, limits: Limits) -> XmlStreamReader<BufReader<Chunked>> {
    let c = Chunked {
        data: data.to_vec(),
        pos: 0,
        cuts,
        consumed: Default::default(),
    };
    XmlStreamReader::new(BufReader::with_capacity(64, c), limits)
}

/// Reads events until the end or an error.
fn events(data: &[u8], cuts: Vec<usize>, limits: Limits) -> (Vec<StreamEvent>, Option<XmlError>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = reader(data, cuts, limits);
        let mut out = Vec::new();
        loop {
            match r.next().await {
                Ok(StreamEvent::End) => {
                    out.push(StreamEvent::End);
                    return (out, None);
                }
                // How whitespace is chunked depends on the split; drop it.
                Ok(StreamEvent::Keepalive) => {}
                Ok(e) => out.push(e),
                Err(e) => return (out, Some(e)),
            }
        }
    })
}

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' to='ring.test' from='a.test' version='1.0' id=''>";

fn valid_stream() -> String {
    format!(
        "{HEADER}  <db:result from='a.test' to='ring.test'>abc123</db:result>\
         <result xmlns='jabber:server:dialback' from='a.test' to='ring.test' type='valid'/>\
         <dbx:verify xmlns:dbx='jabber:server:dialback' id='s1' from='a.test' to='ring.test'>k</dbx:verify>\
         <message from='alice@a.test/x' to='bob@ring.test' xml:lang='en'><body>hi &amp; &lt;bye&gt; &#x263A;<![CDATA[<raw>]]></body></message>\n \
         <iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq></stream:stream>"
    )
}

#[test]
fn parses_a_stream_with_every_prefix_form() {
    let (ev, err) = events(valid_stream().as_bytes(), vec![], Limits::default());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ev.len(), 7);
    let StreamEvent::Header(h) = &ev[0] else {
        panic!("header first")
    };
    assert_eq!(h.to.as_deref(), Some("ring.test"));
    assert_eq!(h.from.as_deref(), Some("a.test"));
    assert_eq!(h.version.as_deref(), Some("1.0"));
    assert_eq!(h.default_ns.as_deref(), Some("jabber:server"));
    assert!(h.dialback_declared);
    for (i, e) in ev[1..=3].iter().enumerate() {
        let StreamEvent::Element(e) = e else {
            panic!("element")
        };
        assert_eq!(
            e.ns(),
            NS_DIALBACK,
            "dialback element {i} in any prefix form"
        );
    }
    let StreamEvent::Element(m) = &ev[4] else {
        panic!()
    };
    assert_eq!(m.name(), "message");
    assert_eq!(m.ns(), NS_SERVER);
    assert_eq!(m.attr("to"), Some("bob@ring.test"));
    assert_eq!(m.attr_ns(&Namespace::XML, "lang"), Some("en"));
    assert_eq!(
        m.get_child("body", NS_SERVER).map(|b| b.text()),
        Some("hi & <bye> \u{263A}<raw>".into())
    );
    let StreamEvent::Element(iq) = &ev[5] else {
        panic!()
    };
    assert!(iq.get_child("ping", "urn:xmpp:ping").is_some());
    assert_eq!(ev[6], StreamEvent::End);
}

#[test]
fn same_events_whatever_the_split() {
    let data = valid_stream();
    let (want, _) = events(data.as_bytes(), vec![], Limits::default());
    for cut in 1..data.len() {
        let (got, err) = events(data.as_bytes(), vec![cut], Limits::default());
        assert!(err.is_none(), "cut at {cut}: {err:?}");
        assert_eq!(got, want, "cut at {cut}");
    }
    // And byte by byte.
    let every: Vec<usize> = (1..data.len()).collect();
    let (got, _) = events(data.as_bytes(), every, Limits::default());
    assert_eq!(got, want);
}

#[test]
fn invalid_input_table() {
    let small = Limits {
        max_stanza: 200,
        max_depth: 4,
        max_attrs: 3,
        ..Limits::default()
    };
    let h = HEADER;
    let cases: Vec<(&str, String, Condition)> = vec![
        (
            "garbage",
            "\x16\x03\x01 not xml at all".into(),
            Condition::NotWellFormed,
        ),
        (
            "comment",
            format!("{h}<!-- hi -->"),
            Condition::RestrictedXml,
        ),
        ("pi", format!("{h}<?evil thing?>"), Condition::RestrictedXml),
        (
            "doctype",
            "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream/>".into(),
            Condition::RestrictedXml,
        ),
        (
            "entity",
            format!("{h}<message><body>&foo;</body></message>"),
            Condition::RestrictedXml,
        ),
        (
            "entity in attribute",
            format!("{h}<message to='&foo;'/>"),
            Condition::RestrictedXml,
        ),
        (
            "undeclared prefix",
            format!("{h}<x:message/>"),
            Condition::NotWellFormed,
        ),
        (
            "mismatched",
            format!("{h}<message></iq>"),
            Condition::NotWellFormed,
        ),
        (
            "duplicate attribute",
            format!("{h}<message to='a' to='b'/>"),
            Condition::NotWellFormed,
        ),
        (
            "text at stream level",
            format!("{h}hello"),
            Condition::NotWellFormed,
        ),
        (
            "wrong stream ns",
            "<stream:stream xmlns:stream='urn:wrong'>".into(),
            Condition::InvalidNamespace,
        ),
        ("not a stream", "<html>".into(), Condition::NotWellFormed),
        (
            "oversized",
            format!("{h}<message><body>{}</body></message>", "x".repeat(500)),
            Condition::PolicyViolation,
        ),
        (
            "deep",
            format!("{h}<a><b><c><d><e/></d></c></b></a>"),
            Condition::PolicyViolation,
        ),
        (
            "attributes",
            format!("{h}<a b='1' c='2' d='3' e='4'/>"),
            Condition::PolicyViolation,
        ),
    ];
    for (name, input, want) in cases {
        let (_, err) = events(input.as_bytes(), vec![], small);
        let err = err.unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(err.condition(), Some(want), "{name}: {err}");
    }
}

#[test]
fn truncated_streams_end_with_an_error_not_a_panic() {
    let data = valid_stream();
    for cut in 0..data.len() - "</stream:stream>".len() {
        let (_, err) = events(&data.as_bytes()[..cut], vec![], Limits::default());
        assert!(err.is_some(), "cut at {cut} read as complete");
    }
}

#[test]
fn oversized_stanza_is_refused_without_buffering_it() {
    // A 10 MB body: the reader must give up long before reading it all.
    let mut data = HEADER.as_bytes().to_vec();
    data.extend_from_slice(b"<message><body>");
    data.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = Chunked {
        data,
        pos: 0,
        cuts: vec![],
        consumed: consumed.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let mut r = XmlStreamReader::new(BufReader::with_capacity(8192, c), Limits::default());
        assert!(matches!(r.next().await, Ok(StreamEvent::Header(_))));
        r.next().await.unwrap_err()
    });
    assert_eq!(err.condition(), Some(Condition::PolicyViolation));
    let read = consumed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(read < 600 * 1024, "read {read} bytes before refusing");
}

#[test]
fn whitespace_keepalives_do_not_accumulate() {
    // Many keepalives between stanzas never hit the stanza limit.
    let limits = Limits {
        max_stanza: 100,
        ..Limits::default()
    };
    let mut data = HEADER.to_string();
    for _ in 0..50 {
        data.push_str(&" ".repeat(60));
        data.push_str("<iq type='get' id='x'/>");
    }
    data.push_str("</stream:stream>");
    let (ev, err) = events(data.as_bytes(), vec![], limits);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(ev.len(), 52);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = events(&bytes, vec![], Limits::default());
    }

    #[test]
    fn arbitrary_bytes_after_a_header_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), cut in 1usize..500) {
        let mut data = HEADER.as_bytes().to_vec();
        data.extend(bytes);
        let _ = events(&data, vec![cut], Limits { max_stanza: 256, ..Limits::default() });
    }

    #[test]
    fn xml_like_noise_never_panics(parts in proptest::collection::vec(prop_oneof![
        Just("<a>"), Just("</a>"), Just("<b x='1'/>"), Just("&amp;"), Just("&bad;"), Just("<!--"),
        Just("<![CDATA["), Just("]]>"), Just("text"), Just("<?p?>"), Just("<c:d/>"), Just("'"), Just("\u{0}"),
    ], 0..40)) {
        let mut data = HEADER.to_string();
        for p in parts { data.push_str(p); }
        let _ = events(data.as_bytes(), vec![], Limits::default());
    }
}

#[test]
fn mismatched_nested_end_tag() {
    let input = format!("{HEADER}<message><body>unclosed</message>");
    let (ev, err) = events(input.as_bytes(), vec![], Limits::default());
    assert!(
        matches!(err, Some(XmlError::NotWellFormed(_))),
        "{ev:?} {err:?}"
    );
}

#[test]
fn many_tiny_elements_hit_the_node_budget() {
    // 512 KiB of `<a/>` would be a tree of tens of MB; the node budget
    // stops it long before.
    let limits = Limits {
        max_nodes: 300,
        ..Limits::default()
    };
    let mut data = format!("{HEADER}<message>");
    for _ in 0..400 {
        data.push_str("<a/>");
    }
    data.push_str("</message>");
    let (ev, err) = events(data.as_bytes(), vec![], limits);
    assert_eq!(ev.len(), 1, "only the header: {ev:?}");
    let err = err.expect("refused");
    assert_eq!(err.condition(), Some(Condition::PolicyViolation), "{err}");
    // Just under the budget is fine (299 children + the message).
    let mut ok = format!("{HEADER}<message>");
    for _ in 0..299 {
        ok.push_str("<a/>");
    }
    ok.push_str("</message></stream:stream>");
    let (_, err) = events(ok.as_bytes(), vec![], limits);
    assert!(err.is_none(), "{err:?}");
}

#[test]
fn text_pieces_merge_and_cost_one_node() {
    // Ten thousand escaped characters are one text node, not ten thousand.
    let limits = Limits {
        max_nodes: 4,
        ..Limits::default()
    };
    let body = "&lt;x&gt;".repeat(10_000);
    let data = format!("{HEADER}<message><body>{body}</body></message></stream:stream>");
    let (ev, err) = events(data.as_bytes(), vec![], limits);
    assert!(err.is_none(), "{err:?}");
    let StreamEvent::Element(m) = &ev[1] else {
        panic!("{ev:?}")
    };
    let text = m
        .get_child("body", NS_SERVER)
        .map(|b| b.text())
        .unwrap_or_default();
    assert_eq!(text.len(), 30_000);
}

#[test]
fn limits_raised_while_a_read_waits_apply_to_that_read() {
    // Before authentication the stanza limit is small; the peer's first
    // big stanza is read after authentication completes, by a read that
    // started before it.
    let full = Limits::default();
    let small = full.unauthenticated();
    let big = "y".repeat(small.max_stanza * 2);
    let data = format!("{HEADER}<message><body>{big}</body></message></stream:stream>");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = XmlStreamReader::new(BufReader::new(server), small);
        let handle = r.limit_handle();
        let reading = tokio::spawn(async move {
            let first = r.next().await;
            let second = r.next().await;
            (first, second)
        });
        use tokio::io::AsyncWriteExt;
        client.write_all(HEADER.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        handle.set(&full);
        client
            .write_all(&data.as_bytes()[HEADER.len()..])
            .await
            .unwrap();
        let (first, second) = reading.await.unwrap();
        assert!(matches!(first, Ok(StreamEvent::Header(_))));
        assert!(matches!(second, Ok(StreamEvent::Element(_))), "{second:?}");
    });
    // Without raising them, the same stanza is refused.
    let (_, err) = events(data.as_bytes(), vec![], small);
    assert_eq!(
        err.and_then(|e| e.condition()),
        Some(Condition::PolicyViolation)
    );
}
