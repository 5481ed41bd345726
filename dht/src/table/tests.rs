use super::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use std::collections::HashSet;

fn key(bytes: &[u8]) -> Key {
    let mut out = [0u8; 32];
    out[..bytes.len()].copy_from_slice(bytes);
    Key(out)
}

fn contact(id: Key) -> Contact<u32> {
    Contact::new(id, id.0[0] as u32, Role::Application)
}

fn cfg(k: usize, bits: u8) -> TableConfig {
    TableConfig {
        k,
        bits,
        replacements: 2,
        max_failures: 3,
        ping_if_idle: Duration::from_secs(60),
    }
}

/// Checks every structural invariant of a table.
fn check_invariants(t: &RoutingTable<u32>) {
    let mut seen = HashSet::new();
    let mut count = 0;
    for (r, row) in t.rows.iter().enumerate() {
        for (c, b) in row.iter().enumerate() {
            assert!(b.entries.len() <= t.cfg.k, "bucket over k");
            assert!(b.replacements.len() <= t.cfg.replacements);
            for e in &b.entries {
                assert_ne!(e.contact.id, t.own, "owner in its own table");
                assert_eq!(
                    t.bucket_index(&e.contact.id),
                    Some((r, c as u32)),
                    "misfiled contact"
                );
                assert!(seen.insert(e.contact.id), "duplicate contact");
                count += 1;
            }
            for rep in &b.replacements {
                assert!(
                    !b.entries.iter().any(|e| e.contact.id == rep.id),
                    "replacement also live"
                );
            }
        }
    }
    assert_eq!(count, t.len());
}

#[test]
fn fills_then_asks_to_ping_oldest() {
    let t0 = Instant::now();
    let own = key(&[0x00]);
    let mut t = RoutingTable::new(own, cfg(2, 1));
    // All of these share no prefix bit with own: row 0.
    let a = key(&[0x80]);
    let b = key(&[0x81]);
    let c = key(&[0x82]);
    let d = key(&[0x83]);
    assert_eq!(t.insert(contact(a), t0), InsertOutcome::Inserted);
    assert_eq!(t.insert(contact(b), t0), InsertOutcome::Inserted);
    // The oldest was seen just now: no ping, the newcomer is cached.
    assert_eq!(t.insert(contact(c), t0), InsertOutcome::Cached);
    // A minute later the oldest (a) is idle: ping it.
    let later = t0 + Duration::from_secs(61);
    assert_eq!(
        t.insert(contact(d), later),
        InsertOutcome::PingOldest(contact(a))
    );
    // While the ping is pending no second ping is asked for.
    assert_eq!(t.insert(contact(c), later), InsertOutcome::Cached);
    // a answers: it becomes the newest; b is now the oldest.
    assert_eq!(t.insert(contact(a), later), InsertOutcome::Updated);
    let ids: Vec<_> = t.iter().map(|e| e.contact.id).collect();
    assert_eq!(ids, vec![b, a]);
    check_invariants(&t);
}

#[test]
fn failed_ping_evicts_and_promotes_newest_replacement() {
    let t0 = Instant::now();
    let own = key(&[0x00]);
    let mut t = RoutingTable::new(own, cfg(2, 1));
    let (a, b, c, d) = (key(&[0x80]), key(&[0x81]), key(&[0x82]), key(&[0x83]));
    t.insert(contact(a), t0);
    t.insert(contact(b), t0);
    let later = t0 + Duration::from_secs(120);
    assert_eq!(
        t.insert(contact(c), later),
        InsertOutcome::PingOldest(contact(a))
    );
    t.insert(contact(d), later);
    assert_eq!(
        t.record_failure(&a),
        FailureOutcome::Removed { promoted: Some(d) }
    );
    assert!(!t.contains(&a));
    assert!(t.contains(&d));
    assert_eq!(t.len(), 2);
    check_invariants(&t);
}

#[test]
fn failures_counted_without_replacement() {
    let t0 = Instant::now();
    let mut t = RoutingTable::new(key(&[0]), cfg(4, 1));
    let a = key(&[0x80]);
    t.insert(contact(a), t0);
    assert_eq!(t.record_failure(&a), FailureOutcome::Counted(1));
    assert_eq!(t.record_failure(&a), FailureOutcome::Counted(2));
    // Hearing from it resets the count.
    t.insert(contact(a), t0);
    assert_eq!(t.get(&a).map(|e| e.failures), Some(0));
    assert_eq!(t.record_failure(&a), FailureOutcome::Counted(1));
    assert_eq!(t.record_failure(&a), FailureOutcome::Counted(2));
    assert_eq!(
        t.record_failure(&a),
        FailureOutcome::Removed { promoted: None }
    );
    assert_eq!(t.record_failure(&a), FailureOutcome::Unknown);
    assert!(t.is_empty());
}

#[test]
fn owner_is_never_inserted() {
    let own = key(&[7]);
    let mut t: RoutingTable<u32> = RoutingTable::new(own, cfg(4, 2));
    assert_eq!(
        t.insert(contact(own), Instant::now()),
        InsertOutcome::Ignored
    );
    assert!(t.is_empty());
}

#[test]
fn random_key_lands_in_its_bucket() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    for bits in 1..=8u8 {
        let own = key(&[0x5a, 0xa5, 0x3c]);
        let t: RoutingTable<u32> = RoutingTable::new(own, cfg(4, bits));
        for row in [0usize, 1, 3, 255 / bits as usize] {
            let width = 1u32 << (bits as usize).min(256 - row * bits as usize);
            for col in 0..width {
                if col == own.digit(row, bits) {
                    continue;
                }
                let k = t.random_key_in_bucket(row, col, &mut rng);
                assert_eq!(
                    t.bucket_index(&k),
                    Some((row, col)),
                    "bits={bits} row={row} col={col}"
                );
            }
        }
    }
}

#[test]
fn stale_buckets_cover_depth_and_respect_touch() {
    let t0 = Instant::now();
    let own = key(&[0x00]);
    let mut t = RoutingTable::new(own, cfg(4, 2));
    t.insert(contact(key(&[0xc0])), t0); // row 0, col 3
    // depth is 2: row 0 has contacts, row 1 may.
    let stale = t.stale_buckets(t0, Duration::from_secs(10));
    assert!(!stale.contains(&(0, 3)), "just touched");
    assert!(stale.contains(&(0, 1)) && stale.contains(&(0, 2)));
    assert!(stale.contains(&(1, 1)));
    assert!(!stale.iter().any(|(r, _)| *r >= 2));
    let later = t0 + Duration::from_secs(11);
    assert!(
        t.stale_buckets(later, Duration::from_secs(10))
            .contains(&(0, 3))
    );
}

#[test]
fn routers_are_not_next_hops() {
    let t0 = Instant::now();
    let own = key(&[0x00]);
    let mut t = RoutingTable::new(own, cfg(4, 1));
    let router = key(&[0xf0]);
    let app = key(&[0xe0]);
    t.insert(Contact::new(router, 1, Role::Router), t0);
    t.insert(Contact::new(app, 2, Role::Application), t0);
    let target = key(&[0xf1]);
    assert_eq!(t.next_hop(&target, &mut |_| true).map(|c| c.id), Some(app));
    assert_eq!(
        t.closest_responsible(&target, &mut |_| true).map(|c| c.id),
        Some(app)
    );
    // closest() lists routers too: they answer lookups.
    assert_eq!(t.closest(&target, 1, |_| true)[0].id, router);
}

#[derive(Debug, Clone)]
enum Op {
    Insert([u8; 32]),
    Fail(usize),
    Remove(usize),
    Advance(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<[u8; 32]>().prop_map(Op::Insert),
        // Ids near the owner exercise deep rows.
        2 => (any::<[u8; 32]>(), 0usize..40).prop_map(|(mut b, z)| {
            for byte in b.iter_mut().take(z / 8) { *byte = 0; }
            Op::Insert(b)
        }),
        1 => (0usize..64).prop_map(Op::Fail),
        1 => (0usize..64).prop_map(Op::Remove),
        1 => any::<u8>().prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_under_random_operations(
        bits in 1u8..=8, k in 1usize..6, ops in proptest::collection::vec(op(), 1..200)
    ) {
        let own = Key([0u8; 32]);
        let mut t = RoutingTable::new(own, cfg(k, bits));
        let mut now = Instant::now();
        let mut known: Vec<Key> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(b) => { t.insert(contact(Key(b)), now); known.push(Key(b)); }
                Op::Fail(i) => if !known.is_empty() { t.record_failure(&known[i % known.len()]); },
                Op::Remove(i) => if !known.is_empty() { t.remove(&known[i % known.len()]); },
                Op::Advance(s) => now += Duration::from_secs(s as u64),
            }
            check_invariants(&t);
        }
    }

    #[test]
    fn next_hop_is_the_closest_strictly_closer_contact(
        bits in 1u8..=8,
        own in any::<[u8; 32]>(),
        ids in proptest::collection::vec(any::<[u8; 32]>(), 0..80),
        target in any::<[u8; 32]>(),
    ) {
        let own = Key(own);
        let target = Key(target);
        let mut t = RoutingTable::new(own, cfg(1000, bits));
        let now = Instant::now();
        for id in &ids { t.insert(contact(Key(*id)), now); }
        let got = t.next_hop(&target, &mut |_| true).map(|c| c.id);
        let own_d = own.distance(&target);
        let brute = t.iter().map(|e| e.contact.id)
            .filter(|id| id.distance(&target) < own_d)
            .min_by_key(|id| id.distance(&target));
        prop_assert_eq!(got, brute);
        if let Some(h) = got { prop_assert!(h.distance(&target) < own_d); }
    }

    #[test]
    fn closest_matches_brute_force(
        bits in 1u8..=8,
        own in any::<[u8; 32]>(),
        ids in proptest::collection::vec((any::<[u8; 32]>(), 0usize..24), 0..60),
        target in any::<[u8; 32]>(), n in 0usize..30, target_near_own in any::<bool>(),
    ) {
        let own = Key(own);
        // Some ids (and sometimes the target) share a long prefix with the
        // owner, so deep rows and the owner's own subtree are exercised.
        let ids: Vec<[u8; 32]> = ids.into_iter().map(|(mut b, z)| {
            b[..z / 8].copy_from_slice(&own.0[..z / 8]);
            b
        }).collect();
        let target = if target_near_own { own.with_suffix_from(20, &Key(target)) } else { Key(target) };
        let mut t = RoutingTable::new(own, cfg(1000, bits));
        let now = Instant::now();
        for id in &ids { t.insert(contact(Key(*id)), now); }
        let got: Vec<Key> = t.closest(&target, n, |_| true).into_iter().map(|c| c.id).collect();
        let mut all: Vec<Key> = t.iter().map(|e| e.contact.id).collect();
        all.sort_by_key(|id| id.distance(&target));
        all.truncate(n);
        prop_assert_eq!(got, all);
    }
}
