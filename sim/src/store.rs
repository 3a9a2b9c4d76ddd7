//! In-memory stand-ins for the disk. A [`MemStore`] is created outside a
//! host's closure, so what it holds survives a crash of the host, like a
//! disk. Writes live in the writer until commit (the sync-and-rename of the
//! disk store): a crash before commit loses them, a crash after does not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::ChunkId;
use p2p_net::client::Sink;
use p2p_net::store::{ChunkStore, ChunkWriter, StoreError};

/// A node's disk.
#[derive(Clone, Default)]
pub struct MemStore {
    chunks: Arc<Mutex<BTreeMap<ChunkId, Bytes>>>,
}

impl MemStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<ChunkId, Bytes>> {
        self.chunks.lock().expect("store lock")
    }

    /// The chunks on this disk.
    pub fn ids(&self) -> Vec<ChunkId> {
        self.map().keys().copied().collect()
    }

    /// Whether this disk holds `id` with the right bytes.
    pub fn holds_intact(&self, id: &ChunkId) -> bool {
        self.map().get(id).is_some_and(|b| ChunkId::of(b) == *id)
    }

    /// Lose the whole disk (a node that never comes back with its data).
    pub fn wipe(&self) {
        self.map().clear();
    }

    /// Flip one byte of every stored chunk (bit rot).
    pub fn corrupt_all(&self) {
        for v in self.map().values_mut() {
            let mut b = v.to_vec();
            if let Some(x) = b.first_mut() {
                *x ^= 0xff;
            }
            *v = Bytes::from(b);
        }
    }
}

#[async_trait]
impl ChunkStore for MemStore {
    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        Ok(self.ids())
    }

    async fn create(&self, id: &ChunkId) -> Result<Box<dyn ChunkWriter>, StoreError> {
        Ok(Box::new(MemWriter {
            store: self.clone(),
            id: *id,
            buf: Vec::new(),
        }))
    }

    async fn read(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        self.map().get(id).cloned().ok_or(StoreError::NotFound(*id))
    }

    async fn remove(&self, id: &ChunkId) -> Result<(), StoreError> {
        if self.map().remove(id).is_some() {
            crate::coverage::count("chunks_removed");
        }
        Ok(())
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
        self.buf.extend_from_slice(data);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let me = *self;
        me.store.map().insert(me.id, Bytes::from(me.buf));
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
