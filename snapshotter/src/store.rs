//! Snapshot metadata in redb: one table from key (containerd's backend key, or the
//! name a snapshot was committed under) to its [`Snapshot`] record, and a counter
//! giving each snapshot the numeric id its directories are named by. Every change is
//! one write transaction, so a crash leaves either the old or the new state.

use crate::error::{db, SnapshotError};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next-id";

/// containerd's three kinds of snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, not committable.
    View,
    /// Writable, committable.
    Active,
    /// Immutable; may be a parent.
    Committed,
}

/// A layer that is served lazily instead of being unpacked: which image it was made
/// available from, and its position there. The chain id the snapshot is named by
/// makes layers `0..=layer` of that image exactly the content of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The image reference the layer was resolved through.
    pub image: String,
    /// The layer's position in the image, bottom first.
    pub layer: usize,
    /// The layer's (compressed) digest.
    pub digest: String,
}

/// Space used by a snapshot's own directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of disk allocated (blocks × 512).
    pub size: u64,
    /// Files, directories and other inodes.
    pub inodes: u64,
}

/// One snapshot's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Names its directories (`snapshots/<id>`); never reused.
    pub id: u64,
    /// View, active or committed.
    pub kind: Kind,
    /// The key of the committed parent, if any.
    pub parent: Option<String>,
    /// containerd's labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created: SystemTime,
    /// When it was last changed.
    pub updated: SystemTime,
    /// Set on a committed snapshot served lazily (nothing on disk).
    pub remote: Option<RemoteLayer>,
    /// Measured when committed (committed snapshots do not change).
    pub usage: Option<Usage>,
}

/// What a new snapshot is made of.
pub struct NewSnapshot<'a> {
    /// Its key.
    pub key: &'a str,
    /// The key of its parent (must be committed).
    pub parent: Option<&'a str>,
    /// Its kind.
    pub kind: Kind,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Set for a lazy layer (then `kind` is committed).
    pub remote: Option<RemoteLayer>,
}

/// The metadata database.
pub struct Store {
    db: redb::Database,
}

fn decode(key: &str, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    postcard::from_bytes(bytes).map_err(|e| SnapshotError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode(s: &Snapshot) -> Result<Vec<u8>, SnapshotError> {
    postcard::to_allocvec(s).map_err(|e| SnapshotError::Database(format!("encoding: {e}")))
}

type Table<'t> = redb::Table<'t, &'static str, &'static [u8]>;

fn get_in(table: &Table<'_>, key: &str) -> Result<Option<Snapshot>, SnapshotError> {
    match table.get(key).map_err(db)? {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

fn put_in(table: &mut Table<'_>, key: &str, s: &Snapshot) -> Result<(), SnapshotError> {
    table.insert(key, encode(s)?.as_slice()).map_err(db)?;
    Ok(())
}

fn has_children(table: &Table<'_>, key: &str) -> Result<bool, SnapshotError> {
    for row in table.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        if decode(k.value(), v.value())?.parent.as_deref() == Some(key) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Store {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Store, SnapshotError> {
        let database = redb::Database::create(path).map_err(db)?;
        let tx = database.begin_write().map_err(db)?;
        tx.open_table(SNAPSHOTS).map_err(db)?;
        tx.open_table(COUNTERS).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Store { db: database })
    }

    /// Runs `f` in one write transaction over the snapshots table, committing only if
    /// it succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Table<'_>, &mut redb::Table<'_, &str, u64>) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let tx = self.db.begin_write().map_err(db)?;
        let out = {
            let mut table = tx.open_table(SNAPSHOTS).map_err(db)?;
            let mut counters = tx.open_table(COUNTERS).map_err(db)?;
            f(&mut table, &mut counters)?
        };
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// The snapshot of `key`.
    pub fn get(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(SNAPSHOTS).map_err(db)?;
        match table.get(key).map_err(db)? {
            Some(v) => decode(key, v.value()),
            None => Err(SnapshotError::NotFound(key.to_string())),
        }
    }

    /// Every snapshot, by key.
    pub fn list(&self) -> Result<Vec<(String, Snapshot)>, SnapshotError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(SNAPSHOTS).map_err(db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// `key`'s snapshot followed by its ancestors, nearest first.
    pub fn chain(&self, key: &str) -> Result<Vec<(String, Snapshot)>, SnapshotError> {
        let mut out = Vec::new();
        let mut next = Some(key.to_string());
        while let Some(k) = next {
            let s = self.get(&k)?;
            next = s.parent.clone();
            out.push((k, s));
            if out.len() > 4096 {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "the parent chain of {key} loops"
                )));
            }
        }
        Ok(out)
    }

    /// Creates a snapshot: its key must be new and its parent committed.
    pub fn create(&self, new: NewSnapshot<'_>) -> Result<Snapshot, SnapshotError> {
        if new.key.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
        }
        self.write(|table, counters| {
            if get_in(table, new.key)?.is_some() {
                return Err(SnapshotError::AlreadyExists(new.key.to_string()));
            }
            if let Some(p) = new.parent {
                match get_in(table, p)? {
                    None => return Err(SnapshotError::NotFound(p.to_string())),
                    Some(ps) if ps.kind != Kind::Committed => {
                        return Err(SnapshotError::FailedPrecondition(format!(
                            "parent {p} is not committed"
                        )))
                    }
                    Some(_) => {}
                }
            }
            let id = counters.get(NEXT_ID).map_err(db)?.map_or(1, |v| v.value());
            counters.insert(NEXT_ID, id + 1).map_err(db)?;
            let now = SystemTime::now();
            let s = Snapshot {
                id,
                kind: new.kind,
                parent: new.parent.map(str::to_string),
                labels: new.labels,
                created: now,
                updated: now,
                remote: new.remote,
                usage: None,
            };
            put_in(table, new.key, &s)?;
            Ok(s)
        })
    }

    /// Commits the active snapshot `key` as `name` with `labels` and its measured
    /// `usage`; `key` is gone afterwards.
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<Snapshot, SnapshotError> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty snapshot name".into()));
        }
        self.write(|table, _| {
            let mut s = get_in(table, key)?.ok_or_else(|| SnapshotError::NotFound(key.into()))?;
            if s.kind != Kind::Active {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key} is not active"
                )));
            }
            if get_in(table, name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_string()));
            }
            table.remove(key).map_err(db)?;
            s.kind = Kind::Committed;
            s.labels = labels;
            s.updated = SystemTime::now();
            s.usage = Some(usage);
            put_in(table, name, &s)?;
            Ok(s)
        })
    }

    /// Removes `key` (refused while another snapshot has it as parent); returns the
    /// removed record so its directories can go.
    pub fn remove(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        self.write(|table, _| {
            let s = get_in(table, key)?.ok_or_else(|| SnapshotError::NotFound(key.into()))?;
            if has_children(table, key)? {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key} is the parent of another snapshot"
                )));
            }
            table.remove(key).map_err(db)?;
            Ok(s)
        })
    }

    /// Replaces the labels of `key` (all of them, or only those named in `only`:
    /// containerd's `labels.NAME` field paths; a named label absent from `labels` is
    /// deleted).
    pub fn update_labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        only: Option<&[String]>,
    ) -> Result<Snapshot, SnapshotError> {
        self.write(|table, _| {
            let mut s = get_in(table, key)?.ok_or_else(|| SnapshotError::NotFound(key.into()))?;
            match only {
                None => s.labels = labels,
                Some(names) => {
                    for n in names {
                        match labels.get(n) {
                            Some(v) => s.labels.insert(n.clone(), v.clone()),
                            None => s.labels.remove(n),
                        };
                    }
                }
            }
            s.updated = SystemTime::now();
            put_in(table, key, &s)?;
            Ok(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(key: &'a str, parent: Option<&'a str>, kind: Kind) -> NewSnapshot<'a> {
        NewSnapshot {
            key,
            parent,
            kind,
            labels: BTreeMap::new(),
            remote: None,
        }
    }

    #[test]
    fn create_commit_remove_keep_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let a = store.create(new("a", None, Kind::Active)).unwrap();
        assert!(matches!(
            store.create(new("a", None, Kind::Active)),
            Err(SnapshotError::AlreadyExists(_))
        ));
        // An active snapshot cannot be a parent.
        assert!(matches!(
            store.create(new("b", Some("a"), Kind::Active)),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        let c = store
            .commit("a", "layer1", BTreeMap::new(), Usage::default())
            .unwrap();
        assert_eq!((c.id, c.kind), (a.id, Kind::Committed));
        assert!(matches!(store.get("a"), Err(SnapshotError::NotFound(_))));
        let b = store
            .create(new("b", Some("layer1"), Kind::Active))
            .unwrap();
        assert_ne!(b.id, a.id);
        assert_eq!(
            store
                .chain("b")
                .unwrap()
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["b", "layer1"]
        );
        assert!(matches!(
            store.remove("layer1"),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        store.remove("b").unwrap();
        store.remove("layer1").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn records_survive_reopening_and_labels_update_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            let mut n = new("k", None, Kind::Active);
            n.labels.insert("x".into(), "1".into());
            n.labels.insert("y".into(), "2".into());
            store.create(n).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut l = BTreeMap::new();
        l.insert("y".into(), "3".into());
        let s = store
            .update_labels("k", l, Some(&["x".into(), "y".into()]))
            .unwrap();
        assert_eq!(s.labels.len(), 1);
        assert_eq!(s.labels["y"], "3");
        // Ids keep counting across reopening.
        assert_eq!(store.create(new("j", None, Kind::View)).unwrap().id, 2);
    }
}
