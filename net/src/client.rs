//! Client operations as a library: put, get, ls, status, leave.
//!
//! `put` reads the input once, one chunk at a time (at most
//! `chunks_in_flight` chunks in memory), hashes each chunk and uploads it to
//! its `R` targets, down a chain (the first forwards to the next as pieces
//! arrive) or in parallel (fan-out; see [`Replication`]), replacing a
//! target that fails.
//! Only when every chunk has `R` durable acknowledgements does it commit the
//! manifest. `get` fetches chunks from several holders at once, verifies
//! each against its hash while writing it at its offset in a temporary
//! file, and renames the file into place only when every chunk is intact.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use p2p_core::ack::Ack;
use p2p_core::chunking::{chunk_count, chunk_offset};
use p2p_core::get_plan::{Candidate, FetchFailure, GetOutcome, GetPlan};
use p2p_core::limits::{CHUNK_SIZE_DEFAULT_BYTES, UPLOAD_PIECE_SIZE_BYTES};
use p2p_core::manifest::{validate_chunk_size, validate_replicas};
pub use p2p_core::put_plan::Replication;
use p2p_core::put_plan::{PutAction, PutOutcome, ReplicaPut};
use p2p_core::tracker::NodeRef;
use p2p_core::{ChunkId, Manifest, NodeId, validate_name};
use p2p_proto as pb;
use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::Status;

use crate::convert;
use crate::error::{ClientError, is_unreachable, status_line};
pub use crate::sink::{FileSink, Sink};
use crate::transport::{Dialer, Peers, Timeouts};

/// Tuning of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Chunk size of new files.
    pub chunk_size_bytes: u64,
    /// Chunks being replicated at once during a put (each held in memory).
    pub chunks_in_flight: usize,
    /// Chunk fetches running at once during a get.
    pub fetches_in_flight: usize,
    /// A put renews its lease with the tracker this often (see
    /// `AllocateRequest.put`); well under the tracker's orphan grace.
    pub lease_renew: std::time::Duration,
    /// How a put sends each chunk to its targets (see [`Replication`]).
    pub replication: Replication,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            chunk_size_bytes: CHUNK_SIZE_DEFAULT_BYTES,
            chunks_in_flight: 4,
            fetches_in_flight: 8,
            lease_renew: std::time::Duration::from_secs(5 * 60),
            replication: Replication::Chain,
        }
    }
}

/// Progress of a long transfer, in bytes.
pub trait Progress: Send + Sync {
    fn start(&self, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a put did.
#[derive(Debug, Clone)]
pub struct PutReport {
    pub manifest: Manifest,
    pub manifest_hash: String,
    /// Node ids holding each chunk.
    pub holders: Vec<Vec<NodeId>>,
    /// Uploads that failed and were sent to a replacement node.
    pub retries: usize,
}

/// What a get did.
#[derive(Debug, Clone)]
pub struct GetReport {
    pub manifest: Manifest,
    /// Fetches that failed and were retried elsewhere.
    pub retries: usize,
    /// Bytes of chunks an interrupted get of the same version had already
    /// written and verified, kept rather than fetched again.
    pub reused_bytes: u64,
    /// Bytes received from nodes (failed attempts included).
    pub fetched_bytes: u64,
}

/// One chunk's replication result: its holders, each with its
/// acknowledgement (stamp and receipt).
struct ChunkDone {
    index: usize,
    len: u64,
    holders: Result<Vec<(NodeId, Ack)>, ClientError>,
    retries: usize,
}

/// Whether a call failed before any connection carried it.
fn never_connected(s: &Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message().contains("tcp connect error")
}

/// Whether a call failed because its connection broke before an answer,
/// rather than by timing out or by the peer's refusal.
fn connection_broke(s: &Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown => s.message().contains("transport"),
        _ => false,
    }
}

/// How long a client keeps looking for the leader of a tracker group
/// (through an election after the leader died, for example).
pub const GROUP_FAILOVER: std::time::Duration = std::time::Duration::from_secs(10);

/// Upload one chunk to one node: a header, then pieces of at most
/// [`UPLOAD_PIECE_SIZE_BYTES`].
/// Returns once the node has verified the hash and synced the chunk, with
/// its acknowledgement: stamp and receipt (see `p2p_core::ack`).
pub async fn upload_chunk<D: Dialer>(
    peers: &Peers<D>,
    addr: &str,
    id: ChunkId,
    data: Bytes,
    put: u64,
) -> Result<Ack, ClientError> {
    upload_chain(peers, &[addr.to_string()], id, data, put)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            Err(ClientError::Node {
                addr: addr.to_string(),
                msg: "no answer".into(),
            })
        })
}

/// Upload one chunk down a chain of nodes (chain replication): the client
/// sends it to `chain[0]`, which forwards it to the next, and so on. One
/// answer per node, in order, as far as the chain got: a node past the
/// first failure was never tried, and has no answer.
pub async fn upload_chain<D: Dialer>(
    peers: &Peers<D>,
    chain: &[String],
    id: ChunkId,
    data: Bytes,
    put: u64,
) -> Vec<Result<Ack, ClientError>> {
    let len = data.len();
    let pieces = (0..len)
        .step_by(UPLOAD_PIECE_SIZE_BYTES)
        .map(move |o| data.slice(o..(o + UPLOAD_PIECE_SIZE_BYTES).min(len)));
    let answers = send_chain(
        peers,
        chain,
        id,
        len as u64,
        put,
        tokio_stream::iter(pieces),
    )
    .await;
    chain
        .iter()
        .zip(&answers)
        .map(|(addr, f)| link_result(addr, f))
        .collect()
}

/// One node's answer in a chain, as the client's result.
fn link_result(addr: &str, f: &pb::Forwarded) -> Result<Ack, ClientError> {
    if f.stored {
        return Ok(convert::ack_from_pb(f.stamp.as_ref(), Some(&f.receipt)));
    }
    let status = Status::new(tonic::Code::from(f.code), f.error.clone());
    Err(ClientError::from_node(addr, status))
}

/// Send a chunk of `size` bytes, as `pieces`, to `chain[0]`, asking it to
/// forward them down the rest of `chain`. The head's answer first, then
/// each forwarded node's; the answers end after the first that did not
/// store the chunk. Never empty.
pub async fn send_chain<D: Dialer>(
    peers: &Peers<D>,
    chain: &[String],
    id: ChunkId,
    size: u64,
    put: u64,
    pieces: impl futures::Stream<Item = Bytes> + Send + 'static,
) -> Vec<pb::Forwarded> {
    let failed = |status: Status| pb::Forwarded {
        stored: false,
        code: status.code() as i32,
        error: status_line(&status),
        ..Default::default()
    };
    let Some(head) = chain.first() else {
        return vec![failed(Status::internal("an empty chain"))];
    };
    let mut node = match peers.node(head) {
        Ok(n) => n,
        Err(e) => return vec![failed(Status::unavailable(e.to_string()))],
    };
    let header = pb::PutChunkRequest {
        msg: Some(pb::put_chunk_request::Msg::Header(pb::PutChunkHeader {
            chunk: Bytes::copy_from_slice(id.as_bytes()),
            size,
            put,
            forward: chain[1..].to_vec(),
        })),
    };
    let data = pieces.map(|d| pb::PutChunkRequest {
        msg: Some(pb::put_chunk_request::Msg::Data(d)),
    });
    let resp = match node
        .put_chunk(futures::stream::iter([header]).chain(data))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return vec![failed(s)],
    };
    if !resp.stored {
        return vec![failed(Status::internal("did not store the chunk"))];
    }
    let mut out = vec![pb::Forwarded {
        stored: true,
        stamp: resp.stamp,
        receipt: resp.receipt,
        ..Default::default()
    }];
    for f in resp.forwarded.into_iter().take(chain.len() - 1) {
        let stored = f.stored;
        out.push(f);
        if !stored {
            break;
        }
    }
    out
}

/// Fetch one chunk, verifying length and hash as pieces arrive, and write
/// each piece to `sink` at `base` plus its offset in the chunk.
async fn fetch_chunk<D: Dialer>(
    peers: &Peers<D>,
    addr: &str,
    id: ChunkId,
    len: u64,
    sink: &dyn Sink,
    base: u64,
    received_total: &std::sync::atomic::AtomicU64,
) -> Result<(), (FetchFailure, String)> {
    let unreachable = |m: String| (FetchFailure::Unreachable, m);
    let mut node = peers.node(addr).map_err(|e| unreachable(e.to_string()))?;
    let classify = |s: Status| {
        let why = if is_unreachable(&s) {
            FetchFailure::Unreachable
        } else {
            FetchFailure::Bad
        };
        (why, status_line(&s))
    };
    let mut stream = node
        .get_chunk(pb::GetChunkRequest {
            chunk: Bytes::copy_from_slice(id.as_bytes()),
        })
        .await
        .map_err(classify)?
        .into_inner();
    let piece_timeout = peers.timeouts().piece;
    let mut hasher = blake3::Hasher::new();
    let mut received = 0u64;
    loop {
        let msg = tokio::time::timeout(piece_timeout, stream.message())
            .await
            .map_err(|_| unreachable("timed out waiting for data".into()))?
            .map_err(classify)?;
        let Some(piece) = msg else { break };
        received += piece.data.len() as u64;
        received_total.fetch_add(
            piece.data.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if received > len {
            return Err((
                FetchFailure::Bad,
                format!("sent more than the {len} bytes of the chunk"),
            ));
        }
        hasher.update(&piece.data);
        sink.write_at(base + received - piece.data.len() as u64, piece.data)
            .await
            .map_err(|e| {
                (
                    FetchFailure::Unreachable,
                    format!("local write failed: {e}"),
                )
            })?;
    }
    if received != len {
        return Err((FetchFailure::Bad, format!("sent {received} of {len} bytes")));
    }
    if ChunkId(*hasher.finalize().as_bytes()) != id {
        // Nodes verify before they serve: this is a broken node (or a
        // corrupting network), worth its own line.
        tracing::warn!(node = %addr, chunk = %id, "a holder served bytes that do not match the chunk hash");
        return Err((
            FetchFailure::Bad,
            "sent bytes that do not match the chunk hash".into(),
        ));
    }
    Ok(())
}

/// Where a file is, as the tracker says.
#[derive(Debug, Clone)]
pub struct Located {
    pub manifest: Manifest,
    pub candidates: Vec<Vec<Candidate<String>>>,
}

/// Aborts the task when dropped: a background job that lives exactly as
/// long as the operation that started it.
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client of one tracker.
pub struct Client<D: Dialer> {
    peers: Arc<Peers<D>>,
    tracker_addr: String,
    pub config: ClientConfig,
}

impl<D: Dialer> Client<D> {
    pub fn new(dialer: D, tracker_addr: &str, config: ClientConfig) -> Self {
        Self {
            peers: Arc::new(Peers::new(dialer)),
            tracker_addr: tracker_addr.to_string(),
            config,
        }
    }

    fn tracker(&self) -> Result<crate::transport::TrackerRpc, ClientError> {
        self.peers.tracker(&self.tracker_addr)
    }

    fn tracker_err(&self, s: Status) -> ClientError {
        ClientError::from_tracker(&self.tracker_addr, s)
    }

    /// Make a tracker call that is safe to repeat. One that failed at once
    /// because its connection had broken (the tracker restarted since the
    /// last call; tonic re-dials only after such a failure) is made once
    /// more. A call that timed out is not: it already waited its deadline.
    ///
    /// With a tracker group (`--tracker a,b,c`), a call a member did not
    /// take (it does not lead: it names the leader, or none during an
    /// election) goes to the leader, and one whose member cannot be reached
    /// goes to the next member, for up to [`GROUP_FAILOVER`].
    async fn tracker_call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(crate::transport::TrackerRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.tracker_call_with(true, call).await
    }

    /// [`Client::tracker_call`] for a call that must not be made twice
    /// (`rm`): made again only if surely not taken (a redirect, a refusal
    /// to retry, a connection that never opened).
    async fn tracker_call_once<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(crate::transport::TrackerRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.tracker_call_with(false, call).await
    }

    async fn tracker_call_with<T, F, Fut>(&self, repeatable: bool, call: F) -> Result<T, Status>
    where
        F: Fn(crate::transport::TrackerRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let rpc = || {
            self.tracker()
                .map_err(|e| Status::unavailable(e.to_string()))
        };
        let group = crate::transport::tracker_members(&self.tracker_addr).len() > 1;
        let until = tokio::time::Instant::now() + GROUP_FAILOVER;
        let mut broke_once = false;
        loop {
            let s = match call(rpc()?).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            self.peers.tracker_failed(&self.tracker_addr, &s);
            let redirect = crate::signals::redirected_to(&s);
            let broke = if repeatable {
                connection_broke(&s)
            } else {
                never_connected(&s)
            };
            let again = crate::signals::retry_soon(&s)
                || if group {
                    redirect.is_some() || broke
                } else {
                    !broke_once && broke
                };
            if !again {
                return Err(s);
            }
            if tokio::time::Instant::now() >= until {
                if !group || crate::signals::retry_soon(&s) {
                    return Err(s);
                }
                return Err(Status::unavailable(format!(
                    "no tracker of the group answers as leader within {}s (is a majority of them up?); last: {}",
                    GROUP_FAILOVER.as_secs(),
                    status_line(&s)
                )));
            }
            broke_once = true;
            tracing::debug!(error = %status_line(&s), "tracker call not taken; calling again");
            if crate::signals::retry_soon(&s) || (group && !matches!(redirect, Some(Some(_)))) {
                // Nodes still reporting, no leader known (an election), or
                // a member down: a pause.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }

    async fn allocate(
        &self,
        put: u64,
        chunk_count: u64,
        replicas: u32,
        chunk_size: u64,
        exclude: &[NodeRef],
    ) -> Result<Vec<Vec<NodeRef>>, ClientError> {
        let req = pb::AllocateRequest {
            chunk_count,
            replicas,
            exclude: exclude.iter().map(|n| n.id.to_string()).collect(),
            put,
            chunk_size,
        };
        let resp = self
            .tracker_call(|mut t| {
                let req = req.clone();
                async move { t.allocate(req).await }
            })
            .await
            .map_err(|s| self.tracker_err(s))?;
        let protocol = |msg: &str| ClientError::Protocol {
            peer: format!("tracker at {}", self.tracker_addr),
            msg: msg.to_string(),
        };
        if resp.placements.len() as u64 != chunk_count {
            return Err(protocol("wrong number of placements"));
        }
        let excluded: BTreeSet<&NodeId> = exclude.iter().map(|n| &n.id).collect();
        resp.placements
            .iter()
            .map(|p| {
                let nodes: Vec<NodeRef> = p
                    .nodes
                    .iter()
                    .map(convert::node_ref_from_pb)
                    .collect::<Result<_, _>>()
                    .map_err(|s| protocol(s.message()))?;
                let distinct: BTreeSet<&NodeId> = nodes.iter().map(|n| &n.id).collect();
                if distinct.len() != replicas as usize
                    || distinct.iter().any(|n| excluded.contains(n))
                {
                    return Err(protocol("placement is not distinct nodes"));
                }
                Ok(nodes)
            })
            .collect()
    }

    /// Store the file at `path` under `name` (default: its file name) with
    /// `replicas` copies of every chunk; with `replace`, in place of a file
    /// of that name (see [`Client::put_reader`]).
    pub async fn put_file(
        &self,
        path: &Path,
        name: Option<&str>,
        replicas: u32,
        replace: bool,
        progress: &dyn Progress,
    ) -> Result<PutReport, ClientError> {
        let rerr = |err| ClientError::ReadInput {
            path: path.to_path_buf(),
            err,
        };
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| rerr(std::io::Error::other("not a file path")))?,
        };
        validate_name(&name)?;
        validate_replicas(replicas)?;
        let file = tokio::fs::File::open(path).await.map_err(rerr)?;
        let meta = file.metadata().await.map_err(rerr)?;
        if !meta.is_file() {
            return Err(rerr(std::io::Error::other("not a regular file")));
        }
        self.put_reader(file, meta.len(), &name, replicas, replace, progress, path)
            .await
    }

    /// Store `size_bytes` bytes read from `reader` under `name`. An existing
    /// file of that name is refused before any byte moves, unless
    /// `replace`: then the new version takes its place atomically when it
    /// commits, and the old one's chunks are kept for the tracker's orphan
    /// grace so gets already under way can finish.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_reader(
        &self,
        mut reader: impl AsyncRead + Unpin + Send,
        size_bytes: u64,
        name: &str,
        replicas: u32,
        replace: bool,
        progress: &dyn Progress,
        source: &Path,
    ) -> Result<PutReport, ClientError> {
        validate_name(name)?;
        validate_replicas(replicas)?;
        if !replace {
            // Refuse before moving a byte, unless the file there may be
            // this very one (putting it again is a no-op the commit sees).
            match self.locate(name).await {
                Ok(l) => {
                    let m = &l.manifest;
                    let same_shape = m.size_bytes == size_bytes
                        && m.replicas == replicas
                        && m.chunk_size_bytes == self.config.chunk_size_bytes;
                    if !same_shape {
                        return Err(ClientError::FileExists(name.to_string()));
                    }
                }
                Err(ClientError::UnknownFile(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let chunk_size = self.config.chunk_size_bytes;
        validate_chunk_size(chunk_size)?;
        let n = chunk_count(size_bytes, chunk_size);
        // Refuse a file the protocol cannot describe before moving any byte.
        if n > p2p_core::limits::FILE_CHUNKS_MAX {
            return Err(p2p_core::ManifestError::TooLarge.into());
        }
        // The put's lease id. Two puts of the same name and size share one,
        // which only merges their leases.
        let digest = blake3::hash(format!("{name}\0{size_bytes}\0{replicas}").as_bytes());
        let put = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes")).max(1);
        let placements = if n > 0 {
            self.allocate(put, n, replicas, chunk_size.min(size_bytes), &[])
                .await?
        } else {
            vec![]
        };
        let chain = self.config.replication == Replication::Chain;
        // Renew the lease while the put runs, however long it waits.
        let _renewer = AbortOnDrop(tokio::spawn({
            let rpc = self.tracker()?;
            let every = self.config.lease_renew;
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    let req = pb::AllocateRequest {
                        chunk_count: 0,
                        replicas,
                        exclude: vec![],
                        put,
                        chunk_size: 0,
                    };
                    // A failure only means the lease may lapse; the commit
                    // then reports any holder it lost.
                    let _ = rpc.clone().allocate(req).await;
                }
            }
        }));
        progress.start(size_bytes);
        let mut ids = Vec::with_capacity(n as usize);
        let mut holders: Vec<Vec<(NodeId, Ack)>> = vec![Vec::new(); n as usize];
        // Nodes that ran out of space: no later chunk of this put goes there.
        let full = std::sync::Mutex::new(BTreeSet::new());
        let mut tasks = FuturesUnordered::new();
        let rerr = |err| ClientError::ReadInput {
            path: source.to_path_buf(),
            err,
        };
        let mut retries = 0;
        let mut settle = |done: ChunkDone| -> Result<(), ClientError> {
            holders[done.index] = done.holders?;
            retries += done.retries;
            progress.advance(done.len);
            Ok(())
        };
        for (i, targets) in placements.into_iter().enumerate() {
            while tasks.len() >= self.config.chunks_in_flight.max(1) {
                settle(tasks.next().await.expect("tasks is not empty"))?;
            }
            let len = p2p_core::chunking::chunk_len(size_bytes, chunk_size, i as u64) as usize;
            let mut data = vec![0u8; len];
            reader.read_exact(&mut data).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    ClientError::InputChanged(source.to_path_buf())
                } else {
                    rerr(e)
                }
            })?;
            let id = ChunkId::of(&data);
            ids.push(id);
            tasks.push(self.replicate_chunk(
                put,
                i,
                id,
                Bytes::from(data),
                targets,
                replicas,
                chain,
                &full,
            ));
        }
        while let Some(done) = tasks.next().await {
            settle(done)?;
        }
        let mut probe = [0u8; 1];
        if reader.read(&mut probe).await.map_err(rerr)? != 0 {
            return Err(ClientError::InputChanged(source.to_path_buf()));
        }
        let manifest = Manifest::new(name.to_string(), size_bytes, chunk_size, replicas, ids)?;
        let (resp, ids) = self.commit(&manifest, &holders, put, replace).await?;
        progress.finish();
        Ok(PutReport {
            manifest,
            manifest_hash: hex::encode(&resp.manifest_hash),
            holders: ids,
            retries,
        })
    }

    /// Commit `manifest` with the holders that acknowledged each chunk
    /// (the end of a put, `put` its lease). The tracker counts a holder
    /// only if its receipt holds, or it reported the chunk itself.
    /// Returns the tracker's answer and the holders' ids.
    pub async fn commit(
        &self,
        manifest: &Manifest,
        holders: &[Vec<(NodeId, Ack)>],
        put: u64,
        replace: bool,
    ) -> Result<(pb::CommitResponse, Vec<Vec<NodeId>>), ClientError> {
        // Committing the same manifest again is a no-op, so a repeat is safe.
        let ids: Vec<Vec<NodeId>> = holders
            .iter()
            .map(|h| h.iter().map(|(n, _)| n.clone()).collect())
            .collect();
        let mut req = crate::meta::encode_commit(manifest, &ids);
        for (pb, h) in req.holders.iter_mut().zip(holders) {
            (pb.stamps, pb.receipts) = h.iter().map(|(_, a)| convert::ack_to_pb(a)).unzip();
        }
        req.put = put;
        req.replace = replace;
        let resp = self
            .tracker_call(|mut t| {
                let req = req.clone();
                async move { t.commit(req).await }
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::AlreadyExists => ClientError::FileExists(manifest.name.clone()),
                _ => self.tracker_err(s),
            })?;
        Ok((resp, ids))
    }

    /// Replicate one chunk to `replicas` nodes, down one chain or fanned
    /// out, replacing failed targets and avoiding nodes known to be `full`.
    #[allow(clippy::too_many_arguments)]
    async fn replicate_chunk(
        &self,
        put: u64,
        index: usize,
        id: ChunkId,
        data: Bytes,
        mut targets: Vec<NodeRef>,
        replicas: u32,
        chain: bool,
        full: &std::sync::Mutex<BTreeSet<NodeRef>>,
    ) -> ChunkDone {
        targets.retain(|t| !full.lock().expect("full lock").contains(t));
        let len = data.len() as u64;
        let mut retries = 0;
        let done = |holders, retries| ChunkDone {
            index,
            len,
            holders,
            retries,
        };
        let mut plan = ReplicaPut::new(targets, replicas as usize, replicas as usize + 2);
        let mut acks: std::collections::BTreeMap<NodeId, Ack> = Default::default();
        let mut uploads = FuturesUnordered::new();
        let mut last_error = String::from("no node accepted it");
        loop {
            let mut batch = Vec::new();
            while let Some(action) = plan.poll_action() {
                match action {
                    PutAction::Upload(target) => batch.push(target),
                    PutAction::NeedTargets { count, exclude } => {
                        tracing::debug!(
                            chunk = index,
                            count,
                            "asking the tracker for replacement targets"
                        );
                        let mut exclude = exclude;
                        exclude.extend(full.lock().expect("full lock").iter().cloned());
                        match self.allocate(put, 1, count as u32, len, &exclude).await {
                            Ok(mut p) => plan.add_targets(p.remove(0)),
                            Err(e) => {
                                last_error = e.to_string();
                                plan.handle_no_targets();
                            }
                        }
                    }
                }
            }
            // One chain of every target asked for now, or one upload each.
            let groups = if chain {
                vec![batch]
            } else {
                batch.into_iter().map(|t| vec![t]).collect()
            };
            for group in groups.into_iter().filter(|g| !g.is_empty()) {
                let addrs: Vec<String> = group.iter().map(|t| t.addr.clone()).collect();
                tracing::debug!(chunk = index, chain = ?addrs, "uploading");
                let (data, peers) = (data.clone(), self.peers.clone());
                uploads.push(async move {
                    let r = upload_chain(&peers, &addrs, id, data, put).await;
                    (group, r)
                });
            }
            match plan.outcome() {
                Some(PutOutcome::Stored(h)) => {
                    let acked = h
                        .into_iter()
                        .map(|n| {
                            let ack = acks.get(&n.id).copied().unwrap_or_default();
                            (n.id, ack)
                        })
                        .collect();
                    return done(Ok(acked), retries);
                }
                Some(PutOutcome::Failed { .. }) => {
                    let e = ClientError::PutFailed {
                        index,
                        replicas,
                        detail: last_error,
                    };
                    return done(Err(e), retries);
                }
                None => {}
            }
            let Some((group, results)) = uploads.next().await else {
                let e = ClientError::PutFailed {
                    index,
                    replicas,
                    detail: "replication stalled".into(),
                };
                return done(Err(e), retries);
            };
            let mut results = results.into_iter();
            for target in group {
                match results.next() {
                    Some(Ok(ack)) => {
                        acks.insert(target.id.clone(), ack);
                        plan.handle_acked(&target);
                    }
                    Some(Err(e)) => {
                        if matches!(e, ClientError::NodeFull { .. }) {
                            full.lock().expect("full lock").insert(target.clone());
                        }
                        tracing::warn!(chunk = index, node = %target.id, error = %e, "upload failed; replacing target");
                        last_error = e.to_string();
                        retries += 1;
                        plan.handle_failed(&target);
                    }
                    // Past a broken link of the chain: never tried.
                    None => plan.handle_untried(&target),
                }
            }
        }
    }

    /// Where the chunks of `name` are.
    pub async fn locate(&self, name: &str) -> Result<Located, ClientError> {
        validate_name(name)?;
        let req = pb::LocateRequest {
            name: name.to_string(),
        };
        let resp = self
            .tracker_call(|mut t| {
                let req = req.clone();
                async move { t.locate(req).await }
            })
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    ClientError::UnknownFile(name.to_string())
                } else {
                    self.tracker_err(s)
                }
            })?;
        let protocol = |msg: String| ClientError::Protocol {
            peer: format!("tracker at {}", self.tracker_addr),
            msg,
        };
        let manifest = resp
            .manifest
            .as_ref()
            .ok_or_else(|| protocol("no manifest".into()))
            .and_then(|m| {
                convert::manifest_from_pb(m).map_err(|s| protocol(s.message().to_string()))
            })?;
        if manifest.name != name || resp.locations.len() != manifest.chunks.len() {
            return Err(protocol("answer does not match the request".into()));
        }
        let candidates = resp
            .locations
            .iter()
            .map(|l| {
                let live = l.live.iter().map(|n| Candidate {
                    holder: n.addr.clone(),
                    preferred: true,
                });
                let suspect = l.suspect.iter().map(|n| Candidate {
                    holder: n.addr.clone(),
                    preferred: false,
                });
                live.chain(suspect).collect()
            })
            .collect();
        Ok(Located {
            manifest,
            candidates,
        })
    }

    /// Fetch every chunk of `located` into `sink`, verified.
    pub async fn fetch_into(
        &self,
        located: &Located,
        sink: Arc<dyn Sink>,
        progress: &dyn Progress,
    ) -> Result<GetReport, ClientError> {
        self.fetch_missing(located, sink, progress, &[]).await
    }

    /// Fetch every chunk of `located` into `sink`, verified, but those
    /// `have` marks as already there.
    pub async fn fetch_missing(
        &self,
        located: &Located,
        sink: Arc<dyn Sink>,
        progress: &dyn Progress,
        have: &[bool],
    ) -> Result<GetReport, ClientError> {
        let m = &located.manifest;
        let mut plan = GetPlan::new(
            located.candidates.clone(),
            self.config.fetches_in_flight.max(1),
            8,
        );
        let mut reused_bytes = 0;
        for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
            plan.have(i);
            reused_bytes += m.chunk_len(i);
        }
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Each fetch is its own task, so hashing and writing pieces of
        // several chunks run on every core rather than in this one future.
        let mut fetches = tokio::task::JoinSet::new();
        let mut retries = 0;
        progress.start(m.size_bytes);
        progress.advance(reused_bytes);
        loop {
            while let Some(f) = plan.poll_fetch() {
                let id = m.chunks[f.chunk];
                let len = m.chunk_len(f.chunk);
                let base = chunk_offset(m.chunk_size_bytes, f.chunk as u64);
                let peers = self.peers.clone();
                let sink = sink.clone();
                let received = received.clone();
                fetches.spawn(async move {
                    let r =
                        fetch_chunk(&peers, &f.from, id, len, sink.as_ref(), base, &received).await;
                    (f, len, r)
                });
            }
            match plan.poll_outcome() {
                Some(GetOutcome::Complete) => break,
                Some(GetOutcome::Failed { chunk, attempts }) => {
                    let detail = if attempts.is_empty() {
                        "no holder is known".to_string()
                    } else {
                        format!("{} attempts failed", attempts.len())
                    };
                    return Err(ClientError::GetFailed {
                        name: m.name.clone(),
                        index: chunk,
                        detail,
                    });
                }
                None => {}
            }
            let Some(joined) = fetches.join_next().await else {
                return Err(ClientError::GetFailed {
                    name: m.name.clone(),
                    index: 0,
                    detail: "download stalled".into(),
                });
            };
            let (f, len, r) = joined.map_err(|e| ClientError::GetFailed {
                name: m.name.clone(),
                index: 0,
                detail: format!("a fetch task failed: {e}"),
            })?;
            match r {
                Ok(()) => {
                    plan.handle_done(f.chunk, &f.from);
                    progress.advance(len);
                }
                Err((why, msg)) => {
                    tracing::warn!(chunk = f.chunk, node = %f.from, error = %msg, "fetch failed; trying another holder");
                    retries += 1;
                    plan.handle_failed(f.chunk, &f.from, why);
                }
            }
        }
        progress.finish();
        Ok(GetReport {
            manifest: m.clone(),
            retries,
            reused_bytes,
            fetched_bytes: received.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Download `name` into `out`, atomically: the file appears only once
    /// every chunk arrived intact. The bytes go to a temporary file named
    /// after `out` and the file's version; a get that is interrupted leaves
    /// it, and the next get of the same version into `out` keeps every
    /// chunk it verifies there and fetches only the rest. Temporary files
    /// in that directory no get will resume (another version of `out`, or
    /// older than a day) are removed.
    pub async fn get_file(
        &self,
        name: &str,
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<GetReport, ClientError> {
        let located = self.locate(name).await?;
        let m = &located.manifest;
        let version = hex::encode(&m.hash().0[..8]);
        let sink = Arc::new(FileSink::open(out, m.size_bytes, &version)?);
        let swept = sink.sweep();
        if swept > 0 {
            tracing::info!(swept, "removed temporary files no get will resume");
        }
        let have = sink.verified(m).await?;
        let report = self
            .fetch_missing(&located, sink.clone(), progress, &have)
            .await?;
        sink.finish().await?;
        Ok(report)
    }

    /// Files whose names sort after `after`, one page (at most `limit`,
    /// 0 for the tracker's page size), and whether more follow.
    pub async fn list_page(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<pb::FileInfo>, bool), ClientError> {
        let resp = self
            .tracker_call(|mut t| {
                let after = after.to_string();
                async move { t.list(pb::ListRequest { after, limit }).await }
            })
            .await
            .map_err(|s| self.tracker_err(s))?;
        Ok((resp.files, resp.more))
    }

    /// Every file, page by page. `each` gets every page as it arrives.
    pub async fn list_each(
        &self,
        mut each: impl FnMut(&[pb::FileInfo]),
    ) -> Result<(), ClientError> {
        let mut after = String::new();
        loop {
            let (page, more) = self.list_page(&after, 0).await?;
            each(&page);
            match page.last() {
                Some(last) if more => after.clone_from(&last.name),
                _ => return Ok(()),
            }
        }
    }

    /// Every file, in name order.
    pub async fn list(&self) -> Result<Vec<pb::FileInfo>, ClientError> {
        let mut all = Vec::new();
        self.list_each(|page| all.extend_from_slice(page)).await?;
        Ok(all)
    }

    /// The cluster's state, with the tracker's default number of files at
    /// risk (see [`Client::status_listing`]).
    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        self.status_listing(0).await
    }

    /// The cluster's state, listing at most `at_risk` files at risk (0:
    /// the tracker's default); `at_risk_total` counts them all.
    pub async fn status_listing(&self, at_risk: u32) -> Result<pb::StatusResponse, ClientError> {
        self.tracker_call(|mut t| async move {
            t.status(pb::StatusRequest {
                at_risk_limit: at_risk,
            })
            .await
        })
        .await
        .map_err(|s| self.tracker_err(s))
    }

    /// Which files would be lost, and which would drop below their factor,
    /// if `nodes` (ids or addresses, as `status` shows them) died now.
    pub async fn what_if(&self, nodes: &[String]) -> Result<pb::WhatIfResponse, ClientError> {
        let status = self.status().await?;
        let mut ids = Vec::with_capacity(nodes.len());
        for n in nodes {
            let n = n.trim();
            let found = status.nodes.iter().find(|s| s.id == n || s.addr == n);
            match found {
                Some(s) => ids.push(s.id.clone()),
                None => return Err(ClientError::UnknownNode(n.to_string())),
            }
        }
        let req = pb::WhatIfRequest { nodes: ids };
        self.tracker_call(|mut t| {
            let req = req.clone();
            async move { t.what_if(req).await }
        })
        .await
        .map_err(|s| self.tracker_err(s))
    }

    /// Remove the file `name`; the tracker deletes chunks no other file
    /// uses from the nodes over their next heartbeats.
    pub async fn remove(&self, name: &str) -> Result<(), ClientError> {
        let req = pb::RemoveRequest {
            name: name.to_string(),
        };
        self.tracker_call_once(|mut t| {
            let req = req.clone();
            async move { t.remove(req).await }
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => ClientError::UnknownFile(name.to_string()),
            _ => self.tracker_err(s),
        })?;
        Ok(())
    }

    /// Revoke the certificates naming `id` (an admin's call, or a
    /// tracker's passing on `p2p revoke`); returns whether it is new.
    pub async fn revoke(&self, id: &str) -> Result<bool, ClientError> {
        let req = pb::RevokeRequest { id: id.to_string() };
        let r = self
            .tracker_call(|mut t| {
                let req = req.clone();
                async move { t.revoke(req).await }
            })
            .await
            .map_err(|s| self.tracker_err(s))?;
        Ok(r.new)
    }

    /// Ask the node at `addr` to hand its chunks over and leave; returns
    /// when it has. `progress(done, total)` follows the hand-over. With
    /// `force` it leaves even if the others cannot take every chunk.
    pub async fn leave_node(
        &self,
        addr: &str,
        force: bool,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), ClientError> {
        let e = match self.leave_stream(addr, force, progress).await {
            Ok(()) => return Ok(()),
            Err((e, started)) => {
                if !started || matches!(e, ClientError::Leave(_)) {
                    // Never begun, or refused: the node stays.
                    return Err(e);
                }
                e
            }
        };
        // The node began to leave and may have finished and stopped before
        // its last reply reached us: one that no longer answers and that
        // the tracker no longer lists has left.
        let answers = match self.peers.node(addr) {
            Ok(mut n) => n.ping(pb::PingRequest {}).await.is_ok(),
            Err(_) => false,
        };
        if answers {
            return Err(e);
        }
        match self.status().await {
            Ok(st) if !st.nodes.iter().any(|n| n.addr == addr) => {
                tracing::info!(node = addr, error = %e, "the leave's reply was lost, but the node has left");
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// The leave's progress stream, to its end; an error says whether the
    /// node had accepted the leave (its outcome is then unknown).
    async fn leave_stream(
        &self,
        addr: &str,
        force: bool,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), (ClientError, bool)> {
        let err = |s: Status| {
            if s.code() == tonic::Code::FailedPrecondition {
                let msg = s.message();
                let msg = msg.strip_prefix("leave incomplete: ").unwrap_or(msg);
                ClientError::Leave(format!("node at {addr}: {msg}"))
            } else {
                ClientError::from_node(addr, s)
            }
        };
        let mut node = self.peers.node(addr).map_err(|e| (e, false))?;
        let mut stream = node
            .leave(pb::LeaveRequest { force })
            .await
            .map_err(|s| (err(s), false))?
            .into_inner();
        // The node says where it stands every few seconds (see
        // `node::LEAVE_PROGRESS_EVERY`); a stream quiet for longer than a
        // stream's gap is given up on, saying what was known.
        let gap = self.peers.timeouts().piece;
        let mut last: Option<(u64, u64)> = None;
        loop {
            let next = match tokio::time::timeout(gap, stream.message()).await {
                Ok(r) => r.map_err(|s| (err(s), true))?,
                Err(_) => {
                    let known = match last {
                        Some((done, total)) if total > 0 => {
                            format!("it had handed over {done} of {total} chunks")
                        }
                        _ => "it had not begun handing chunks over".to_string(),
                    };
                    return Err((
                        ClientError::Node {
                            addr: addr.to_string(),
                            msg: format!(
                                "said nothing about its leave for {gap:?} ({known}); it may still leave: p2p status shows whether it is listed"
                            ),
                        },
                        true,
                    ));
                }
            };
            let Some(p) = next else { break };
            if p.finished {
                return Ok(());
            }
            if last != Some((p.done, p.total)) {
                last = Some((p.done, p.total));
                progress(p.done, p.total);
            }
        }
        Err((
            ClientError::Node {
                addr: addr.to_string(),
                msg: "it stopped before it said the leave was done".into(),
            },
            true,
        ))
    }

    pub fn peers(&self) -> &Arc<Peers<D>> {
        &self.peers
    }

    pub fn timeouts(&self) -> &Timeouts {
        self.peers.timeouts()
    }
}
