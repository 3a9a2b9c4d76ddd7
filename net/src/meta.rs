//! The tracker's durable records: a seam ([`MetaStore`]) and its redb
//! implementation ([`RedbMeta`]).
//!
//! redb holds two tables: `nodes` (node id to address) and `files` (name to
//! the protobuf `CommitRequest` that created it: manifest plus the holders
//! that acknowledged each chunk). A write transaction commits (fsync) before
//! the tracker answers the request that produced the records.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use p2p_core::tracker::Record;
use p2p_proto as pb;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::convert;

const NODES: TableDefinition<&str, &str> = TableDefinition::new("nodes");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");

/// Why the tracker's metadata could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database failed.
    #[error("tracker database {path}: {msg}")]
    Db { path: PathBuf, msg: String },
    /// A stored record does not decode: the database is damaged.
    #[error("tracker database {path}: damaged record {key:?}: {msg}")]
    Damaged {
        path: PathBuf,
        key: String,
        msg: String,
    },
}

/// Durable storage of the tracker's records.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Every record needed to rebuild the tracker: node joins first, then files.
    async fn load(&self) -> Result<Vec<Record>, MetaError>;
    /// Make `records` durable, all or nothing.
    async fn persist(&self, records: Vec<Record>) -> Result<(), MetaError>;
}

/// Records in a redb file, `<data>/tracker.redb`.
#[derive(Clone)]
pub struct RedbMeta {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl RedbMeta {
    pub fn open(data: &Path) -> Result<Self, MetaError> {
        let path = data.join("tracker.redb");
        let err = |e: &dyn std::fmt::Display| MetaError::Db {
            path: path.clone(),
            msg: e.to_string(),
        };
        std::fs::create_dir_all(data).map_err(|e| err(&e))?;
        let db = redb::Database::create(&path).map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(NODES).map_err(|e| err(&e))?;
        txn.open_table(FILES).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    fn load_sync(&self) -> Result<Vec<Record>, MetaError> {
        let err = |e: &dyn std::fmt::Display| MetaError::Db {
            path: self.path.clone(),
            msg: e.to_string(),
        };
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let mut out = Vec::new();
        let nodes = txn.open_table(NODES).map_err(|e| err(&e))?;
        for row in nodes.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let damaged = |msg: String| MetaError::Damaged {
                path: self.path.clone(),
                key: k.value().to_string(),
                msg,
            };
            let id = p2p_core::NodeId::new(k.value()).map_err(|e| damaged(e.to_string()))?;
            out.push(Record::NodeJoined {
                id,
                addr: v.value().to_string(),
            });
        }
        let files = txn.open_table(FILES).map_err(|e| err(&e))?;
        for row in files.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let damaged = |msg: String| MetaError::Damaged {
                path: self.path.clone(),
                key: k.value().to_string(),
                msg,
            };
            let req = pb::CommitRequest::decode(v.value()).map_err(|e| damaged(e.to_string()))?;
            let (manifest, holders) =
                decode_commit(&req).map_err(|s| damaged(s.message().to_string()))?;
            out.push(Record::FileCommitted { manifest, holders });
        }
        Ok(out)
    }

    fn persist_sync(&self, records: Vec<Record>) -> Result<(), MetaError> {
        let err = |e: &dyn std::fmt::Display| MetaError::Db {
            path: self.path.clone(),
            msg: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut nodes = txn.open_table(NODES).map_err(|e| err(&e))?;
            let mut files = txn.open_table(FILES).map_err(|e| err(&e))?;
            for r in &records {
                match r {
                    Record::NodeJoined { id, addr } => {
                        nodes
                            .insert(id.as_str(), addr.as_str())
                            .map_err(|e| err(&e))?;
                    }
                    Record::NodeLeft { id } => {
                        nodes.remove(id.as_str()).map_err(|e| err(&e))?;
                    }
                    Record::FileCommitted { manifest, holders } => {
                        let bytes = encode_commit(manifest, holders).encode_to_vec();
                        files
                            .insert(manifest.name.as_str(), bytes.as_slice())
                            .map_err(|e| err(&e))?;
                    }
                    Record::FileRemoved { name } => {
                        files.remove(name.as_str()).map_err(|e| err(&e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| err(&e))
    }
}

/// The wire form of a commit, also the stored form of a file.
pub fn encode_commit(
    manifest: &p2p_core::Manifest,
    holders: &[Vec<p2p_core::NodeId>],
) -> pb::CommitRequest {
    pb::CommitRequest {
        manifest: Some(convert::manifest_to_pb(manifest)),
        holders: holders
            .iter()
            .map(|h| pb::Holders {
                node_ids: h.iter().map(|n| n.to_string()).collect(),
            })
            .collect(),
    }
}

/// Validate and decode a commit.
pub fn decode_commit(
    req: &pb::CommitRequest,
) -> Result<(p2p_core::Manifest, Vec<Vec<p2p_core::NodeId>>), tonic::Status> {
    let m = req
        .manifest
        .as_ref()
        .ok_or_else(|| tonic::Status::invalid_argument("commit without a manifest"))?;
    let manifest = convert::manifest_from_pb(m)?;
    let holders = req
        .holders
        .iter()
        .map(|h| h.node_ids.iter().map(|n| convert::node_id(n)).collect())
        .collect::<Result<_, _>>()?;
    Ok((manifest, holders))
}

#[async_trait]
impl MetaStore for RedbMeta {
    async fn load(&self) -> Result<Vec<Record>, MetaError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.load_sync())
            .await
            .map_err(|e| MetaError::Db {
                path: self.path.clone(),
                msg: e.to_string(),
            })?
    }

    async fn persist(&self, records: Vec<Record>) -> Result<(), MetaError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.persist_sync(records))
            .await
            .map_err(|e| MetaError::Db {
                path: self.path.clone(),
                msg: e.to_string(),
            })?
    }
}

/// Records kept in memory: survives nothing but the process. For tests and
/// the simulator, where the memory stands in for the disk.
#[derive(Clone, Default)]
pub struct MemoryMeta {
    records: Arc<Mutex<Vec<Record>>>,
}

#[async_trait]
impl MetaStore for MemoryMeta {
    async fn load(&self) -> Result<Vec<Record>, MetaError> {
        let all = self.records.lock().expect("meta lock").clone();
        let mut nodes = std::collections::BTreeMap::new();
        let mut files = std::collections::BTreeMap::new();
        for r in all {
            match r {
                Record::NodeJoined { ref id, .. } => {
                    nodes.insert(id.clone(), r);
                }
                Record::NodeLeft { id } => {
                    nodes.remove(&id);
                }
                Record::FileCommitted { ref manifest, .. } => {
                    files.insert(manifest.name.clone(), r);
                }
                Record::FileRemoved { name } => {
                    files.remove(&name);
                }
            }
        }
        Ok(nodes.into_values().chain(files.into_values()).collect())
    }

    async fn persist(&self, records: Vec<Record>) -> Result<(), MetaError> {
        self.records.lock().expect("meta lock").extend(records);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::{ChunkId, Manifest, NodeId};

    // What redb persisted is exactly what a reopened database loads.
    #[tokio::test]
    async fn redb_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeId::new("a").unwrap();
        let b = NodeId::new("b").unwrap();
        let m = Manifest::new("f".into(), 5, 1024, 2, vec![ChunkId::of(b"hello")]).unwrap();
        let gone = Manifest::new("g".into(), 5, 1024, 2, vec![ChunkId::of(b"bye")]).unwrap();
        let records = vec![
            Record::NodeJoined {
                id: a.clone(),
                addr: "127.0.0.1:1".into(),
            },
            Record::NodeJoined {
                id: b.clone(),
                addr: "127.0.0.1:2".into(),
            },
            Record::FileCommitted {
                manifest: m.clone(),
                holders: vec![vec![a.clone(), b.clone()]],
            },
            Record::NodeLeft { id: b.clone() },
            Record::FileCommitted {
                manifest: gone.clone(),
                holders: vec![vec![a.clone(), b.clone()]],
            },
            Record::FileRemoved { name: "g".into() },
        ];
        {
            let meta = RedbMeta::open(dir.path()).unwrap();
            meta.persist(records).await.unwrap();
        }
        let meta = RedbMeta::open(dir.path()).unwrap();
        let loaded = meta.load().await.unwrap();
        assert_eq!(
            loaded,
            vec![
                Record::NodeJoined {
                    id: a.clone(),
                    addr: "127.0.0.1:1".into()
                },
                Record::FileCommitted {
                    manifest: m,
                    holders: vec![vec![a, b]]
                },
            ]
        );
    }
}
