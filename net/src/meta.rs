//! The tracker's durable records: a seam ([`MetaStore`]) and its redb
//! implementation ([`RedbMeta`]).
//!
//! redb holds `nodes` (node id to address) and `files_v2` (name to a
//! protobuf `StoredFile`: the manifest with its chunk ids packed, and the
//! holders that acknowledged each chunk as indices into the file's own table
//! of nodes). `files`, the older layout (the `CommitRequest` as received),
//! is still read and is emptied as its files are removed. A write
//! transaction commits (fsync) before the tracker answers the request that
//! produced the records. A restart streams the rows into the tracker as it
//! reads them: nothing holds every record at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use p2p_core::tracker::{Record, Tracker, TrackerConfig};
use p2p_core::{ChunkId, Manifest, NodeId};
use p2p_proto as pb;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::convert;

const NODES: TableDefinition<&str, &str> = TableDefinition::new("nodes");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const FILES_V2: TableDefinition<&str, &[u8]> = TableDefinition::new("files_v2");
/// In a tracker group: the last log entry applied and the group's
/// membership, written in the same transaction as the records it applied.
const APPLIED: TableDefinition<&str, &[u8]> = TableDefinition::new("group_applied");
/// Enrollment tokens used: nonce to expiry (unix seconds).
const TOKENS: TableDefinition<&[u8], u64> = TableDefinition::new("used_tokens");
/// Identities whose certificates were revoked (`p2p revoke`).
const REVOKED: TableDefinition<&str, ()> = TableDefinition::new("revoked");
/// Nodes that left and have not joined again (refused if they register).
const DEPARTED: TableDefinition<&str, ()> = TableDefinition::new("departed");
const APPLIED_KEY: &str = "applied";
/// redb's page cache.
const DB_CACHE_BYTES: usize = 32 * 1024 * 1024;

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
    /// Rebuild the tracker from what is stored (see [`Tracker::restore`]):
    /// node joins first, then files, fed to it as they are read.
    async fn restore(&self, config: TrackerConfig) -> Result<Tracker, MetaError>;
    /// Make `records` durable, all or nothing.
    async fn persist(&self, records: Vec<Record>) -> Result<(), MetaError>;
}

/// What a member of a tracker group keeps of the replicated state: the
/// records, and an opaque note of how far the log was applied, changed
/// together (see `crate::group`).
#[async_trait]
pub trait AppliedStore: MetaStore + Clone {
    /// The note written with the last change, if any.
    async fn applied(&self) -> Result<Option<Vec<u8>>, MetaError>;
    /// Make `records` and the note `applied` durable, all or nothing.
    async fn apply(&self, records: Vec<Record>, applied: Vec<u8>) -> Result<(), MetaError>;
    /// Replace everything by `records` (a snapshot's) and the note.
    async fn replace(&self, records: Vec<Record>, applied: Vec<u8>) -> Result<(), MetaError>;
    /// Every stored record (nodes, then files) and the note, read at once.
    async fn snapshot(&self) -> Result<(Vec<Record>, Option<Vec<u8>>), MetaError>;
}

/// A batch of records as one protobuf message (a log entry of the tracker
/// group, or a snapshot of its state).
pub fn encode_records(records: &[Record]) -> Vec<u8> {
    use pb::stored_record::Kind;
    let records = records
        .iter()
        .map(|r| pb::StoredRecord {
            kind: Some(match r {
                Record::NodeJoined { id, addr } => Kind::NodeJoined(pb::NodeJoined {
                    id: id.to_string(),
                    addr: addr.clone(),
                }),
                Record::NodeLeft { id } => Kind::NodeLeft(id.to_string()),
                Record::FileCommitted { manifest, holders } => {
                    Kind::FileCommitted(encode_stored(manifest, holders))
                }
                Record::FileRemoved { name } => Kind::FileRemoved(name.clone()),
                Record::TokenUsed {
                    nonce,
                    expires_unix_s,
                } => Kind::TokenUsed(pb::TokenUsed {
                    nonce: nonce.to_vec().into(),
                    expires_unix_s: *expires_unix_s,
                }),
                Record::Revoked { id } => Kind::Revoked(id.clone()),
            }),
        })
        .collect();
    pb::RecordBatch { records }.encode_to_vec()
}

/// Validate and decode a batch of records.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<Record>, String> {
    use pb::stored_record::Kind;
    let batch = pb::RecordBatch::decode(bytes).map_err(|e| e.to_string())?;
    batch
        .records
        .into_iter()
        .map(|r| match r.kind {
            Some(Kind::NodeJoined(j)) => Ok(Record::NodeJoined {
                id: NodeId::new(j.id).map_err(|e| e.to_string())?,
                addr: j.addr,
            }),
            Some(Kind::NodeLeft(id)) => Ok(Record::NodeLeft {
                id: NodeId::new(id).map_err(|e| e.to_string())?,
            }),
            Some(Kind::FileCommitted(f)) => {
                let (manifest, holders) = decode_stored(&f)?;
                Ok(Record::FileCommitted { manifest, holders })
            }
            Some(Kind::FileRemoved(name)) => Ok(Record::FileRemoved { name }),
            Some(Kind::TokenUsed(t)) => Ok(Record::TokenUsed {
                nonce: t
                    .nonce
                    .as_ref()
                    .try_into()
                    .map_err(|_| "a token nonce not of 16 bytes".to_string())?,
                expires_unix_s: t.expires_unix_s,
            }),
            Some(Kind::Revoked(id)) => {
                if id.is_empty() || id.len() > p2p_core::limits::REVOKED_ID_MAX_BYTES {
                    return Err("a revoked identity empty or too long".into());
                }
                Ok(Record::Revoked { id })
            }
            None => Err("a record of no known kind".into()),
        })
        .collect()
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
        // The tracker keeps its state in memory and reads the database
        // once, at start: redb's cache need not be large (its default is
        // 1 GiB, which a restart would fill with pages read once).
        let db = redb::Builder::new()
            .set_cache_size(DB_CACHE_BYTES)
            .create(&path)
            .map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(NODES).map_err(|e| err(&e))?;
        txn.open_table(FILES).map_err(|e| err(&e))?;
        txn.open_table(FILES_V2).map_err(|e| err(&e))?;
        txn.open_table(APPLIED).map_err(|e| err(&e))?;
        txn.open_table(TOKENS).map_err(|e| err(&e))?;
        txn.open_table(REVOKED).map_err(|e| err(&e))?;
        txn.open_table(DEPARTED).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    /// Feed every stored record, in order, to `each`; stops at the first
    /// that does not read or decode.
    fn read_sync(&self, each: &mut dyn FnMut(Record)) -> Result<(), MetaError> {
        let err = |e: &dyn std::fmt::Display| MetaError::Db {
            path: self.path.clone(),
            msg: e.to_string(),
        };
        let damaged = |key: &str, msg: String| MetaError::Damaged {
            path: self.path.clone(),
            key: key.to_string(),
            msg,
        };
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let nodes = txn.open_table(NODES).map_err(|e| err(&e))?;
        for row in nodes.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let id = NodeId::new(k.value()).map_err(|e| damaged(k.value(), e.to_string()))?;
            each(Record::NodeJoined {
                id,
                addr: v.value().to_string(),
            });
        }
        let old = txn.open_table(FILES).map_err(|e| err(&e))?;
        for row in old.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let req = pb::CommitRequest::decode(v.value())
                .map_err(|e| damaged(k.value(), e.to_string()))?;
            let (manifest, holders) =
                decode_commit(&req).map_err(|s| damaged(k.value(), s.message().to_string()))?;
            each(Record::FileCommitted { manifest, holders });
        }
        let files = txn.open_table(FILES_V2).map_err(|e| err(&e))?;
        for row in files.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let stored =
                pb::StoredFile::decode(v.value()).map_err(|e| damaged(k.value(), e.to_string()))?;
            let (manifest, holders) =
                decode_stored(&stored).map_err(|msg| damaged(k.value(), msg))?;
            each(Record::FileCommitted { manifest, holders });
        }
        let tokens = txn.open_table(TOKENS).map_err(|e| err(&e))?;
        for row in tokens.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let nonce: [u8; 16] = k
                .value()
                .try_into()
                .map_err(|_| damaged("used_tokens", "a nonce not of 16 bytes".into()))?;
            each(Record::TokenUsed {
                nonce,
                expires_unix_s: v.value(),
            });
        }
        let revoked = txn.open_table(REVOKED).map_err(|e| err(&e))?;
        for row in revoked.iter().map_err(|e| err(&e))? {
            let (k, _) = row.map_err(|e| err(&e))?;
            each(Record::Revoked {
                id: k.value().to_string(),
            });
        }
        let departed = txn.open_table(DEPARTED).map_err(|e| err(&e))?;
        for row in departed.iter().map_err(|e| err(&e))? {
            let (k, _) = row.map_err(|e| err(&e))?;
            let id = NodeId::new(k.value()).map_err(|e| damaged(k.value(), e.to_string()))?;
            each(Record::NodeLeft { id });
        }
        Ok(())
    }

    /// Every stored record, in the order a restore reads them.
    pub fn load_records(&self) -> Result<Vec<Record>, MetaError> {
        let mut out = Vec::new();
        self.read_sync(&mut |r| out.push(r))?;
        Ok(out)
    }

    fn applied_sync(&self) -> Result<Option<Vec<u8>>, MetaError> {
        let err = |e: &dyn std::fmt::Display| MetaError::Db {
            path: self.path.clone(),
            msg: e.to_string(),
        };
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let t = txn.open_table(APPLIED).map_err(|e| err(&e))?;
        Ok(t.get(APPLIED_KEY)
            .map_err(|e| err(&e))?
            .map(|v| v.value().to_vec()))
    }

    /// Run `f` on a thread that may block (redb reads and syncs).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| MetaError::Db {
                path: self.path.clone(),
                msg: e.to_string(),
            })?
    }

    /// About how many chunks the stored files list, from the tables' sizes
    /// alone (a stored chunk takes about 39 bytes with three holders; the
    /// older layout about 70).
    fn chunks_hint(&self) -> Result<usize, MetaError> {
        let err = |e: &dyn std::fmt::Display| MetaError::Db {
            path: self.path.clone(),
            msg: e.to_string(),
        };
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let bytes = |t: TableDefinition<&str, &[u8]>| -> Result<u64, MetaError> {
            let table = txn.open_table(t).map_err(|e| err(&e))?;
            Ok(table.stats().map_err(|e| err(&e))?.stored_bytes())
        };
        Ok((bytes(FILES_V2)? / 39 + bytes(FILES)? / 70) as usize)
    }

    fn restore_sync(&self, config: TrackerConfig) -> Result<Tracker, MetaError> {
        // The tracker takes an iterator; the rows arrive through a
        // callback. A bounded channel between a reader thread and this one
        // joins the two without holding every record at once.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Record>(64);
        let hint = self.chunks_hint()?;
        let me = self.clone();
        let reader = std::thread::spawn(move || me.read_sync(&mut |r| drop(tx.send(r))));
        let tracker = Tracker::restore_sized(config, hint, rx);
        match reader.join() {
            Ok(Ok(())) => Ok(tracker),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(MetaError::Db {
                path: self.path.clone(),
                msg: "the database reader panicked".into(),
            }),
        }
    }

    fn persist_sync(&self, records: Vec<Record>) -> Result<(), MetaError> {
        self.write_sync(&records, None, false)
    }

    /// Write `records` (after emptying the tables if `replace`) and, if
    /// given, the applied note, in one durable transaction.
    fn write_sync(
        &self,
        records: &[Record],
        applied: Option<&[u8]>,
        replace: bool,
    ) -> Result<(), MetaError> {
        let err = |e: &dyn std::fmt::Display| MetaError::Db {
            path: self.path.clone(),
            msg: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        if let Some(note) = applied {
            let mut t = txn.open_table(APPLIED).map_err(|e| err(&e))?;
            t.insert(APPLIED_KEY, note).map_err(|e| err(&e))?;
        }
        if replace {
            for table in [FILES, FILES_V2] {
                let mut t = txn.open_table(table).map_err(|e| err(&e))?;
                t.retain(|_, _| false).map_err(|e| err(&e))?;
            }
            let mut t = txn.open_table(NODES).map_err(|e| err(&e))?;
            t.retain(|_, _| false).map_err(|e| err(&e))?;
            let mut t = txn.open_table(TOKENS).map_err(|e| err(&e))?;
            t.retain(|_, _| false).map_err(|e| err(&e))?;
            let mut t = txn.open_table(REVOKED).map_err(|e| err(&e))?;
            t.retain(|_, _| false).map_err(|e| err(&e))?;
            let mut t = txn.open_table(DEPARTED).map_err(|e| err(&e))?;
            t.retain(|_, _| false).map_err(|e| err(&e))?;
        }
        {
            let mut nodes = txn.open_table(NODES).map_err(|e| err(&e))?;
            let mut old = txn.open_table(FILES).map_err(|e| err(&e))?;
            let mut files = txn.open_table(FILES_V2).map_err(|e| err(&e))?;
            let mut tokens = txn.open_table(TOKENS).map_err(|e| err(&e))?;
            let mut revoked = txn.open_table(REVOKED).map_err(|e| err(&e))?;
            let mut departed = txn.open_table(DEPARTED).map_err(|e| err(&e))?;
            for r in records {
                match r {
                    Record::NodeJoined { id, addr } => {
                        nodes
                            .insert(id.as_str(), addr.as_str())
                            .map_err(|e| err(&e))?;
                        departed.remove(id.as_str()).map_err(|e| err(&e))?;
                    }
                    Record::NodeLeft { id } => {
                        nodes.remove(id.as_str()).map_err(|e| err(&e))?;
                        departed.insert(id.as_str(), ()).map_err(|e| err(&e))?;
                    }
                    Record::FileCommitted { manifest, holders } => {
                        let bytes = encode_stored(manifest, holders).encode_to_vec();
                        old.remove(manifest.name.as_str()).map_err(|e| err(&e))?;
                        files
                            .insert(manifest.name.as_str(), bytes.as_slice())
                            .map_err(|e| err(&e))?;
                    }
                    Record::FileRemoved { name } => {
                        old.remove(name.as_str()).map_err(|e| err(&e))?;
                        files.remove(name.as_str()).map_err(|e| err(&e))?;
                    }
                    Record::TokenUsed {
                        nonce,
                        expires_unix_s,
                    } => {
                        tokens
                            .insert(nonce.as_slice(), *expires_unix_s)
                            .map_err(|e| err(&e))?;
                    }
                    Record::Revoked { id } => {
                        revoked.insert(id.as_str(), ()).map_err(|e| err(&e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| err(&e))
    }
}

/// The stored form of a file: chunk ids packed, holders as indices into
/// the file's own node table.
pub fn encode_stored(manifest: &Manifest, holders: &[Vec<NodeId>]) -> pb::StoredFile {
    let mut nodes: Vec<&NodeId> = holders.iter().flatten().collect();
    nodes.sort();
    nodes.dedup();
    let mut packed = Vec::with_capacity(holders.len() * 7);
    for h in holders {
        packed.push(u8::try_from(h.len()).expect("at most REPLICAS_MAX holders a chunk"));
        for n in h {
            let i = nodes
                .binary_search(&n)
                .expect("every holder is in the table");
            packed.extend_from_slice(
                &u16::try_from(i)
                    .expect("at most 2^16 nodes a file")
                    .to_le_bytes(),
            );
        }
    }
    pb::StoredFile {
        name: manifest.name.clone(),
        size: manifest.size_bytes,
        chunk_size: manifest.chunk_size_bytes,
        replicas: manifest.replicas,
        chunks: manifest
            .chunks
            .iter()
            .flat_map(|c| *c.as_bytes())
            .collect::<Vec<u8>>()
            .into(),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        holders: packed.into(),
    }
}

/// Validate and decode a stored file.
pub fn decode_stored(f: &pb::StoredFile) -> Result<(Manifest, Vec<Vec<NodeId>>), String> {
    if !f.chunks.len().is_multiple_of(32) {
        return Err(format!("{} bytes of chunk ids", f.chunks.len()));
    }
    let chunks: Vec<ChunkId> = f
        .chunks
        .chunks_exact(32)
        .map(|c| ChunkId::from_slice(c).expect("32 bytes"))
        .collect();
    let manifest = Manifest::new(f.name.clone(), f.size, f.chunk_size, f.replicas, chunks)
        .map_err(|e| e.to_string())?;
    let nodes: Vec<NodeId> = f
        .nodes
        .iter()
        .map(|n| NodeId::new(n.as_str()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut holders = Vec::with_capacity(manifest.chunks.len());
    let mut rest = &f.holders[..];
    for _ in 0..manifest.chunks.len() {
        let (&n, tail) = rest.split_first().ok_or("holder list ends early")?;
        let (ix, tail) = tail
            .split_at_checked(2 * usize::from(n))
            .ok_or("holder list ends early")?;
        rest = tail;
        holders.push(
            ix.chunks_exact(2)
                .map(|b| {
                    let i = usize::from(u16::from_le_bytes([b[0], b[1]]));
                    nodes
                        .get(i)
                        .cloned()
                        .ok_or_else(|| format!("holder index {i} out of range"))
                })
                .collect::<Result<Vec<NodeId>, String>>()?,
        );
    }
    if !rest.is_empty() {
        return Err("trailing bytes after the holder lists".into());
    }
    Ok((manifest, holders))
}

/// The wire form of a commit (also how files were stored before `files_v2`).
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
                stamps: vec![],
                receipts: vec![],
            })
            .collect(),
        put: 0,
        replace: false,
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
    async fn restore(&self, config: TrackerConfig) -> Result<Tracker, MetaError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.restore_sync(config))
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

#[async_trait]
impl AppliedStore for RedbMeta {
    async fn applied(&self) -> Result<Option<Vec<u8>>, MetaError> {
        self.blocking(|m| m.applied_sync()).await
    }

    async fn apply(&self, records: Vec<Record>, applied: Vec<u8>) -> Result<(), MetaError> {
        self.blocking(move |m| m.write_sync(&records, Some(&applied), false))
            .await
    }

    async fn replace(&self, records: Vec<Record>, applied: Vec<u8>) -> Result<(), MetaError> {
        self.blocking(move |m| m.write_sync(&records, Some(&applied), true))
            .await
    }

    async fn snapshot(&self) -> Result<(Vec<Record>, Option<Vec<u8>>), MetaError> {
        // One read transaction would be exact; the state machine's lock
        // keeps writes out meanwhile, which is as good.
        self.blocking(|m| Ok((m.load_records()?, m.applied_sync()?)))
            .await
    }
}

/// Records kept in memory: survives nothing but the process. For tests and
/// the simulator, where the memory stands in for the disk.
#[derive(Clone, Default)]
pub struct MemoryMeta {
    records: Arc<Mutex<Vec<Record>>>,
    applied: Arc<Mutex<Option<Vec<u8>>>>,
}

impl MemoryMeta {
    /// The records a restore reads: the latest of each node and file.
    pub fn load(&self) -> Vec<Record> {
        let all = self.records.lock().expect("meta lock").clone();
        let mut nodes = std::collections::BTreeMap::new();
        let mut files = std::collections::BTreeMap::new();
        let mut tokens = std::collections::BTreeMap::new();
        let mut revoked = std::collections::BTreeMap::new();
        let mut departed = std::collections::BTreeMap::new();
        for r in all {
            match r {
                Record::NodeJoined { ref id, .. } => {
                    departed.remove(id);
                    nodes.insert(id.clone(), r);
                }
                Record::NodeLeft { ref id } => {
                    nodes.remove(id);
                    departed.insert(id.clone(), r);
                }
                Record::FileCommitted { ref manifest, .. } => {
                    files.insert(manifest.name.clone(), r);
                }
                Record::FileRemoved { name } => {
                    files.remove(&name);
                }
                Record::TokenUsed { nonce, .. } => {
                    tokens.insert(nonce, r);
                }
                Record::Revoked { ref id } => {
                    revoked.insert(id.clone(), r);
                }
            }
        }
        nodes
            .into_values()
            .chain(files.into_values())
            .chain(tokens.into_values())
            .chain(revoked.into_values())
            .chain(departed.into_values())
            .collect()
    }
}

#[async_trait]
impl MetaStore for MemoryMeta {
    async fn restore(&self, config: TrackerConfig) -> Result<Tracker, MetaError> {
        Ok(Tracker::restore(config, self.load()))
    }

    async fn persist(&self, records: Vec<Record>) -> Result<(), MetaError> {
        self.records.lock().expect("meta lock").extend(records);
        Ok(())
    }
}

#[async_trait]
impl AppliedStore for MemoryMeta {
    async fn applied(&self) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.applied.lock().expect("meta lock").clone())
    }

    async fn apply(&self, records: Vec<Record>, applied: Vec<u8>) -> Result<(), MetaError> {
        let mut note = self.applied.lock().expect("meta lock");
        self.records.lock().expect("meta lock").extend(records);
        *note = Some(applied);
        Ok(())
    }

    async fn replace(&self, records: Vec<Record>, applied: Vec<u8>) -> Result<(), MetaError> {
        let mut note = self.applied.lock().expect("meta lock");
        *self.records.lock().expect("meta lock") = records;
        *note = Some(applied);
        Ok(())
    }

    async fn snapshot(&self) -> Result<(Vec<Record>, Option<Vec<u8>>), MetaError> {
        let note = self.applied.lock().expect("meta lock");
        Ok((self.load(), note.clone()))
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
        let loaded = meta.load_records().unwrap();
        assert_eq!(
            loaded,
            vec![
                Record::NodeJoined {
                    id: a.clone(),
                    addr: "127.0.0.1:1".into()
                },
                Record::FileCommitted {
                    manifest: m,
                    holders: vec![vec![a, b.clone()]]
                },
                // A node that left stays out after a restart.
                Record::NodeLeft { id: b },
            ]
        );
    }

    // Files stored by an older version (the commit as received) still load,
    // and removing one removes it there.
    #[tokio::test]
    async fn files_in_the_older_layout_load_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeId::new("a").unwrap();
        let m = Manifest::new("old".into(), 5, 1024, 1, vec![ChunkId::of(b"x")]).unwrap();
        let meta = RedbMeta::open(dir.path()).unwrap();
        {
            let txn = meta.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(FILES).unwrap();
                let bytes = encode_commit(&m, &[vec![a.clone()]]).encode_to_vec();
                t.insert("old", bytes.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let loaded = meta.load_records().unwrap();
        assert_eq!(
            loaded,
            vec![Record::FileCommitted {
                manifest: m,
                holders: vec![vec![a]]
            }]
        );
        meta.persist(vec![Record::FileRemoved { name: "old".into() }])
            .await
            .unwrap();
        assert!(meta.load_records().unwrap().is_empty());
    }

    // A damaged stored file is refused with a reason, never half-loaded.
    #[test]
    fn stored_files_are_validated() {
        let a = NodeId::new("a").unwrap();
        let b = NodeId::new("b").unwrap();
        let m = Manifest::new(
            "f".into(),
            2048,
            1024,
            2,
            vec![ChunkId::of(b"1"), ChunkId::of(b"2")],
        )
        .unwrap();
        let holders = vec![vec![a.clone(), b.clone()], vec![b, a]];
        let stored = encode_stored(&m, &holders);
        assert_eq!(decode_stored(&stored), Ok((m, holders)));
        let mut short = stored.clone();
        short.holders.truncate(short.holders.len() - 1);
        assert!(decode_stored(&short).is_err());
        let mut bad = stored.clone();
        let mut h = bad.holders.to_vec();
        h[1] = 9;
        bad.holders = h.into();
        assert!(decode_stored(&bad).unwrap_err().contains("out of range"));
        let mut odd = stored;
        odd.chunks.truncate(40);
        assert!(decode_stored(&odd).is_err());
    }
}
