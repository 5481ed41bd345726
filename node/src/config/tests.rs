//! Configuration tests: defaults, merging file and flags, TOML, and an
//! error naming its key for every bad value.

use super::*;
use dht::Role;
use std::path::Path;
use std::time::Duration;

fn base(dir: &Path) -> RawConfig {
    let psk = dir.join("ring.psk");
    if !psk.exists() {
        crate::psk::generate_file(&psk).unwrap();
    }
    RawConfig {
        psk_file: Some(psk),
        data_dir: Some(dir.join("data")),
        ..RawConfig::default()
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let s = base(dir.path()).validate().unwrap();
    assert_eq!(s.role, Role::Application);
    assert_eq!(s.admin.to_string(), "127.0.0.1:0");
    assert_eq!(s.listen.to_string(), "/ip4/127.0.0.1/tcp/0");
    assert!(s.bootstrap.is_empty());
}

#[test]
fn churn_settings_reach_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let s = RawConfig {
        liveness_interval_ms: Some(60_000),
        neighbour_interval_ms: Some(2_000),
        ..base(dir.path())
    }
    .validate()
    .unwrap();
    assert_eq!(s.dht.liveness_interval, Duration::from_secs(60));
    assert_eq!(s.dht.neighbour_interval, Duration::from_secs(2));
    let d = base(dir.path()).validate().unwrap();
    assert_eq!(
        d.dht.liveness_interval,
        dht::NodeConfig::default().liveness_interval
    );
}

#[test]
fn flags_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = RawConfig {
        role: Some("router".into()),
        k: Some(8),
        ..base(dir.path())
    };
    let flags = RawConfig {
        role: Some("application".into()),
        ..RawConfig::default()
    };
    let s = file.merged(flags).validate().unwrap();
    assert_eq!(s.role, Role::Application);
    assert_eq!(s.dht.table.k, 8);
}

#[test]
fn toml_file_round_trip_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("node.toml");
    std::fs::write(&p, "listen = \"/ip4/127.0.0.1/tcp/7600\"\nrole = \"edge\"\ndomain = [\"ring.test\"]\ns2s_listen = \"127.0.0.1:5269\"\n").unwrap();
    let raw = RawConfig::from_file(&p).unwrap();
    assert_eq!(raw.role.as_deref(), Some("edge"));
    std::fs::write(&p, "lisen = \"x\"\n").unwrap();
    let e = RawConfig::from_file(&p).unwrap_err();
    assert_eq!(e.key, "config");
    assert!(e.message.contains("lisen"), "{e}");
}

#[test]
fn every_bad_value_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let b = || base(dir.path());
    let cases: Vec<(RawConfig, &str)> = vec![
        (
            RawConfig {
                listen: Some("nonsense".into()),
                ..b()
            },
            "listen",
        ),
        (
            RawConfig {
                listen: Some("/ip4/127.0.0.1/udp/1".into()),
                ..b()
            },
            "listen",
        ),
        (
            RawConfig {
                bootstrap: Some(vec!["/ip4/127.0.0.1/tcp/1".into()]),
                ..b()
            },
            "bootstrap",
        ),
        (
            RawConfig {
                psk_file: None,
                ..b()
            },
            "psk_file",
        ),
        (
            RawConfig {
                psk_file: Some(dir.path().join("nope")),
                ..b()
            },
            "psk_file",
        ),
        (
            RawConfig {
                data_dir: None,
                ..b()
            },
            "data_dir",
        ),
        (
            RawConfig {
                role: Some("king".into()),
                ..b()
            },
            "role",
        ),
        (
            RawConfig {
                domain: Some(vec!["user@host".into()]),
                ..b()
            },
            "domain",
        ),
        (
            RawConfig {
                role: Some("edge".into()),
                domain: Some(vec!["ring.test".into()]),
                ..b()
            },
            "s2s_listen",
        ),
        (
            RawConfig {
                s2s_listen: Some("nowhere".into()),
                ..b()
            },
            "s2s_listen",
        ),
        (
            RawConfig {
                admin: Some("localhost".into()),
                ..b()
            },
            "admin",
        ),
        (RawConfig { k: Some(0), ..b() }, "k"),
        (
            RawConfig {
                bits: Some(9),
                ..b()
            },
            "bits",
        ),
        (
            RawConfig {
                ack_timeout_ms: Some(1),
                ..b()
            },
            "ack_timeout_ms",
        ),
        (
            RawConfig {
                max_connections: Some(0),
                ..b()
            },
            "max_connections",
        ),
        (
            RawConfig {
                allow_peers: Some(vec!["nobody".into()]),
                ..b()
            },
            "allow_peers",
        ),
        (
            RawConfig {
                threads: Some(0),
                ..b()
            },
            "threads",
        ),
        (
            RawConfig {
                record_replicas: Some(0),
                ..b()
            },
            "record_replicas",
        ),
        (
            RawConfig {
                record_max_bytes: Some(1 << 30),
                ..b()
            },
            "record_max_bytes",
        ),
        (
            RawConfig {
                record_max_bytes: Some(1000),
                record_store_max_bytes: Some(10),
                ..b()
            },
            "record_store_max_bytes",
        ),
        (
            RawConfig {
                pubsub_max_items: Some(0),
                ..b()
            },
            "pubsub_max_items",
        ),
        (
            RawConfig {
                record_max_bytes: Some(1000),
                pubsub_max_item_bytes: Some(600),
                ..b()
            },
            "pubsub_max_item_bytes",
        ),
        (
            RawConfig {
                receipt_timeout_ms: Some(5),
                ..b()
            },
            "receipt_timeout_ms",
        ),
        (
            RawConfig {
                liveness_interval_ms: Some(10),
                ..b()
            },
            "liveness_interval_ms",
        ),
        (
            RawConfig {
                neighbour_interval_ms: Some(0),
                ..b()
            },
            "neighbour_interval_ms",
        ),
        (
            RawConfig {
                tls_cert: Some(dir.path().join("ring.psk")),
                ..b()
            },
            "tls_key",
        ),
        (
            RawConfig {
                tls_ca: Some(dir.path().join("missing.pem")),
                ..b()
            },
            "tls_ca",
        ),
        (
            RawConfig {
                s2s_host: Some(vec!["a.test".into()]),
                ..b()
            },
            "s2s_host",
        ),
        (
            RawConfig {
                dns: Some("nowhere".into()),
                ..b()
            },
            "dns",
        ),
        (
            RawConfig {
                max_stanza_bytes: Some(10),
                ..b()
            },
            "max_stanza_bytes",
        ),
        (
            RawConfig {
                max_stanza_nodes: Some(1),
                ..b()
            },
            "max_stanza_nodes",
        ),
        (
            RawConfig {
                s2s_auth_timeout_s: Some(0),
                ..b()
            },
            "s2s_auth_timeout_s",
        ),
        (
            RawConfig {
                s2s_max_connections: Some(10),
                s2s_max_connections_per_ip: Some(11),
                ..b()
            },
            "s2s_max_connections_per_ip",
        ),
        (
            RawConfig {
                s2s_max_verifications: Some(0),
                ..b()
            },
            "s2s_max_verifications",
        ),
        (
            RawConfig {
                s2s_write_timeout_s: Some(0),
                ..b()
            },
            "s2s_write_timeout_s",
        ),
        (
            RawConfig {
                s2s_write_queue_bytes: Some(10),
                ..b()
            },
            "s2s_write_queue_bytes",
        ),
        (
            RawConfig {
                s2s_outbound_queue_bytes: Some(1000),
                ..b()
            },
            "s2s_outbound_queue_bytes",
        ),
        (
            RawConfig {
                s2s_max_outbound: Some(0),
                ..b()
            },
            "s2s_max_outbound",
        ),
        (
            RawConfig {
                muc_max_rooms_per_user: Some(0),
                ..b()
            },
            "muc_max_rooms_per_user",
        ),
        (
            RawConfig {
                pubsub_max_nodes: Some(0),
                ..b()
            },
            "pubsub_max_nodes",
        ),
    ];
    for (raw, key) in cases {
        let e = raw.validate().unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
}

/// The flags are the TOML keys: one struct is both, so every key parses
/// the same way from either, and a file merged with flags takes the flags.
#[test]
fn flags_and_file_keys_are_one_schema() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        keys: RawConfig,
    }
    let flags = Cli::try_parse_from([
        "node",
        "--s2s-max-connections-per-ip",
        "8",
        "--s2s-secure-auth",
        "--allow-peer",
        "12D3KooWA",
        "--allow-peer",
        "12D3KooWB",
        "--domain",
        "ring.test",
        "--s2s-plaintext=false",
    ])
    .unwrap()
    .keys;
    let file: RawConfig = toml::from_str(
        "s2s_max_connections_per_ip = 8\ns2s_secure_auth = true\nallow_peers = [\"12D3KooWA\", \"12D3KooWB\"]\ndomain = [\"ring.test\"]\ns2s_plaintext = false\n",
    )
    .unwrap();
    assert_eq!(flags, file);
    let merged = RawConfig {
        s2s_auth_timeout_s: Some(9),
        s2s_max_connections_per_ip: Some(1),
        ..RawConfig::default()
    }
    .merged(flags);
    assert_eq!(merged.s2s_auth_timeout_s, Some(9), "kept from the file");
    assert_eq!(merged.s2s_max_connections_per_ip, Some(8), "the flag wins");
    // An unknown flag is refused like an unknown key.
    assert!(Cli::try_parse_from(["node", "--s2s-max-conections", "1"]).is_err());
}

#[test]
fn edge_limits_have_their_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let s = base(dir.path()).validate().unwrap();
    let e = &s.edge;
    assert_eq!(
        (
            e.max_inbound,
            e.max_inbound_per_ip,
            e.max_verifications,
            e.max_outbound
        ),
        (1024, 64, 64, 1024)
    );
    assert_eq!(e.auth_timeout, Duration::from_secs(60));
    assert_eq!(e.write_timeout, Duration::from_secs(30));
    assert_eq!(
        (e.write_queue_bytes, e.outbound_queue_bytes),
        (256 * 1024, 16 << 20)
    );
    assert_eq!((e.max_stanza_bytes, e.max_stanza_nodes), (512 * 1024, 8192));
    assert!(e.system_roots && !e.secure_auth);
    assert!(!s.admin_token, "loopback admin needs no token by default");
    let beyond = RawConfig {
        admin: Some("0.0.0.0:0".into()),
        ..base(dir.path())
    }
    .validate()
    .unwrap();
    assert!(beyond.admin_token, "beyond loopback the token is required");
    assert_eq!(s.services.max_rooms_per_user, 50);
}
