//! The node: serves and stores chunks over gRPC, heartbeats to the tracker
//! with its inventory, carries out the tracker's repair and delete commands,
//! scrubs its chunks, and hands its chunks over when it leaves.
//!
//! Every chunk is verified against its hash when it is received (before it
//! is synced and counted) and every time it is read (before a byte is
//! served, copied or scrubbed). A chunk that fails on read is removed and
//! reported in the next heartbeat, so the tracker stops sending readers to
//! it and has another copy made.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use p2p_core::ChunkId;
use p2p_core::NodeId;
use p2p_core::ack::{AckBook, ReceiptKey, Stamp};
use p2p_core::enroll::Call;
use p2p_core::inventory::Inventory;
use p2p_core::limits::{
    ADDR_MAX_BYTES, CHUNK_SIZE_MAX_BYTES, MESSAGE_SIZE_MAX_BYTES, PIECE_SIZE_BYTES, REPLICAS_MAX,
    REPORT_PART_CHUNKS, UPLOADS_PER_PEER_MAX,
};
use p2p_core::mutants::Mutant;

use crate::access::{allow, caller};
use crate::transport::PerPeer;
use p2p_proto as pb;
use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::ClientError;
use crate::store::{ChunkStore, ChunkWriter, StoreError};
use crate::transport::{Dialer, Peers};

/// Tuning of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How often to heartbeat (the tracker may ask for another interval).
    pub heartbeat_interval: Duration,
    /// Chunks read and served at once (each is held in memory while served).
    pub serve_concurrency: usize,
    /// Chunks handed over at once during a leave.
    pub handoff_concurrency: usize,
    /// Repair copies this node sends at once (the tracker bounds it too).
    pub repair_concurrency: usize,
    /// Bytes per second the scrubber reads; 0 turns scrubbing off.
    pub scrub_bytes_per_sec: u64,
    /// A scrub pass starts at most this often.
    pub scrub_every: Duration,
    /// The failure domain this node is in (`None`: a zone of its own): the
    /// tracker puts a chunk's copies in distinct zones.
    pub zone: Option<String>,
    /// The most bytes of chunks this node takes (`None`: what its disk has
    /// free, less `disk_reserve_bytes`).
    pub capacity_bytes: Option<u64>,
    /// Bytes of its disk a node leaves free ([`DISK_RESERVE_BYTES`], or a
    /// twentieth of a smaller disk).
    pub disk_reserve_bytes: u64,
    /// The node left the network before and joins again (`p2p node
    /// --rejoin`): its first registration asks the tracker to take it back.
    /// Without it the tracker refuses a node that left, and the node stops.
    pub rejoin: bool,
}

/// Bytes of its disk a node leaves free when it is not told a capacity.
pub const DISK_RESERVE_BYTES: u64 = 512 << 20;

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            serve_concurrency: 16,
            handoff_concurrency: 4,
            repair_concurrency: 4,
            scrub_bytes_per_sec: 16 << 20,
            scrub_every: Duration::from_secs(60),
            zone: None,
            capacity_bytes: None,
            disk_reserve_bytes: DISK_RESERVE_BYTES,
            rejoin: false,
        }
    }
}

/// Repair copies finished since the last heartbeat, as (chunk, target).
#[derive(Default)]
struct RepairOutcomes {
    made: Vec<(ChunkId, NodeId)>,
    failed: Vec<(ChunkId, NodeId)>,
}

struct Inner<S: ChunkStore, D: Dialer> {
    id: NodeId,
    /// Certificates the cluster revoked, as the tracker last said.
    revoked: crate::access::Revoked,
    /// Uploads in progress, by peer.
    uploads: PerPeer,
    addr: String,
    tracker_addr: String,
    store: S,
    peers: Peers<D>,
    inventory: std::sync::Mutex<Inventory>,
    /// Upload acknowledgements and the heartbeat sequence (see
    /// `p2p_core::ack`). Locked before `inventory` when both are.
    book: std::sync::Mutex<AckBook>,
    /// An upload's rename and acknowledgement, and a tracker's delete of
    /// the same chunk, never interleave: one lock per shard of chunk ids.
    gates: Vec<tokio::sync::Mutex<()>>,
    reads: Arc<Semaphore>,
    repairs: Arc<Semaphore>,
    /// Repair copies under way, by chunk and target, so a resent command is
    /// not run twice.
    copying: std::sync::Mutex<BTreeSet<(ChunkId, NodeId)>>,
    /// Repair copies finished since the last heartbeat, which reports them.
    repair_outcomes: std::sync::Mutex<RepairOutcomes>,
    /// Copies read back intact on the tracker's request since the last
    /// heartbeat, each with the heartbeat whose reply asked: sent once (a
    /// lost answer is asked for again).
    verified: std::sync::Mutex<Vec<(ChunkId, u64)>>,
    /// Wakes the heartbeat loop early, to report finished repairs.
    report_soon: tokio::sync::Notify,
    config: NodeConfig,
    leave_lock: tokio::sync::Mutex<()>,
    /// A leave is under way: the node must not register again, or the
    /// tracker would count it (and place chunks on it) after it has left.
    leaving: std::sync::atomic::AtomicBool,
    shutdown: watch::Sender<bool>,
    /// Its next registration asks to join again (see `NodeConfig::rejoin`).
    rejoin: std::sync::atomic::AtomicBool,
    /// How it stopped, if it did: it left, or the tracker refused it
    /// because it had left before.
    ended: std::sync::Mutex<Option<Ended>>,
    /// What `/metrics` shows.
    counters: crate::metrics::NodeCounters,
    /// Copies found corrupt since the last heartbeat, which reports them.
    corrupt_unreported: std::sync::atomic::AtomicU64,
}

/// A node. Cheap to clone; all clones share one state.
pub struct NodeService<S: ChunkStore, D: Dialer> {
    inner: Arc<Inner<S, D>>,
}

impl<S: ChunkStore, D: Dialer> NodeService<S, D> {
    /// The revoked certificates this node refuses (learnt on heartbeats).
    pub fn revoked(&self) -> crate::access::Revoked {
        self.inner.revoked.clone()
    }
}

impl<S: ChunkStore, D: Dialer> Clone for NodeService<S, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// Shards of the per-chunk gate (see `Inner::gates`).
const GATES: usize = 64;

/// Pieces of a chunk a node holds for the next node of a chain before it
/// stops reading from the previous one (8 upload pieces: 2 MiB).
const FORWARD_PIECES_QUEUED: usize = 8;

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(id) => Status::not_found(format!("chunk {id} not held here")),
        e if e.is_disk_full() => Status::resource_exhausted(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

impl<S: ChunkStore, D: Dialer> NodeService<S, D> {
    /// A node with identity `id`, reachable by peers at `addr`.
    pub async fn open(
        id: NodeId,
        addr: String,
        tracker_addr: String,
        store: S,
        dialer: D,
        config: NodeConfig,
    ) -> Result<Self, StoreError> {
        let held = store.list().await?;
        let (shutdown, _) = watch::channel(false);
        let rejoin = config.rejoin;
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                revoked: Default::default(),
                uploads: PerPeer::new(UPLOADS_PER_PEER_MAX),
                addr,
                tracker_addr,
                store,
                peers: Peers::new(dialer),
                inventory: std::sync::Mutex::new(Inventory::new(held)),
                book: std::sync::Mutex::new(AckBook::default()),
                gates: (0..GATES).map(|_| tokio::sync::Mutex::new(())).collect(),
                reads: Arc::new(Semaphore::new(config.serve_concurrency.max(1))),
                repairs: Arc::new(Semaphore::new(config.repair_concurrency.max(1))),
                copying: std::sync::Mutex::new(BTreeSet::new()),
                repair_outcomes: std::sync::Mutex::new(RepairOutcomes::default()),
                verified: std::sync::Mutex::new(Vec::new()),
                report_soon: tokio::sync::Notify::new(),
                config,
                leave_lock: tokio::sync::Mutex::new(()),
                leaving: std::sync::atomic::AtomicBool::new(false),
                rejoin: std::sync::atomic::AtomicBool::new(rejoin),
                ended: std::sync::Mutex::new(None),
                shutdown,
                counters: Default::default(),
                corrupt_unreported: Default::default(),
            }),
        })
    }

    pub fn id(&self) -> &NodeId {
        &self.inner.id
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub fn chunk_count(&self) -> usize {
        self.inventory().len()
    }

    /// Whether this node holds `id` (stored, synced and verified on receipt).
    pub fn holds(&self, id: &ChunkId) -> bool {
        self.inventory().contains(id)
    }

    /// Becomes `true` when the node has left (or was refused for having
    /// left before) and should stop serving.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Why the node stopped, once it has (see [`Ended`]).
    pub fn ended(&self) -> Option<Ended> {
        self.inner.ended.lock().expect("ended lock").clone()
    }

    fn end(&self, how: Ended) {
        *self.inner.ended.lock().expect("ended lock") = Some(how);
        let _ = self.inner.shutdown.send(true);
    }

    fn inventory(&self) -> std::sync::MutexGuard<'_, Inventory> {
        self.inner.inventory.lock().expect("inventory lock")
    }

    fn book(&self) -> std::sync::MutexGuard<'_, AckBook> {
        self.inner.book.lock().expect("ack book lock")
    }

    fn gate(&self, id: &ChunkId) -> &tokio::sync::Mutex<()> {
        &self.inner.gates[id.as_bytes()[0] as usize % GATES]
    }

    /// The gRPC server wrapper, with message sizes bounded.
    pub fn into_server(self) -> pb::node_server::NodeServer<Self> {
        pb::node_server::NodeServer::new(self)
            .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES)
            .max_encoding_message_size(MESSAGE_SIZE_MAX_BYTES)
    }

    fn tracker_client(&self) -> Result<crate::transport::TrackerRpc, ClientError> {
        self.inner.peers.tracker(&self.inner.tracker_addr)
    }

    /// A tracker call failed: follow a tracker group's redirect (or try
    /// its next member next time), and say what failed.
    fn tracker_err(&self, s: tonic::Status) -> ClientError {
        self.inner
            .peers
            .tracker_failed(&self.inner.tracker_addr, &s);
        ClientError::from_tracker(&self.inner.tracker_addr, s)
    }

    /// Register, then heartbeat every interval, forever (until shutdown).
    /// Spawn this. Failures are logged once per outage and retried.
    pub async fn run_heartbeats(self) {
        let mut registered = false;
        let mut failing = false;
        let mut interval = self.inner.config.heartbeat_interval;
        let mut shutdown = self.shutdown_signal();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let leaving = self.inner.leaving.load(std::sync::atomic::Ordering::SeqCst);
            let target = self.inner.peers.tracker_target(&self.inner.tracker_addr);
            let result = if !registered && leaving {
                // The tracker forgot this node (it left, or is about to):
                // registering again would bring it back. Wait for the
                // leave to finish, or to fail.
                Ok(())
            } else if registered {
                self.heartbeat_once().await.map(|reregister| {
                    if reregister {
                        tracing::info!("tracker asked for a full inventory");
                        registered = false;
                    }
                })
            } else {
                self.register_once().await.map(|(ms, s, key)| {
                    registered = true;
                    self.book().registered(s, key);
                    if ms > 0 {
                        interval =
                            Duration::from_millis(ms).min(self.inner.config.heartbeat_interval);
                    }
                })
            };
            if *shutdown.borrow() {
                // Refused for good (it had left): nothing to retry.
                return;
            }
            match result {
                Ok(()) if failing => {
                    tracing::info!("tracker reachable again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot reach the tracker; will keep trying");
                    failing = true;
                }
                Err(_) => {}
            }
            if !registered && !failing && !leaving {
                continue;
            }
            // A tracker group's member that failed or redirected: the next
            // one is tried soon, not a whole interval later (a failover).
            let moved =
                failing && self.inner.peers.tracker_target(&self.inner.tracker_addr) != target;
            let wait = if moved {
                interval.min(Duration::from_millis(100))
            } else {
                interval
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = self.inner.report_soon.notified(), if registered && !failing => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The Prometheus text of this node's metrics, with `rpc`'s.
    pub fn metrics_text(&self, rpc: &crate::metrics::RpcMetrics) -> String {
        use crate::metrics::{gauge, i64_of};
        let chunks = self.inventory().len();
        let space = self.space();
        crate::metrics::render(|r| {
            rpc.register(r);
            self.inner.counters.register(r);
            gauge(
                r,
                "p2p_chunks",
                "Chunks stored on this node",
                i64_of(chunks as u64),
            );
            if let Some(s) = space {
                gauge(
                    r,
                    "p2p_used_bytes",
                    "Bytes the stored chunks take",
                    i64_of(s.used),
                );
                gauge(
                    r,
                    "p2p_capacity_bytes",
                    "The most this node stores (--capacity, or its disk's free space less a reserve, plus what it holds)",
                    i64_of(s.capacity),
                );
            }
        })
    }

    /// What this node's disk holds and offers (`None` if it cannot say):
    /// its capacity is `--capacity` if given, but never more than what it
    /// holds plus what its disk has free less its reserve (no more than a
    /// twentieth of a small disk).
    fn space(&self) -> Option<pb::DiskSpace> {
        let store = &self.inner.store;
        let used = store.used_bytes();
        let offered = store.disk().map(|(free, size)| {
            let reserve = self.inner.config.disk_reserve_bytes.min(size / 20);
            used.saturating_add(free.saturating_sub(reserve))
        });
        let capacity = match (self.inner.config.capacity_bytes, offered) {
            (Some(cap), Some(offered)) => cap.min(offered),
            (cap, offered) => cap.or(offered)?,
        };
        Some(pb::DiskSpace {
            used,
            capacity: capacity.max(1),
        })
    }

    /// Register with the full inventory, streamed in parts of bounded
    /// size; returns the heartbeat interval the tracker asks for, the
    /// registration's session and its receipt key.
    async fn register_once(&self) -> Result<(u64, u64, ReceiptKey), ClientError> {
        let all = {
            let mut inv = self.inventory();
            inv.reported_all();
            inv.all()
        };
        let part = |chunks: &[ChunkId]| pb::RegisterRequest {
            node_id: self.inner.id.to_string(),
            addr: self.inner.addr.clone(),
            chunks: convert::chunk_bytes(chunks),
            ..Default::default()
        };
        let mut parts: Vec<pb::RegisterRequest> =
            all.chunks(REPORT_PART_CHUNKS).map(part).collect();
        if parts.is_empty() {
            parts.push(part(&[]));
        }
        parts[0].zone = self.inner.config.zone.clone().unwrap_or_default();
        parts[0].space = self.space();
        parts[0].rejoin = self.inner.rejoin.load(std::sync::atomic::Ordering::SeqCst);
        let resp = match self
            .tracker_client()?
            .report(tokio_stream::iter(parts))
            .await
        {
            Ok(r) => r,
            Err(s) if crate::signals::departed(&s) => {
                tracing::error!(node = %self.inner.id, "{}", s.message());
                self.end(Ended::Refused(s.message().to_string()));
                return Err(self.tracker_err(s));
            }
            Err(s) => return Err(self.tracker_err(s)),
        };
        self.inner
            .rejoin
            .store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(node = %self.inner.id, chunks = all.len(), "registered with the tracker");
        let resp = resp.into_inner();
        // A key of the wrong length (a tracker that sends none) makes
        // receipts that do not hold: puts then count this node only once
        // it reports the chunk.
        let key = ReceiptKey::try_from(&resp.receipt_key[..]).unwrap_or_default();
        Ok((resp.heartbeat_interval_ms, resp.session, key))
    }

    /// One heartbeat, numbered in the registration's session (the tracker
    /// ignores one overtaken by a newer one); `Ok(true)` if the tracker
    /// wants a full report.
    async fn heartbeat_once(&self) -> Result<bool, ClientError> {
        // Every upload acknowledged before this heartbeat's number was
        // taken is in its report (see `p2p_core::ack`).
        let (stamp, delta) = {
            let mut book = self.book();
            let stamp = book.next_heartbeat();
            (stamp, self.inventory().take_delta())
        };
        let outcomes =
            std::mem::take(&mut *self.inner.repair_outcomes.lock().expect("outcomes lock"));
        let verified = std::mem::take(&mut *self.inner.verified.lock().expect("verified lock"));
        let pairs =
            |v: &[(ChunkId, NodeId)]| v.iter().map(|(c, t)| convert::handed_to_pb(c, t)).collect();
        let corrupt_found = self
            .inner
            .corrupt_unreported
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        let req = pb::HeartbeatRequest {
            node_id: self.inner.id.to_string(),
            added: convert::chunk_bytes(&delta.added),
            added_puts: delta.added_puts.clone(),
            removed: convert::chunk_bytes(&delta.removed),
            failed: pairs(&outcomes.failed),
            repaired: pairs(&outcomes.made),
            session: stamp.session,
            seq: stamp.seq,
            verified: verified
                .iter()
                .map(|(c, asked)| pb::Verified {
                    chunk: c.as_bytes().to_vec().into(),
                    asked: *asked,
                })
                .collect(),
            space: self.space(),
            corrupt_found,
        };
        // A heartbeat gets its answer well before the tracker would count
        // this node dead, or the connection is given up: the next one goes
        // on a new connection (one whose segments are lost takes calls
        // until keepalive gives up on it, longer than the tracker waits).
        let deadline = (self.inner.config.heartbeat_interval * 3).max(Duration::from_secs(1));
        let mut rpc = self.tracker_client()?;
        let result = match tokio::time::timeout(deadline, rpc.heartbeat(req)).await {
            Ok(r) => r,
            Err(_) => {
                let target = self.inner.peers.tracker_target(&self.inner.tracker_addr);
                self.inner.peers.forget(&target);
                Err(tonic::Status::deadline_exceeded(format!(
                    "no answer to a heartbeat within {deadline:?}"
                )))
            }
        };
        if result.is_err() {
            // Said again with the next heartbeat.
            self.inner
                .corrupt_unreported
                .fetch_add(corrupt_found, std::sync::atomic::Ordering::Relaxed);
        }
        let result = match result {
            Ok(resp) => {
                let resp = resp.into_inner();
                self.inner.revoked.replace(resp.revoked);
                if resp.reregister {
                    // Not applied: the uploads it reported go again, after
                    // the full report (which does not cancel deletions).
                    self.inventory().restore_delta(delta);
                }
                let mut verify = Vec::new();
                for c in resp.commands {
                    match c.kind {
                        Some(pb::command::Kind::Verify(v)) => match convert::chunk_id(&v.chunk) {
                            Ok(id) => verify.push(id),
                            Err(_) => {
                                tracing::warn!("tracker sent a verify with a malformed chunk id")
                            }
                        },
                        _ => self.command(c, stamp).await,
                    }
                }
                if !verify.is_empty() {
                    tokio::spawn(self.clone().verify(verify, stamp.seq));
                }
                Ok(resp.reregister)
            }
            Err(s) => {
                self.inner
                    .peers
                    .tracker_failed(&self.inner.tracker_addr, &s);
                self.inventory().restore_delta(delta);
                // Report the outcomes again next time: if this heartbeat
                // arrives at all, it arrives overtaken and is ignored.
                let mut pending = self.inner.repair_outcomes.lock().expect("outcomes lock");
                pending.made.extend(outcomes.made);
                pending.failed.extend(outcomes.failed);
                Err(ClientError::from_tracker(&self.inner.tracker_addr, s))
            }
        };
        self.book().replied(stamp);
        result
    }

    /// Carry out one command from the reply to heartbeat `reply`. Deletes
    /// happen at once, unless an upload of the chunk was acknowledged since
    /// that heartbeat (see `p2p_core::ack`); copies run in the background,
    /// a bounded number at a time.
    async fn command(&self, c: pb::Command, reply: Stamp) {
        match c.kind {
            Some(pb::command::Kind::Delete(d)) => {
                let Ok(id) = convert::chunk_id(&d.chunk) else {
                    tracing::warn!("tracker sent a delete with a malformed chunk id");
                    return;
                };
                let _gate = self.gate(&id).lock().await;
                if !self.book().may_delete(&id, reply) {
                    tracing::info!(chunk = %id, "kept: an upload since may count on it");
                    return;
                }
                match self.inner.store.remove(&id).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => {
                        tracing::debug!(chunk = %id, "deleted as the tracker asked");
                        self.inventory().deleted(id);
                    }
                    Err(e) => tracing::warn!(chunk = %id, error = %e, "cannot delete chunk"),
                }
            }
            Some(pb::command::Kind::Replicate(r)) => {
                let h = match convert::handoff_from_pb(&r) {
                    Ok(h) => h,
                    Err(s) => {
                        tracing::warn!(error = %s.message(), "tracker sent a malformed repair");
                        return;
                    }
                };
                if !self
                    .inner
                    .copying
                    .lock()
                    .expect("copying lock")
                    .insert((h.chunk, h.target.id.clone()))
                {
                    return;
                }
                let node = self.clone();
                tokio::spawn(async move {
                    let _permit = node.inner.repairs.clone().acquire_owned().await;
                    let result = node.copy_chunk(&h.chunk, &h.target.addr).await;
                    let copy = (h.chunk, h.target.id.clone());
                    {
                        let mut outcomes =
                            node.inner.repair_outcomes.lock().expect("outcomes lock");
                        match result {
                            Ok(()) => {
                                tracing::info!(chunk = %h.chunk, target = %h.target.addr, "repair copy made");
                                outcomes.made.push(copy);
                            }
                            Err(e) => {
                                tracing::warn!(chunk = %h.chunk, target = %h.target.addr, error = %e, "repair copy failed");
                                outcomes.failed.push(copy);
                            }
                        }
                    }
                    node.inner
                        .copying
                        .lock()
                        .expect("copying lock")
                        .remove(&(h.chunk, h.target.id.clone()));
                    node.inner.report_soon.notify_one();
                });
            }
            Some(pb::command::Kind::Verify(_)) => {}
            None => tracing::warn!("tracker sent an empty command"),
        }
    }

    /// Read back each of `chunks` and check it against its id, as the reply
    /// to heartbeat `asked` told us to: a corrupt copy is removed and
    /// reported gone, an intact one reported verified with the next
    /// heartbeat, which goes soon.
    async fn verify(self, chunks: Vec<ChunkId>, asked: u64) {
        let mut intact = Vec::new();
        for id in chunks {
            match self.read_verified(&id).await {
                Ok(_) => intact.push((id, asked)),
                Err(s) => tracing::info!(chunk = %id, error = %s.message(), "not verified"),
            }
        }
        self.inner
            .verified
            .lock()
            .expect("verified lock")
            .extend(intact);
        self.inner.report_soon.notify_one();
    }

    /// Send our verified copy of `chunk` to the node at `target`, which
    /// verifies and syncs it before it acknowledges.
    async fn copy_chunk(&self, chunk: &ChunkId, target: &str) -> Result<(), ClientError> {
        let data = self
            .read_verified(chunk)
            .await
            .map_err(|s| ClientError::from_node(&self.inner.addr, s))?;
        let len = data.len() as u64;
        crate::client::upload_chunk(&self.inner.peers, target, *chunk, data, 0).await?;
        self.inner.counters.sent_bytes.inc_by(len);
        Ok(())
    }

    /// Verify every chunk, forever, reading at most `scrub_bytes_per_sec`.
    /// A chunk that fails is removed and reported, and the tracker has it
    /// copied again from a good holder. Spawn this; it ends at shutdown.
    pub async fn run_scrubber(self) {
        let rate = self.inner.config.scrub_bytes_per_sec;
        if rate == 0 {
            return;
        }
        let mut shutdown = self.shutdown_signal();
        loop {
            let started = tokio::time::Instant::now();
            let chunks = self.inventory().all();
            let mut bad = 0;
            for id in &chunks {
                if !self.inventory().contains(id) {
                    continue;
                }
                let len = match self.read_verified(id).await {
                    Ok(data) => data.len() as u64,
                    Err(s) if s.code() == tonic::Code::DataLoss => {
                        bad += 1;
                        0
                    }
                    Err(_) => 0,
                };
                let pause = Duration::from_secs_f64(len as f64 / rate as f64);
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            tracing::debug!(chunks = chunks.len(), bad, "scrub pass done");
            let next = started + self.inner.config.scrub_every;
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(next.max(tokio::time::Instant::now() + Duration::from_millis(100))) => {}
            }
        }
    }

    /// Read a chunk and check it against its hash. A chunk that fails is
    /// removed, so it is never served, and reported at the next heartbeat.
    pub async fn read_verified(&self, id: &ChunkId) -> Result<Bytes, Status> {
        match self.inner.store.read_verified(id).await {
            Ok(data) => Ok(data),
            Err(StoreError::Corrupt(_)) => {
                tracing::error!(chunk = %id, "stored chunk failed verification; removing it");
                self.inner.counters.corrupt_found.inc();
                self.inner
                    .corrupt_unreported
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = self.inner.store.remove(id).await {
                    tracing::error!(chunk = %id, error = %e, "cannot remove corrupt chunk");
                }
                self.inventory().removed(*id);
                Err(Status::data_loss(format!(
                    "chunk {id} failed verification here and was removed"
                )))
            }
            Err(e) => Err(store_status(e)),
        }
    }

    async fn receive(
        &self,
        stream: &mut Streaming<pb::PutChunkRequest>,
        id: ChunkId,
        size: u64,
        writer: &mut Box<dyn ChunkWriter>,
        forward: &mut Option<tokio::sync::mpsc::Sender<Bytes>>,
    ) -> Result<(), Status> {
        let piece_timeout = self.inner.peers.timeouts().piece;
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        loop {
            let msg = tokio::time::timeout(piece_timeout, stream.message())
                .await
                .map_err(|_| Status::deadline_exceeded("timed out waiting for chunk data"))??;
            let Some(msg) = msg else { break };
            let Some(pb::put_chunk_request::Msg::Data(data)) = msg.msg else {
                return Err(Status::invalid_argument(
                    "expected chunk data after the header",
                ));
            };
            received += data.len() as u64;
            self.inner.counters.received_bytes.inc_by(data.len() as u64);
            if received > size {
                return Err(Status::invalid_argument(format!(
                    "more than the declared {size} bytes"
                )));
            }
            if let Some(tx) = forward
                && tx.send(data.clone()).await.is_err()
            {
                // The next link failed; its answer says why. This copy
                // goes on.
                *forward = None;
            }
            hasher.update(&data);
            writer.write(&data).await.map_err(store_status)?;
        }
        if received != size {
            return Err(Status::invalid_argument(format!(
                "received {received} of {size} bytes"
            )));
        }
        if ChunkId(*hasher.finalize().as_bytes()) != id {
            return Err(Status::data_loss("chunk data does not match its hash"));
        }
        Ok(())
    }

    /// Hand every chunk that depends on this node to the node the tracker
    /// chose, then leave. `progress(done, total)` follows the hand-over.
    /// Refused if the others cannot take every chunk, unless `force`: then
    /// it hands over what it can and leaves anyway.
    pub async fn leave(
        &self,
        force: bool,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), ClientError> {
        let _only_one = self
            .inner
            .leave_lock
            .try_lock()
            .map_err(|_| ClientError::Leave("a leave is already under way".into()))?;
        self.inner
            .leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let r = self.leave_rounds(force, progress).await;
        if r.is_err() {
            // It stays: heartbeats may register it again.
            self.inner
                .leaving
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }

    /// Tell the tracker what was handed over and ask to leave; returns
    /// the chunks that still depend on this node (none: it has left). A
    /// call whose reply is lost may have taken effect: it is made again,
    /// and a tracker that no longer knows this node after such a call
    /// means it has left (registering again would bring it back).
    async fn finish_leave(
        &self,
        handed: Vec<pb::Handed>,
        force: bool,
    ) -> Result<Vec<bytes::Bytes>, ClientError> {
        const ATTEMPTS: u32 = 5;
        let mut unsure = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self
                .tracker_client()?
                .finish_leave(pb::FinishLeaveRequest {
                    node_id: self.inner.id.to_string(),
                    handed: handed.clone(),
                    force,
                })
                .await;
            let s = match r {
                Ok(resp) => return Ok(resp.into_inner().still_needed),
                Err(s) => s,
            };
            let definite = matches!(
                s.code(),
                tonic::Code::NotFound
                    | tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::PermissionDenied
            );
            if unsure && s.code() == tonic::Code::NotFound {
                return Ok(Vec::new());
            }
            if definite || attempt >= ATTEMPTS {
                return Err(self.tracker_err(s));
            }
            self.inner
                .peers
                .tracker_failed(&self.inner.tracker_addr, &s);
            tracing::info!(error = %s.message(), "leave not confirmed; asking the tracker again");
            unsure = true;
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }

    async fn leave_rounds(
        &self,
        force: bool,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), ClientError> {
        let tracker_err = |s| self.tracker_err(s);
        let mut still = 0;
        const ROUNDS: usize = 3;
        // Heartbeats a round waits for the chunks still needed to drop
        // before it starts the next (two: the tracker's freshness window).
        const LEAVE_IDLE_WAITS_MAX: u32 = 3;
        for round in 0..ROUNDS {
            let handoffs = self
                .tracker_client()?
                .begin_leave(pb::BeginLeaveRequest {
                    node_id: self.inner.id.to_string(),
                    force,
                })
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::FailedPrecondition => ClientError::Leave(format!(
                        "the other nodes cannot take this node's chunks ({}); it stays",
                        s.message()
                    )),
                    _ => tracker_err(s),
                })?
                .into_inner()
                .handoffs;
            let total = handoffs.len() as u64;
            progress(0, total);
            let mut done = 0;
            let mut handed = Vec::new();
            let mut work = futures::stream::iter(handoffs)
                .map(|h| async move {
                    let h = convert::handoff_from_pb(&h).map_err(|s| ClientError::Protocol {
                        peer: "tracker".into(),
                        msg: s.message().to_string(),
                    })?;
                    self.copy_chunk(&h.chunk, &h.target.addr).await?;
                    Ok::<_, ClientError>(convert::handed_to_pb(&h.chunk, &h.target.id))
                })
                .buffer_unordered(self.inner.config.handoff_concurrency.max(1));
            while let Some(r) = work.next().await {
                match r {
                    Ok(h) => handed.push(h),
                    Err(e) => tracing::warn!(error = %e, "hand-over failed; will retry"),
                }
                done += 1;
                progress(done, total);
            }
            let last = force && round + 1 == ROUNDS;
            let mut still_needed = self.finish_leave(handed, last).await?;
            // The tracker counts another holder only once it has heard
            // from it since this round began (one may have crashed just
            // before), and a copy handed over once its target has read it
            // back intact: ask again every heartbeat while that goes on,
            // then start a round that hands over what is still needed.
            let (mut fewest, mut idle) = (still_needed.len(), 0);
            while !still_needed.is_empty() && idle < LEAVE_IDLE_WAITS_MAX {
                tokio::time::sleep(self.inner.config.heartbeat_interval).await;
                still_needed = self.finish_leave(Vec::new(), last).await?;
                if still_needed.len() < fewest {
                    (fewest, idle) = (still_needed.len(), 0);
                } else {
                    idle += 1;
                }
            }
            if still_needed.is_empty() {
                tracing::info!(node = %self.inner.id, "left the network");
                self.end(Ended::Left);
                return Ok(());
            }
            still = still_needed.len();
        }
        Err(ClientError::Leave(format!(
            "{still} chunks still depend on this node; it stays"
        )))
    }
}

/// Why a node stopped by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It left the network: its chunks were handed over.
    Left,
    /// The tracker refused it: it had left before and did not ask to join
    /// again (the tracker's words).
    Refused(String),
}

/// A leave's progress stream carries a message at least this often (more
/// often with a shorter heartbeat interval).
pub const LEAVE_PROGRESS_EVERY: Duration = Duration::from_secs(2);

type PieceStream = Pin<Box<dyn Stream<Item = Result<pb::ChunkPiece, Status>> + Send>>;
type LeaveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaveProgress, Status>> + Send>>;

#[tonic::async_trait]
impl<S: ChunkStore, D: Dialer> pb::node_server::Node for NodeService<S, D> {
    async fn put_chunk(
        &self,
        req: Request<Streaming<pb::PutChunkRequest>>,
    ) -> Result<Response<pb::PutChunkResponse>, Status> {
        let who = caller(&req);
        allow(&who, Call::PutChunk)?;
        // One peer (a certificate's identity, or an address) may not take
        // every upload slot.
        let peer = who
            .map(|c| c.id)
            .or_else(|| req.remote_addr().map(|a| a.ip().to_string()));
        let _slot = match &peer {
            Some(p) => Some(self.inner.uploads.take(p).ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "more than {UPLOADS_PER_PEER_MAX} uploads from {p} at once"
                ))
            })?),
            None => None,
        };
        let mut stream = req.into_inner();
        let piece_timeout = self.inner.peers.timeouts().piece;
        let first = tokio::time::timeout(piece_timeout, stream.message())
            .await
            .map_err(|_| Status::deadline_exceeded("timed out waiting for the chunk header"))??
            .ok_or_else(|| Status::invalid_argument("empty chunk upload"))?;
        let Some(pb::put_chunk_request::Msg::Header(h)) = first.msg else {
            return Err(Status::invalid_argument(
                "a chunk upload starts with its header",
            ));
        };
        let id = convert::chunk_id(&h.chunk)?;
        if h.size == 0 || h.size > CHUNK_SIZE_MAX_BYTES {
            return Err(Status::invalid_argument(format!(
                "chunk size {} is outside 1..={CHUNK_SIZE_MAX_BYTES}",
                h.size
            )));
        }
        if h.forward.len() >= REPLICAS_MAX as usize
            || h.forward
                .iter()
                .any(|a| a.is_empty() || a.len() > ADDR_MAX_BYTES)
        {
            return Err(Status::invalid_argument(format!(
                "a chain of at most {} more nodes, each an address of at most {ADDR_MAX_BYTES} bytes",
                REPLICAS_MAX - 1
            )));
        }
        if let Some(space) = self.space()
            && space.used.saturating_add(h.size) > space.capacity
        {
            self.inner.counters.refused_full.inc();
            tracing::info!(chunk = %id, "upload refused: no room");
            return Err(Status::resource_exhausted(format!(
                "node full: {} of {} bytes used, no room for a chunk of {}",
                space.used, space.capacity, h.size
            )));
        }
        let mut writer = self.inner.store.create(&id).await.map_err(store_status)?;
        // Chain replication: the pieces go on to the next node as they
        // arrive, while this node writes its own copy.
        let mut downstream = None;
        let mut forward = None;
        if !h.forward.is_empty() {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(FORWARD_PIECES_QUEUED);
            let (node, chain, size, put) = (self.clone(), h.forward.clone(), h.size, h.put);
            downstream = Some(crate::client::AbortOnDrop(tokio::spawn(async move {
                let pieces = tokio_stream::wrappers::ReceiverStream::new(rx);
                let peers = &node.inner.peers;
                crate::client::send_chain(peers, &chain, id, size, put, pieces).await
            })));
            forward = Some(tx);
        }
        match self
            .receive(&mut stream, id, h.size, &mut writer, &mut forward)
            .await
        {
            Ok(()) => {
                // The next node has every piece: its stream ends here.
                drop(forward);
                // In place and acknowledged under the chunk's gate, so a
                // delete of it runs wholly before or wholly after. The gate
                // is let go before waiting for the next node: two chains
                // through the same two nodes in opposite orders, whose
                // chunks share a gate, would otherwise each hold it on one
                // node and wait for it on the other (found by the 1 GiB
                // benchmark: two chunks stalled until the request timeout).
                let ack = {
                    let _gate = self.gate(&id).lock().await;
                    if p2p_core::mutants::on(Mutant::AckBeforeSync) {
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let _ = writer.commit().await;
                        });
                    } else {
                        writer.commit().await.map_err(store_status)?;
                    }
                    let mut book = self.book();
                    let ack = book.acked(id);
                    self.inventory().added(id, h.put);
                    self.inner.counters.stored_chunks.inc();
                    ack
                };
                let (stamp, receipt) = convert::ack_to_pb(&ack);
                let forwarded = match downstream.as_mut() {
                    None => vec![],
                    Some(task) => (&mut task.0).await.unwrap_or_else(|e| {
                        vec![pb::Forwarded {
                            code: tonic::Code::Internal as i32,
                            error: format!("forwarding failed: {e}"),
                            ..Default::default()
                        }]
                    }),
                };
                // Each node reports its own next link only.
                if let Some(f) = forwarded.first().filter(|f| !f.stored) {
                    tracing::info!(
                        chunk = %id,
                        next = %h.forward[0],
                        error = %f.error,
                        "the next node of a chain did not store the chunk"
                    );
                }
                Ok(Response::new(pb::PutChunkResponse {
                    stored: true,
                    stamp: Some(stamp),
                    receipt,
                    forwarded,
                }))
            }
            Err(s) => {
                writer.abort().await;
                Err(s)
            }
        }
    }

    type GetChunkStream = PieceStream;

    async fn get_chunk(
        &self,
        req: Request<pb::GetChunkRequest>,
    ) -> Result<Response<Self::GetChunkStream>, Status> {
        allow(&caller(&req), Call::GetChunk)?;
        let id = convert::chunk_id(&req.into_inner().chunk)?;
        // The permit bounds the chunks held in memory; it travels with the stream.
        let permit = self
            .inner
            .reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        let data = if p2p_core::mutants::on(Mutant::ServeUnverified) {
            self.inner.store.read(&id).await.map_err(store_status)?
        } else {
            self.read_verified(&id).await?
        };
        let len = data.len();
        self.inner.counters.sent_bytes.inc_by(len as u64);
        let pieces = (0..len).step_by(PIECE_SIZE_BYTES).map(move |o| {
            Ok(pb::ChunkPiece {
                data: data.slice(o..(o + PIECE_SIZE_BYTES).min(len)),
            })
        });
        let stream = tokio_stream::iter(pieces).map(move |p| {
            let _held = &permit;
            p
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type LeaveStream = LeaveStream;

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<Self::LeaveStream>, Status> {
        allow(&caller(&req), Call::Leave)?;
        let force = req.into_inner().force;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let node = self.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let latest = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
            let seen = latest.clone();
            let progress = move |done, total| {
                *seen.lock().expect("progress lock") = (done, total);
                let _ = progress_tx.try_send(Ok(pb::LeaveProgress {
                    done,
                    total,
                    finished: false,
                }));
            };
            // The client gives up on a stream that stays quiet (see
            // `Client::leave_node`): say where the leave stands at least
            // this often, also while it waits for the tracker.
            let every = node
                .inner
                .config
                .heartbeat_interval
                .min(LEAVE_PROGRESS_EVERY);
            let mut beat = tokio::time::interval(every);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let leave = node.leave(force, &progress);
            tokio::pin!(leave);
            let r = loop {
                tokio::select! {
                    r = &mut leave => break r,
                    _ = beat.tick() => {
                        let (done, total) = *latest.lock().expect("progress lock");
                        let _ = tx.try_send(Ok(pb::LeaveProgress {
                            done,
                            total,
                            finished: false,
                        }));
                    }
                }
            };
            let last = match r {
                Ok(()) => Ok(pb::LeaveProgress {
                    done: 0,
                    total: 0,
                    finished: true,
                }),
                Err(e) => Err(Status::failed_precondition(e.to_string())),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ping(
        &self,
        req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        allow(&caller(&req), Call::Ping)?;
        Ok(Response::new(pb::PingResponse {
            node_id: self.inner.id.to_string(),
        }))
    }
}
