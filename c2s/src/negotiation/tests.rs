//! The c2s machine driven element by element, as a client would: whole
//! logins with an independent SCRAM client (the `sasl` crate of xmpp-rs),
//! then tables of what a client may get wrong.

use super::*;
use crate::account::user_jid;
use sasl::client::Mechanism;
use sasl::client::mechanisms::Scram;
use sasl::common::Credentials;
use sasl::common::scram::{Sha1, Sha256};

const T0_SECS: u64 = 0;

pub(super) fn cfg() -> Arc<C2sConfig> {
    let served = Served::new(&["ring.test"]).expect("served");
    Arc::new(C2sConfig::new(served, b"decoy secret".to_vec()))
}

pub(super) fn header(to: Option<&str>) -> StreamHeader {
    StreamHeader {
        to: to.map(str::to_string),
        version: Some("1.0".into()),
        default_ns: Some(NS_CLIENT.into()),
        ..StreamHeader::default()
    }
}

pub(super) fn el(xml: &str) -> Element {
    xml.parse().expect("test XML")
}

pub(super) fn alice() -> Account {
    let jid = user_jid("alice@ring.test").expect("jid");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    Account::new(&jid, "secret", 4096, &mut rng).expect("account")
}

/// A machine and a clock.
pub(super) struct Client {
    pub(super) m: C2sStream,
    pub(super) now: Instant,
}

impl Client {
    pub(super) fn new(cfg: Arc<C2sConfig>) -> Client {
        let now = Instant::now() + Duration::from_secs(T0_SECS);
        Client {
            m: C2sStream::new(cfg, now, 42),
            now,
        }
    }

    pub(super) fn outputs(&mut self) -> Vec<C2sOutput> {
        std::iter::from_fn(|| self.m.poll_output()).collect()
    }

    /// Everything written since the last call, concatenated, and the other
    /// outputs.
    pub(super) fn take(&mut self) -> (String, Vec<C2sOutput>) {
        let mut written = String::new();
        let mut rest = Vec::new();
        for o in self.outputs() {
            match o {
                C2sOutput::Write(s) => written.push_str(&s),
                other => rest.push(other),
            }
        }
        (written, rest)
    }

    pub(super) fn send(&mut self, xml: &str) -> (String, Vec<C2sOutput>) {
        self.m.handle_element(self.now, el(xml));
        self.take()
    }

    pub(super) fn header(&mut self) -> (String, Vec<C2sOutput>) {
        self.m.handle_header(self.now, header(Some("ring.test")));
        self.take()
    }

    /// Header and STARTTLS, as every client starts.
    pub(super) fn start_tls(&mut self) {
        self.start_tls_with(None);
    }

    /// Header and STARTTLS, on a connection with this channel binding
    /// data; returns the features after TLS.
    pub(super) fn start_tls_with(&mut self, binding: Option<ChannelBinding>) -> String {
        let (w, _) = self.header();
        assert!(w.contains("<starttls"), "{w}");
        let (w, o) = self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert!(w.contains("<proceed"), "{w}");
        assert_eq!(o, vec![C2sOutput::StartTls]);
        self.m.handle_tls(self.now, binding);
        let (w, _) = self.header();
        assert!(w.contains("<mechanism>SCRAM-SHA-256</mechanism>"), "{w}");
        assert!(w.contains("<mechanism>PLAIN</mechanism>"), "{w}");
        w
    }

    /// A SCRAM login with the `sasl` crate's client; returns what the last
    /// server message was and the outputs.
    pub(super) fn scram<M: Mechanism>(
        &mut self,
        mut client: M,
        mech: &str,
        account: Option<Account>,
    ) -> (String, Vec<C2sOutput>, M) {
        let first = B64.encode(client.initial());
        let (w, o) = self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{first}</auth>"
        ));
        assert_eq!(w, "");
        let user = match o.as_slice() {
            [C2sOutput::LookupAccount(u)] => u.clone(),
            other => panic!("expected a lookup, got {other:?}"),
        };
        self.m
            .handle_account(&user, account.map_or(Lookup::NotFound, Lookup::Found));
        let (w, _) = self.take();
        let challenge = text_of(&w, "challenge");
        let resp = client
            .response(&B64.decode(challenge).expect("challenge base64"))
            .expect("client answers the challenge");
        let (w, o) = self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(resp)
        ));
        (w, o, client)
    }

    /// A whole login to a bound session.
    pub(super) fn login(&mut self, resource: Option<&str>) -> FullJid {
        self.start_tls();
        let client = Scram::<Sha256>::from_credentials(
            Credentials::default()
                .with_username("alice")
                .with_password("secret"),
        )
        .expect("client");
        let (w, o, _) = self.scram(client, "SCRAM-SHA-256", Some(alice()));
        assert!(w.contains("<success"), "{w}");
        assert!(o.contains(&C2sOutput::Restart));
        let (w, _) = self.header();
        assert!(
            w.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
            "{w}"
        );
        let res = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        let (_, o) = self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>"
        ));
        let full = match o.as_slice() {
            [C2sOutput::Bind(f)] => f.clone(),
            other => panic!("expected a bind request, got {other:?}"),
        };
        self.m.handle_bound(Ok(full.clone()));
        let (w, _) = self.take();
        assert!(w.contains(&format!("<jid>{full}</jid>")), "{w}");
        full
    }
}

/// The text of the first `<name ...>text</name>` in `xml`.
pub(super) fn text_of(xml: &str, name: &str) -> String {
    let start = xml.find(&format!("<{name}")).expect("element present");
    let open_end = start + xml[start..].find('>').expect("open tag ends");
    let close = xml[open_end..]
        .find(&format!("</{name}>"))
        .expect("close tag");
    xml[open_end + 1..open_end + close].to_string()
}

pub(super) fn closed_with(outputs: &[C2sOutput]) -> Option<Option<Condition>> {
    outputs.iter().find_map(|o| match o {
        C2sOutput::Close { error } => Some(*error),
        _ => None,
    })
}

#[test]
fn a_client_logs_in_with_scram_sha_256_binds_and_sends() {
    let mut c = Client::new(cfg());
    let full = c.login(Some("phone"));
    assert_eq!(full.as_str(), "alice@ring.test/phone");
    assert_eq!(c.m.bound(), Some(&full));
    // Stanzas leave stamped with the session's full JID.
    let (_, o) = c.send(
        "<message xmlns='jabber:client' to='bob@ring.test' type='chat'><body>hi</body></message>",
    );
    match o.as_slice() {
        [C2sOutput::Stanza(s)] => {
            assert_eq!(s.attr("from"), Some("alice@ring.test/phone"));
            assert_eq!(s.attr("to"), Some("bob@ring.test"));
        }
        other => panic!("{other:?}"),
    }
    // Stanzas for the client are written.
    c.m.handle_deliver(&el("<message xmlns='jabber:client' from='bob@ring.test/x' to='alice@ring.test/phone'><body>yo</body></message>"));
    let (w, _) = c.take();
    assert!(w.contains("<body>yo</body>"), "{w}");
    c.m.handle_end();
    let (w, o) = c.take();
    assert_eq!(w, "</stream:stream>");
    assert_eq!(closed_with(&o), Some(None));
    // Closed, but the driver still learns which session to unregister.
    assert_eq!(c.m.bound(), None);
    assert_eq!(c.m.session(), Some(&full));
}

#[test]
fn scram_sha_1_logs_in_and_the_client_verifies_the_server() {
    let mut c = Client::new(cfg());
    c.start_tls();
    let client = Scram::<Sha1>::from_credentials(
        Credentials::default()
            .with_username("alice")
            .with_password("secret"),
    )
    .expect("client");
    let (w, o, mut client) = c.scram(client, "SCRAM-SHA-1", Some(alice()));
    let server_final = B64.decode(text_of(&w, "success")).expect("base64");
    // The client checks the server's signature: the server knew the keys.
    client.success(&server_final).expect("server proved itself");
    assert_eq!(
        o[..1],
        [C2sOutput::Authenticated(
            user_jid("alice@ring.test").expect("jid")
        )]
    );
}

/// The `sasl` crate's SCRAM-SHA-256 client for alice, with `binding`.
fn alice_client(binding: sasl::common::ChannelBinding) -> Scram<Sha256> {
    Scram::<Sha256>::from_credentials(
        Credentials::default()
            .with_username("alice")
            .with_password("secret")
            .with_channel_binding(binding),
    )
    .expect("client")
}

#[test]
fn plus_mechanisms_bind_to_the_tls_connection() {
    use sasl::common::ChannelBinding as Cb;
    let data = vec![9u8; 32];
    // With binding data, -PLUS comes first and XEP-0440 names the type.
    let mut c = Client::new(cfg());
    let w = c.start_tls_with(Some(ChannelBinding(data.clone())));
    let plus = w
        .find("<mechanism>SCRAM-SHA-256-PLUS</mechanism>")
        .expect("-PLUS offered");
    assert!(
        plus < w
            .find("<mechanism>SCRAM-SHA-256</mechanism>")
            .expect("plain SCRAM")
    );
    assert!(w.contains("<mechanism>SCRAM-SHA-1-PLUS</mechanism>"), "{w}");
    assert!(
        w.contains("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/></sasl-channel-binding>"),
        "{w}"
    );
    let (w, o, _) = c.scram(
        alice_client(Cb::TlsExporter(data.clone())),
        "SCRAM-SHA-256-PLUS",
        Some(alice()),
    );
    assert!(w.contains("<success"), "{w}");
    assert!(o.contains(&C2sOutput::Restart));

    // A client on another TLS connection (a man in the middle's) has other
    // data: the right password does not help.
    let mut c = Client::new(cfg());
    c.start_tls_with(Some(ChannelBinding(data.clone())));
    let (w, o, _) = c.scram(
        alice_client(Cb::TlsExporter(vec![1u8; 32])),
        "SCRAM-SHA-256-PLUS",
        Some(alice()),
    );
    assert!(w.contains("<not-authorized/>"), "{w}");
    assert_eq!(o, vec![C2sOutput::AuthFailed]);

    // `y`: the client could bind but saw no -PLUS; it was offered, so the
    // offer was stripped on the way: refused.
    let mut c = Client::new(cfg());
    c.start_tls_with(Some(ChannelBinding(data.clone())));
    let (w, o) = c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
        B64.encode("y,,n=alice,r=abc")
    ));
    assert!(w.contains("<not-authorized/>"), "{w}");
    assert_eq!(o, vec![C2sOutput::AuthFailed]);
    // Without binding data (TLS 1.2), `y` is fine and -PLUS is neither
    // offered nor accepted.
    let mut c = Client::new(cfg());
    let w = c.start_tls_with(None);
    assert!(
        !w.contains("PLUS") && !w.contains("sasl-channel-binding"),
        "{w}"
    );
    let (w, o, _) = c.scram(
        alice_client(Cb::Unsupported),
        "SCRAM-SHA-256",
        Some(alice()),
    );
    assert!(w.contains("<success"), "{w}");
    assert!(o.contains(&C2sOutput::Restart));
    let mut c = Client::new(cfg());
    c.start_tls_with(None);
    let (w, _) = c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256-PLUS'>{}</auth>",
        B64.encode("p=tls-exporter,,n=alice,r=abc")
    ));
    assert!(w.contains("<invalid-mechanism/>"), "{w}");
}

#[test]
fn plus_gs2_flags_table() {
    // (mechanism, client-first, failure)
    let table: &[(&str, &str, &str)] = &[
        // -PLUS without binding, or with another type
        (
            "SCRAM-SHA-256-PLUS",
            "n,,n=alice,r=abc",
            "malformed-request",
        ),
        (
            "SCRAM-SHA-256-PLUS",
            "y,,n=alice,r=abc",
            "malformed-request",
        ),
        (
            "SCRAM-SHA-1-PLUS",
            "p=tls-unique,,n=alice,r=abc",
            "malformed-request",
        ),
        // binding asked for with a plain mechanism
        (
            "SCRAM-SHA-256",
            "p=tls-exporter,,n=alice,r=abc",
            "malformed-request",
        ),
    ];
    for (mech, first, cond) in table {
        let mut c = Client::new(cfg());
        c.start_tls_with(Some(ChannelBinding(vec![9u8; 32])));
        let (w, o) = c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
            B64.encode(first)
        ));
        assert_eq!(
            w,
            format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{cond}/></failure>"),
            "{mech} {first}"
        );
        assert_eq!(o, vec![C2sOutput::AuthFailed], "{mech} {first}");
    }
}

#[test]
fn a_direct_tls_connection_starts_with_sasl() {
    let mut c = Client::new(cfg());
    c.m.handle_tls(c.now, None);
    let (w, _) = c.header();
    assert!(!w.contains("starttls"), "{w}");
    assert!(w.contains("<mechanism>PLAIN</mechanism>"), "{w}");
}

#[test]
fn a_wrong_password_and_an_unknown_user_look_the_same_and_three_failures_end_it() {
    let mut c = Client::new(cfg());
    c.start_tls();
    let wrong = || {
        Scram::<Sha256>::from_credentials(
            Credentials::default()
                .with_username("alice")
                .with_password("guess"),
        )
        .expect("client")
    };
    let (w, o, _) = c.scram(wrong(), "SCRAM-SHA-256", Some(alice()));
    assert_eq!(
        w,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
    );
    assert_eq!(o, vec![C2sOutput::AuthFailed]);
    // No such account: the same challenge shape, the same failure.
    let nobody = Scram::<Sha256>::from_credentials(
        Credentials::default()
            .with_username("nobody")
            .with_password("guess"),
    )
    .expect("client");
    let (w, o, _) = c.scram(nobody, "SCRAM-SHA-256", None);
    assert!(w.contains("<not-authorized/>"), "{w}");
    assert_eq!(o, vec![C2sOutput::AuthFailed]);
    assert_eq!(c.m.user(), None);
    let (w, o, _) = c.scram(wrong(), "SCRAM-SHA-256", Some(alice()));
    assert!(w.contains("<not-authorized/>"), "{w}");
    assert!(w.contains("too many failed authentication attempts"), "{w}");
    assert_eq!(closed_with(&o), Some(Some(Condition::PolicyViolation)));
}

#[test]
fn plain_works_inside_tls_only() {
    let plain = |user: &str, pass: &str| {
        format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            B64.encode(format!("\0{user}\0{pass}"))
        )
    };
    // Without TLS (allowed here) PLAIN is neither offered nor accepted.
    let mut cleartext = C2sConfig::clone(&cfg());
    cleartext.require_tls = false;
    cleartext.tls_available = false;
    let mut c = Client::new(Arc::new(cleartext));
    let (w, _) = c.header();
    assert!(!w.contains("PLAIN"), "{w}");
    assert!(w.contains("SCRAM-SHA-256"), "{w}");
    let (w, _) = c.send(&plain("alice", "secret"));
    assert!(w.contains("<encryption-required/>"), "{w}");

    let mut c = Client::new(cfg());
    c.start_tls();
    let (_, o) = c.send(&plain("alice", "wrong"));
    assert!(matches!(o.as_slice(), [C2sOutput::LookupAccount(_)]));
    c.m.handle_account(
        &user_jid("alice@ring.test").expect("jid"),
        Lookup::Found(alice()),
    );
    let (w, _) = c.take();
    assert!(w.contains("<not-authorized/>"), "{w}");
    let (_, o) = c.send(&plain("alice", "secret"));
    assert!(matches!(o.as_slice(), [C2sOutput::LookupAccount(_)]));
    c.m.handle_account(
        &user_jid("alice@ring.test").expect("jid"),
        Lookup::Found(alice()),
    );
    let (w, o) = c.take();
    assert!(w.starts_with("<success"), "{w}");
    assert!(o.contains(&C2sOutput::Restart));
}

#[test]
fn header_table() {
    let table: &[(StreamHeader, Condition)] = &[
        (header(None), Condition::HostUnknown),
        (header(Some("elsewhere.test")), Condition::HostUnknown),
        (header(Some("bad domain")), Condition::HostUnknown),
        (
            StreamHeader {
                default_ns: Some("jabber:server".into()),
                ..header(Some("ring.test"))
            },
            Condition::InvalidNamespace,
        ),
        (
            StreamHeader {
                version: None,
                ..header(Some("ring.test"))
            },
            Condition::UnsupportedVersion,
        ),
    ];
    for (h, cond) in table {
        let mut c = Client::new(cfg());
        c.m.handle_header(c.now, h.clone());
        let (w, o) = c.take();
        // Our header first, then the error.
        assert!(w.starts_with("<?xml version='1.0'?><stream:stream"), "{w}");
        assert!(w.contains(&format!("<{}", cond.name())), "{h:?}: {w}");
        assert_eq!(closed_with(&o), Some(Some(*cond)), "{h:?}");
    }
}

#[test]
fn out_of_order_elements_table() {
    // (what to do first, element, the stream error)
    let auth = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'/>";
    let msg = "<message xmlns='jabber:client' to='bob@ring.test'><body>x</body></message>";
    let table: &[(u8, &str, Condition)] = &[
        // before TLS only STARTTLS
        (0, auth, Condition::PolicyViolation),
        (0, msg, Condition::PolicyViolation),
        // after TLS, before SASL: no stanzas
        (1, msg, Condition::NotAuthorized),
        (1, "<foo xmlns='urn:example'/>", Condition::NotAuthorized),
        // after SASL, before bind: only a bind
        (2, msg, Condition::NotAuthorized),
        (
            2,
            "<iq xmlns='jabber:client' type='get' id='x'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
            Condition::NotAuthorized,
        ),
        // bound: no other elements, no foreign `from`
        (
            3,
            "<foo xmlns='jabber:client'/>",
            Condition::UnsupportedStanzaType,
        ),
        (
            3,
            "<message xmlns='jabber:client' from='bob@ring.test/x' to='carol@ring.test'/>",
            Condition::InvalidFrom,
        ),
        (
            3,
            "<message xmlns='jabber:client' from='not a jid@@' to='carol@ring.test'/>",
            Condition::InvalidFrom,
        ),
    ];
    for (stage, xml, cond) in table {
        let mut c = Client::new(cfg());
        match stage {
            0 => {
                c.header();
            }
            1 => c.start_tls(),
            2 => {
                c.start_tls();
                let client = Scram::<Sha256>::from_credentials(
                    Credentials::default()
                        .with_username("alice")
                        .with_password("secret"),
                )
                .expect("client");
                c.scram(client, "SCRAM-SHA-256", Some(alice()));
                c.header();
            }
            _ => {
                c.login(Some("r"));
            }
        }
        let (w, o) = c.send(xml);
        assert!(w.contains(&format!("<{}", cond.name())), "{xml}: {w}");
        assert_eq!(closed_with(&o), Some(Some(*cond)), "{xml}");
    }
}

#[test]
fn sasl_failures_table() {
    let table: &[(&str, &str)] = &[
        (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>",
            "invalid-mechanism",
        ),
        (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            "invalid-mechanism",
        ),
        (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>!!!</auth>",
            "incorrect-encoding",
        ),
        // p=: channel binding, which is not offered
        (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>cD10bHMtZXhwb3J0ZXIsLG49YWxpY2Uscj1hYmM=</auth>",
            "malformed-request",
        ),
        // n,a=bob@ring.test,n=alice,r=abc: authorising as someone else
        (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>bixhPWJvYkByaW5nLnRlc3Qsbj1hbGljZSxyPWFiYw==</auth>",
            "invalid-authzid",
        ),
        // n,,n=a@b,r=abc: a user name that is a JID
        (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>biwsbj1hQGIscj1hYmM=</auth>",
            "not-authorized",
        ),
        // PLAIN with two fields
        (
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>YWxpY2UAc2VjcmV0</auth>",
            "malformed-request",
        ),
        (
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            "malformed-request",
        ),
        (
            "<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
            "aborted",
        ),
    ];
    for (xml, cond) in table {
        let mut c = Client::new(cfg());
        c.start_tls();
        let (w, o) = c.send(xml);
        assert_eq!(
            w,
            format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{cond}/></failure>"),
            "{xml}"
        );
        assert_eq!(
            o.contains(&C2sOutput::AuthFailed),
            *cond != "aborted",
            "{xml}"
        );
        assert!(!c.m.is_closed());
    }
}

#[test]
fn an_empty_initial_response_gets_an_empty_challenge() {
    let mut c = Client::new(cfg());
    c.start_tls();
    let (w, _) =
        c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>=</auth>");
    assert_eq!(w, "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    let mut client = Scram::<Sha256>::from_credentials(
        Credentials::default()
            .with_username("alice")
            .with_password("secret"),
    )
    .expect("client");
    let (_, o) = c.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(client.initial())
    ));
    assert!(
        matches!(o.as_slice(), [C2sOutput::LookupAccount(_)]),
        "{o:?}"
    );
}

#[test]
fn a_stale_or_foreign_account_answer_is_ignored() {
    let mut c = Client::new(cfg());
    c.start_tls();
    let plain = B64.encode("\0alice\0secret");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
    ));
    // An answer for another user does nothing.
    c.m.handle_account(
        &user_jid("bob@ring.test").expect("jid"),
        Lookup::Found(alice()),
    );
    assert_eq!(c.take(), (String::new(), vec![]));
    // An account record that names someone else is no account of alice's.
    let mut bob = alice();
    bob.jid = "bob@ring.test".into();
    c.m.handle_account(
        &user_jid("alice@ring.test").expect("jid"),
        Lookup::Found(bob),
    );
    let (w, _) = c.take();
    assert!(w.contains("<not-authorized/>"), "{w}");
}

#[test]
fn binding_generates_resources_refuses_bad_ones_and_reports_conflicts() {
    let mut c = Client::new(cfg());
    let full = c.login(None);
    assert_eq!(full.to_bare().as_str(), "alice@ring.test");
    assert_eq!(full.resource().as_str().len(), 16);

    // A conflict is the driver's to report; the client may bind again.
    let mut c = Client::new(cfg());
    c.start_tls();
    let client = Scram::<Sha256>::from_credentials(
        Credentials::default()
            .with_username("alice")
            .with_password("secret"),
    )
    .expect("client");
    c.scram(client, "SCRAM-SHA-256", Some(alice()));
    c.header();
    let bind = |r: &str| {
        format!(
            "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{r}</resource></bind></iq>"
        )
    };
    let (_, o) = c.send(&bind("phone"));
    assert!(matches!(o.as_slice(), [C2sOutput::Bind(_)]));
    c.m.handle_bound(Err(DefinedCondition::Conflict));
    let (w, _) = c.take();
    assert!(
        w.contains("type='error'") || w.contains("type=\"error\""),
        "{w}"
    );
    assert!(w.contains("<conflict"), "{w}");
    let long = "x".repeat(MAX_RESOURCE_BYTES + 1);
    let (w, o) = c.send(&bind(&long));
    assert!(w.contains("<bad-request"), "{w}");
    assert!(o.is_empty());
    let (_, o) = c.send(&bind("laptop"));
    let [C2sOutput::Bind(full)] = o.as_slice() else {
        panic!("{o:?}")
    };
    assert_eq!(full.as_str(), "alice@ring.test/laptop");
}

#[test]
fn bound_streams_answer_malformed_addresses_and_session_requests() {
    let mut c = Client::new(cfg());
    c.login(Some("r"));
    let (w, o) =
        c.send("<message xmlns='jabber:client' to='a@b@c' id='m1'><body>x</body></message>");
    assert!(w.contains("<jid-malformed"), "{w}");
    assert!(o.is_empty());
    let (w, o) = c.send("<iq xmlns='jabber:client' type='set' id='s1' to='ring.test'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>");
    assert!(
        w.contains("type='result'") || w.contains("type=\"result\""),
        "{w}"
    );
    assert!(o.is_empty());
    // `from` naming the session itself, bare or full, is fine.
    let (_, o) = c.send("<presence xmlns='jabber:client' from='alice@ring.test'/>");
    assert!(matches!(o.as_slice(), [C2sOutput::Stanza(_)]));
}

#[test]
fn deadlines_header_login_and_idle() {
    // No header in time.
    let mut c = Client::new(cfg());
    let t = c.m.poll_timeout().expect("deadline");
    assert_eq!(t, c.now + Duration::from_secs(10));
    c.m.handle_timeout(t);
    let (w, o) = c.take();
    assert!(w.contains("no stream header in time"), "{w}");
    assert_eq!(closed_with(&o), Some(Some(Condition::ConnectionTimeout)));

    // Whitespace does not buy time to log in.
    let mut c = Client::new(cfg());
    c.header();
    for s in 1..=29 {
        c.m.handle_keepalive(c.now + Duration::from_secs(s));
    }
    let t = c.m.poll_timeout().expect("deadline");
    assert_eq!(t, c.now + Duration::from_secs(30));
    c.m.handle_timeout(t);
    let (w, _) = c.take();
    assert!(w.contains("not logged in in time"), "{w}");

    // Bound: only silence ends it, and whitespace is not silence.
    let mut c = Client::new(cfg());
    c.login(Some("r"));
    let later = c.now + Duration::from_secs(500);
    c.m.handle_keepalive(later);
    c.m.handle_timeout(c.now + Duration::from_secs(601));
    assert!(!c.m.is_closed());
    c.m.handle_timeout(later + Duration::from_secs(600));
    let (w, _) = c.take();
    assert!(w.contains("idle for too long"), "{w}");
}

#[test]
fn a_replaced_or_shut_down_stream_says_why() {
    let mut c = Client::new(cfg());
    c.login(Some("r"));
    c.m.handle_replaced();
    let (w, o) = c.take();
    assert!(w.contains("<conflict"), "{w}");
    assert!(w.ends_with("</stream:stream>"));
    assert_eq!(closed_with(&o), Some(Some(Condition::Conflict)));

    let mut c = Client::new(cfg());
    c.header();
    c.m.handle_shutdown();
    let (w, _) = c.take();
    assert!(w.contains("<system-shutdown"), "{w}");
}

#[test]
fn a_store_that_cannot_answer_is_a_temporary_failure_not_counted() {
    for _ in 0..5 {
        let mut c = Client::new(cfg());
        c.start_tls();
        let (_, o) = c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            B64.encode("\0alice\0secret")
        ));
        assert!(matches!(o.as_slice(), [C2sOutput::LookupAccount(_)]));
        c.m.handle_account(
            &user_jid("alice@ring.test").expect("jid"),
            Lookup::Unavailable,
        );
        let (w, o) = c.take();
        assert!(w.contains("<temporary-auth-failure/>"), "{w}");
        assert!(!o.contains(&C2sOutput::AuthFailed), "{o:?}");
    }
}
