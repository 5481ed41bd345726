use super::*;
use crate::testing::{Store, read_rounds};
use proptest::prelude::*;

const BASE: &str = "pubsub-subs:pubsub.a.test/n";

fn set(budget: usize, limit: usize) -> Sharded<String> {
    Sharded::new(BASE.to_string(), 7, budget, limit)
}

/// Writes go into `store` as the record store would keep them.
fn flush(s: &mut Sharded<String>, store: &mut Store) {
    for (name, value) in s.take_writes() {
        assert!(value.len() <= s.limit, "{name} is {} bytes", value.len());
        store.insert(name, Some(value));
    }
}

fn reload(header: ShardHeader, store: &Store, budget: usize, limit: usize) -> Sharded<String> {
    let mut load = ShardLoad::new(BASE.to_string(), header, budget, limit);
    read_rounds(&mut load, store).unwrap();
    load.finish()
}

fn as_map(s: &Sharded<String>) -> BTreeMap<String, String> {
    s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[test]
fn a_new_set_writes_its_empty_first_shard() {
    let mut s = set(1000, 4000);
    assert_eq!(
        s.take_writes(),
        vec![(format!("{BASE}#0.0"), b"{}".to_vec())]
    );
    assert!(s.take_writes().is_empty());
}

#[test]
fn entries_are_found_removed_and_counted() {
    let mut s = set(1000, 4000);
    assert_eq!(s.insert("a@x/r".into(), "1".into()), Ok(None));
    assert_eq!(s.insert("a@x/r".into(), "2".into()), Ok(Some("1".into())));
    assert_eq!(s.get("a@x/r").map(String::as_str), Some("2"));
    assert_eq!(s.len(), 1);
    assert_eq!(s.remove("a@x/r"), Some("2".into()));
    assert_eq!(s.remove("a@x/r"), None);
    assert!(s.is_empty());
}

#[test]
fn a_shard_past_its_budget_splits_and_everything_stays_found() {
    let mut s = set(300, 4000);
    for i in 0..200 {
        s.insert(format!("user{i}@example.org"), format!("{i:016x}"))
            .unwrap();
    }
    assert!(s.header().depth >= 4, "depth {}", s.header().depth);
    for i in 0..200 {
        assert!(s.contains_key(&format!("user{i}@example.org")));
    }
    // Every shard of the new depth is written, each within the budget
    // (plus one entry).
    let writes = s.take_writes();
    assert_eq!(writes.len(), s.shard_count());
    let depth = s.header().depth;
    for (name, value) in &writes {
        assert!(name.starts_with(&format!("{BASE}#{depth}.")), "{name}");
        assert!(value.len() <= 300 + 60, "{name}: {} bytes", value.len());
    }
}

#[test]
fn a_change_writes_only_its_own_shard() {
    let mut s = set(300, 4000);
    for i in 0..200 {
        s.insert(format!("user{i}@example.org"), "x".into())
            .unwrap();
    }
    s.take_writes();
    s.insert("user7@example.org".into(), "y".into()).unwrap();
    s.remove("user9@example.org");
    let names: Vec<String> = s.take_writes().into_iter().map(|(n, _)| n).collect();
    let h = s.header();
    let mut want = vec![
        shard_name(BASE, h.depth, shard_of("user7@example.org", h)),
        shard_name(BASE, h.depth, shard_of("user9@example.org", h)),
    ];
    want.sort();
    want.dedup();
    assert_eq!(names, want);
}

#[test]
fn an_entry_that_cannot_fit_any_record_is_refused_and_nothing_changes() {
    let mut s = set(300, 400);
    s.insert("a".into(), "small".into()).unwrap();
    s.take_writes();
    let err = s.insert("b".into(), "x".repeat(500)).unwrap_err();
    assert_eq!(err, ShardError::Full { limit: 400 });
    // Replacing a value with one too big keeps the old one.
    assert!(s.update("a", |v| *v = "y".repeat(500)).is_none());
    assert_eq!(s.get("a").map(String::as_str), Some("small"));
    assert_eq!(s.len(), 1);
    assert!(!s.contains_key("b"));
}

#[test]
fn the_salt_decides_the_shards() {
    let a = ShardHeader { depth: 8, salt: 1 };
    let b = ShardHeader { depth: 8, salt: 2 };
    let differ = (0..64)
        .filter(|i| shard_of(&format!("u{i}@x"), a) != shard_of(&format!("u{i}@x"), b))
        .count();
    assert!(differ > 32, "only {differ} of 64 keys moved");
}

#[test]
fn a_stored_set_loads_back_whole() {
    let mut store = HashMap::new();
    let mut s = set(500, 4000);
    for i in 0..300 {
        s.insert(format!("u{i}@x.test/r"), format!("{i}")).unwrap();
        if i % 37 == 0 {
            flush(&mut s, &mut store);
        }
    }
    flush(&mut s, &mut store);
    let back = reload(s.header(), &store, 500, 4000);
    assert_eq!(as_map(&back), as_map(&s));
    assert_eq!(back.len(), 300);
    // Nothing to repair: every shard was at its own name.
    assert!(!back.is_dirty());
}

#[test]
fn a_shard_that_never_arrived_is_read_from_its_parent_and_written_again() {
    let mut store = HashMap::new();
    let mut s = set(400, 4000);
    for i in 0..10 {
        s.insert(format!("u{i}@x.test"), "v".into()).unwrap();
    }
    flush(&mut s, &mut store);
    let before = s.header().depth;
    // Grow, one stored turn per entry, until it splits once more; lose
    // one of the new depth's shards (the host died before it reached
    // this replica).
    let mut i = 10;
    loop {
        s.insert(format!("u{i}@x.test"), "v".into()).unwrap();
        i += 1;
        if s.header().depth != before {
            break;
        }
        flush(&mut s, &mut store);
    }
    // The entry that caused the split was never answered with success
    // (its writes were not all confirmed) and the parent does not hold
    // it; everything before it is still there.
    let last = format!("u{}@x.test", i - 1);
    let depth = s.header().depth;
    let lost = shard_name(BASE, depth, shard_of("u0@x.test", s.header()));
    for (name, value) in s.take_writes() {
        if name != lost {
            store.insert(name, Some(value));
        }
    }
    let back = reload(s.header(), &store, 400, 4000);
    for j in 0..10 {
        assert!(back.contains_key(&format!("u{j}@x.test")), "u{j} lost");
    }
    let mut expect = as_map(&s);
    if shard_name(BASE, depth, shard_of(&last, s.header())) == lost {
        expect.remove(&last);
    }
    assert_eq!(as_map(&back), expect);
    let mut back = back;
    let rewritten: Vec<String> = back.take_writes().into_iter().map(|(n, _)| n).collect();
    assert_eq!(rewritten, vec![lost]);
}

#[test]
fn a_set_whose_first_shard_never_arrived_loads_empty() {
    let store = HashMap::new();
    let back = reload(ShardHeader { depth: 0, salt: 7 }, &store, 400, 4000);
    assert!(back.is_empty());
    assert!(back.is_dirty());
}

#[test]
fn an_unreadable_shard_is_an_error() {
    let mut load: ShardLoad<String> =
        ShardLoad::new(BASE.into(), ShardHeader::default(), 400, 4000);
    let values = HashMap::from([(format!("{BASE}#0.0"), Some(b"[1,2".to_vec()))]);
    assert!(matches!(
        load.offer(&values),
        Err(ShardError::Unreadable { .. })
    ));
}

#[test]
fn all_names_cover_every_depth() {
    let mut s = set(100, 4000);
    for i in 0..40 {
        s.insert(format!("u{i}"), "v".into()).unwrap();
    }
    let d = s.header().depth;
    let names = s.all_names();
    assert_eq!(names.len(), (1usize << (d + 1)) - 1);
    assert!(names.contains(&format!("{BASE}#0.0")));
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u16, u8),
    Remove(u16),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u16..400, 0u8..40).prop_map(|(k, n)| Op::Insert(k, n)),
        2 => (0u16..400).prop_map(Op::Remove),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    /// Whatever the changes, the set behaves like a map, no shard is over
    /// the limit, and what was written loads back as the set.
    #[test]
    fn behaves_like_a_map_and_round_trips(ops in proptest::collection::vec(op(), 1..300)) {
        let (budget, limit) = (200, 1000);
        let mut s = set(budget, limit);
        let mut model = BTreeMap::new();
        let mut store = HashMap::new();
        for op in ops {
            match op {
                Op::Insert(k, n) => {
                    let key = format!("user{k}@example.org/res");
                    let value = "v".repeat(n as usize);
                    prop_assert!(s.insert(key.clone(), value.clone()).is_ok());
                    model.insert(key, value);
                }
                Op::Remove(k) => {
                    let key = format!("user{k}@example.org/res");
                    prop_assert_eq!(s.remove(&key), model.remove(&key));
                }
                Op::Flush => flush(&mut s, &mut store),
            }
            prop_assert_eq!(s.len(), model.len());
        }
        prop_assert_eq!(as_map(&s), model.clone());
        flush(&mut s, &mut store);
        let back = reload(s.header(), &store, budget, limit);
        prop_assert_eq!(as_map(&back), model);
    }
}
