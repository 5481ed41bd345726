//! The session host driven deterministically: an access node and a home
//! node (two hosts) exchanging the envelopes the real node would route,
//! over an in-memory record store, with the clock passed in.

use super::*;
use crate::Account;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Records in memory; loads finish when the test says so.
#[derive(Default)]
struct Mem {
    values: BTreeMap<String, Vec<u8>>,
    /// Loads started and not finished (token → names).
    loading: HashMap<u64, Vec<String>>,
    /// Whether loads fetch (true) or have nothing to fetch (false).
    slow_loads: bool,
    writes: usize,
}

impl HomeRecords for Mem {
    fn local(&self, name: &str) -> Option<Vec<u8>> {
        self.values.get(name).cloned()
    }
    fn write(&mut self, _now: Instant, op: RecordOp) -> Result<(), String> {
        self.writes += 1;
        match op {
            RecordOp::Put { name, value } | RecordOp::Create { name, value } => {
                self.values.insert(name, value);
            }
            RecordOp::Delete { name } => {
                self.values.remove(&name);
            }
            RecordOp::Get { .. } => {}
        }
        Ok(())
    }
    fn load(&mut self, _now: Instant, names: &[String], token: u64) -> bool {
        if self.slow_loads {
            self.loading.insert(token, names.to_vec());
        }
        self.slow_loads
    }
    fn batch(&self, prefix: &str, _cursor: &mut Option<String>, n: usize) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .take(n)
            .cloned()
            .collect()
    }
    fn is_home_of(&self, _name: &str) -> bool {
        true
    }
    fn unix_now(&self) -> u64 {
        1_700_000_000
    }
}

fn id(b: u8) -> NodeId {
    NodeId::from_bytes([b; 32])
}

fn el(xml: &str) -> Element {
    xml.parse().expect("test XML")
}

fn full(s: &str) -> FullJid {
    FullJid::new(s).expect("jid")
}

fn host(me: u8, t0: Instant) -> SessionHost {
    SessionHost::new(id(me), vec!["ring.test".into()], 10, 100, t0)
}

fn add_account(records: &mut Mem, jid: &str) {
    let bare = crate::account::user_jid(jid).expect("jid");
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(1);
    let a = Account::new(&bare, "pw", 4096, &mut rng).expect("account");
    records
        .values
        .insert(Account::record_name(&bare), a.encode());
}

fn outputs(h: &mut SessionHost) -> Vec<HostOutput> {
    std::iter::from_fn(|| h.poll_output()).collect()
}

/// The home node `home` takes what the access node `access` (node id
/// `from`) sent its way: leases and outbound presence.
fn carry(from: NodeId, outs: Vec<HostOutput>, home: &mut SessionHost, t: Instant, r: &mut Mem) {
    for o in outs {
        match o {
            HostOutput::Lease { payload, .. } => home.handle_lease(t, from, &payload, r),
            HostOutput::Outbound { payload, .. } => home.handle_outbound(t, &payload, r),
            _ => {}
        }
    }
}

#[test]
fn a_session_on_an_access_node_gets_messages_to_its_bare_jid_through_the_home_node() {
    let t0 = Instant::now();
    let (mut access, mut home) = (host(1, t0), host(2, t0));
    let mut r = Mem::default();
    add_account(&mut r, "alice@ring.test");
    let alice = full("alice@ring.test/pc");
    assert_eq!(access.handle_bind(&alice, 7), Ok(None));
    access.handle_client_stanza(el(
        "<presence xmlns='jabber:client' from='alice@ring.test/pc'><priority>1</priority></presence>",
    ));
    let outs = outputs(&mut access);
    // A lease for the bind, one for the presence, and the presence for
    // the home node to fan out.
    assert!(matches!(outs[0], HostOutput::Lease { .. }));
    assert!(
        outs.iter()
            .any(|o| matches!(o, HostOutput::Outbound { .. }))
    );
    carry(id(1), outs, &mut home, t0, &mut r);
    // The home node saw the session's presence go to the user's own
    // sessions (this one, on its access node) and stored it.
    let home_outs = outputs(&mut home);
    assert!(
        home_outs.iter().any(|o| matches!(o,
            HostOutput::ToAccessNode { node, stanza } if *node == id(1) && stanza.name() == "presence")),
        "{home_outs:?}"
    );
    assert!(r.values.contains_key("presence:alice@ring.test"));

    // A chat message to the bare JID: to the access node, naming the
    // session; the access node hands it to session 7.
    home.handle_stanza(
        t0,
        el("<message xmlns='jabber:client' type='chat' from='bob@elsewhere.example/x' to='alice@ring.test'><body>hi</body></message>"),
        &mut r,
    );
    let fwd = outputs(&mut home);
    let [HostOutput::ToAccessNode { node, stanza }] = fwd.as_slice() else {
        panic!("{fwd:?}");
    };
    assert_eq!(*node, id(1));
    assert_eq!(stanza.attr("to"), Some("alice@ring.test/pc"));
    access.handle_forwarded(id(1), &ring_services::stanza::to_bytes(stanza));
    let got = outputs(&mut access);
    assert!(
        matches!(got.as_slice(), [HostOutput::ToSession { id: 7, stanza }] if stanza.attr("to") == Some("alice@ring.test/pc")),
        "{got:?}"
    );
    // Forwarded to a node that is not this one, or for a session gone: the
    // sender is answered.
    access.handle_forwarded(id(9), &ring_services::stanza::to_bytes(stanza));
    let got = outputs(&mut access);
    assert!(
        matches!(got.as_slice(), [HostOutput::Send(e)] if e.attr("type") == Some("error")),
        "{got:?}"
    );
}

#[test]
fn messages_for_a_user_without_sessions_wait_offline_and_come_with_the_next_session() {
    let t0 = Instant::now();
    let (mut access, mut home) = (host(1, t0), host(2, t0));
    let mut r = Mem::default();
    add_account(&mut r, "carol@ring.test");
    home.handle_stanza(
        t0,
        el("<message xmlns='jabber:client' type='chat' from='bob@elsewhere.example/x' to='carol@ring.test' id='m1'><body>later</body></message>"),
        &mut r,
    );
    assert!(outputs(&mut home).is_empty(), "kept, not answered");
    assert!(r.values.contains_key("offline:carol@ring.test"));
    // Nobody of that name: the services answer (service-unavailable).
    home.handle_stanza(
        t0,
        el("<message xmlns='jabber:client' type='chat' from='bob@elsewhere.example/x' to='nobody@ring.test'><body>x</body></message>"),
        &mut r,
    );
    assert!(matches!(
        outputs(&mut home).as_slice(),
        [HostOutput::Services(_)]
    ));
    // carol logs in on the access node and becomes available.
    let carol = full("carol@ring.test/phone");
    access.handle_bind(&carol, 3).expect("bind");
    access.handle_client_stanza(el(
        "<presence xmlns='jabber:client' from='carol@ring.test/phone'/>",
    ));
    carry(id(1), outputs(&mut access), &mut home, t0, &mut r);
    let outs = outputs(&mut home);
    let flushed: Vec<&Element> = outs
        .iter()
        .filter_map(|o| match o {
            HostOutput::ToAccessNode { stanza, .. } if stanza.name() == "message" => Some(stanza),
            _ => None,
        })
        .collect();
    assert_eq!(flushed.len(), 1, "{outs:?}");
    assert_eq!(flushed[0].attr("to"), Some("carol@ring.test/phone"));
    assert!(
        flushed[0].get_child("delay", "urn:xmpp:delay").is_some(),
        "XEP-0203 stamp"
    );
    assert!(!r.values.contains_key("offline:carol@ring.test"), "emptied");
}

#[test]
fn work_for_a_user_waits_for_their_records_and_runs_in_order() {
    let t0 = Instant::now();
    let mut home = host(2, t0);
    let mut r = Mem {
        slow_loads: true,
        ..Mem::default()
    };
    add_account(&mut r, "dave@ring.test");
    for i in 0..3 {
        home.handle_stanza(
            t0,
            el(&format!("<message xmlns='jabber:client' type='chat' from='x@y.example/z' to='dave@ring.test' id='m{i}'><body>{i}</body></message>")),
            &mut r,
        );
    }
    assert!(
        !r.values.contains_key("offline:dave@ring.test"),
        "held until loaded"
    );
    assert_eq!(r.loading.len(), 1, "one load for the user");
    let (&token, names) = r.loading.iter().next().expect("load");
    assert!(names.contains(&"roster:dave@ring.test".to_string()));
    r.slow_loads = false;
    assert!(home.handle_load_done(t0, token, &mut r));
    let q = crate::offline::OfflineQueue::decode(
        r.values.get("offline:dave@ring.test").map(Vec::as_slice),
    );
    let bodies: Vec<String> = q
        .deliver("dave@ring.test/a", "ring.test")
        .iter()
        .map(|m| m.attr("id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2"]);
    // Not this host's load: said so.
    assert!(!home.handle_load_done(t0, 5, &mut r));
}

#[test]
fn a_silent_access_node_s_sessions_expire_and_the_next_message_is_kept_offline() {
    let t0 = Instant::now();
    let (mut access, mut home) = (host(1, t0), host(2, t0));
    let mut r = Mem::default();
    add_account(&mut r, "erin@ring.test");
    let erin = full("erin@ring.test/pc");
    access.handle_bind(&erin, 1).expect("bind");
    access.handle_client_stanza(el(
        "<presence xmlns='jabber:client' from='erin@ring.test/pc'/>",
    ));
    carry(id(1), outputs(&mut access), &mut home, t0, &mut r);
    outputs(&mut home);
    // The access node dies: no renewal. Past the lease's life the home
    // node forgets the session (its stored presence goes too).
    let later = t0 + LEASE_TTL + LEASE_RENEW + Duration::from_millis(1);
    assert!(home.poll_timeout().is_some());
    home.handle_timeout(later, &mut r);
    outputs(&mut home);
    assert!(!r.values.contains_key("presence:erin@ring.test"));
    home.handle_stanza(
        later,
        el("<message xmlns='jabber:client' type='chat' from='x@y.example/z' to='erin@ring.test'><body>b</body></message>"),
        &mut r,
    );
    assert!(outputs(&mut home).is_empty());
    assert!(r.values.contains_key("offline:erin@ring.test"));
}

#[test]
fn a_roster_request_is_answered_at_the_home_node_and_a_stranger_s_is_forbidden() {
    let t0 = Instant::now();
    let mut home = host(2, t0);
    let mut r = Mem::default();
    add_account(&mut r, "fay@ring.test");
    // fay's session is on the home node itself.
    home.handle_bind(&full("fay@ring.test/pc"), 4)
        .expect("bind");
    outputs(&mut home);
    home.handle_stanza(
        t0,
        el("<iq xmlns='jabber:client' type='set' id='r1' from='fay@ring.test/pc' to='fay@ring.test'><query xmlns='jabber:iq:roster'><item jid='gus@ring.test' name='Gus'/></query></iq>"),
        &mut r,
    );
    let outs = outputs(&mut home);
    assert!(
        outs.iter().any(|o| matches!(o, HostOutput::ToSession { id: 4, stanza } if stanza.attr("id") == Some("r1") && stanza.attr("type") == Some("result"))),
        "{outs:?}"
    );
    assert!(r.values.contains_key("roster:fay@ring.test"));
    home.handle_stanza(
        t0,
        el("<iq xmlns='jabber:client' type='get' id='r2' from='mallory@ring.test/x' to='fay@ring.test'><query xmlns='jabber:iq:roster'/></iq>"),
        &mut r,
    );
    let outs = outputs(&mut home);
    let [HostOutput::Send(e)] = outs.as_slice() else {
        panic!("{outs:?}");
    };
    assert!(
        e.get_child("error", "jabber:client")
            .is_some_and(|e| e.has_child("forbidden", "urn:ietf:params:xml:ns:xmpp-stanzas"))
    );
}

#[test]
fn directed_presence_targets_hear_when_the_session_closes() {
    let t0 = Instant::now();
    let mut access = host(1, t0);
    let me = full("gil@ring.test/pc");
    access.handle_bind(&me, 9).expect("bind");
    access.handle_client_stanza(el(
        "<presence xmlns='jabber:client' from='gil@ring.test/pc' to='room@conference.ring.test/gil'/>",
    ));
    outputs(&mut access);
    assert!(access.handle_closed(&me, 9));
    let outs = outputs(&mut access);
    assert!(
        outs.iter().any(|o| matches!(o, HostOutput::Send(p) if p.attr("to") == Some("room@conference.ring.test/gil") && p.attr("type") == Some("unavailable"))),
        "{outs:?}"
    );
    assert!(
        outs.iter().any(|o| matches!(o, HostOutput::Lease { .. })),
        "the home node is told"
    );
    // A second close of the same session changes nothing.
    assert!(!access.handle_closed(&me, 9));
}
