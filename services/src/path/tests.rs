//! The stanza path, table by table: where each stanza goes, and the error
//! its sender gets when it cannot.

use super::*;
use crate::stanza::NS_STANZAS;

fn id(n: u8) -> NodeId {
    Key::from_bytes([n; 32])
}

fn path(me: u8, has_edge: bool) -> StanzaPath {
    StanzaPath::new(Served::new(&["ring.test"]).unwrap(), id(me), has_edge)
}

fn el(xml: &str) -> Element {
    xml.parse().unwrap()
}

fn drain(p: &mut StanzaPath) -> Vec<PathOutput> {
    std::iter::from_fn(|| p.poll_output()).collect()
}

/// The condition of an error stanza.
fn condition_of(st: &Element) -> Option<String> {
    st.get_child("error", stanza::NS_CLIENT)?
        .children()
        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
        .map(|c| c.name().to_string())
}

/// Where one output goes, in words.
fn describe(o: &PathOutput) -> String {
    match o {
        PathOutput::Route { key, kind, stanza } => {
            let err = condition_of(stanza)
                .map(|c| format!(" error {c}"))
                .unwrap_or_default();
            format!("route {kind:?} to {}{err}", key.short())
        }
        PathOutput::RouteFanout { edge, msg } => {
            format!("fanout to {} for {}", edge.short(), msg.to.len())
        }
        PathOutput::ToEdge(st) => format!(
            "edge {}{}",
            st.attr("to").unwrap_or_default(),
            condition_of(st)
                .map(|c| format!(" error {c}"))
                .unwrap_or_default()
        ),
        PathOutput::Serve(st) => format!("serve {}", st.attr("to").unwrap_or_default()),
    }
}

#[test]
fn sending_from_the_ring() {
    let edges = [id(1), id(2)];
    let alice_key = dht::keys::jid_key("alice@ring.test").unwrap().short();
    let node_key = dht::keys::pubsub_key("pubsub.ring.test", "news").short();
    let remote_edge = edges::pick(&edges, "remote.example").unwrap();
    for (me, has_edge, xml, want) in [
        // A ring JID: to its bare JID's key.
        (9, false, "<message xmlns='jabber:client' from='x@remote.example' to='alice@ring.test/phone'/>".to_string(), format!("route Stanza to {alice_key}")),
        // A PubSub request: to the node's key.
        (9, false, "<iq xmlns='jabber:client' type='get' id='1' from='x@remote.example' to='pubsub.ring.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='news'/></pubsub></iq>".to_string(), format!("route Stanza to {node_key}")),
        // A remote domain: to the rendezvous edge.
        (9, false, "<message xmlns='jabber:client' from='alice@ring.test' to='bob@remote.example'/>".to_string(), format!("route Service(1) to {}", remote_edge.short())),
        // ... or straight to this node's own edge when that is the one.
        (remote_edge.as_bytes()[0], true, "<message xmlns='jabber:client' from='alice@ring.test' to='bob@remote.example'/>".to_string(), "edge bob@remote.example".to_string()),
    ] {
        let mut p = path(me, has_edge);
        p.send(el(&xml), &edges);
        let got: Vec<String> = drain(&mut p).iter().map(describe).collect();
        assert_eq!(got, vec![want], "{xml}");
    }
}

#[test]
fn what_cannot_go_anywhere_comes_back_as_an_error() {
    let alice_key = dht::keys::jid_key("alice@ring.test").unwrap().short();
    for (xml, edges, want) in [
        // No edge knows the federation: remote-server-not-found, routed
        // back to the ring sender.
        (
            "<message xmlns='jabber:client' from='alice@ring.test' to='bob@remote.example'/>",
            vec![],
            vec![format!(
                "route Stanza to {alice_key} error remote-server-not-found"
            )],
        ),
        // An invalid 'to'.
        (
            "<message xmlns='jabber:client' from='alice@ring.test' to='@@'/>",
            vec![id(1)],
            vec![format!("route Stanza to {alice_key} error jid-malformed")],
        ),
        // Errors are never answered.
        (
            "<message xmlns='jabber:client' type='error' from='alice@ring.test' to='bob@remote.example'/>",
            vec![],
            vec![],
        ),
        // No 'to': dropped.
        (
            "<message xmlns='jabber:client' from='alice@ring.test'/>",
            vec![id(1)],
            vec![],
        ),
    ] {
        let mut p = path(9, false);
        p.send(el(xml), &edges);
        let got: Vec<String> = drain(&mut p).iter().map(describe).collect();
        assert_eq!(got, want, "{xml}");
    }
}

#[test]
fn ring_refusals_and_bounces_name_their_condition() {
    let st = el(
        "<iq xmlns='jabber:client' type='get' id='7' from='bob@remote.example/r' to='alice@ring.test'/>",
    );
    let edges = [id(1)];
    for (e, want) in [
        (RouteError::TooLarge(1 << 20), "policy-violation"),
        (RouteError::Overloaded(10), "resource-constraint"),
        (RouteError::ShuttingDown, "remote-server-timeout"),
    ] {
        let mut p = path(9, false);
        p.handle_route_error(&st, &e, &edges);
        let out = drain(&mut p);
        assert_eq!(out.len(), 1);
        let PathOutput::Route { stanza, .. } = &out[0] else {
            panic!("{out:?}");
        };
        assert_eq!(stanza.attr("to"), Some("bob@remote.example/r"));
        assert_eq!(condition_of(stanza).as_deref(), Some(want));
    }
    let mut p = path(9, false);
    let payload = stanza::to_string(&st);
    p.handle_bounced(
        EnvelopeKind::Stanza,
        payload.as_bytes(),
        "recipient-unavailable",
        &edges,
    );
    let out = drain(&mut p);
    let PathOutput::Route { stanza, .. } = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(
        condition_of(stanza).as_deref(),
        Some("recipient-unavailable")
    );
}

#[test]
fn delivered_envelopes() {
    let msg = "<message xmlns='jabber:client' from='alice@ring.test' to='bob@remote.example'/>";
    let other_edge = id(2);
    for (me, has_edge, kind, key, want) in [
        // A stanza whose key this node holds: served here.
        (
            9,
            false,
            EnvelopeKind::Stanza,
            id(9),
            "serve bob@remote.example".to_string(),
        ),
        // For this edge: out through it.
        (
            1,
            true,
            EnvelopeKind::Service(SERVICE_EDGE_OUT),
            id(1),
            "edge bob@remote.example".into(),
        ),
        // For an edge that left (this node got it instead): once more,
        // through another edge.
        (
            9,
            false,
            EnvelopeKind::Service(SERVICE_EDGE_OUT),
            id(1),
            format!("route Service(2) to {}", other_edge.short()),
        ),
        // Already re-addressed once: given up.
        (
            9,
            false,
            EnvelopeKind::Service(SERVICE_EDGE_OUT_RETRY),
            id(1),
            format!(
                "route Stanza to {} error remote-server-timeout",
                dht::keys::jid_key("alice@ring.test").unwrap().short()
            ),
        ),
    ] {
        let mut p = path(me, has_edge);
        p.handle_delivered(kind, key, msg.as_bytes(), &[id(1), other_edge]);
        let got: Vec<String> = drain(&mut p).iter().map(describe).collect();
        assert_eq!(got, vec![want], "{kind:?} at {me}");
    }
    // Garbage is dropped, not answered.
    let mut p = path(9, false);
    p.handle_delivered(EnvelopeKind::Stanza, id(9), b"<not-a-stanza", &[]);
    assert!(drain(&mut p).is_empty());
}

#[test]
fn broadcasts_fan_out_per_domain_in_bounded_envelopes() {
    let edges = [id(1), id(2), id(3)];
    let mut to: Vec<String> = (0..600).map(|i| format!("u{i}@big.example/r")).collect();
    to.push("one@small.example".into());
    to.push("alice@ring.test".into());
    let mut p = path(9, false);
    let template = el(
        "<message xmlns='jabber:client' from='room@conference.ring.test/x' type='groupchat'><body>hi</body></message>",
    );
    p.broadcast(template, to, &edges);
    let out = drain(&mut p);
    let big_edge = edges::pick(&edges, "big.example").unwrap();
    let fanouts: Vec<(NodeId, usize)> = out
        .iter()
        .filter_map(|o| match o {
            PathOutput::RouteFanout { edge, msg } => Some((*edge, msg.to.len())),
            _ => None,
        })
        .collect();
    let big: Vec<usize> = fanouts
        .iter()
        .filter(|(e, n)| *e == big_edge && *n > 1)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(big, vec![256, 256, 88]);
    assert!(
        fanouts.iter().any(|(_, n)| *n == 1),
        "small.example: one envelope"
    );
    // The ring JID is routed like any stanza.
    assert!(out.iter().any(|o| matches!(o, PathOutput::Route { kind: EnvelopeKind::Stanza, stanza, .. } if stanza.attr("to") == Some("alice@ring.test"))));
    // A fan-out envelope reaching its edge is written out one by one;
    // reaching another node (the edge left), each copy is sent on.
    let msg = out
        .iter()
        .find_map(|o| match o {
            PathOutput::RouteFanout { msg, .. } if msg.to.len() == 88 => Some(msg.clone()),
            _ => None,
        })
        .unwrap();
    let mut at_edge = StanzaPath::new(Served::new(&["ring.test"]).unwrap(), big_edge, true);
    at_edge.handle_delivered(
        EnvelopeKind::Service(SERVICE_EDGE_FANOUT),
        big_edge,
        &msg.encode(),
        &edges,
    );
    let out = drain(&mut at_edge);
    assert_eq!(out.len(), 88);
    assert!(out.iter().all(|o| matches!(o, PathOutput::ToEdge(_))));
    let mut elsewhere = path(9, false);
    elsewhere.handle_delivered(
        EnvelopeKind::Service(SERVICE_EDGE_FANOUT),
        big_edge,
        &msg.encode(),
        &edges,
    );
    let out = drain(&mut elsewhere);
    assert_eq!(out.len(), 88);
    assert!(out.iter().all(|o| matches!(o, PathOutput::Route { kind: EnvelopeKind::Service(SERVICE_EDGE_OUT_RETRY), key, .. } if *key != big_edge)));
}
