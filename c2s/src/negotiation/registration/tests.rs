//! In-band registration driven element by element: sign-up switched off
//! and on, the lookup and write the driver is asked for, and a bound
//! user's password change and removal.

use super::super::tests::{Client, alice, cfg, closed_with};
use super::super::{AccountChange, C2sConfig, C2sOutput, Lookup};
use crate::account::user_jid;
use std::sync::Arc;
use xmpp_edge::stream_error::Condition;
use xmpp_parsers::stanza_error::DefinedCondition;

fn open() -> Arc<C2sConfig> {
    let mut c = C2sConfig::clone(&cfg());
    c.registration = true;
    Arc::new(c)
}

const FORM: &str =
    "<iq xmlns='jabber:client' type='get' id='f1'><query xmlns='jabber:iq:register'/></iq>";

fn set(user: &str, password: &str) -> String {
    format!(
        "<iq xmlns='jabber:client' type='set' id='r1'><query xmlns='jabber:iq:register'><username>{user}</username><password>{password}</password></query></iq>"
    )
}

/// The error condition element of the first `<error>` written.
fn error_of(w: &str) -> Option<&str> {
    let e = &w[w.find("<error")?..];
    let start = e.find("><")? + 2;
    let end = start + e[start..].find([' ', '/', '>'])?;
    Some(&e[start..end])
}

#[test]
fn sign_up_is_off_by_default_and_answered_service_unavailable() {
    let mut c = Client::new(cfg());
    let w = c.start_tls_with(None);
    assert!(!w.contains("iq-register"), "{w}");
    let (w, o) = c.send(FORM);
    assert_eq!(error_of(&w), Some("service-unavailable"), "{w}");
    assert!(o.is_empty(), "{o:?}");
    // The stream goes on: the client can still log in.
    assert!(!c.m.is_closed());
}

#[test]
fn a_new_account_is_looked_up_then_written_once_per_stream() {
    let mut c = Client::new(open());
    // Only inside TLS is it announced.
    let (w, _) = c.header();
    assert!(!w.contains("iq-register"), "{w}");
    let mut c = Client::new(open());
    let w = c.start_tls_with(None);
    assert!(
        w.contains("<register xmlns='http://jabber.org/features/iq-register'/>"),
        "{w}"
    );
    let (w, _) = c.send(FORM);
    assert!(
        w.contains("type=\"result\"") || w.contains("type='result'"),
        "{w}"
    );
    assert!(w.contains("<username") && w.contains("<password"), "{w}");

    let (w, o) = c.send(&set("carol", "s3cret"));
    assert_eq!(w, "");
    let carol = user_jid("carol@ring.test").expect("jid");
    // The rate is asked first, then the store.
    assert_eq!(o, vec![C2sOutput::RegistrationAttempt(carol.clone())]);
    c.m.handle_registration_allowed(true);
    let (w, o) = c.take();
    assert_eq!(w, "");
    assert_eq!(o, vec![C2sOutput::LookupAccount(carol.clone())]);
    c.m.handle_account(&carol, Lookup::NotFound);
    let (w, o) = c.take();
    assert_eq!(w, "");
    assert_eq!(
        o,
        vec![C2sOutput::WriteAccount {
            user: carol.clone(),
            change: AccountChange::Create {
                password: "s3cret".into()
            }
        }]
    );
    // Nothing else while it is written.
    c.m.handle_account_written(Ok(()));
    let (w, _) = c.take();
    assert!(w.contains("id='r1'") || w.contains("id=\"r1\""), "{w}");
    assert!(w.contains("result"), "{w}");
    // One account per stream.
    let (w, o) = c.send(&set("dave", "s3cret"));
    assert_eq!(error_of(&w), Some("not-allowed"), "{w}");
    assert!(o.is_empty());
}

#[test]
fn taken_names_unreadable_stores_and_bad_fields_are_refused() {
    let carol = user_jid("carol@ring.test").expect("jid");
    // (lookup answer, condition)
    for (lookup, cond) in [
        (Lookup::Found(alice()), "conflict"),
        (Lookup::Unavailable, "internal-server-error"),
    ] {
        let mut c = Client::new(open());
        c.start_tls_with(None);
        c.send(&set("carol", "pw"));
        c.m.handle_registration_allowed(true);
        assert_eq!(c.take().1, vec![C2sOutput::LookupAccount(carol.clone())]);
        c.m.handle_account(&carol, lookup);
        let (w, o) = c.take();
        assert_eq!(error_of(&w), Some(cond), "{w}");
        assert!(o.is_empty(), "never written: {o:?}");
    }
    // (request, condition): nothing is looked up.
    let table = [
        (set("a@b", "pw"), "not-acceptable"),
        (set("a/b", "pw"), "not-acceptable"),
        (set("carol", "private\u{E000}use"), "not-acceptable"),
        (
            "<iq xmlns='jabber:client' type='set' id='x'><query xmlns='jabber:iq:register'><username>carol</username></query></iq>".to_string(),
            "not-acceptable",
        ),
        (
            "<iq xmlns='jabber:client' type='set' id='x'><query xmlns='jabber:iq:register'><remove/></query></iq>".to_string(),
            "not-authorized",
        ),
    ];
    for (xml, cond) in table {
        let mut c = Client::new(open());
        c.start_tls_with(None);
        let (w, o) = c.send(&xml);
        assert_eq!(error_of(&w), Some(cond), "{xml}: {w}");
        assert!(o.is_empty(), "{xml}: {o:?}");
    }
    // A store that refuses the write: its error reaches the client.
    let mut c = Client::new(open());
    c.start_tls_with(None);
    c.send(&set("carol", "pw"));
    c.m.handle_registration_allowed(true);
    c.m.handle_account(&carol, Lookup::NotFound);
    c.take();
    c.m.handle_account_written(Err(DefinedCondition::ResourceConstraint));
    let (w, _) = c.take();
    assert_eq!(error_of(&w), Some("resource-constraint"), "{w}");
    // Past the source's rate: refused before the store is asked.
    let mut c = Client::new(open());
    c.start_tls_with(None);
    c.send(&set("carol", "pw"));
    c.m.handle_registration_allowed(false);
    let (w, o) = c.take();
    assert_eq!(error_of(&w), Some("resource-constraint"), "{w}");
    assert!(o.is_empty(), "{o:?}");
    // Anything else while a registration is pending ends the stream.
    let mut c = Client::new(open());
    c.start_tls_with(None);
    c.send(&set("carol", "pw"));
    let (_, o) = c.send(FORM);
    assert_eq!(closed_with(&o), Some(Some(Condition::PolicyViolation)));
}

#[test]
fn a_bound_user_changes_their_password_and_removes_their_account() {
    let alice_jid = user_jid("alice@ring.test").expect("jid");
    let mut c = Client::new(cfg());
    c.login(Some("pc"));
    // The form says who is registered.
    let (w, o) = c.send(FORM);
    assert!(
        w.contains("<registered") && w.contains(">alice</username>"),
        "{w}"
    );
    assert!(o.is_empty());
    // Someone else's password: not allowed.
    let (w, o) = c.send(&set("bob", "new"));
    assert_eq!(error_of(&w), Some("not-allowed"), "{w}");
    assert!(o.is_empty());
    // One's own, past the source's rate: refused before any derivation.
    let (_, o) = c.send(&set("alice", "new one"));
    assert_eq!(o, vec![C2sOutput::RegistrationAttempt(alice_jid.clone())]);
    c.m.handle_registration_allowed(false);
    let (w, o) = c.take();
    assert_eq!(error_of(&w), Some("resource-constraint"), "{w}");
    assert!(o.is_empty(), "{o:?}");
    // Within it: the rate, then the write, then the answer.
    let (_, o) = c.send(&set("alice", "new one"));
    assert_eq!(o, vec![C2sOutput::RegistrationAttempt(alice_jid.clone())]);
    c.m.handle_registration_allowed(true);
    let (_, o) = c.take();
    assert_eq!(
        o,
        vec![C2sOutput::WriteAccount {
            user: alice_jid.clone(),
            change: AccountChange::SetPassword {
                password: "new one".into()
            }
        }]
    );
    // One change at a time.
    let (w, _) = c.send(&set("alice", "newer"));
    assert_eq!(error_of(&w), Some("resource-constraint"), "{w}");
    c.m.handle_account_written(Ok(()));
    let (w, o) = c.take();
    assert!(w.contains("result") && w.contains("r1"), "{w}");
    assert!(o.is_empty());
    // A registration IQ for a service elsewhere is routed, not taken.
    let (_, o) = c.send("<iq xmlns='jabber:client' type='get' id='g' to='gateway.example'><query xmlns='jabber:iq:register'/></iq>");
    assert!(matches!(o.as_slice(), [C2sOutput::Stanza(_)]), "{o:?}");
    // Removal: written, answered, and the stream ends.
    let (_, o) = c.send(
        "<iq xmlns='jabber:client' type='set' id='rm' to='ring.test'><query xmlns='jabber:iq:register'><remove/></query></iq>",
    );
    assert_eq!(
        o,
        vec![C2sOutput::WriteAccount {
            user: alice_jid,
            change: AccountChange::Remove
        }]
    );
    c.m.handle_account_written(Ok(()));
    let (w, o) = c.take();
    assert!(w.contains("rm") && w.contains("result"), "{w}");
    assert!(w.contains("<not-authorized"), "{w}");
    assert_eq!(closed_with(&o), Some(Some(Condition::NotAuthorized)));
}

#[test]
fn no_sign_up_in_the_clear_even_where_tls_is_optional() {
    let mut c = C2sConfig::clone(&open());
    c.require_tls = false;
    let mut c = Client::new(Arc::new(c));
    let (w, _) = c.header();
    assert!(!w.contains("iq-register"), "{w}");
    let (w, o) = c.send(&set("carol", "pw"));
    assert_eq!(error_of(&w), Some("policy-violation"), "{w}");
    assert!(o.is_empty(), "{o:?}");
}
