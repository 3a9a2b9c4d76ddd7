//! Where a get writes verified chunk bytes: [`Sink`], and [`FileSink`], the
//! output file of `p2p get`.
//!
//! A get receives pieces from several nodes at once. [`FileSink`] copies
//! each piece, as it arrives, into one of a few reused page-aligned buffers
//! and hands the buffer to one writer thread, which writes the pieces in
//! arrival order and returns the buffers. Three measured costs shaped this
//! (1 GiB get on a 2-core VM, four nodes on the same machine):
//! - positioned writes from several fetch tasks at once contended for the
//!   file's inode lock; spinning on it took a third of the client's CPU;
//! - copying the download into freshly allocated page-cache pages was most
//!   of what was left, and left the final fsync everything to write: aligned
//!   pieces are written with `O_DIRECT` instead, so the disk works while the
//!   network does;
//! - holding received pieces (slices of tonic's receive buffers) until they
//!   were written made tonic allocate new buffers for every message, and the
//!   allocator kept them: copying each piece out at once lets tonic reuse its
//!   buffers, and the pool bounds what is queued to
//!   `WRITE_BUFFERS * WRITE_BUFFER_BYTES`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::error::ClientError;

/// Where a get writes verified chunk bytes.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    async fn write_at(&self, offset: u64, data: Bytes) -> std::io::Result<()>;
}

/// Buffers between the fetches and the writer.
const WRITE_BUFFERS: usize = 4;
/// Size of each: one whole piece.
const WRITE_BUFFER_BYTES: usize = p2p_core::limits::PIECE_SIZE_BYTES;
/// Alignment of direct writes: a multiple of any disk's logical block.
const DIRECT_ALIGN: usize = 4096;
/// Bytes written through the page cache after which their writeback starts.
const WRITEBACK_STEP_BYTES: u64 = 32 * 1024 * 1024;

/// A page-aligned buffer of [`WRITE_BUFFER_BYTES`], and how much of it is used.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let raw = vec![0u8; WRITE_BUFFER_BYTES + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        Self { raw, start, len: 0 }
    }

    fn fill(&mut self, data: &[u8]) {
        self.raw[self.start..self.start + data.len()].copy_from_slice(data);
        self.len = data.len();
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// One write for the writer thread; the permit returns its buffer's slot.
struct Write {
    offset: u64,
    buf: AlignedBuf,
    _slot: OwnedSemaphorePermit,
}

/// Buffers not in use; a semaphore slot is held for each one that is.
struct Pool {
    slots: Arc<Semaphore>,
    free: Mutex<Vec<AlignedBuf>>,
}

type WriterResult = std::io::Result<std::fs::File>;

/// A temporary file next to the destination, renamed into place by
/// [`FileSink::finish`]. Its name is the destination's and the file
/// version's, so a get of the same version into the same place that was
/// interrupted (killed, or failed) finds it again and keeps what it holds
/// (see [`FileSink::open`]). See the module docs for how it writes.
pub struct FileSink {
    pool: Arc<Pool>,
    queue: Mutex<Option<mpsc::UnboundedSender<Write>>>,
    writer: Mutex<Option<std::thread::JoinHandle<WriterResult>>>,
    /// The writer's first error, for the writes refused after it.
    failed: Arc<Mutex<Option<(std::io::ErrorKind, String)>>>,
    tmp: PathBuf,
    dest: PathBuf,
    finished: std::sync::atomic::AtomicBool,
    /// Held open for its lock: one get at a time writes this file.
    _lock: std::fs::File,
    /// Whether the temporary file was there already (a resumed get).
    resumed: bool,
}

/// Suffix of a get's temporary file: `.<output name>.<version>.p2p-part`.
const PART_SUFFIX: &str = ".p2p-part";

/// Temporary files older than this are removed by the next get into their
/// directory: no get will resume them.
pub const PART_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Take the lock on a get's temporary file without waiting.
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` owns; it reads no
    // memory of ours.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl FileSink {
    /// The output of a get of file version `version` (any stable short
    /// string, e.g. the manifest hash) into `dest`, `size_bytes` long. A
    /// temporary file an earlier get of the same version into `dest` left
    /// is opened again, not emptied: [`FileSink::verified`] says which
    /// chunks it already holds intact.
    pub fn open(dest: &Path, size_bytes: u64, version: &str) -> Result<Self, ClientError> {
        let werr = |err| ClientError::WriteOutput {
            path: dest.to_path_buf(),
            err,
        };
        let file_name = dest
            .file_name()
            .ok_or_else(|| werr(std::io::Error::other("not a file path")))?;
        // Renaming over a device or a directory would replace it: refuse.
        if let Ok(meta) = std::fs::metadata(dest)
            && !meta.is_file()
        {
            return Err(werr(std::io::Error::other(
                "exists and is not a regular file (get writes a file, then renames it into place)",
            )));
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.{version}{PART_SUFFIX}",
            file_name.to_string_lossy(),
        ));
        let resumed = tmp.exists();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&tmp)
            .map_err(werr)?;
        // A handle of its own: the lock goes with it, not with the writer's.
        let lock = std::fs::File::open(&tmp).map_err(werr)?;
        if !try_lock(&lock) {
            return Err(werr(std::io::Error::other(
                "another get is writing this output now",
            )));
        }
        let cleanup = |e| {
            let _ = std::fs::remove_file(&tmp);
            werr(e)
        };
        file.set_len(size_bytes).map_err(cleanup)?;
        let pool = Arc::new(Pool {
            slots: Arc::new(Semaphore::new(WRITE_BUFFERS)),
            free: Mutex::new(Vec::new()),
        });
        // Unbounded, but never holds more than the pool's buffers.
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(Mutex::new(None));
        let writer = {
            let (failed, pool, path) = (failed.clone(), pool.clone(), tmp.clone());
            std::thread::Builder::new()
                .name("p2p-get-writer".into())
                .spawn(move || {
                    let r = write_all(&file, &path, rx, &pool);
                    if let Err(e) = &r {
                        *failed.lock().expect("writer error lock") =
                            Some((e.kind(), e.to_string()));
                        // Wake writes waiting for a buffer: they fail now.
                        pool.slots.close();
                    }
                    r.map(|()| file)
                })
                .map_err(cleanup)?
        };
        Ok(Self {
            pool,
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            failed,
            tmp,
            dest: dest.to_path_buf(),
            finished: Default::default(),
            _lock: lock,
            resumed,
        })
    }

    /// Where the bytes go until [`FileSink::finish`].
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Which chunks of `manifest` the temporary file already holds intact
    /// (each read back and checked against its hash): none unless an
    /// earlier get of this version into this output was interrupted.
    pub async fn verified(&self, manifest: &p2p_core::Manifest) -> Result<Vec<bool>, ClientError> {
        let n = manifest.chunks.len();
        if !self.resumed {
            return Ok(vec![false; n]);
        }
        let werr = |err| ClientError::WriteOutput {
            path: self.dest.clone(),
            err,
        };
        let (path, manifest) = (self.tmp.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; manifest.chunk_size_bytes as usize];
            (0..n)
                .map(|i| {
                    let len = manifest.chunk_len(i) as usize;
                    let at = p2p_core::chunking::chunk_offset(manifest.chunk_size_bytes, i as u64);
                    file.read_exact_at(&mut buf[..len], at)?;
                    Ok(p2p_core::ChunkId::of(&buf[..len]) == manifest.chunks[i])
                })
                .collect::<std::io::Result<Vec<bool>>>()
        })
        .await
        .map_err(|e| werr(std::io::Error::other(e)))?
        .map_err(werr)
    }

    /// Remove the temporary files in this output's directory that no get
    /// will resume: those of other versions of this output, and any older
    /// than [`PART_MAX_AGE`] (a get that is writing one holds its lock, and
    /// it is left alone). Returns how many went.
    pub fn sweep(&self) -> usize {
        let Some(dir) = self.tmp.parent() else {
            return 0;
        };
        let Some(own) = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let part = name.starts_with('.') && name.ends_with(PART_SUFFIX);
            // Left by gets before resumable ones: `.<name>.p2p-<pid>-<n>.tmp`.
            let legacy = name.starts_with('.') && name.contains(".p2p-") && name.ends_with(".tmp");
            if path == self.tmp || !(part || legacy) {
                continue;
            }
            let other_version = part && name.starts_with(&format!(".{own}."));
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > PART_MAX_AGE);
            if !(other_version || old) {
                continue;
            }
            let free = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .is_ok_and(|f| try_lock(&f));
            if free && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Wait for every queued write, sync the data and rename the file into
    /// place.
    pub async fn finish(&self) -> Result<(), ClientError> {
        let werr = |err| ClientError::WriteOutput {
            path: self.dest.clone(),
            err,
        };
        // Closing the queue lets the writer drain it and stop.
        drop(self.queue.lock().expect("queue lock").take());
        let writer = self.writer.lock().expect("writer lock").take();
        let Some(writer) = writer else {
            return Err(werr(std::io::Error::other("finished twice")));
        };
        tokio::task::spawn_blocking(move || {
            let file = writer
                .join()
                .map_err(|_| std::io::Error::other("the output writer panicked"))??;
            file.sync_all()
        })
        .await
        .map_err(|e| werr(std::io::Error::other(e)))?
        .map_err(werr)?;
        std::fs::rename(&self.tmp, &self.dest).map_err(werr)?;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        self.finished
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn writer_error(&self) -> std::io::Error {
        match &*self.failed.lock().expect("writer error lock") {
            Some((kind, msg)) => std::io::Error::new(*kind, msg.clone()),
            None => std::io::Error::other("the output is already finished"),
        }
    }
}

impl Drop for FileSink {
    /// Unfinished, the temporary file stays for the next get to resume
    /// (and that get's sweep, or the one after a day, removes it). The
    /// writes already queued (a few buffers) land first.
    fn drop(&mut self) {
        if !self.finished.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(mut q) = self.queue.lock() {
                q.take();
            }
            if let Some(w) = self.writer.lock().ok().and_then(|mut w| w.take()) {
                let _ = w.join();
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn write_at(&self, offset: u64, data: Bytes) -> std::io::Result<()> {
        let mut at = 0;
        while at < data.len() {
            let slot = self
                .pool
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| self.writer_error())?;
            let mut buf = self
                .pool
                .free
                .lock()
                .expect("pool lock")
                .pop()
                .unwrap_or_else(AlignedBuf::new);
            let n = (data.len() - at).min(WRITE_BUFFER_BYTES);
            buf.fill(&data[at..at + n]);
            let write = Write {
                offset: offset + at as u64,
                buf,
                _slot: slot,
            };
            let queue = self.queue.lock().expect("queue lock").clone();
            match queue {
                Some(q) if q.send(write).is_ok() => {}
                _ => return Err(self.writer_error()),
            }
            at += n;
        }
        Ok(())
    }
}

/// The writer thread: each write goes where it belongs, directly if it is
/// aligned and the file system allows it, else through the page cache; its
/// buffer goes back to the pool.
fn write_all(
    file: &std::fs::File,
    path: &Path,
    mut rx: mpsc::UnboundedReceiver<Write>,
    pool: &Pool,
) -> std::io::Result<()> {
    let mut direct = open_direct(path);
    let mut since_writeback = 0u64;
    while let Some(w) = rx.blocking_recv() {
        let data = w.buf.bytes();
        let aligned = data.len() % DIRECT_ALIGN == 0 && w.offset % DIRECT_ALIGN as u64 == 0;
        let mut done = false;
        if let Some(d) = direct.as_ref().filter(|_| aligned) {
            match d.write_all_at(data, w.offset) {
                Ok(()) => done = true,
                // Opened, but refused: this file system takes no direct I/O.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => direct = None,
                Err(e) => return Err(e),
            }
        }
        if !done {
            file.write_all_at(data, w.offset)?;
            since_writeback += data.len() as u64;
            if since_writeback >= WRITEBACK_STEP_BYTES {
                since_writeback = 0;
                start_writeback(file);
            }
        }
        pool.free.lock().expect("pool lock").push(w.buf);
    }
    Ok(())
}

/// A second handle on the output that writes around the page cache, if the
/// file system allows it.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<std::fs::File> {
    None
}

/// Ask the kernel to start writing the file's dirty pages to disk, without
/// waiting for it. Only an optimisation: the final fsync is what counts.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor this thread's `file` owns; it
    // reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File) {}

#[cfg(test)]
mod tests {
    use super::*;

    // Pieces written in any order, aligned or not, larger than a buffer or
    // not, and rewritten, end up exactly where they belong.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_land_where_they_belong() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let size = 3 * WRITE_BUFFER_BYTES + 12_345;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let sink = Arc::new(FileSink::open(&dest, size as u64, "v1").unwrap());
        let cuts = [
            (WRITE_BUFFER_BYTES, 2 * WRITE_BUFFER_BYTES + 100),
            (0, WRITE_BUFFER_BYTES),
            (2 * WRITE_BUFFER_BYTES + 100, size),
        ];
        // A wrong first attempt at the middle, then the right bytes.
        sink.write_at(WRITE_BUFFER_BYTES as u64, Bytes::from(vec![0xAA; 5000]))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for (a, b) in cuts {
            let sink = sink.clone();
            let piece = Bytes::copy_from_slice(&data[a..b]);
            tasks.push(tokio::spawn(
                async move { sink.write_at(a as u64, piece).await },
            ));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        sink.finish().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "only the output remains");
    }

    // An unfinished sink keeps its bytes for the next get of the same
    // version into the same place, which finds the intact chunks (and only
    // those); a second get at once is refused; another version's leftover
    // and stale ones are swept, a locked one is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interrupted_output_is_resumed_and_leftovers_swept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let chunks: Vec<p2p_core::ChunkId> = data.chunks(4096).map(p2p_core::ChunkId::of).collect();
        let m = p2p_core::Manifest::new("out.bin".into(), 10_000, 4096, 1, chunks).unwrap();

        let sink = FileSink::open(&dest, 10_000, "v1").unwrap();
        assert_eq!(sink.verified(&m).await.unwrap(), vec![false; 3]);
        // Chunk 0 whole, chunk 2 half: then the get dies.
        sink.write_at(0, Bytes::copy_from_slice(&data[..4096]))
            .await
            .unwrap();
        sink.write_at(8192, Bytes::copy_from_slice(&data[8192..9000]))
            .await
            .unwrap();
        let busy = FileSink::open(&dest, 10_000, "v1");
        assert!(busy.is_err(), "two gets into one output at once");
        drop(sink);

        std::fs::write(dir.path().join(".out.bin.v0.p2p-part"), b"old version").unwrap();
        std::fs::write(dir.path().join(".other.bin.v9.p2p-part"), b"fresh").unwrap();
        let stale = dir.path().join(".gone.bin.v2.p2p-part");
        std::fs::write(&stale, b"stale").unwrap();
        let day_ago =
            std::time::SystemTime::now() - PART_MAX_AGE - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        let held = dir.path().join(".held.bin.v3.p2p-part");
        std::fs::write(&held, b"in use").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&held)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        let holder = std::fs::File::options().write(true).open(&held).unwrap();
        assert!(try_lock(&holder));

        let sink = FileSink::open(&dest, 10_000, "v1").unwrap();
        assert_eq!(sink.verified(&m).await.unwrap(), vec![true, false, false]);
        assert_eq!(sink.sweep(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".held.bin.v3.p2p-part",
                ".other.bin.v9.p2p-part",
                ".out.bin.v1.p2p-part"
            ]
        );
        sink.write_at(4096, Bytes::copy_from_slice(&data[4096..]))
            .await
            .unwrap();
        sink.finish().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!sink.temp_path().exists());
    }
}
