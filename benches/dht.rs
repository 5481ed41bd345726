//! Criterion benches of the dht hot paths: routing-table insert, the greedy
//! next-hop decision, key derivation and envelope encode/decode.
//!
//! Run with `cargo bench --bench dht`.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dht::envelope::{Envelope, EnvelopeKind, TraceHop};
use dht::keys::{jid_key, record_key};
use dht::wire::{self, Frame, Message};
use dht::{Contact, Key, Role, RoutingTable, TableConfig};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

fn random_keys(n: usize, seed: u64) -> Vec<Key> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut b = [0u8; 32];
            rng.fill(&mut b);
            Key(b)
        })
        .collect()
}

/// A table as a node of a 10^5-node ring would hold it: contacts drawn from
/// a population of 10^5 random ids.
fn full_table(bits: u8) -> RoutingTable<u32> {
    let own = Key([0x42; 32]);
    let mut t = RoutingTable::new(
        own,
        TableConfig {
            bits,
            ..TableConfig::default()
        },
    );
    let now = Instant::now();
    for (i, id) in random_keys(100_000, 7).into_iter().enumerate() {
        t.insert(Contact::new(id, i as u32, Role::Application), now);
    }
    t
}

fn table_insert(c: &mut Criterion) {
    let mut g = c.benchmark_group("table_insert");
    for bits in [1u8, 4] {
        let ids = random_keys(10_000, 3);
        g.throughput(Throughput::Elements(ids.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("b{bits}")),
            &ids,
            |b, ids| {
                b.iter(|| {
                    let mut t = RoutingTable::new(
                        Key([0x42; 32]),
                        TableConfig {
                            bits,
                            ..TableConfig::default()
                        },
                    );
                    let now = Instant::now();
                    for (i, id) in ids.iter().enumerate() {
                        black_box(t.insert(Contact::new(*id, i as u32, Role::Application), now));
                    }
                    t.len()
                })
            },
        );
    }
    g.finish();
}

fn next_hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("next_hop");
    for bits in [1u8, 4] {
        let t = full_table(bits);
        let targets = random_keys(1024, 5);
        g.throughput(Throughput::Elements(targets.len() as u64));
        g.bench_function(format!("b{bits}_{}_contacts", t.len()), |b| {
            b.iter(|| {
                let mut found = 0;
                for k in &targets {
                    if t.next_hop(k, &mut |_| true).is_some() {
                        found += 1;
                    }
                }
                found
            })
        });
    }
    let t = full_table(4);
    let targets = random_keys(256, 6);
    g.bench_function("closest_20", |b| {
        b.iter(|| {
            for k in &targets {
                black_box(t.closest(k, 20, |_| true));
            }
        })
    });
    g.finish();
}

fn key_derivation(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_derivation");
    g.bench_function("jid_full", |b| {
        b.iter(|| jid_key(black_box("Alice@Example.com/phone")))
    });
    g.bench_function("jid_bare_normalised", |b| {
        b.iter(|| jid_key(black_box("alice@example.com")))
    });
    g.bench_function("record", |b| {
        b.iter(|| record_key(black_box("some/record/name")))
    });
    g.finish();
}

fn envelope_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_codec");
    for size in [200usize, 2048] {
        let env = Envelope {
            key: Key([1; 32]),
            kind: EnvelopeKind::Stanza,
            origin: Key([2; 32]),
            id: 123_456_789,
            ttl: 31,
            hops: 1,
            trace: None,
            orig: None,
            payload: Bytes::from(vec![b'x'; size]),
        };
        let frame: Frame<u32> = Frame::Msg(Message::Route { seq: 77, env });
        let bytes = wire::encode(&frame).expect("encodes");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode_{size}"), |b| {
            let mut buf = Vec::with_capacity(4096);
            b.iter(|| {
                buf.clear();
                wire::encode_into(black_box(&frame), &mut buf).expect("encodes");
                buf.len()
            })
        });
        g.bench_function(format!("decode_{size}"), |b| {
            b.iter(|| wire::decode::<u32>(black_box(&bytes)).expect("decodes"))
        });
    }
    let traced = Envelope {
        key: Key([1; 32]),
        kind: EnvelopeKind::Probe,
        origin: Key([2; 32]),
        id: 1,
        ttl: 30,
        hops: 3,
        trace: Some(
            (0..4)
                .map(|i| TraceHop {
                    node: Key([i; 32]),
                    at_us: 1 << 50,
                })
                .collect(),
        ),
        orig: None,
        payload: Bytes::new(),
    };
    let frame: Frame<u32> = Frame::Msg(Message::Route {
        seq: 1,
        env: traced,
    });
    let bytes = wire::encode(&frame).expect("encodes");
    g.bench_function("decode_traced_probe", |b| {
        b.iter(|| wire::decode::<u32>(black_box(&bytes)).expect("decodes"))
    });
    g.finish();
}

criterion_group!(
    benches,
    table_insert,
    next_hop,
    key_derivation,
    envelope_codec
);
criterion_main!(benches);
