//! The registry of a service's rooms or nodes: who owns each (for quotas)
//! and which are listed in disco#items of `conference.<domain>` and
//! `pubsub.<domain>`.
//!
//! Rooms and nodes are spread over the ring, so nobody sees them all. The
//! registry of a service lives where every stanza for the service JID
//! goes: the node responsible for the service JID's key. Hosts talk to it
//! with `message`s from the service JID to itself carrying an element in
//! the ring's private namespace:
//!
//! * `<reserve item owner/>` before a room or node is created: the
//!   registry counts the owner's items and the service's, and answers
//!   `<reserved item granted reason/>` (to the room's JID, or to the
//!   service naming the node), so the host creates it or refuses with the
//!   quota in the error text;
//! * `<release item/>` when it is destroyed or deleted;
//! * `<update item name/>` or `<update item remove/>` when its listing
//!   changes.
//!
//! Such messages can only come from inside the ring: edges refuse stanzas
//! whose `from` is not the authenticated remote domain, and a ring domain
//! can never be authenticated from outside (`invalid-from`). All messages
//! of one service meet at one node, in order, so none is lost to a
//! concurrent write. The registry is kept in the record store in
//! [`SHARDS`] records (`dir:<service>#<n>`, keyed on the service JID) so
//! that it is not bounded by one record and a change writes one shard;
//! the next node in line holds them when that node dies.

use super::stanza;
use crate::error::{Refused, StateError};
use crate::stanza::NS_CLIENT;
use ring_records::DIRECTORY_PREFIX;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use xmpp_parsers::minidom::Element;

/// The private namespace of registry messages.
pub const NS_DIRECTORY: &str = "urn:xmpp-ring:directory";

/// Records one service's registry is split into.
pub const SHARDS: usize = 16;

/// The entity name of `service`'s registry (what waits for its load).
pub fn record_name(service: &str) -> String {
    format!("{DIRECTORY_PREFIX}{service}")
}

/// The record holding shard `n` of `service`'s registry.
pub fn shard_name(service: &str, n: usize) -> String {
    format!("{DIRECTORY_PREFIX}{service}#{n}")
}

/// Every record of `service`'s registry.
pub fn shard_names(service: &str) -> Vec<String> {
    (0..SHARDS).map(|n| shard_name(service, n)).collect()
}

fn shard_of(item: &str) -> usize {
    Sha256::digest(item.as_bytes())[0] as usize % SHARDS
}

/// A message from `service` to `to` carrying `payload`.
fn internal(service: &str, to: &str, payload: Element) -> Element {
    let mut m = Element::bare("message", NS_CLIENT);
    stanza::set(&mut m, "from", service);
    stanza::set(&mut m, "to", to);
    m.append_child(payload);
    m
}

fn el(name: &str, attrs: &[(&str, &str)]) -> Element {
    let mut e = Element::bare(name, NS_DIRECTORY);
    for (k, v) in attrs {
        stanza::set(&mut e, k, v);
    }
    e
}

/// The update telling `service`'s registry how `item` is listed (`name`:
/// listed with that name; `None`: not listed).
pub fn update(service: &str, item: &str, name: Option<&str>) -> Element {
    let u = match name {
        Some(n) => el("update", &[("item", item), ("name", n)]),
        None => el("update", &[("item", item), ("remove", "true")]),
    };
    internal(service, service, u)
}

/// Asks `service`'s registry to let `owner` create `item`.
pub fn reserve(service: &str, item: &str, owner: &str) -> Element {
    internal(
        service,
        service,
        el("reserve", &[("item", item), ("owner", owner)]),
    )
}

/// Tells `service`'s registry that `item` is gone.
pub fn release(service: &str, item: &str) -> Element {
    internal(service, service, el("release", &[("item", item)]))
}

/// The registry's answer to a reservation, addressed to `to` (the room's
/// JID, or the service for a PubSub node: `item` then routes it).
pub fn reserved(service: &str, to: &str, item: &str, answer: &Result<(), Refused>) -> Element {
    let r = match answer {
        Ok(()) => el("reserved", &[("item", item), ("granted", "true")]),
        Err(why) => el(
            "reserved",
            &[
                ("item", item),
                ("granted", "false"),
                ("reason", &why.to_string()),
            ],
        ),
    };
    internal(service, to, r)
}

/// What a registry message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirMsg {
    /// A listing change.
    Update {
        /// The room's JID or the node's name.
        item: String,
        /// Its listed name (`None`: not listed).
        name: Option<String>,
    },
    /// A reservation request.
    Reserve {
        /// The room or node to create.
        item: String,
        /// Who creates it (bare JID).
        owner: String,
    },
    /// An item is gone.
    Release {
        /// The room or node.
        item: String,
    },
}

/// The registry message in `st`, if it is one: it must come from the
/// service JID it is addressed to.
pub fn parse(st: &Element) -> Option<DirMsg> {
    if st.name() != "message" || st.attr("from").is_none() || st.attr("from") != st.attr("to") {
        return None;
    }
    let c = st.children().find(|c| c.ns() == NS_DIRECTORY)?;
    let item = c.attr("item")?.to_string();
    match c.name() {
        "update" => Some(DirMsg::Update {
            name: (c.attr("remove") != Some("true"))
                .then(|| c.attr("name").unwrap_or_default().to_string()),
            item,
        }),
        "reserve" => Some(DirMsg::Reserve {
            item,
            owner: c.attr("owner")?.to_string(),
        }),
        "release" => Some(DirMsg::Release { item }),
        _ => None,
    }
}

/// The registry's answer in `st` for an item of `service`: (item, granted
/// or the reason of the refusal). Only from the service JID itself.
pub fn parse_reserved(st: &Element, service: &str) -> Option<(String, Result<(), Refused>)> {
    if st.name() != "message" || st.attr("from") != Some(service) {
        return None;
    }
    let r = st.get_child("reserved", NS_DIRECTORY)?;
    let item = r.attr("item")?.to_string();
    let answer = if r.attr("granted") == Some("true") {
        Ok(())
    } else {
        Err(Refused::Remote(
            r.attr("reason").unwrap_or("refused").to_string(),
        ))
    };
    Some((item, answer))
}

/// Whether `st` is one of the ring's internal registry messages (a request
/// or an answer): never answered with an error.
pub fn is_internal(st: &Element) -> bool {
    st.children().any(|c| c.ns() == NS_DIRECTORY)
}

/// `m` turned into a refusal with `why`, if it is a registry answer.
pub fn refuse_reserved(m: &Element, why: &str) -> Option<Element> {
    let r = m.get_child("reserved", NS_DIRECTORY)?;
    let item = r.attr("item")?;
    Some(reserved(
        m.attr("from")?,
        m.attr("to")?,
        item,
        &Err(Refused::Remote(why.to_string())),
    ))
}

/// The node a registry answer for a PubSub service names (for routing).
pub fn reserved_item(st: &Element) -> Option<&str> {
    st.get_child("reserved", NS_DIRECTORY)?.attr("item")
}

/// What a service registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// MUC rooms.
    Room,
    /// PubSub nodes.
    Node,
}

/// Quotas a registry enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Items one owner may have on a service.
    pub per_owner: usize,
    /// Items a service may have.
    pub total: usize,
}

/// One registered room or node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Bare JID of its owner (its creator).
    pub owner: String,
    /// Its name in disco#items, when listed.
    pub listed: Option<String>,
}

/// One service's registry in memory.
#[derive(Default)]
struct Registry {
    shards: Vec<BTreeMap<String, Entry>>,
    per_owner: HashMap<String, usize>,
    total: usize,
}

impl Registry {
    fn count(&mut self) {
        self.per_owner.clear();
        self.total = 0;
        for e in self.shards.iter().flat_map(|s| s.values()) {
            *self.per_owner.entry(e.owner.clone()).or_default() += 1;
            self.total += 1;
        }
    }
}

/// The registries this node keeps (one per service whose JID it is
/// responsible for).
pub struct Directories {
    registries: HashMap<String, Registry>,
    /// Changed shards: (service, shard).
    dirty: BTreeSet<(String, usize)>,
    /// Largest stored shard (the record limit).
    max_bytes: usize,
    /// Quotas for MUC services (`conference.`) and PubSub services.
    muc: Quotas,
    pubsub: Quotas,
}

impl Directories {
    /// Registries whose shards hold at most `max_bytes` each, with the
    /// quotas of MUC and PubSub services.
    pub fn new(max_bytes: usize, muc: Quotas, pubsub: Quotas) -> Directories {
        Directories {
            registries: HashMap::new(),
            dirty: BTreeSet::new(),
            max_bytes,
            muc,
            pubsub,
        }
    }

    /// Whether `service`'s registry is in memory.
    pub fn is_loaded(&self, service: &str) -> bool {
        self.registries.contains_key(service)
    }

    /// The services whose registries are in memory.
    pub fn loaded(&self) -> impl Iterator<Item = &String> {
        self.registries.keys()
    }

    /// Drops `service`'s registry from memory (it is stored).
    pub fn unload(&mut self, service: &str) {
        self.registries.remove(service);
        self.dirty.retain(|(s, _)| s != service);
    }

    /// Puts a stored registry in memory: `values` holds each shard's record
    /// (`None`: empty), in shard order.
    pub fn install(&mut self, service: &str, values: &[Option<&[u8]>]) -> Result<(), StateError> {
        if self.registries.contains_key(service) {
            return Ok(());
        }
        let mut r = Registry::default();
        for n in 0..SHARDS {
            let shard = match values.get(n).copied().flatten() {
                Some(v) => serde_json::from_slice(v).map_err(|e| {
                    StateError::unreadable(&format!("the registry of {service} (shard {n})"), e)
                })?,
                None => BTreeMap::new(),
            };
            r.shards.push(shard);
        }
        r.count();
        self.registries.insert(service.to_string(), r);
        Ok(())
    }

    fn quotas(&self, kind: Kind) -> Quotas {
        match kind {
            Kind::Room => self.muc,
            Kind::Node => self.pubsub,
        }
    }

    /// Whether `entry` fits shard `n` of `service` (its record limit).
    fn fits(&self, service: &str, n: usize, item: &str, entry: Option<&Entry>) -> bool {
        let Some(r) = self.registries.get(service) else {
            return false;
        };
        let mut shard = r.shards[n].clone();
        match entry {
            Some(e) => shard.insert(item.to_string(), e.clone()),
            None => shard.remove(item),
        };
        serde_json::to_vec(&shard).is_ok_and(|v| v.len() <= self.max_bytes)
    }

    /// A reservation of `item` for `owner` (the registry is loaded).
    pub fn reserve(
        &mut self,
        service: &str,
        kind: Kind,
        item: &str,
        owner: &str,
    ) -> Result<(), Refused> {
        let q = self.quotas(kind);
        let n = shard_of(item);
        let Some(r) = self.registries.get(service) else {
            return Err(Refused::Unavailable);
        };
        if r.shards[n].contains_key(item) {
            // Known already (a room emptied and created again, or a retry).
            return Ok(());
        }
        let owned = r.per_owner.get(owner).copied().unwrap_or(0);
        if owned >= q.per_owner {
            return Err(Refused::OwnerQuota {
                owner: owner.to_string(),
                owned,
                allowed: q.per_owner,
                service: service.to_string(),
            });
        }
        if r.total >= q.total {
            return Err(Refused::ServiceFull {
                service: service.to_string(),
                total: q.total,
            });
        }
        let entry = Entry {
            owner: owner.to_string(),
            listed: None,
        };
        if !self.fits(service, n, item, Some(&entry)) {
            return Err(Refused::RecordFull(service.to_string()));
        }
        if let Some(r) = self.registries.get_mut(service) {
            r.shards[n].insert(item.to_string(), entry);
            *r.per_owner.entry(owner.to_string()).or_default() += 1;
            r.total += 1;
            self.dirty.insert((service.to_string(), n));
        }
        Ok(())
    }

    /// `item` is gone.
    pub fn release(&mut self, service: &str, item: &str) {
        let n = shard_of(item);
        let Some(r) = self.registries.get_mut(service) else {
            return;
        };
        if let Some(e) = r.shards[n].remove(item) {
            if let Some(c) = r.per_owner.get_mut(&e.owner) {
                *c -= 1;
                if *c == 0 {
                    r.per_owner.remove(&e.owner);
                }
            }
            r.total -= 1;
            self.dirty.insert((service.to_string(), n));
        }
    }

    /// A listing change of a registered item (an unknown item is not
    /// listed: everything listed was reserved first).
    pub fn apply(&mut self, service: &str, item: String, name: Option<String>) {
        let n = shard_of(&item);
        let Some(entry) = self
            .registries
            .get(service)
            .and_then(|r| r.shards[n].get(&item))
            .cloned()
        else {
            return;
        };
        if entry.listed == name {
            return;
        }
        let updated = Entry {
            listed: name,
            ..entry
        };
        if !self.fits(service, n, &item, Some(&updated)) {
            tracing::warn!(%service, %item, "registry shard full (record_max_bytes): listing unchanged");
            return;
        }
        if let Some(r) = self.registries.get_mut(service) {
            r.shards[n].insert(item, updated);
            self.dirty.insert((service.to_string(), n));
        }
    }

    /// The listed items of `service`: (item, name).
    pub fn list(&self, service: &str) -> Vec<(String, String)> {
        self.registries
            .get(service)
            .map(|r| {
                r.shards
                    .iter()
                    .flat_map(|s| s.iter())
                    .filter_map(|(k, e)| Some((k.clone(), e.listed.clone()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Items registered for `service` (for tests and reports).
    pub fn registered(&self, service: &str) -> usize {
        self.registries.get(service).map_or(0, |r| r.total)
    }

    /// The shards that changed: `(record name, value)`.
    pub fn take_writes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(s, n)| {
                let v = self
                    .registries
                    .get(&s)
                    .and_then(|r| serde_json::to_vec(&r.shards[n]).ok());
                (shard_name(&s, n), v)
            })
            .collect()
    }
}

/// The registry's side for hosts' unit tests: applies the registry
/// messages among `out` to `dirs` (a MUC service's if `kind` is
/// [`Kind::Room`]) and delivers each answer with `host`, whose outputs are
/// settled the same way. Returns everything else.
#[cfg(test)]
pub(crate) fn play_registry(
    dirs: &mut Directories,
    kind: Kind,
    out: Vec<super::Action>,
    host: &mut dyn FnMut(Element) -> Vec<super::Action>,
) -> Vec<super::Action> {
    let mut rest = Vec::new();
    for a in out {
        let super::Action::Send(st) = &a else {
            rest.push(a);
            continue;
        };
        let Some(msg) = parse(st) else {
            rest.push(a);
            continue;
        };
        let service = st.attr("from").unwrap_or_default().to_string();
        if !dirs.is_loaded(&service) {
            let _ = dirs.install(&service, &[]);
        }
        match msg {
            DirMsg::Update { item, name } => dirs.apply(&service, item, name),
            DirMsg::Release { item } => dirs.release(&service, &item),
            DirMsg::Reserve { item, owner } => {
                let answer = dirs.reserve(&service, kind, &item, &owner);
                let to = match kind {
                    Kind::Room => item.clone(),
                    Kind::Node => service.clone(),
                };
                let more = host(reserved(&service, &to, &item, &answer));
                rest.extend(play_registry(dirs, kind, more, host));
            }
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(max_bytes: usize, per_owner: usize, total: usize) -> Directories {
        let q = Quotas { per_owner, total };
        let mut d = Directories::new(max_bytes, q, q);
        d.install("conference.ring.test", &[]).unwrap();
        d
    }

    #[test]
    fn messages_round_trip_and_only_come_from_the_service_itself() {
        let s = "conference.ring.test";
        let u = update(s, "r@conference.ring.test", Some("Room"));
        assert_eq!(
            parse(&u),
            Some(DirMsg::Update {
                item: "r@conference.ring.test".into(),
                name: Some("Room".into())
            })
        );
        let gone = update(s, "r@conference.ring.test", None);
        assert!(matches!(
            parse(&gone),
            Some(DirMsg::Update { name: None, .. })
        ));
        assert_eq!(
            parse(&reserve(s, "r@x", "alice@a.test")),
            Some(DirMsg::Reserve {
                item: "r@x".into(),
                owner: "alice@a.test".into()
            })
        );
        assert_eq!(
            parse(&release(s, "r@x")),
            Some(DirMsg::Release { item: "r@x".into() })
        );
        let mut forged = u.clone();
        stanza::set(&mut forged, "from", "eve@evil.test");
        assert_eq!(parse(&forged), None);
        let ok = reserved(
            s,
            "r@conference.ring.test",
            "r@conference.ring.test",
            &Ok(()),
        );
        assert_eq!(
            parse_reserved(&ok, s),
            Some(("r@conference.ring.test".into(), Ok(())))
        );
        let no = reserved(s, "r@x", "r@x", &Err(Refused::Remote("quota".into())));
        assert_eq!(
            parse_reserved(&no, s),
            Some(("r@x".into(), Err(Refused::Remote("quota".into()))))
        );
        assert_eq!(
            parse_reserved(&no, "pubsub.ring.test"),
            None,
            "only from the service"
        );
        assert_eq!(reserved_item(&no), Some("r@x"));
    }

    #[test]
    fn quotas_per_owner_and_per_service() {
        let s = "conference.ring.test";
        let mut d = dirs(65536, 2, 3);
        assert!(d.reserve(s, Kind::Room, "a@x", "alice@a.test").is_ok());
        assert!(d.reserve(s, Kind::Room, "b@x", "alice@a.test").is_ok());
        let e = d.reserve(s, Kind::Room, "c@x", "alice@a.test").unwrap_err();
        assert!(matches!(e, Refused::OwnerQuota { owned: 2, .. }), "{e}");
        assert!(e.to_string().contains("alice@a.test owns 2"), "{e}");
        // A retry of a known item is granted again.
        assert!(d.reserve(s, Kind::Room, "a@x", "alice@a.test").is_ok());
        assert!(d.reserve(s, Kind::Room, "c@x", "bob@b.test").is_ok());
        let e = d.reserve(s, Kind::Room, "d@x", "carol@c.test").unwrap_err();
        assert_eq!(
            e,
            Refused::ServiceFull {
                service: s.into(),
                total: 3
            }
        );
        d.release(s, "a@x");
        assert!(d.reserve(s, Kind::Room, "c2@x", "alice@a.test").is_ok());
        assert_eq!(d.registered(s), 3);
    }

    #[test]
    fn listings_shards_and_storage() {
        let s = "conference.ring.test";
        let mut d = dirs(65536, 100, 100);
        for i in 0..40 {
            d.reserve(s, Kind::Room, &format!("room{i}@x"), "alice@a.test")
                .unwrap();
        }
        d.apply(s, "room1@x".into(), Some("One".into()));
        d.apply(s, "room2@x".into(), Some("Two".into()));
        d.apply(s, "unknown@x".into(), Some("Nope".into()));
        let mut listed = d.list(s);
        listed.sort();
        assert_eq!(
            listed,
            vec![
                ("room1@x".to_string(), "One".to_string()),
                ("room2@x".to_string(), "Two".to_string())
            ]
        );
        let w = d.take_writes();
        assert!(
            w.len() > 1 && w.len() <= SHARDS,
            "{} shards written",
            w.len()
        );
        // Stored and loaded again by the next node in line.
        let mut values: Vec<Option<Vec<u8>>> = vec![None; SHARDS];
        for (name, v) in w {
            let n: usize = name.rsplit_once('#').unwrap().1.parse().unwrap();
            values[n] = v;
        }
        let q = Quotas {
            per_owner: 100,
            total: 100,
        };
        let mut again = Directories::new(65536, q, q);
        let refs: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
        again.install(s, &refs).unwrap();
        assert_eq!(again.registered(s), 40);
        assert_eq!(again.list(s).len(), 2);
        // Only the shard that changed is written.
        d.apply(s, "room1@x".into(), None);
        assert_eq!(d.take_writes().len(), 1);
        assert!(
            Directories::new(9, q, q)
                .install("x", &[Some(b"[".as_slice())])
                .is_err()
        );
    }

    #[test]
    fn a_full_shard_refuses_reservations() {
        let s = "conference.ring.test";
        let mut d = dirs(120, 1000, 1000);
        let mut refused = 0;
        for i in 0..200 {
            if d.reserve(s, Kind::Room, &format!("room{i}@x"), "alice@a.test")
                .is_err()
            {
                refused += 1;
            }
        }
        assert!(refused > 0);
        for (_, v) in d.take_writes() {
            assert!(v.unwrap().len() <= 120);
        }
    }
}
