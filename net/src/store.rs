//! The node's chunk store: a seam ([`ChunkStore`]) and its disk
//! implementation ([`DiskStore`]).
//!
//! On disk, chunk `h` lives at `<data>/chunks/<h[0..2]>/<h>`, where `h` is
//! the chunk's BLAKE3 hash in hex. A chunk is written to `<data>/tmp/`,
//! fsynced, renamed into place, and its directory fsynced: a crash never
//! leaves a partial chunk under a real name. The store does not verify
//! hashes; the node does, on write and on every read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::ChunkId;
use p2p_core::limits::CHUNK_SIZE_MAX_BYTES;
use tokio::io::AsyncWriteExt;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The filesystem refused an operation.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The chunk is not in the store.
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    /// A stored file is larger than any chunk may be.
    #[error("stored chunk {0} is larger than {CHUNK_SIZE_MAX_BYTES} bytes")]
    TooLarge(ChunkId),
    /// The stored bytes do not hash to the chunk's id.
    #[error("stored chunk {0} failed verification")]
    Corrupt(ChunkId),
}

impl StoreError {
    /// The disk (or the quota) is full: the chunk belongs elsewhere.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull
                || source.kind() == std::io::ErrorKind::QuotaExceeded)
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where chunks live. Implementations: [`DiskStore`], and the simulator's
/// in-memory store.
#[async_trait]
pub trait ChunkStore: Send + Sync + 'static {
    /// Every chunk in the store, in id order.
    async fn list(&self) -> Result<Vec<ChunkId>, StoreError>;
    /// Start writing chunk `id`; it appears only on [`ChunkWriter::commit`].
    async fn create(&self, id: &ChunkId) -> Result<Box<dyn ChunkWriter>, StoreError>;
    /// The stored bytes of `id`, unverified.
    async fn read(&self, id: &ChunkId) -> Result<Bytes, StoreError>;
    /// The stored bytes of `id`, checked against it: [`StoreError::Corrupt`]
    /// if they do not hash to `id`.
    async fn read_verified(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        let data = self.read(id).await?;
        if ChunkId::of(&data) != *id {
            return Err(StoreError::Corrupt(*id));
        }
        Ok(data)
    }
    /// Remove `id`; removing a missing chunk is not an error.
    async fn remove(&self, id: &ChunkId) -> Result<(), StoreError>;
    /// Bytes the stored chunks take (0 if the store does not count).
    fn used_bytes(&self) -> u64 {
        0
    }
    /// The disk under the store: bytes free, and its size (`None`: not
    /// known).
    fn disk(&self) -> Option<(u64, u64)> {
        None
    }
}

/// A chunk being written.
#[async_trait]
pub trait ChunkWriter: Send {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError>;
    /// Make the data durable and publish it under its name.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Drop the partial chunk.
    async fn abort(self: Box<Self>);
}

/// Chunks as files under a data directory.
#[derive(Debug)]
pub struct DiskStore {
    chunks: PathBuf,
    tmp: PathBuf,
    next_tmp: AtomicU64,
    /// Bytes of the stored chunks: counted at open, then kept up to date.
    used: Arc<AtomicU64>,
}

impl DiskStore {
    /// Open (creating if needed) the store under `data`; leftover temporary
    /// files from a crash are removed.
    pub async fn open(data: &Path) -> Result<Self, StoreError> {
        let chunks = data.join("chunks");
        let tmp = data.join("tmp");
        tokio::fs::create_dir_all(&chunks)
            .await
            .map_err(io("create", &chunks))?;
        if tokio::fs::try_exists(&tmp).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&tmp)
                .await
                .map_err(io("clean", &tmp))?;
        }
        tokio::fs::create_dir_all(&tmp)
            .await
            .map_err(io("create", &tmp))?;
        let dir = chunks.clone();
        let used = blocking(move || Ok(bytes_under(&dir))).await?;
        Ok(Self {
            chunks,
            tmp,
            next_tmp: AtomicU64::new(0),
            used: Arc::new(AtomicU64::new(used)),
        })
    }

    /// Path of chunk `id` (for tests that corrupt chunks on disk).
    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks.join(&hex[..2]).join(hex)
    }
}

/// Bytes of the files one or two levels under `dir` (the chunk store's
/// layout); what cannot be read counts as nothing.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for fan in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(files) = std::fs::read_dir(fan.path()) else {
            continue;
        };
        for f in files.flatten() {
            total += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// The whole file of chunk `id`, refused if larger than any chunk may be.
fn read_file(path: &Path, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound(*id));
        }
        Err(e) => return Err(io("open", path)(e)),
    };
    let len = file.metadata().map_err(io("stat", path))?.len();
    if len > CHUNK_SIZE_MAX_BYTES {
        return Err(StoreError::TooLarge(*id));
    }
    let mut data = Vec::with_capacity(len as usize);
    // At most one byte past the size: a file that grew is read short of
    // its new end and fails verification, never read without bound.
    file.take(len + 1)
        .read_to_end(&mut data)
        .map_err(io("read", path))?;
    Ok(data)
}

/// Run filesystem work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            op: "run",
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })
    })
}

async fn sync_dir(dir: PathBuf) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", &dir))
    })
    .await
    .unwrap_or_else(|e| {
        Err(StoreError::Io {
            op: "sync",
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })
    })
}

#[async_trait]
impl ChunkStore for DiskStore {
    async fn list(&self) -> Result<Vec<ChunkId>, StoreError> {
        let mut out = Vec::new();
        let mut fans = tokio::fs::read_dir(&self.chunks)
            .await
            .map_err(io("list", &self.chunks))?;
        while let Some(fan) = fans.next_entry().await.map_err(io("list", &self.chunks))? {
            let fan_path = fan.path();
            if !fan.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let mut files = tokio::fs::read_dir(&fan_path)
                .await
                .map_err(io("list", &fan_path))?;
            while let Some(f) = files.next_entry().await.map_err(io("list", &fan_path))? {
                // Names that are not chunk ids are not ours: ignore them.
                if let Some(id) = f
                    .file_name()
                    .to_str()
                    .and_then(|n| ChunkId::from_hex(n).ok())
                {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn create(&self, id: &ChunkId) -> Result<Box<dyn ChunkWriter>, StoreError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}.{n}.tmp", id.to_hex()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io("create", &tmp))?;
        Ok(Box::new(DiskWriter {
            file,
            tmp,
            dest: self.path_of(id),
            committed: false,
            written: 0,
            used: Arc::clone(&self.used),
        }))
    }

    async fn read(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        let (path, id) = (self.path_of(id), *id);
        blocking(move || read_file(&path, &id).map(Bytes::from)).await
    }

    /// Read and hash in one blocking task: one hand-off per chunk, and the
    /// hashing stays off the threads that serve the network.
    async fn read_verified(&self, id: &ChunkId) -> Result<Bytes, StoreError> {
        let (path, id) = (self.path_of(id), *id);
        blocking(move || {
            let data = read_file(&path, &id)?;
            if ChunkId::of(&data) != id {
                return Err(StoreError::Corrupt(id));
            }
            Ok(Bytes::from(data))
        })
        .await
    }

    async fn remove(&self, id: &ChunkId) -> Result<(), StoreError> {
        let path = self.path_of(id);
        let len = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                let len = len.unwrap_or(0);
                let _ = self
                    .used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                        Some(u.saturating_sub(len))
                    });
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn disk(&self) -> Option<(u64, u64)> {
        statvfs(&self.chunks)
    }
}

/// Bytes an unprivileged process may still write on the filesystem of
/// `path`, and its size (`None` if it cannot be asked).
pub fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a buffer of the
    // right type, which statvfs fills when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: filled by the successful call above.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms.
    #[allow(clippy::unnecessary_cast)]
    let (free, total, size) = (st.f_bavail as u64, st.f_blocks as u64, st.f_frsize as u64);
    Some((free.saturating_mul(size), total.saturating_mul(size)))
}

/// A chunk being written. Its temporary file is removed on every way out
/// but a successful commit: an error, an abort, or the upload's task being
/// dropped (the client went away), so a failed upload leaves nothing on a
/// disk that may well be full.
struct DiskWriter {
    file: tokio::fs::File,
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
    written: u64,
    used: Arc<AtomicU64>,
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[async_trait]
impl ChunkWriter for DiskWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(data)
            .await
            .map_err(io("write", &self.tmp))?;
        self.written += data.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.file.flush().await.map_err(io("write", &self.tmp))?;
        self.file.sync_all().await.map_err(io("sync", &self.tmp))?;
        let dir = self
            .dest
            .parent()
            .expect("chunk paths have a parent")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("create", &dir))?;
        let replaced = tokio::fs::metadata(&self.dest)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .map_err(io("rename", &self.tmp))?;
        self.committed = true;
        let (written, used) = (self.written, &self.used);
        let _ = used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
            Some(u.saturating_sub(replaced).saturating_add(written))
        });
        sync_dir(dir).await
    }

    async fn abort(self: Box<Self>) {
        // Dropping removes the temporary file.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A committed chunk is listed and readable; an aborted one leaves nothing.
    #[tokio::test]
    async fn write_commit_read_abort() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).await.unwrap();
        let id = ChunkId::of(b"hello world");
        let mut w = store.create(&id).await.unwrap();
        w.write(b"hello ").await.unwrap();
        w.write(b"world").await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(
            store.read(&id).await.unwrap(),
            Bytes::from_static(b"hello world")
        );
        assert_eq!(store.list().await.unwrap(), vec![id]);

        let other = ChunkId::of(b"x");
        let mut w = store.create(&other).await.unwrap();
        w.write(b"x").await.unwrap();
        w.abort().await;
        assert!(matches!(
            store.read(&other).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        store.remove(&id).await.unwrap();
        store.remove(&id).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
    }

    // The bytes the chunks take: counted as they are written, stored again
    // and removed, and counted afresh when the store opens.
    #[tokio::test]
    async fn used_bytes_follow_the_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).await.unwrap();
        assert_eq!(store.used_bytes(), 0);
        assert!(
            store
                .disk()
                .is_some_and(|(free, size)| free > 0 && size >= free)
        );
        for (data, used) in [(&b"twelve bytes"[..], 12), (b"three", 17), (b"three", 17)] {
            let mut w = store.create(&ChunkId::of(data)).await.unwrap();
            w.write(data).await.unwrap();
            w.commit().await.unwrap();
            assert_eq!(store.used_bytes(), used);
        }
        let aborted = store.create(&ChunkId::of(b"gone")).await.unwrap();
        aborted.abort().await;
        assert_eq!(store.used_bytes(), 17);
        let reopened = DiskStore::open(dir.path()).await.unwrap();
        assert_eq!(reopened.used_bytes(), 17);
        store.remove(&ChunkId::of(b"three")).await.unwrap();
        store.remove(&ChunkId::of(b"three")).await.unwrap();
        assert_eq!(store.used_bytes(), 12);
    }

    // A writer dropped half-way (its upload's task was cancelled when the
    // client went away) leaves no temporary file.
    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path()).await.unwrap();
        let mut w = store.create(&ChunkId::of(b"whole")).await.unwrap();
        w.write(b"half").await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1
        );
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    // Leftover temp files from a crash are cleaned on open, never listed.
    #[tokio::test]
    async fn crash_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStore::open(dir.path()).await.unwrap());
        std::fs::write(dir.path().join("tmp").join("junk.tmp"), b"partial").unwrap();
        std::fs::create_dir_all(dir.path().join("chunks/zz")).unwrap();
        std::fs::write(dir.path().join("chunks/zz/not-a-chunk"), b"?").unwrap();
        let store = DiskStore::open(dir.path()).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
