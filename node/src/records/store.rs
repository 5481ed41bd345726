//! The node's storage of record copies: a redb database in the data
//! directory (`records.redb`), behind the replicator's [`Backend`] trait.
//! The replicator keeps the index, the limits and the order of copies (see
//! the `ring-records` crate); this file only reads and writes durably.
//!
//! Writes are grouped: a put is kept in memory (and read from there) until
//! [`Backend::commit`], which the core calls once per turn before any
//! record message leaves the node, and which writes them all in one redb
//! transaction, one sync. A busy node thus syncs once per turn, not once
//! per record (a login and a logout write a user's `presence:` record at
//! its home node and both replicas, and syncing each of those separately
//! was half of the node's CPU in the login benchmark).

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use ring_records::{Backend, Record, StoreError};
use std::collections::BTreeMap;
use std::path::Path;

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// The store's own bookkeeping: `boot` counts the opens of this store.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Record copies in redb.
pub struct RedbBackend {
    db: Database,
    /// How many times this database has been opened (this open included).
    boot: u64,
    /// Puts not yet committed, encoded.
    pending: BTreeMap<String, Vec<u8>>,
}

impl RedbBackend {
    /// Opens (or creates) the database at `path` and counts this open.
    pub fn open(path: &Path) -> Result<RedbBackend, crate::error::NodeError> {
        let fail = |e: &dyn std::fmt::Display| crate::error::NodeError::StoreOpen {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| fail(&e))?;
        let tx = db.begin_write().map_err(|e| fail(&e))?;
        tx.open_table(RECORDS).map_err(|e| fail(&e))?;
        let boot;
        {
            let mut meta = tx.open_table(META).map_err(|e| fail(&e))?;
            let last = meta
                .get("boot")
                .map_err(|e| fail(&e))?
                .map_or(0, |v| v.value());
            boot = last.saturating_add(1);
            meta.insert("boot", boot).map_err(|e| fail(&e))?;
        }
        tx.commit().map_err(|e| fail(&e))?;
        Ok(RedbBackend {
            db,
            boot,
            pending: BTreeMap::new(),
        })
    }
}

impl Backend for RedbBackend {
    fn scan(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let rx = self.db.begin_read().map_err(storage)?;
        let table = rx.open_table(RECORDS).map_err(storage)?;
        let mut out = BTreeMap::new();
        let stored = table.iter().map_err(storage)?;
        let mut items = Vec::new();
        for item in stored {
            let (k, v) = item.map_err(storage)?;
            items.push((k.value().to_string(), v.value().to_vec()));
        }
        for (name, bytes) in items.into_iter().chain(self.pending.clone()) {
            match Record::decode(&bytes) {
                Some(rec) => {
                    out.insert(name, rec);
                }
                None => tracing::warn!(%name, "skipping an undecodable stored record"),
            }
        }
        Ok(out.into_iter().collect())
    }

    fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        if let Some(bytes) = self.pending.get(name) {
            return Ok(Record::decode(bytes));
        }
        let rx = self.db.begin_read().map_err(storage)?;
        let table = rx.open_table(RECORDS).map_err(storage)?;
        let Some(v) = table.get(name).map_err(storage)? else {
            return Ok(None);
        };
        Record::decode(v.value())
            .map(Some)
            .ok_or_else(|| StoreError::Storage(format!("stored record {name:?} is corrupt")))
    }

    fn put(&mut self, name: &str, rec: &Record) -> Result<(), StoreError> {
        self.pending.insert(name.to_string(), rec.encode());
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(RECORDS).map_err(storage)?;
            for (name, bytes) in &self.pending {
                table
                    .insert(name.as_str(), bytes.as_slice())
                    .map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;
        // Only once they are durable: a failed commit is retried whole.
        self.pending.clear();
        Ok(())
    }

    fn boot(&self) -> u64 {
        self.boot
    }
}

impl Drop for RedbBackend {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::error!("record copies lost at shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring_records::{Store, StoreLimits};

    fn rec(version: u64, value: &str) -> Record {
        Record {
            version,
            deleted: false,
            value: value.as_bytes().to_vec(),
            write: None,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_every_open_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        {
            let mut s =
                Store::new(RedbBackend::open(&path).unwrap(), StoreLimits::default()).unwrap();
            s.apply("k1", &rec(1, "v1")).unwrap();
            s.apply("k2", &rec(7, "v2")).unwrap();
            assert_eq!(s.boot(), 1);
            s.commit().unwrap();
            // Not committed yet: read back at once, written when the
            // backend goes (a graceful stop).
            s.apply("k3", &rec(2, "v3")).unwrap();
            assert_eq!(s.get("k3").unwrap(), Some(rec(2, "v3")));
        }
        let s = Store::new(RedbBackend::open(&path).unwrap(), StoreLimits::default()).unwrap();
        assert_eq!(s.boot(), 2, "every open counts");
        assert!(s.counter_base() > (1 << 32));
        assert_eq!(s.len(), 3);
        assert_eq!(s.bytes(), 12);
        assert_eq!(s.get("k2").unwrap(), Some(rec(7, "v2")));
        assert_eq!(s.get("k3").unwrap(), Some(rec(2, "v3")));
        assert_eq!(s.names_after(None, 10), vec!["k1", "k2", "k3"]);
    }
}
