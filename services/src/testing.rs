//! What the services' tests share: a record store as a map, loading in
//! rounds from it, reading MUC statuses.

use crate::load::LoadRounds;
use std::collections::HashMap;
use xmpp_parsers::minidom::Element;

/// Records as the store would keep them (`None`: deleted).
pub type Store = HashMap<String, Option<Vec<u8>>>;

/// Feeds `load` the records it asks for, round after round, from `store`.
pub fn read_rounds(
    load: &mut impl LoadRounds,
    store: &Store,
) -> Result<(), crate::error::StateError> {
    while !load.is_done() {
        let values = load
            .names()
            .into_iter()
            .map(|n| {
                let v = store.get(&n).cloned().flatten();
                (n, v)
            })
            .collect();
        load.offer(&values)?;
    }
    Ok(())
}

/// The status codes of a MUC presence.
pub fn statuses(p: &Element) -> Vec<String> {
    p.get_child("x", crate::muc::room::NS_MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.name() == "status")
                .filter_map(|c| c.attr("code").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
