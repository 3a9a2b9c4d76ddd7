//! In-memory stand-ins for the disk. A [`MemStore`] is created outside a
//! host's closure, so what it holds survives a crash of the host, like a
//! disk. Writes live in the writer until commit (the sync-and-rename of the
//! disk store): a crash before commit loses them, a crash after does not.
//!
//! A disk can also fail the way real ones do, until a simulated time
//! ([`MemStore::fail`]): full (`ENOSPC` on create and write), read errors
//! (`EIO`), or slow (every operation waits); and its stored bytes can rot
//! ([`MemStore::rot`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::ChunkId;
use p2p_net::client::Sink;
use p2p_net::store::{ChunkStore, ChunkWriter, StoreError};

/// How a disk fails for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// Creates and writes fail with `ENOSPC`.
    Full,
    /// Reads fail with `EIO`.
    ReadErrors,
    /// Every operation takes this many more milliseconds.
    Slow(u16),
}

/// A node's disk.
#[derive(Clone, Default)]
pub struct MemStore {
    chunks: Arc<Mutex<BTreeMap<ChunkId, Bytes>>>,
    /// The most its chunks may take (`None`: no limit); past it, a commit
    /// fails with `ENOSPC`, and the node sees the room left.
    capacity: Option<u64>,
    /// The fault in force, and until when (simulated milliseconds).
    fault: Arc<Mutex<Option<(DiskFault, u64)>>>,
    /// Copies the node removed since the checker last looked, each with
    /// whether it was intact.
    removed: Arc<Mutex<Vec<(ChunkId, bool)>>>,
}

fn io_error(op: &'static str, kind: std::io::ErrorKind) -> StoreError {
    StoreError::Io {
        op,
        path: "simulated disk".into(),
        source: std::io::Error::from(kind),
    }
}

impl MemStore {
    /// A disk that holds at most `bytes` of chunks.
    pub fn with_capacity(bytes: Option<u64>) -> Self {
        Self {
            capacity: bytes,
            ..Self::default()
        }
    }

    /// Bytes its chunks take.
    pub fn used(&self) -> u64 {
        self.map().values().map(|b| b.len() as u64).sum()
    }

    /// Bytes it can still take (`None`: no limit).
    pub fn room(&self) -> Option<u64> {
        self.capacity.map(|c| c.saturating_sub(self.used()))
    }

    /// Fail as `fault` says until simulated time `until_ms`.
    pub fn fail(&self, fault: DiskFault, until_ms: u64) {
        *self.fault.lock().expect("fault lock") = Some((fault, until_ms));
    }

    /// The fault in force now, if any.
    fn fault(&self) -> Option<DiskFault> {
        let now = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
        let f = *self.fault.lock().expect("fault lock");
        f.filter(|(_, until)| now < *until).map(|(f, _)| f)
    }

    /// Wait if the disk is slow; fail `op` if the fault says so.
    async fn check(&self, op: &'static str) -> Result<(), StoreError> {
        match self.fault() {
            Some(DiskFault::Slow(ms)) => {
                tokio::time::sleep(std::time::Duration::from_millis(ms.into())).await;
                Ok(())
            }
            Some(DiskFault::Full) if op == "write" => {
                crate::coverage::count("writes_refused_full");
                Err(io_error(op, std::io::ErrorKind::StorageFull))
            }
            Some(DiskFault::ReadErrors) if op == "read" => {
                crate::coverage::count("reads_failed_eio");
                Err(io_error(op, std::io::ErrorKind::Other))
            }
            _ => Ok(()),
        }
    }

    /// Flip one byte of the `pick`-th stored chunk (mod how many there
    /// are) among those `eligible` allows; returns the chunk rotted.
    pub fn rot(&self, pick: usize, eligible: impl Fn(&ChunkId) -> bool) -> Option<ChunkId> {
        let mut map = self.map();
        let ids: Vec<ChunkId> = map.keys().copied().filter(|c| eligible(c)).collect();
        let id = *ids.get(pick % ids.len().max(1))?;
        let v = map.get_mut(&id)?;
        let mut b = v.to_vec();
        let at = pick % b.len().max(1);
        if let Some(x) = b.get_mut(at) {
            *x ^= 0x20;
        }
        *v = Bytes::from(b);
        Some(id)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<ChunkId, Bytes>> {
        self.chunks.lock().expect("store lock")
    }

    /// The chunks on this disk.
    pub fn ids(&self) -> Vec<ChunkId> {
        self.map().keys().copied().collect()
    }

    /// Whether this disk holds `id`, with whatever bytes.
    pub fn holds(&self, id: &ChunkId) -> bool {
        self.map().contains_key(id)
    }

    /// Whether this disk holds `id` with the right bytes.
    pub fn holds_intact(&self, id: &ChunkId) -> bool {
        self.map().get(id).is_some_and(|b| ChunkId::of(b) == *id)
    }

    /// Copies the node removed since the last call, each with whether it
    /// was intact (a wipe is not a removal).
    pub fn take_removed(&self) -> Vec<(ChunkId, bool)> {
        std::mem::take(&mut *self.removed.lock().expect("removed lock"))
    }

    /// Lose the whole disk (a node that never comes back with its data).
    pub fn wipe(&self) {
        self.map().clear();
    }
}

#[async_trait]
impl ChunkStore for MemStore {
    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        Ok(self.ids())
    }

    async fn create(&self, id: &ChunkId) -> Result<Box<dyn ChunkWriter>, StoreError> {
        self.check("write").await?;
        Ok(Box::new(MemWriter {
            store: self.clone(),
            id: *id,
            buf: Vec::new(),
        }))
    }

    async fn read(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        self.check("read").await?;
        self.map().get(id).cloned().ok_or(StoreError::NotFound(*id))
    }

    async fn remove(&self, id: &ChunkId) -> Result<(), StoreError> {
        if let Some(b) = self.map().remove(id) {
            crate::coverage::count("chunks_removed");
            let intact = ChunkId::of(&b) == *id;
            self.removed
                .lock()
                .expect("removed lock")
                .push((*id, intact));
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.used()
    }

    fn disk(&self) -> Option<(u64, u64)> {
        let (room, size) = (self.room()?, self.capacity?);
        let free = if self.fault() == Some(DiskFault::Full) {
            0
        } else {
            room
        };
        Some((free, size))
    }
}

struct MemWriter {
    store: MemStore,
    id: ChunkId,
    buf: Vec<u8>,
}

#[async_trait]
impl ChunkWriter for MemWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.store.check("write").await?;
        self.buf.extend_from_slice(data);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.store.check("write").await?;
        let me = *self;
        let mut map = me.store.map();
        if let Some(cap) = me.store.capacity {
            let used: u64 = map
                .iter()
                .filter(|(id, _)| **id != me.id)
                .map(|(_, b)| b.len() as u64)
                .sum();
            if used + me.buf.len() as u64 > cap {
                crate::coverage::count("writes_refused_full");
                return Err(io_error("write", std::io::ErrorKind::StorageFull));
            }
        }
        map.insert(me.id, Bytes::from(me.buf));
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}

/// Where a simulated get writes: memory.
#[derive(Default)]
pub struct MemSink {
    data: Mutex<Vec<u8>>,
}

impl MemSink {
    pub fn new(size_bytes: usize) -> Self {
        Self {
            data: Mutex::new(vec![0; size_bytes]),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data.into_inner().expect("sink lock")
    }
}

#[async_trait]
impl Sink for MemSink {
    async fn write_at(&self, offset: u64, data: Bytes) -> std::io::Result<()> {
        let mut buf = self.data.lock().expect("sink lock");
        let start = offset as usize;
        let end = start + data.len();
        if end > buf.len() {
            return Err(std::io::Error::other("write past the end of the file"));
        }
        buf[start..end].copy_from_slice(&data);
        Ok(())
    }
}
