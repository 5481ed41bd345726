//! The room state machine driven stanza by stanza: every delivery it asks
//! for is checked, broadcasts flattened to one stanza per recipient.

use super::*;
use crate::stanza::NS_CLIENT;
use crate::stanza::NS_STANZAS;
use crate::testing::{Store, read_rounds, statuses};
use room::Role;

const ROOM: &str = "room@conference.ring.test";

struct Harness {
    muc: Muc,
    /// The service's registry, answering the rooms' reservations.
    registry: crate::directory::Directories,
    /// What the room wrote, as the record store keeps it.
    store: Store,
}

/// Loads ROOM from `store` into `muc`, round by round as the host does.
fn load(muc: &mut Muc, store: &Store) -> Result<(), crate::error::StateError> {
    let get = |n: &str| store.get(n).cloned().flatten();
    let meta = get(&record_name(ROOM));
    let history = get(&history_name(ROOM));
    let Some(mut l) = muc.start_install(ROOM, meta.as_deref(), history.as_deref())? else {
        return Ok(());
    };
    read_rounds(&mut l, store)?;
    muc.finish_install(l);
    Ok(())
}

/// (recipient, stanza) for everything the service asked to send.
fn flatten(out: Vec<Action>) -> Vec<(String, Element)> {
    let mut v = Vec::new();
    for a in out {
        match a {
            Action::Send(s) => v.push((s.attr("to").unwrap_or_default().to_string(), s)),
            Action::Broadcast { stanza, to } => {
                for t in to {
                    let mut s = stanza.clone();
                    crate::stanza::set(&mut s, "to", &t);
                    v.push((t, s));
                }
            }
            Action::Reroute(_) => panic!("rooms never reroute"),
        }
    }
    v
}

fn error_of(s: &Element) -> Option<String> {
    (s.attr("type") == Some("error")).then(|| {
        s.get_child("error", NS_CLIENT)
            .and_then(|e| e.children().find(|c| c.ns() == NS_STANZAS))
            .map(|c| c.name().to_string())
            .unwrap_or_default()
    })
}

impl Harness {
    fn new() -> Harness {
        Harness::with_quotas(50, 5000)
    }

    fn with_quotas(per_owner: usize, total: usize) -> Harness {
        let q = crate::directory::Quotas { per_owner, total };
        Harness {
            muc: Muc::new("me".into(), 65536, 1),
            registry: crate::directory::Directories::new(65536, q, q),
            store: Store::new(),
        }
    }

    /// Stores what the rooms changed (as of `now_unix`); the writes.
    fn flush_at(&mut self, now_unix: u64) -> Vec<Write> {
        let w = self.muc.take_writes(now_unix);
        for x in &w {
            self.store.insert(x.name.clone(), x.value.clone());
        }
        w
    }

    fn flush(&mut self) -> Vec<Write> {
        self.flush_at(1_000)
    }

    /// ROOM's main record as stored.
    fn stored_state(&self) -> RoomState {
        serde_json::from_slice(self.store[&record_name(ROOM)].as_ref().unwrap()).unwrap()
    }

    /// The nicks of ROOM's occupants as stored (read back by a new host).
    fn stored_nicks(&self) -> Vec<String> {
        let mut m = Muc::new("reader".into(), self.muc.max_state_bytes, 2);
        load(&mut m, &self.store).unwrap();
        let mut nicks: Vec<String> = m.rooms[ROOM]
            .occupants
            .iter()
            .map(|o| o.nick.clone())
            .collect();
        nicks.sort();
        nicks
    }

    /// Hands `st` to the room it is for; registry messages are settled.
    fn deliver(muc: &mut Muc, st: &Element) -> Vec<Action> {
        let to = st.attr("to").unwrap().to_string();
        let (room, nick) = match to.split_once('/') {
            Some((r, n)) => (r.to_string(), Some(n.to_string())),
            None => (to, None),
        };
        let mut out = Vec::new();
        muc.handle(&room, nick.as_deref(), st, 1_000, &mut out);
        out
    }

    fn send(&mut self, xml: &str) -> Vec<(String, Element)> {
        let st: Element = xml.parse().unwrap();
        let out = Self::deliver(&mut self.muc, &st);
        let muc = &mut self.muc;
        let out = crate::directory::play_registry(
            &mut self.registry,
            crate::directory::Kind::Room,
            out,
            &mut |answer| Self::deliver(muc, &answer),
        );
        flatten(out)
    }

    fn join(&mut self, jid: &str, nick: &str) -> Vec<(String, Element)> {
        self.send(&format!(
            "<presence xmlns='jabber:client' from='{jid}' to='{ROOM}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
    }

    fn configure(&mut self, owner: &str, fields: &[(&str, &str)]) -> Vec<(String, Element)> {
        let f: String = fields
            .iter()
            .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
            .collect();
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='c' from='{owner}' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>{f}</x></query></iq>"
        ))
    }

    /// `owner` submits the instant configuration of `room`.
    fn configure_room(&mut self, room: &str, owner: &str) -> Vec<(String, Element)> {
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='c' from='{owner}' to='{room}@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
        ))
    }

    /// alice creates an instant room (with `fields`) and bob joins.
    fn room_with_alice_and_bob(fields: &[(&str, &str)]) -> Harness {
        let mut h = Harness::new();
        let created = h.join("alice@a.test/x", "alice");
        let own = created
            .iter()
            .find(|(to, s)| to == "alice@a.test/x" && s.name() == "presence")
            .unwrap();
        assert!(statuses(&own.1).contains(&"201".to_string()));
        assert!(statuses(&own.1).contains(&"110".to_string()));
        let r = h.configure("alice@a.test/x", fields);
        assert_eq!(r[0].1.attr("type"), Some("result"));
        h.join("bob@b.test/y", "bob");
        h
    }
}

#[test]
fn a_locked_room_refuses_others_until_configured() {
    let mut h = Harness::new();
    h.join("alice@a.test/x", "alice");
    let r = h.join("bob@b.test/y", "bob");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("item-not-found"));
    // To anyone but its owner a locked room does not exist yet.
    let r = h.configure("bob@b.test/y", &[]);
    assert_eq!(error_of(&r[0].1).as_deref(), Some("item-not-found"));
    h.configure("alice@a.test/x", &[]);
    let r = h.join("bob@b.test/y", "bob");
    assert!(r.iter().all(|(_, s)| error_of(s).is_none()));
    // Once open, only owners may configure.
    let r = h.configure("bob@b.test/y", &[]);
    assert_eq!(error_of(&r[0].1).as_deref(), Some("forbidden"));
}

#[test]
fn joining_shows_everyone_and_ends_with_self_presence_and_subject() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    let r = h.join("carol@b.test/z", "carol");
    let to_carol: Vec<&Element> = r
        .iter()
        .filter(|(t, _)| t == "carol@b.test/z")
        .map(|(_, s)| s)
        .collect();
    // alice and bob, then carol herself (110), then the subject.
    assert_eq!(
        to_carol[0].attr("from"),
        Some("room@conference.ring.test/alice")
    );
    assert_eq!(
        to_carol[1].attr("from"),
        Some("room@conference.ring.test/bob")
    );
    assert_eq!(
        to_carol[2].attr("from"),
        Some("room@conference.ring.test/carol")
    );
    assert!(statuses(to_carol[2]).contains(&"110".to_string()));
    assert!(to_carol[3].get_child("subject", NS_CLIENT).is_some());
    // The others see carol; alice (a moderator) with her real JID, bob
    // (semi-anonymous room) without.
    let item = |to: &str| {
        let p = &r
            .iter()
            .find(|(t, s)| t == to && s.name() == "presence")
            .unwrap()
            .1;
        p.get_child("x", room::NS_MUC_USER)
            .unwrap()
            .get_child("item", room::NS_MUC_USER)
            .unwrap()
            .clone()
    };
    assert_eq!(item("alice@a.test/x").attr("jid"), Some("carol@b.test/z"));
    assert_eq!(item("bob@b.test/y").attr("jid"), None);
}

#[test]
fn groupchat_private_messages_subject_and_history() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    let r = h.send("<message xmlns='jabber:client' type='groupchat' id='m1' from='bob@b.test/y' to='room@conference.ring.test'><body>hello</body></message>");
    assert_eq!(r.len(), 2);
    assert!(
        r.iter()
            .all(|(_, s)| s.attr("from") == Some("room@conference.ring.test/bob"))
    );
    // Strangers may not talk.
    let r = h.send("<message xmlns='jabber:client' type='groupchat' from='eve@e.test/1' to='room@conference.ring.test'><body>x</body></message>");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("not-acceptable"));
    // A private message reaches only its addressee.
    let r = h.send("<message xmlns='jabber:client' type='chat' from='alice@a.test/x' to='room@conference.ring.test/bob'><body>psst</body></message>");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "bob@b.test/y");
    assert_eq!(r[0].1.attr("from"), Some("room@conference.ring.test/alice"));
    let r = h.send("<message xmlns='jabber:client' type='chat' from='alice@a.test/x' to='room@conference.ring.test/nobody'><body>x</body></message>");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("item-not-found"));
    // Only moderators change the subject by default.
    let r = h.send("<message xmlns='jabber:client' type='groupchat' from='bob@b.test/y' to='room@conference.ring.test'><subject>mine</subject></message>");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("forbidden"));
    h.send("<message xmlns='jabber:client' type='groupchat' from='alice@a.test/x' to='room@conference.ring.test'><subject>Topic</subject></message>");
    // A newcomer gets the history (with delay) and the subject.
    let r = h.join("carol@c.test/1", "carol");
    let bodies: Vec<_> = r
        .iter()
        .filter_map(|(_, s)| s.get_child("body", NS_CLIENT).map(|b| b.text()))
        .collect();
    assert_eq!(bodies, vec!["hello".to_string()]);
    assert!(
        r.iter()
            .any(|(_, s)| s.get_child("delay", "urn:xmpp:delay").is_some())
    );
    let subject = r
        .iter()
        .rev()
        .find_map(|(_, s)| s.get_child("subject", NS_CLIENT))
        .unwrap();
    assert_eq!(subject.text(), "Topic");
    // The subject is part of the stored state, the occupants are in
    // their shards.
    h.flush();
    let state = h.stored_state();
    assert_eq!(state.subject.unwrap().1, "Topic");
    assert!(state.occupied);
    assert_eq!(h.stored_nicks().len(), 3);
}

#[test]
fn nick_changes_and_conflicts() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    let r = h.join("bob@b.test/y", "alice");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("conflict"));
    let r = h.join("carol@c.test/1", "bob");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("conflict"));
    let r = h.join("bob@b.test/y", "robert");
    let gone = r
        .iter()
        .find(|(t, s)| t == "alice@a.test/x" && s.attr("type") == Some("unavailable"))
        .unwrap();
    assert!(statuses(&gone.1).contains(&"303".to_string()));
    let item = gone
        .1
        .get_child("x", room::NS_MUC_USER)
        .unwrap()
        .get_child("item", room::NS_MUC_USER)
        .unwrap();
    assert_eq!(item.attr("nick"), Some("robert"));
    assert!(r.iter().any(|(t, s)| t == "alice@a.test/x"
        && s.attr("from") == Some("room@conference.ring.test/robert")));
}

#[test]
fn leaving_and_the_last_one_out_of_a_temporary_room() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    let r = h.send("<presence xmlns='jabber:client' type='unavailable' from='bob@b.test/y' to='room@conference.ring.test/bob'/>");
    assert_eq!(r.len(), 2);
    h.send("<presence xmlns='jabber:client' type='unavailable' from='alice@a.test/x' to='room@conference.ring.test/alice'/>");
    assert!(!h.muc.is_loaded(ROOM));
    let w = h.muc.take_writes(1_000);
    assert!(w.iter().all(|w| w.value.is_none()), "{w:?}");
    let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
    let occupants = format!("{}#0.0", occupants_base(ROOM));
    for name in [record_name(ROOM), history_name(ROOM), occupants] {
        assert!(names.contains(&name.as_str()), "{name} deleted");
    }
}

#[test]
fn kick_ban_and_rank_checks() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    h.join("carol@c.test/1", "carol");
    // bob is no moderator.
    let r = h.send("<iq xmlns='jabber:client' type='set' id='k' from='bob@b.test/y' to='room@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='carol' role='none'/></query></iq>");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("forbidden"));
    // alice kicks carol: 307 to everyone.
    let r = h.send("<iq xmlns='jabber:client' type='set' id='k' from='alice@a.test/x' to='room@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='carol' role='none'/></query></iq>");
    let kicked = r.iter().find(|(t, _)| t == "carol@c.test/1").unwrap();
    assert!(statuses(&kicked.1).contains(&"307".to_string()));
    assert!(r.iter().any(|(_, s)| s.attr("type") == Some("result")));
    // alice bans bob: 301, and he cannot come back.
    let r = h.send("<iq xmlns='jabber:client' type='set' id='b' from='alice@a.test/x' to='room@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='bob@b.test' affiliation='outcast'/></query></iq>");
    let banned = r.iter().find(|(t, _)| t == "bob@b.test/y").unwrap();
    assert!(statuses(&banned.1).contains(&"301".to_string()));
    let r = h.join("bob@b.test/other", "bob");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("forbidden"));
    // The owner cannot be removed as the last owner.
    let r = h.send("<iq xmlns='jabber:client' type='set' id='o' from='alice@a.test/x' to='room@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='alice@a.test' affiliation='none'/></query></iq>");
    assert_eq!(error_of(&r[0].1).as_deref(), Some("conflict"));
    // The outcast list.
    let r = h.send("<iq xmlns='jabber:client' type='get' id='l' from='alice@a.test/x' to='room@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#admin'><item affiliation='outcast'/></query></iq>");
    let q = r[0].1.get_child("query", admin::NS_MUC_ADMIN).unwrap();
    assert_eq!(q.children().next().unwrap().attr("jid"), Some("bob@b.test"));
}

#[test]
fn members_only_and_password_rooms() {
    let mut h = Harness::room_with_alice_and_bob(&[
        ("muc#roomconfig_passwordprotectedroom", "1"),
        ("muc#roomconfig_roomsecret", "pw"),
    ]);
    // bob joined after the password was set, without it: refused.
    assert_eq!(h.muc.occupants(), 1);
    let r = h.send(&format!("<presence xmlns='jabber:client' from='bob@b.test/y' to='{ROOM}/bob'><x xmlns='http://jabber.org/protocol/muc'><password>pw</password></x></presence>"));
    assert!(r.iter().all(|(_, s)| error_of(s).is_none()));
    // Members only: bob (no affiliation) is removed with 322; carol refused.
    let r = h.configure("alice@a.test/x", &[("muc#roomconfig_membersonly", "1")]);
    assert!(
        r.iter()
            .any(|(t, s)| t == "bob@b.test/y" && statuses(s).contains(&"322".to_string()))
    );
    let r = h.send(&format!("<presence xmlns='jabber:client' from='carol@c.test/1' to='{ROOM}/carol'><x xmlns='http://jabber.org/protocol/muc'><password>pw</password></x></presence>"));
    assert_eq!(error_of(&r[0].1).as_deref(), Some("registration-required"));
    // Made a member, carol gets in.
    h.send("<iq xmlns='jabber:client' type='set' id='m' from='alice@a.test/x' to='room@conference.ring.test'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='carol@c.test' affiliation='member'/></query></iq>");
    let r = h.send(&format!("<presence xmlns='jabber:client' from='carol@c.test/1' to='{ROOM}/carol'><x xmlns='http://jabber.org/protocol/muc'><password>pw</password></x></presence>"));
    assert!(r.iter().all(|(_, s)| error_of(s).is_none()));
    // Disco shows the configuration.
    let r = h.send("<iq xmlns='jabber:client' type='get' id='d' from='x@x.test/1' to='room@conference.ring.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let info = DiscoInfoResult::try_from(r[0].1.get_child("query", NS_DISCO_INFO).unwrap().clone())
        .unwrap();
    assert!(info.features.contains("muc_membersonly"));
    assert!(info.features.contains("muc_passwordprotected"));
}

#[test]
fn bad_requests_get_the_xep_errors() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    for (xml, cond) in [
        // No nick.
        (format!("<presence xmlns='jabber:client' from='c@c.test/1' to='{ROOM}'/>"), "jid-malformed"),
        // A join from a bare JID.
        (format!("<presence xmlns='jabber:client' from='c@c.test' to='{ROOM}/c'/>"), "jid-malformed"),
        // Groupchat to an occupant, chat to the room.
        (format!("<message xmlns='jabber:client' type='groupchat' from='alice@a.test/x' to='{ROOM}/bob'><body>x</body></message>"), "bad-request"),
        (format!("<message xmlns='jabber:client' type='chat' from='alice@a.test/x' to='{ROOM}'><body>x</body></message>"), "bad-request"),
        // Malformed forms and admin items.
        (format!("<iq xmlns='jabber:client' type='set' id='1' from='alice@a.test/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'><value>lots</value></field></x></query></iq>"), "not-acceptable"),
        (format!("<iq xmlns='jabber:client' type='set' id='1' from='alice@a.test/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>"), "bad-request"),
        (format!("<iq xmlns='jabber:client' type='set' id='1' from='alice@a.test/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='bob' role='emperor'/></query></iq>"), "bad-request"),
        (format!("<iq xmlns='jabber:client' type='set' id='1' from='alice@a.test/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'/></iq>"), "bad-request"),
        (format!("<iq xmlns='jabber:client' type='get' id='1' from='alice@a.test/x' to='{ROOM}'><query xmlns='jabber:iq:version'/></iq>"), "service-unavailable"),
        // A room that does not exist.
        ("<message xmlns='jabber:client' type='groupchat' from='a@a.test/x' to='none@conference.ring.test'><body>x</body></message>".to_string(), "item-not-found"),
        ("<iq xmlns='jabber:client' type='get' id='1' from='a@a.test/x' to='none@conference.ring.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>".to_string(), "item-not-found"),
    ] {
        let r = h.send(&xml);
        assert_eq!(r.len(), 1, "{xml}");
        assert_eq!(error_of(&r[0].1).as_deref(), Some(cond), "{xml}");
    }
}

#[test]
fn takeover_tells_occupants_and_keeps_the_configuration() {
    let mut h = Harness::room_with_alice_and_bob(&[("muc#roomconfig_roomname", "Kept")]);
    h.send("<message xmlns='jabber:client' type='groupchat' from='alice@a.test/x' to='room@conference.ring.test'><subject>S</subject></message>");
    h.flush();
    let mut successor = Muc::new("other".into(), 65536, 3);
    load(&mut successor, &h.store).unwrap();
    assert_eq!(successor.take_previous_host(ROOM).as_deref(), Some("me"));
    assert_eq!(successor.take_previous_host(ROOM), None, "asked once");
    let mut out = Vec::new();
    successor.take_over(ROOM, &mut out);
    let r = flatten(out);
    assert_eq!(r.len(), 2);
    for (_, p) in &r {
        assert_eq!(p.attr("type"), Some("unavailable"));
        assert!(statuses(p).contains(&"332".to_string()));
    }
    // Configuration and subject stay; the occupants may join again.
    let mut h2 = Harness {
        muc: successor,
        registry: h.registry,
        store: h.store,
    };
    let r = h2.join("bob@b.test/y", "bob");
    let subject = r
        .iter()
        .rev()
        .find_map(|(_, s)| s.get_child("subject", NS_CLIENT))
        .unwrap();
    assert_eq!(subject.text(), "S");
    h2.flush();
    let st = h2.stored_state();
    assert_eq!(st.config.name, "Kept");
    assert_eq!(st.host, "other");
    assert_eq!(h2.stored_nicks(), vec!["bob".to_string()]);
    assert!(
        Muc::new("x".into(), 65536, 4)
            .start_install(ROOM, Some(b"not json"), None)
            .is_err()
    );
}

#[test]
fn history_survives_the_host_and_is_written_at_most_once_a_second() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    h.flush_at(1_000);
    let say = |h: &mut Harness, text: &str| {
        h.send(&format!("<message xmlns='jabber:client' type='groupchat' from='alice@a.test/x' to='{ROOM}'><body>{text}</body></message>"));
    };
    say(&mut h, "one");
    let w = h.flush_at(1_001);
    let hist: Vec<&Write> = w.iter().filter(|w| w.name == history_name(ROOM)).collect();
    assert_eq!(hist.len(), 1);
    assert!(!hist[0].holds, "messages never wait for their history");
    // Two more within the same second: written once, a second later.
    say(&mut h, "two");
    say(&mut h, "three");
    assert!(
        h.flush_at(1_001)
            .iter()
            .all(|w| w.name != history_name(ROOM))
    );
    assert!(h.muc.history_pending());
    let w = h.flush_at(1_002);
    assert_eq!(w.iter().filter(|w| w.name == history_name(ROOM)).count(), 1);
    assert!(!h.muc.history_pending());
    // A new host replays it to whoever joins.
    let mut successor = Muc::new("other".into(), 65536, 5);
    load(&mut successor, &h.store).unwrap();
    let mut h2 = Harness {
        muc: successor,
        registry: h.registry,
        store: h.store,
    };
    let r = h2.join("carol@c.test/1", "carol");
    let bodies: Vec<String> = r
        .iter()
        .filter(|(t, _)| t == "carol@c.test/1")
        .filter_map(|(_, s)| s.get_child("body", NS_CLIENT).map(|b| b.text()))
        .collect();
    assert_eq!(bodies, vec!["one", "two", "three"]);
}

#[test]
fn a_room_outgrows_one_record_and_a_join_writes_one_shard() {
    let q = crate::directory::Quotas {
        per_owner: 10,
        total: 10,
    };
    let mut h = Harness {
        muc: Muc::new("me".into(), 2000, 1),
        registry: crate::directory::Directories::new(65536, q, q),
        store: Store::new(),
    };
    h.join("alice@a.test/x", "alice");
    h.configure("alice@a.test/x", &[]);
    for i in 0..300 {
        let r = h.join(&format!("u{i}@c.test/r"), &format!("user{i}"));
        assert!(r.iter().all(|(_, s)| error_of(s).is_none()), "join {i}");
        let w = h.flush();
        for x in &w {
            let len = x.value.as_ref().map_or(0, Vec::len);
            assert!(len <= 2000, "{} is {len} bytes", x.name);
        }
    }
    assert!(h.stored_state().occupant_shards.unwrap().depth >= 4);
    assert_eq!(h.stored_nicks().len(), 301);
    // One more join rewrites one shard and nothing else.
    h.join("late@c.test/r", "late");
    let w = h.flush();
    assert_eq!(
        w.len(),
        1,
        "{:?}",
        w.iter().map(|w| &w.name).collect::<Vec<_>>()
    );
    assert!(w[0].name.starts_with(&occupants_base(ROOM)));
    // A presence no shard can hold is refused, and nothing is kept.
    let big = "x".repeat(2100);
    let r = h.send(&format!("<presence xmlns='jabber:client' from='big@c.test/r' to='{ROOM}/big'><status>{big}</status></presence>"));
    assert_eq!(error_of(&r[0].1).as_deref(), Some("service-unavailable"));
    assert!(h.muc.rooms[ROOM].by_nick("big").is_none());
}

#[test]
fn an_old_record_with_its_occupants_inside_is_moved_to_shards() {
    let mut state = RoomState {
        config: Default::default(),
        locked: false,
        affiliations: Default::default(),
        subject: None,
        legacy_occupants: vec![room::Occupant {
            nick: "old".into(),
            jid: "old@a.test/r".into(),
            role: Role::Participant,
            presence: vec![],
        }],
        occupant_shards: None,
        occupied: false,
        host: "gone".into(),
    };
    state.config.persistent = true;
    // As written by the previous release: occupants in the record.
    let mut old = serde_json::to_value(&state).unwrap();
    old.as_object_mut().unwrap().remove("occupant_shards");
    old.as_object_mut().unwrap().remove("occupied");
    assert!(old["occupants"].is_array());
    let old = serde_json::to_vec(&old).unwrap();
    let back: RoomState = serde_json::from_slice(&old).unwrap();
    assert!(
        back.has_occupants(),
        "an old room with occupants is taken over"
    );
    let mut h = Harness::new();
    h.store.insert(record_name(ROOM), Some(old));
    load(&mut h.muc, &h.store.clone()).unwrap();
    h.flush();
    let st = h.stored_state();
    assert!(st.legacy_occupants.is_empty());
    assert!(st.occupant_shards.is_some() && st.occupied);
    assert_eq!(h.stored_nicks(), vec!["old".to_string()]);
}

#[test]
fn invitations_make_members_of_members_only_rooms() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    h.configure("alice@a.test/x", &[("muc#roomconfig_membersonly", "1")]);
    // bob (no affiliation) was removed; alice invites carol.
    let r = h.send(&format!("<message xmlns='jabber:client' from='alice@a.test/x' to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='carol@c.test'><reason>join us</reason></invite></x></message>"));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "carol@c.test");
    let inv = r[0]
        .1
        .get_child("x", room::NS_MUC_USER)
        .unwrap()
        .get_child("invite", room::NS_MUC_USER)
        .unwrap();
    assert_eq!(inv.attr("from"), Some("alice@a.test/x"));
    assert_eq!(
        inv.get_child("reason", room::NS_MUC_USER).unwrap().text(),
        "join us"
    );
    let r = h.join("carol@c.test/1", "carol");
    assert!(
        r.iter().all(|(_, s)| error_of(s).is_none()),
        "carol is a member now"
    );
    // A participant may not invite to a members-only room.
    let r = h.send(&format!("<message xmlns='jabber:client' from='carol@c.test/1' to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='dave@d.test'/></x></message>"));
    assert_eq!(error_of(&r[0].1).as_deref(), Some("forbidden"));
    // A declined invitation goes back to the inviter.
    let r = h.send(&format!("<message xmlns='jabber:client' from='dave@d.test/1' to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'><decline to='alice@a.test/x'><reason>busy</reason></decline></x></message>"));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "alice@a.test/x");
    let dec = r[0]
        .1
        .get_child("x", room::NS_MUC_USER)
        .unwrap()
        .get_child("decline", room::NS_MUC_USER)
        .unwrap();
    assert_eq!(dec.attr("from"), Some("dave@d.test"));
    // A malformed invitation.
    let r = h.send(&format!("<message xmlns='jabber:client' from='alice@a.test/x' to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'><invite/></x></message>"));
    assert_eq!(error_of(&r[0].1).as_deref(), Some("jid-malformed"));
}

#[test]
fn iqs_between_occupants_are_relayed_without_real_jids() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    let r = h.send(&format!("<iq xmlns='jabber:client' type='get' id='v1' from='alice@a.test/x' to='{ROOM}/bob'><vCard xmlns='vcard-temp'/></iq>"));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "bob@b.test/y");
    assert_eq!(r[0].1.attr("from"), Some("room@conference.ring.test/alice"));
    assert_eq!(r[0].1.attr("id"), Some("v1"));
    // bob's answer goes back to alice's real JID.
    let r = h.send(&format!("<iq xmlns='jabber:client' type='result' id='v1' from='bob@b.test/y' to='{ROOM}/alice'><vCard xmlns='vcard-temp'/></iq>"));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "alice@a.test/x");
    assert_eq!(r[0].1.attr("from"), Some("room@conference.ring.test/bob"));
    // Strangers and unknown nicks get errors; stray answers are dropped.
    let r = h.send(&format!("<iq xmlns='jabber:client' type='get' id='v2' from='eve@e.test/1' to='{ROOM}/bob'><vCard xmlns='vcard-temp'/></iq>"));
    assert_eq!(error_of(&r[0].1).as_deref(), Some("not-acceptable"));
    let r = h.send(&format!("<iq xmlns='jabber:client' type='get' id='v3' from='alice@a.test/x' to='{ROOM}/nobody'><vCard xmlns='vcard-temp'/></iq>"));
    assert_eq!(error_of(&r[0].1).as_deref(), Some("item-not-found"));
    assert!(
        h.send(&format!(
            "<iq xmlns='jabber:client' type='result' id='v4' from='eve@e.test/1' to='{ROOM}/bob'/>"
        ))
        .is_empty()
    );
}

#[test]
fn several_role_changes_in_one_request_hit_the_right_occupants() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    h.join("carol@c.test/1", "carol");
    h.join("dave@d.test/1", "dave");
    // bob (index 1) is kicked first; dave must still be the one muted.
    let r = h.send(&format!("<iq xmlns='jabber:client' type='set' id='k' from='alice@a.test/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='bob' role='none'/><item nick='dave' role='visitor'/></query></iq>"));
    assert!(r.iter().any(|(_, s)| s.attr("type") == Some("result")));
    let mut roles: Vec<(&str, Role)> = h.muc.rooms[ROOM]
        .occupants
        .iter()
        .map(|o| (o.nick.as_str(), o.role))
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        vec![
            ("alice", Role::Moderator),
            ("carol", Role::Participant),
            ("dave", Role::Visitor)
        ]
    );
}

/// A join of `jid` as `nick` to `room` (any room of the service).
fn join_room(room: &str, jid: &str, nick: &str) -> String {
    format!(
        "<presence xmlns='jabber:client' from='{jid}' to='{room}@conference.ring.test/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    )
}

fn error_text(s: &Element) -> String {
    s.get_child("error", NS_CLIENT)
        .and_then(|e| e.get_child("text", NS_STANZAS))
        .map(|t| t.text())
        .unwrap_or_default()
}

#[test]
fn creating_rooms_is_bounded_per_owner_and_per_service() {
    let mut h = Harness::with_quotas(2, 3);
    for r in ["r1", "r2"] {
        let out = h.send(&join_room(r, "alice@a.test/x", "alice"));
        assert!(
            out.iter()
                .any(|(_, s)| statuses(s).contains(&"201".to_string())),
            "{r}: {out:?}"
        );
    }
    // A third room of alice's: refused as XEP-0045 says, naming the quota.
    let out = h.send(&join_room("r3", "alice@a.test/other", "alice"));
    assert_eq!(error_of(&out[0].1).as_deref(), Some("not-allowed"));
    assert!(error_text(&out[0].1).contains("owns 2"), "{:?}", out[0].1);
    assert!(!h.muc.is_loaded("r3@conference.ring.test"));
    // bob may create one; then the service is full (3), even for carol.
    let out = h.send(&join_room("r4", "bob@b.test/y", "bob"));
    assert!(error_of(&out[0].1).is_none(), "{out:?}");
    let out = h.send(&join_room("r5", "carol@c.test/z", "carol"));
    assert_eq!(error_of(&out[0].1).as_deref(), Some("not-allowed"));
    assert!(error_text(&out[0].1).contains("maximum of 3"));
    // A temporary room that empties is released: alice may create again.
    h.send("<presence xmlns='jabber:client' type='unavailable' from='alice@a.test/x' to='r1@conference.ring.test/alice'/>");
    assert!(!h.muc.is_loaded("r1@conference.ring.test"));
    let out = h.send(&join_room("r6", "alice@a.test/x", "alice"));
    assert!(error_of(&out[0].1).is_none(), "{out:?}");
    // Joining an existing room needs no reservation.
    h.configure_room("r6", "alice@a.test/x");
    let out = h.send(&join_room("r6", "dave@d.test/1", "dave"));
    assert!(out.iter().all(|(_, s)| error_of(s).is_none()), "{out:?}");
}

#[test]
fn joins_wait_for_the_registry_and_fail_when_it_never_answers() {
    let mut h = Harness::new();
    let mut out = Vec::new();
    let first: Element = join_room("r", "alice@a.test/x", "alice").parse().unwrap();
    let second: Element = join_room("r", "bob@b.test/y", "bob").parse().unwrap();
    h.muc.handle(
        "r@conference.ring.test",
        Some("alice"),
        &first,
        100,
        &mut out,
    );
    h.muc.handle(
        "r@conference.ring.test",
        Some("bob"),
        &second,
        101,
        &mut out,
    );
    // One reservation asked for; nobody answered yet.
    let sent = flatten(out);
    assert_eq!(sent.len(), 1);
    assert!(crate::directory::parse(&sent[0].1).is_some());
    let mut out = Vec::new();
    h.muc.expire_pending(129, &mut out);
    assert!(out.is_empty(), "not yet");
    h.muc.expire_pending(130, &mut out);
    let errs = flatten(out);
    assert_eq!(errs.len(), 2);
    for (_, e) in &errs {
        assert_eq!(error_of(e).as_deref(), Some("remote-server-timeout"));
    }
}

#[test]
fn fields_are_bounded_with_the_xeps_errors() {
    let mut h = Harness::room_with_alice_and_bob(&[]);
    let long = "s".repeat(room::MAX_SUBJECT_BYTES + 1);
    let out = h.send(&format!("<message xmlns='jabber:client' type='groupchat' from='alice@a.test/x' to='{ROOM}'><subject>{long}</subject></message>"));
    assert_eq!(error_of(&out[0].1).as_deref(), Some("not-acceptable"));
    let name = "n".repeat(admin::MAX_NAME_BYTES + 1);
    let out = h.configure("alice@a.test/x", &[("muc#roomconfig_roomname", &name)]);
    assert_eq!(error_of(&out[0].1).as_deref(), Some("not-acceptable"));
    let invites: String = (0..=room::MAX_INVITES)
        .map(|i| format!("<invite to='u{i}@x.test'/>"))
        .collect();
    let out = h.send(&format!("<message xmlns='jabber:client' from='alice@a.test/x' to='{ROOM}'><x xmlns='http://jabber.org/protocol/muc#user'>{invites}</x></message>"));
    assert_eq!(error_of(&out[0].1).as_deref(), Some("policy-violation"));
    let status = "x".repeat(room::MAX_PRESENCE_BYTES + 1);
    let out = h.send(&format!("<presence xmlns='jabber:client' from='carol@c.test/z' to='{ROOM}/carol'><status>{status}</status></presence>"));
    assert_eq!(error_of(&out[0].1).as_deref(), Some("not-acceptable"));
    // Nothing of it was kept.
    h.flush();
    assert!(h.stored_state().subject.is_none());
    assert!(!h.stored_nicks().contains(&"carol".to_string()));
}

#[test]
fn a_change_that_would_not_fit_the_record_is_undone_and_refused() {
    let q = crate::directory::Quotas {
        per_owner: 10,
        total: 10,
    };
    let mut h = Harness {
        muc: Muc::new("me".into(), 3000, 1),
        registry: crate::directory::Directories::new(65536, q, q),
        store: Store::new(),
    };
    h.join("alice@a.test/x", "alice");
    h.configure("alice@a.test/x", &[]);
    h.flush();
    // alice bans one JID after another: past the record limit, the ban is
    // refused with resource-constraint and the room stays as it was.
    let mut refused_at = None;
    for i in 0..200 {
        let out = h.send(&format!("<iq xmlns='jabber:client' type='set' id='b{i}' from='alice@a.test/x' to='{ROOM}'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='spammer{i}@evil.test' affiliation='outcast'/></query></iq>"));
        if error_of(&out[0].1).is_some() {
            assert_eq!(error_of(&out[0].1).as_deref(), Some("resource-constraint"));
            assert_eq!(out.len(), 1, "no other output of a refused change");
            refused_at = Some(i);
            break;
        }
    }
    let i = refused_at.expect("the limit was reached");
    h.flush();
    let stored = h.store[&record_name(ROOM)].clone().unwrap();
    assert!(stored.len() <= 3000, "{} bytes stored", stored.len());
    let state: RoomState = serde_json::from_slice(&stored).unwrap();
    assert!(
        !state
            .affiliations
            .contains_key(&format!("spammer{i}@evil.test"))
    );
    assert!(
        state
            .affiliations
            .contains_key(&format!("spammer{}@evil.test", i - 1))
    );
}
