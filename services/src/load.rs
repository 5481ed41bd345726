//! Loading a room or node whose sets are sharded takes rounds: its main
//! records name the shards to read next. A leaf module, so that the sets,
//! the rooms, the nodes and the dispatcher share the trait without
//! depending on each other.

use crate::error::StateError;
use std::collections::HashMap;

/// A load past its first records: its shards are read in rounds.
pub trait LoadRounds {
    /// The records to read next (empty when done).
    fn names(&self) -> Vec<String>;
    /// Takes the values read.
    fn offer(&mut self, values: &HashMap<String, Option<Vec<u8>>>) -> Result<(), StateError>;
    /// Whether everything is read.
    fn is_done(&self) -> bool;
}
