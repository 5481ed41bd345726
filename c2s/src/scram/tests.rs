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
    ScramExchange::new(v.hash, keys(v), first, v.server_nonce)
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
    let (ex, _) = ScramExchange::new(v.hash, other, first, v.server_nonce);
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
        (b"p=tls-unique,,n=user,r=abc", ScramError::ChannelBinding),
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
