//! The replicated log and the vote, in redb (`<data>/group-log.redb`).
//!
//! Every write is a redb transaction committed with immediate durability
//! (an fsync) before it is acknowledged: `append` calls back only once its
//! entries are synced, and `save_vote`, `truncate_after` and `purge` return
//! only once durable. Writes are serialized by redb's single writer, in the
//! order openraft submits them.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{GroupConfig, decode, encode};

type C = GroupConfig;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// A write waiting out a simulated sync: dropped first (its process
/// crashed), it is lost, and says so (the simulator counts it).
struct Unsynced;

impl Drop for Unsynced {
    fn drop(&mut self) {
        tracing::info!("a tracker write was lost: the disk had not synced it");
    }
}

/// The log of one member. Clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<redb::Database>,
    path: PathBuf,
    /// A simulated disk's sync time: appends and votes wait this long
    /// before they land, so a crash meanwhile loses them (the simulator's
    /// disks; zero on a real one, whose fsync takes its own time).
    sync: std::time::Duration,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogStore({})", self.path.display())
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("group log {}: {e}", path.display()))
}

impl LogStore {
    /// Open (or create) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("group-log.redb");
        let db = redb::Builder::new()
            .set_cache_size(16 << 20)
            .create(&path)
            .map_err(|e| db_err(&path, e))?;
        Self::init(db, path)
    }

    /// A log in memory (the simulator's disks, and tests).
    pub fn in_memory() -> io::Result<Self> {
        let path = PathBuf::from("(memory)");
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| db_err(&path, e))?;
        Self::init(db, path)
    }

    fn init(db: redb::Database, path: PathBuf) -> io::Result<Self> {
        let txn = db.begin_write().map_err(|e| db_err(&path, e))?;
        txn.open_table(LOG).map_err(|e| db_err(&path, e))?;
        txn.open_table(STATE).map_err(|e| db_err(&path, e))?;
        txn.commit().map_err(|e| db_err(&path, e))?;
        Ok(Self {
            db: Arc::new(db),
            path,
            sync: std::time::Duration::ZERO,
        })
    }

    /// This log, with writes that take `sync` to land (see [`LogStore::sync`]).
    pub fn with_sync_time(mut self, sync: std::time::Duration) -> Self {
        self.sync = sync;
        self
    }

    /// Wait out a simulated sync, if this disk has one.
    async fn sync(&self) {
        if !self.sync.is_zero() {
            let unsynced = Unsynced;
            tokio::time::sleep(self.sync).await;
            std::mem::forget(unsynced);
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> io::Error {
        db_err(&self.path, e)
    }

    fn read_state<T: for<'a> serde::Deserialize<'a>>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(STATE).map_err(|e| self.err(e))?;
        match t.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn write_state<T: serde::Serialize>(&self, key: &str, v: &T) -> io::Result<()> {
        let bytes = encode(v)?;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(STATE).map_err(|e| self.err(e))?;
            t.insert(key, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Remove the entries with index `from` and above (`below`: below it
    /// instead), newest first.
    fn remove(&self, from: Option<u64>, below: Option<u64>) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(LOG).map_err(|e| self.err(e))?;
            match (from, below) {
                (Some(from), _) => {
                    t.retain_in(from.., |_, _| false).map_err(|e| self.err(e))?;
                }
                (None, Some(below)) => {
                    t.retain_in(..below, |_, _| false)
                        .map_err(|e| self.err(e))?;
                }
                (None, None) => {}
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<C>>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(LOG).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.range(range).map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<C>>> {
        self.read_state(VOTE)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<C>> {
        let purged: Option<LogIdOf<C>> = self.read_state(PURGED)?;
        let last = {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = txn.open_table(LOG).map_err(|e| self.err(e))?;
            match t.last().map_err(|e| self.err(e))? {
                Some((_, v)) => {
                    let e: EntryOf<C> = decode(v.value())?;
                    Some(e.log_id())
                }
                None => None,
            }
        };
        Ok(LogState {
            last_log_id: last.or(purged),
            last_purged_log_id: purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> io::Result<()> {
        self.sync().await;
        self.write_state(VOTE, vote)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> io::Result<()> {
        self.write_state(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<C>>> {
        Ok(self.read_state::<Option<LogIdOf<C>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.sync().await;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(LOG).map_err(|e| self.err(e))?;
            for e in entries {
                let bytes = encode(&e)?;
                t.insert(e.index(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        // Durable (redb's default: an fsync) before the callback.
        let r = txn.commit().map_err(|e| self.err(e));
        match r {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<C>>) -> io::Result<()> {
        let from = last.map_or(0, |l| l.index() + 1);
        self.remove(Some(from), None)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> io::Result<()> {
        // The purge point first: a crash between the two leaves entries the
        // next purge removes, never a gap the log state would not show.
        self.write_state(PURGED, &log_id)?;
        self.remove(None, Some(log_id.index() + 1))
    }
}
