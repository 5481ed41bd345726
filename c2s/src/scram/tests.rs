//! The RFC's own exchanges (RFC 5802 §5 for SHA-1, RFC 7677 §3 for
//! SHA-256), replayed against the server, then the ways a client can get
//! it wrong.

use super::*;

struct Vector {
    hash: ScramHash,
    salt: &'static str,
    client_first: &'static str,
    server_nonce: &'static str,
    server_first: &'static str,
    client_final: &'static str,
    server_final: &'static str,
}

const RFC5802: Vector = Vector {
    hash: ScramHash::Sha1,
    salt: "QSXCR+Q6sek8bf92",
    client_first: "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
    server_nonce: "3rfcNHYJY1ZVvWVs7j",
    server_first: "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
    client_final: "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    server_final: "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
};

const RFC7677: Vector = Vector {
    hash: ScramHash::Sha256,
    salt: "W22ZaJ0SNY7soEsUEjb6gQ==",
    client_first: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
    server_nonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    client_final: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    server_final: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
};

fn keys(v: &Vector) -> StoredKeys {
    let salt = B64.decode(v.salt).expect("vector salt");
    StoredKeys::derive(v.hash, b"pencil", &salt, 4096)
}

fn start(v: &Vector) -> (ScramExchange, String) {
    let first = ClientFirst::parse(v.client_first.as_bytes()).expect("client-first");
    ScramExchange::new(v.hash, keys(v), first, v.server_nonce, b"")
}

#[test]
fn the_rfc_exchanges_authenticate() {
    for v in [RFC5802, RFC7677] {
        let (ex, server_first) = start(&v);
        assert_eq!(server_first, v.server_first, "{:?}", v.hash);
        assert_eq!(ex.first().username, "user");
        assert_eq!(
            ex.finish(v.client_final.as_bytes()).as_deref(),
            Ok(v.server_final),
            "{:?}",
            v.hash
        );
    }
}

#[test]
fn a_wrong_proof_nonce_or_binding_is_refused() {
    for v in [RFC5802, RFC7677] {
        let (ex, _) = start(&v);
        let (head, proof) = v.client_final.rsplit_once(",p=").expect("proof");
        let mut bytes = B64.decode(proof).expect("b64");
        bytes[0] ^= 1;
        let wrong_proof = format!("{head},p={}", B64.encode(&bytes));
        let wrong_nonce = v.client_final.replacen(",r=", ",r=x", 1);
        // `eSws`: base64 of "y,,", not the header the client sent.
        let wrong_binding = v.client_final.replacen("c=biws", "c=eSws", 1);
        let short_proof = format!("{head},p=AAAA");
        for bad in [wrong_proof, wrong_nonce, wrong_binding, short_proof] {
            assert_eq!(
                ex.finish(bad.as_bytes()),
                Err(ScramError::NotAuthorized),
                "{bad}"
            );
        }
    }
}

#[test]
fn the_wrong_password_cannot_authenticate() {
    let v = RFC7677;
    let salt = B64.decode(v.salt).expect("salt");
    let other = StoredKeys::derive(v.hash, b"pencil2", &salt, 4096);
    let first = ClientFirst::parse(v.client_first.as_bytes()).expect("first");
    let (ex, _) = ScramExchange::new(v.hash, other, first, v.server_nonce, b"");
    assert_eq!(
        ex.finish(v.client_final.as_bytes()),
        Err(ScramError::NotAuthorized)
    );
}

#[test]
fn plain_passwords_are_checked_against_the_stored_keys() {
    for v in [RFC5802, RFC7677] {
        let k = keys(&v);
        assert!(k.matches(v.hash, b"pencil"));
        assert!(!k.matches(v.hash, b"pencil "));
        assert!(!k.matches(v.hash, b""));
    }
}

#[test]
fn client_first_table() {
    let ok: &[(&str, &str, Option<&str>, &str)] = &[
        ("n,,n=user,r=abc", "user", None, "n,,"),
        ("y,,n=user,r=abc", "user", None, "y,,"),
        (
            "n,a=user@ring.test,n=user,r=abc",
            "user",
            Some("user@ring.test"),
            "n,a=user@ring.test,",
        ),
        ("n,,n=a=2Cb=3Dc,r=abc", "a,b=c", None, "n,,"),
        ("n,,n=user,r=abc,x=extension", "user", None, "n,,"),
    ];
    for (msg, user, authzid, gs2) in ok {
        let f = ClientFirst::parse(msg.as_bytes()).expect(msg);
        assert_eq!(f.username, *user, "{msg}");
        assert_eq!(f.authzid.as_deref(), *authzid, "{msg}");
        assert_eq!(f.gs2_header, *gs2, "{msg}");
        assert_eq!(f.client_nonce, "abc");
    }
    let bad: &[(&[u8], ScramError)] = &[
        (
            b"p=,,n=user,r=abc",
            ScramError::Malformed("bad channel binding flag"),
        ),
        (
            b"p=tls_exporter,,n=user,r=abc",
            ScramError::Malformed("bad channel binding flag"),
        ),
        (
            b"x,,n=user,r=abc",
            ScramError::Malformed("bad channel binding flag"),
        ),
        (b"n,,r=abc", ScramError::Malformed("no user name")),
        (b"n,,n=user", ScramError::Malformed("no nonce")),
        (
            b"n,,n=user,r=",
            ScramError::Malformed("empty user name or bad nonce"),
        ),
        (
            b"n,,n=,r=abc",
            ScramError::Malformed("empty user name or bad nonce"),
        ),
        (
            b"n,,n=us=er,r=abc",
            ScramError::Malformed("bad escape in name"),
        ),
        (
            b"n,,n=user=2,r=abc",
            ScramError::Malformed("bad escape in name"),
        ),
        (
            b"n,,m=ext,n=user,r=abc",
            ScramError::Malformed("mandatory extension not supported"),
        ),
        (b"n,x,n=user,r=abc", ScramError::Malformed("bad authzid")),
        (
            b"n,,n=user,r=a b",
            ScramError::Malformed("empty user name or bad nonce"),
        ),
        (b"n", ScramError::Malformed("no GS2 header")),
        (b"n,", ScramError::Malformed("no GS2 header")),
        (b"\xff,,n=user,r=abc", ScramError::Malformed("not UTF-8")),
        (b"", ScramError::Malformed("no GS2 header")),
    ];
    for (msg, err) in bad {
        assert_eq!(
            ClientFirst::parse(msg).as_ref().err(),
            Some(err),
            "{}",
            String::from_utf8_lossy(msg)
        );
    }
    let long = format!("n,,n=user,r={}", "a".repeat(MAX_MESSAGE));
    assert!(ClientFirst::parse(long.as_bytes()).is_err());
}

#[test]
fn gs2_flags_table() {
    let table: &[(&str, Gs2Flag, &str)] = &[
        ("n,,n=u,r=abc", Gs2Flag::No, "n,,"),
        ("y,,n=u,r=abc", Gs2Flag::ClientSupports, "y,,"),
        (
            "p=tls-exporter,,n=u,r=abc",
            Gs2Flag::Uses("tls-exporter".into()),
            "p=tls-exporter,,",
        ),
        (
            "p=tls-unique,a=u@ring.test,n=u,r=abc",
            Gs2Flag::Uses("tls-unique".into()),
            "p=tls-unique,a=u@ring.test,",
        ),
    ];
    for (msg, flag, header) in table {
        let f = ClientFirst::parse(msg.as_bytes()).expect(msg);
        assert_eq!(&f.flag, flag, "{msg}");
        assert_eq!(f.gs2_header, *header, "{msg}");
    }
}

/// The client's side of SCRAM, from the RFC's definitions: the final
/// message for `first` (without its GS2 header: `bare`), the server's
/// first message and the `c=` data.
fn client_final(hash: ScramHash, bare: &str, server_first: &str, cbind: &[u8]) -> String {
    let attrs: std::collections::HashMap<&str, &str> = server_first
        .split(',')
        .filter_map(|a| a.split_once('='))
        .collect();
    let salt = B64.decode(attrs["s"]).expect("salt");
    let iterations: u32 = attrs["i"].parse().expect("iterations");
    let salted = hash.salted_password(b"pencil", &salt, iterations);
    let client_key = hash.hmac(&salted, b"Client Key");
    let stored = hash.hash(&client_key);
    let without_proof = format!("c={},r={}", B64.encode(cbind), attrs["r"]);
    let auth = format!("{bare},{server_first},{without_proof}");
    let sig = hash.hmac(&stored, auth.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(k, s)| k ^ s).collect();
    format!("{without_proof},p={}", B64.encode(proof))
}

#[test]
fn a_channel_bound_exchange_needs_this_connections_binding_data() {
    let v = RFC7677;
    let binding = [7u8; 32];
    let first_msg = "p=tls-exporter,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
    let start = || {
        let first = ClientFirst::parse(first_msg.as_bytes()).expect("first");
        ScramExchange::new(v.hash, keys(&v), first, v.server_nonce, &binding)
    };
    let with = |data: &[u8]| {
        let mut c = b"p=tls-exporter,,".to_vec();
        c.extend_from_slice(data);
        c
    };
    // The client bound to this connection: accepted.
    let (ex, sf) = start();
    let msg = client_final(v.hash, bare, &sf, &with(&binding));
    assert!(ex.finish(msg.as_bytes()).is_ok());
    // A man in the middle relays a proof made on his own connection to
    // the client: other binding data, refused even though the password
    // is right.
    let (ex, sf) = start();
    let msg = client_final(v.hash, bare, &sf, &with(&[8u8; 32]));
    assert_eq!(ex.finish(msg.as_bytes()), Err(ScramError::NotAuthorized));
    // The header alone, or the data cut short: refused.
    for cbind in [with(&[]), with(&binding[..31])] {
        let (ex, sf) = start();
        let msg = client_final(v.hash, bare, &sf, &cbind);
        assert_eq!(ex.finish(msg.as_bytes()), Err(ScramError::NotAuthorized));
    }
    // Without binding, extra data after the header is refused too.
    let first = ClientFirst::parse(b"n,,n=user,r=abc").expect("first");
    let (ex, sf) = ScramExchange::new(v.hash, keys(&v), first, "xyz", b"");
    let mut cbind = b"n,,".to_vec();
    cbind.extend_from_slice(&binding);
    let msg = client_final(v.hash, "n=user,r=abc", &sf, &cbind);
    assert_eq!(ex.finish(msg.as_bytes()), Err(ScramError::NotAuthorized));
    let msg = client_final(v.hash, "n=user,r=abc", &sf, b"n,,");
    assert!(ex.finish(msg.as_bytes()).is_ok());
}

#[test]
fn every_truncation_of_the_rfc_messages_is_refused_not_panicking() {
    for v in [RFC5802, RFC7677] {
        for cut in 0..v.client_first.len() {
            let _ = ClientFirst::parse(&v.client_first.as_bytes()[..cut]);
        }
        let (ex, _) = start(&v);
        for cut in 0..v.client_final.len() {
            assert!(
                ex.finish(&v.client_final.as_bytes()[..cut]).is_err(),
                "{cut}"
            );
        }
    }
}

#[test]
fn decoys_are_stable_per_user_and_never_match() {
    let a = decoy_keys(ScramHash::Sha256, b"secret", "nobody", 4096);
    let b = decoy_keys(ScramHash::Sha256, b"secret", "nobody", 4096);
    let c = decoy_keys(ScramHash::Sha256, b"secret", "somebody", 4096);
    assert_eq!(a, b);
    assert_ne!(a.salt, c.salt);
    assert_eq!(a.salt.len(), 16);
    assert!(!a.matches(ScramHash::Sha256, b""));
}
