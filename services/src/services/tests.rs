//! The dispatcher driven stanza by stanza: targets and keys, loading,
//! the directory, idle unloading.

use super::*;
use xmpp_parsers::disco::DiscoInfoResult;

/// Services for ring.test with small limits.
fn services() -> Services {
    services_with(Quotas::default())
}

fn services_with(quotas: Quotas) -> Services {
    Services::new(
        Served::new(&["ring.test"]).unwrap(),
        "host".into(),
        pubsub::Limits {
            max_items: 5,
            max_item_bytes: 1000,
            max_record_bytes: 4000,
        },
        quotas,
        7,
    )
}

/// Whether `m` is one of the ring's internal registry messages.
fn internal(m: &Element) -> bool {
    directory::parse(m).is_some() || m.get_child("reserved", directory::NS_DIRECTORY).is_some()
}

/// A one-node ring: serves `st` (loading empty state when asked, then the
/// stanzas that waited), then the internal messages that produced
/// (registry requests and answers, all for this node here) until none is
/// left. Returns the stanzas for everyone else.
fn one_node(s: &mut Services, st: Element, at: u64) -> Vec<Element> {
    let mut out = Vec::new();
    if let Some(load) = s.handle(at, st, &mut out) {
        let mut names = load.names.clone();
        loop {
            let values: Vec<(String, Option<Vec<u8>>)> =
                names.iter().map(|n| (n.clone(), None)).collect();
            match s.loaded(&load.entity, &values, &mut out) {
                LoadStep::More(more) => names = more,
                LoadStep::Ready(waiting) => {
                    for w in waiting {
                        s.handle_loaded(at, w, &mut out);
                    }
                    break;
                }
            }
        }
    }
    let mut external = Vec::new();
    for a in out {
        match a {
            Action::Send(m) if internal(&m) => external.extend(one_node(s, m, at)),
            Action::Send(m) => external.push(m),
            Action::Broadcast { stanza, to } => {
                for t in to {
                    let mut m = stanza.clone();
                    stanza::set(&mut m, "to", &t);
                    external.push(m);
                }
            }
            Action::Reroute(m) => external.extend(one_node(s, m, at)),
        }
    }
    external
}

mod dispatch_tests {
    use super::*;
    use crate::stanza::NS_CLIENT;

    fn run(xml: &str) -> Vec<Element> {
        let mut out = Vec::new();
        assert_eq!(
            super::services().handle(0, xml.parse().unwrap(), &mut out),
            None
        );
        out.into_iter()
            .map(|a| match a {
                Action::Send(s) => s,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn ping_to_the_domain_is_answered() {
        let r = run(
            "<iq xmlns='jabber:client' type='get' id='p1' from='alice@a.test/x' to='ring.test'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].attr("type"), Some("result"));
        assert_eq!(r[0].attr("id"), Some("p1"));
        assert_eq!(r[0].attr("to"), Some("alice@a.test/x"));
        assert_eq!(r[0].attr("from"), Some("ring.test"));
    }

    #[test]
    fn disco_info_of_the_domain() {
        let r = run(
            "<iq xmlns='jabber:client' type='get' id='d' from='a@a.test' to='ring.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let q = r[0]
            .get_child("query", NS_DISCO_INFO)
            .expect("disco result");
        let info = DiscoInfoResult::try_from(q.clone()).unwrap();
        assert!(info.features.contains(NS_PING));
        assert!(info.features.contains("jabber:iq:version"));
        assert_eq!(info.identities[0].category, "server");
    }

    #[test]
    fn the_domain_tells_its_software_version() {
        let r = run(
            "<iq xmlns='jabber:client' type='get' id='v' from='a@a.test/x' to='ring.test'><query xmlns='jabber:iq:version'/></iq>",
        );
        assert_eq!(r[0].attr("type"), Some("result"));
        let q = r[0].get_child("query", "jabber:iq:version").expect("query");
        assert_eq!(
            q.get_child("name", "jabber:iq:version")
                .map(|n| n.text())
                .as_deref(),
            Some("xmpp-ring")
        );
        assert!(q.get_child("version", "jabber:iq:version").is_some());
        assert!(q.get_child("os", "jabber:iq:version").is_none());
    }

    #[test]
    fn jids_without_a_service_are_unavailable() {
        for xml in [
            "<message xmlns='jabber:client' from='a@a.test' to='nobody@ring.test' id='m'><body>x</body></message>",
            "<iq xmlns='jabber:client' type='get' id='i' from='a@a.test' to='nobody@ring.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "<iq xmlns='jabber:client' type='set' id='i' from='a@a.test' to='ring.test'><query xmlns='jabber:iq:version'/></iq>",
            "<presence xmlns='jabber:client' type='subscribe' from='a@a.test' to='nobody@ring.test'/>",
        ] {
            let r = run(xml);
            assert_eq!(r.len(), 1, "{xml}");
            assert_eq!(r[0].attr("type"), Some("error"));
            let e = r[0].get_child("error", NS_CLIENT).unwrap();
            assert!(
                e.get_child("service-unavailable", stanza::NS_STANZAS)
                    .is_some()
            );
        }
    }

    #[test]
    fn errors_results_and_unavailable_presence_get_no_answer() {
        assert!(
            run("<message xmlns='jabber:client' type='error' from='a@a.test' to='x@ring.test'/>")
                .is_empty()
        );
        assert!(
            run("<iq xmlns='jabber:client' type='result' id='1' from='a@a.test' to='ring.test'/>")
                .is_empty()
        );
        assert!(run("<presence xmlns='jabber:client' type='unavailable' from='a@a.test' to='x@ring.test'/>").is_empty());
    }
}

mod routing_tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn targets_and_keys() {
        let d = Served::new(&["ring.test"]).unwrap();
        let t = |s: &str| target(&el(s), &d).unwrap();
        assert_eq!(
            t("<presence xmlns='jabber:client' to='Room@conference.ring.test/Nick'/>"),
            Target::Room {
                room: "room@conference.ring.test".into(),
                nick: Some("Nick".into())
            }
        );
        assert_eq!(
            t("<iq xmlns='jabber:client' to='conference.ring.test'/>"),
            Target::MucService {
                service: "conference.ring.test".into()
            }
        );
        let publish = "<iq xmlns='jabber:client' type='set' to='pubsub.ring.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='news'/></pubsub></iq>";
        assert_eq!(
            t(publish),
            Target::PubSubNode {
                service: "pubsub.ring.test".into(),
                node: "news".into()
            }
        );
        assert_eq!(
            routing_key(&el(publish), &d),
            Some(dht::keys::pubsub_key("pubsub.ring.test", "news"))
        );
        assert_eq!(
            t(
                "<iq xmlns='jabber:client' type='get' to='pubsub.ring.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ),
            Target::PubSubService {
                service: "pubsub.ring.test".into()
            }
        );
        assert_eq!(
            t("<message xmlns='jabber:client' to='ring.test'/>"),
            Target::Domain
        );
        assert_eq!(
            t("<message xmlns='jabber:client' to='u@ring.test'/>"),
            Target::Other
        );
        // Not a ring service: an ordinary user JID.
        assert_eq!(
            t("<message xmlns='jabber:client' to='x@conference.other.test'/>"),
            Target::Other
        );
        assert!(target(&el("<message xmlns='jabber:client' to='@@'/>"), &d).is_err());
        assert!(target(&el("<message xmlns='jabber:client'/>"), &d).is_err());
    }

    #[test]
    fn stanzas_wait_for_their_room_and_are_served_in_order() {
        let mut s = super::services();
        let mut out = Vec::new();
        let join = |nick: &str, from: &str| {
            el(&format!(
                "<presence xmlns='jabber:client' from='{from}' to='r@conference.ring.test/{nick}'/>"
            ))
        };
        let load = s
            .handle(0, join("alice", "alice@a.test/x"), &mut out)
            .unwrap();
        assert_eq!(
            load.names,
            vec![
                "muc:r@conference.ring.test".to_string(),
                "muc-hist:r@conference.ring.test".to_string()
            ]
        );
        assert_eq!(s.handle(0, join("bob", "bob@b.test/y"), &mut out), None);
        assert!(out.is_empty());
        let none: Vec<(String, Option<Vec<u8>>)> =
            load.names.iter().map(|n| (n.clone(), None)).collect();
        let LoadStep::Ready(waiting) = s.loaded(&load.entity, &none, &mut out) else {
            panic!("a room that does not exist has no shards to load");
        };
        assert_eq!(waiting.len(), 2, "both presences waited for the load");
        assert_eq!(s.loading(), 0);
        let mut sent = Vec::new();
        for w in waiting {
            sent.extend(one_node(&mut s, w, 0));
        }
        // The registry granted the room to alice (locked): bob is refused.
        assert!(
            sent.iter()
                .any(|p| p.attr("to") == Some("bob@b.test/y") && p.attr("type") == Some("error"))
        );
        assert!(
            sent.iter()
                .any(|p| p.attr("to") == Some("alice@a.test/x") && p.attr("type").is_none())
        );
        let writes = s.take_writes(0);
        assert!(
            writes
                .iter()
                .any(|w| w.name == "muc:r@conference.ring.test" && w.value.is_some())
        );
        assert!(
            writes
                .iter()
                .any(|w| w.name.starts_with("dir:conference.ring.test#")),
            "the registry stored the room"
        );
    }
}

mod directory_tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    fn feed(s: &mut Services, st: Element) -> Vec<Element> {
        one_node(s, st, 0)
    }

    fn disco_items(s: &mut Services, to: &str) -> Vec<(String, Option<String>, Option<String>)> {
        let r = feed(
            s,
            el(&format!(
                "<iq xmlns='jabber:client' type='get' id='d' from='x@x.test/1' to='{to}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
            )),
        );
        let q = r[0].get_child("query", NS_DISCO_ITEMS).expect("items");
        q.children()
            .map(|i| {
                (
                    i.attr("jid").unwrap_or_default().to_string(),
                    i.attr("node").map(str::to_string),
                    i.attr("name").map(str::to_string),
                )
            })
            .collect()
    }

    #[test]
    fn rooms_and_nodes_are_listed_while_they_exist() {
        let mut s = super::services();
        assert!(disco_items(&mut s, "conference.ring.test").is_empty());
        feed(
            &mut s,
            el("<presence xmlns='jabber:client' from='a@a.test/x' to='r@conference.ring.test/a'/>"),
        );
        // Locked: not listed yet. The instant configuration opens it.
        let out = feed(
            &mut s,
            el(
                "<iq xmlns='jabber:client' type='set' id='c' from='a@a.test/x' to='r@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_roomname'><value>Hall</value></field></x></query></iq>",
            ),
        );
        // The listing update went to the service JID's node (here: the
        // same) and is not answered.
        assert!(out.iter().all(|m| !internal(m)), "{out:?}");
        assert_eq!(
            disco_items(&mut s, "conference.ring.test"),
            vec![("r@conference.ring.test".into(), None, Some("Hall".into()))]
        );
        // The last occupant leaves a temporary room: it is unlisted.
        feed(
            &mut s,
            el(
                "<presence xmlns='jabber:client' type='unavailable' from='a@a.test/x' to='r@conference.ring.test/a'/>",
            ),
        );
        assert!(disco_items(&mut s, "conference.ring.test").is_empty());
        // PubSub nodes likewise.
        let out = feed(
            &mut s,
            el(
                "<iq xmlns='jabber:client' type='set' id='c' from='a@a.test/x' to='pubsub.ring.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='news'/></pubsub></iq>",
            ),
        );
        assert_eq!(out[0].attr("type"), Some("result"), "{out:?}");
        assert_eq!(
            disco_items(&mut s, "pubsub.ring.test"),
            vec![("pubsub.ring.test".into(), Some("news".into()), None)]
        );
        // A forged update from outside is not applied.
        feed(
            &mut s,
            el(
                "<message xmlns='jabber:client' from='eve@e.test' to='pubsub.ring.test'><update xmlns='urn:xmpp-ring:directory' item='evil'/></message>",
            ),
        );
        assert_eq!(disco_items(&mut s, "pubsub.ring.test").len(), 1);
    }
}

mod idle_tests {
    use super::*;

    #[test]
    fn empty_rooms_and_unused_nodes_leave_memory_and_come_back() {
        let mut s = super::services();
        let run = |s: &mut Services, xml: &str, at: u64| {
            one_node(s, xml.parse().unwrap(), at);
        };
        run(
            &mut s,
            "<presence xmlns='jabber:client' from='a@a.test/x' to='r@conference.ring.test/a'/>",
            0,
        );
        run(
            &mut s,
            "<iq xmlns='jabber:client' type='set' id='c' from='a@a.test/x' to='r@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>",
            0,
        );
        run(
            &mut s,
            "<iq xmlns='jabber:client' type='set' id='n' from='a@a.test/x' to='pubsub.ring.test'><pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='news'/></pubsub></iq>",
            0,
        );
        // An occupied room is never idle; an unused node is, after a while
        // (and so are the registries that granted them).
        let mut idle = s.idle(1000, 300);
        idle.sort();
        assert_eq!(
            idle,
            vec![
                "dir:conference.ring.test".to_string(),
                "dir:pubsub.ring.test".to_string(),
                "pubsub:pubsub.ring.test/news".to_string()
            ]
        );
        run(
            &mut s,
            "<presence xmlns='jabber:client' type='unavailable' from='a@a.test/x' to='r@conference.ring.test/a'/>",
            1000,
        );
        assert!(
            !s.idle(1100, 300)
                .contains(&"muc:r@conference.ring.test".to_string()),
            "the room was left 100 s ago"
        );
        let idle = s.idle(1300, 300);
        assert_eq!(idle.len(), 4, "{idle:?}");
        s.take_writes(0);
        for e in idle {
            s.unload(&e);
        }
        assert!(s.entities().is_empty());
        // The next stanza loads the room again.
        let mut out = Vec::new();
        let load = s.handle(
            1400,
            "<presence xmlns='jabber:client' from='a@a.test/x' to='r@conference.ring.test/a'/>"
                .parse()
                .unwrap(),
            &mut out,
        );
        assert!(load.is_some());
    }
}
