//! The node's storage of record copies: a redb database in the data
//! directory (`records.redb`), behind the replicator's [`Backend`] trait.
//! The replicator keeps the index, the limits and the order of copies (see
//! the `ring-records` crate); this file only reads and writes durably.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use ring_records::{Backend, Record, StoreError};
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
        Ok(RedbBackend { db, boot })
    }
}

impl Backend for RedbBackend {
    fn scan(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let rx = self.db.begin_read().map_err(storage)?;
        let table = rx.open_table(RECORDS).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            match Record::decode(v.value()) {
                Some(rec) => out.push((k.value().to_string(), rec)),
                None => tracing::warn!(name = k.value(), "skipping an undecodable stored record"),
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
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
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(RECORDS).map_err(storage)?;
            table
                .insert(name, rec.encode().as_slice())
                .map_err(storage)?;
        }
        tx.commit().map_err(storage)
    }

    fn boot(&self) -> u64 {
        self.boot
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
        }
        let s = Store::new(RedbBackend::open(&path).unwrap(), StoreLimits::default()).unwrap();
        assert_eq!(s.boot(), 2, "every open counts");
        assert!(s.counter_base() > (1 << 32));
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 8);
        assert_eq!(s.get("k2").unwrap(), Some(rec(7, "v2")));
        assert_eq!(s.names_after(None, 10), vec!["k1", "k2"]);
    }
}
