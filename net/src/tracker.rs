//! The tracker gRPC service: decodes and validates each request, applies it
//! to the core [`Tracker`] state machine, makes the resulting records durable,
//! then answers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use p2p_core::limits::{LIST_PAGE_MAX_FILES, REPORTS_AT_ONCE_MAX, TRACKER_MESSAGE_SIZE_MAX_BYTES};
use p2p_core::tracker::repair::HealCounters;
use p2p_core::tracker::{HeartbeatReply, Sequence, Tracker, TrackerConfig, TrackerError};
use p2p_proto as pb;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::meta::{MetaError, MetaStore, decode_commit};
use crate::signals::{departed_status, retry_soon_status};

/// Chunk ids of a report applied under one hold of the state's lock.
const REPORT_BATCH_CHUNKS: usize = 4096;

/// Verified copies one heartbeat may report, at most: a node answers at
/// most `VERIFIES_PER_REPLY` requests a reply, and a few replies' worth may
/// be waiting when a heartbeat is slow.
const VERIFIED_MAX: usize = 16 * p2p_core::tracker::repair::VERIFIES_PER_REPLY;

/// Whether this tracker answers: a single tracker always; a member of a
/// tracker group only while it leads, with its state rebuilt from the
/// group's records for its term (see `crate::group`).
#[tonic::async_trait]
pub trait Gate: Send + Sync + 'static {
    /// `Ok` if this tracker serves now; else the status to answer with
    /// (`UNAVAILABLE`, naming the leader if known: see [`redirect`]).
    fn check(&self) -> Result<(), Status>;
    /// Before a read: confirm that this tracker still leads, so a read
    /// never sees the state go back in time.
    async fn confirm(&self) -> Result<(), Status>;
    /// A write through the group failed: the state in memory may be ahead
    /// of the group's; stop serving until it is rebuilt.
    fn lost(&self);
    /// The group's members as this one sees them (for `status`).
    fn members(&self) -> Vec<pb::TrackerMember> {
        Vec::new()
    }
}

/// Files at risk a status lists unless asked for another number.
pub const AT_RISK_LISTED: usize = 20;

/// Files at risk a status lists at most, however many are asked for.
pub const AT_RISK_LISTED_MAX: usize = 10_000;

/// The tracker service. Cheap to clone; all clones share one state.
pub struct TrackerService<M: MetaStore> {
    state: Arc<Mutex<Tracker>>,
    meta: Arc<M>,
    gate: Option<Arc<dyn Gate>>,
    epoch: Instant,
    /// The session base it opened with: a leader's sessions are drawn from
    /// it (see [`TrackerService::reload`]).
    session_seed: u64,
    /// The receipt secret this process opened with (see `reload`).
    receipt_seed: [u8; 32],
    /// Revoked certificates, passed on to nodes in heartbeat replies.
    revoked: crate::access::Revoked,
    /// Set when the database failed a write: the in-memory state may be
    /// ahead of the disk, so nothing more is acknowledged.
    poisoned: Arc<AtomicBool>,
    /// Full reports taken at once; the rest wait (unread: HTTP/2 flow
    /// control holds their senders back).
    reports: Arc<Semaphore>,
    /// Recent events and the repair queue over time, for the cluster page.
    journal: Arc<std::sync::Mutex<Journal>>,
}

/// Events kept for the cluster page.
const EVENTS_KEPT: usize = 50;
/// Samples of the repair queue kept, one per [`QUEUE_SAMPLE_MS`].
const QUEUE_SAMPLES: usize = 300;
const QUEUE_SAMPLE_MS: u64 = 2_000;

/// What the cluster page shows of the recent past: events (node died,
/// repairs done, corrupt copy found...) and the repair queue over time.
/// Kept in memory only, by the tracker serving.
#[derive(Debug, Default, Clone)]
pub struct Journal {
    /// (ms since this tracker started, what happened), oldest first.
    pub events: std::collections::VecDeque<(u64, String)>,
    /// (ms since this tracker started, chunks queued or being repaired).
    pub queue: std::collections::VecDeque<(u64, u64)>,
    repairing: bool,
}

impl Journal {
    fn event(&mut self, at_ms: u64, what: String) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back((at_ms, what));
    }

    /// The repair backlog at `at_ms`: sampled, and its start and end
    /// noted as events.
    fn backlog(&mut self, at_ms: u64, under: u64, backlog: u64) {
        if self
            .queue
            .back()
            .is_none_or(|&(t, _)| at_ms >= t + QUEUE_SAMPLE_MS)
        {
            if self.queue.len() == QUEUE_SAMPLES {
                self.queue.pop_front();
            }
            self.queue.push_back((at_ms, backlog));
        }
        if under > 0 && !self.repairing {
            self.repairing = true;
            self.event(
                at_ms,
                format!("repair started: {under} chunks under-replicated"),
            );
        } else if backlog == 0 && under == 0 && self.repairing {
            self.repairing = false;
            self.event(
                at_ms,
                "repair done: every chunk is back at its factor".into(),
            );
        }
    }
}

impl<M: MetaStore> Clone for TrackerService<M> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            meta: self.meta.clone(),
            gate: self.gate.clone(),
            epoch: self.epoch,
            session_seed: self.session_seed,
            receipt_seed: self.receipt_seed,
            revoked: self.revoked.clone(),
            poisoned: self.poisoned.clone(),
            reports: self.reports.clone(),
            journal: self.journal.clone(),
        }
    }
}

/// SplitMix64's finalizer: a bijection of `u64` that spreads every input
/// bit over the output.
fn mix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

use crate::access::{allow, caller};
use p2p_core::enroll::Call;

/// Nodes one what-if question may name.
const WHAT_IF_NODES_MAX: usize = 4096;

/// What a registering node says of itself: its zone (empty: its own) and
/// its disk.
fn describe(
    t: &mut p2p_core::tracker::Tracker,
    id: &p2p_core::NodeId,
    zone: &str,
    space: Option<p2p_core::tracker::Space>,
) -> Result<(), TrackerError> {
    t.set_zone(id, (!zone.is_empty()).then_some(zone))?;
    if let Some(space) = space {
        t.set_space(id, space);
    }
    Ok(())
}

fn to_status(e: TrackerError) -> Status {
    match e {
        TrackerError::NotEnoughNodes { .. } => Status::failed_precondition(e.to_string()),
        TrackerError::NoRoom { .. } => Status::failed_precondition(e.to_string()),
        TrackerError::Recovering { .. } => retry_soon_status(Status::unavailable(e.to_string())),
        // Copies acknowledged by a node that restarted and has not
        // registered again: its report, soon, may count them.
        TrackerError::NotEnoughHolders { unconfirmed, .. } if unconfirmed > 0 => {
            tracing::info!(error = %e, "commit waits for a restarted node to report");
            retry_soon_status(Status::failed_precondition(e.to_string()))
        }
        TrackerError::UnknownNode(_) => Status::not_found(e.to_string()),
        TrackerError::Unreported(_) => retry_soon_status(Status::unavailable(e.to_string())),
        TrackerError::Departed(_) => departed_status(Status::failed_precondition(e.to_string())),
        TrackerError::UnknownFile(_) => Status::not_found(e.to_string()),
        TrackerError::FileExists(_) => Status::already_exists(e.to_string()),
        TrackerError::NotEnoughHolders { .. } => Status::failed_precondition(e.to_string()),
        TrackerError::NoReport(_) => Status::failed_precondition(e.to_string()),
        TrackerError::Token(_) => Status::permission_denied(e.to_string()),
        TrackerError::TooManyTokens => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

impl<M: MetaStore> TrackerService<M> {
    /// Rebuild the tracker from `meta` and start serving from that state.
    pub async fn open(config: TrackerConfig, meta: M) -> Result<Self, MetaError> {
        let session_seed = config.session_base;
        let receipt_seed = config.receipt_secret;
        let tracker = meta.restore(config).await?;
        let revoked = crate::access::Revoked::default();
        revoked.replace(tracker.revoked().iter().cloned());
        Ok(Self {
            state: Arc::new(Mutex::new(tracker)),
            meta: Arc::new(meta),
            gate: None,
            epoch: Instant::now(),
            session_seed,
            receipt_seed,
            revoked,
            poisoned: Arc::new(AtomicBool::new(false)),
            reports: Arc::new(Semaphore::new(REPORTS_AT_ONCE_MAX)),
            journal: Default::default(),
        })
    }

    /// The revoked certificates this tracker refuses and tells nodes of.
    pub fn revoked(&self) -> crate::access::Revoked {
        self.revoked.clone()
    }

    /// Serve only while `gate` allows (a member of a tracker group).
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Rebuild the state from the records (a member of a group that has
    /// just become leader in `term`), with sessions of its own: nodes
    /// register again. The sessions start from a base drawn from this
    /// process's own (the one it opened with) and the term, so no two
    /// leaderships hand out the same sessions, and a simulated run replays.
    pub async fn reload(&self, term: u64) -> Result<(), MetaError> {
        let mut state = self.state.lock().await;
        let config = TrackerConfig {
            session_base: mix64(self.session_seed ^ term.rotate_left(32)) >> 1,
            // Receipts of the last leadership's sessions do not hold.
            receipt_secret: *blake3::keyed_hash(&self.receipt_seed, &term.to_le_bytes()).as_bytes(),
            ..state.config().clone()
        };
        *state = self.meta.restore(config).await?;
        self.revoked.replace(state.revoked().iter().cloned());
        Ok(())
    }

    /// The interceptors' and heartbeats' revoked set, from the state.
    async fn sync_revoked(&self) {
        let state = self.state.lock().await;
        self.revoked.replace(state.revoked().iter().cloned());
    }

    fn check(&self) -> Result<(), Status> {
        match &self.gate {
            Some(g) => g.check(),
            None => Ok(()),
        }
    }

    /// The state, to read, once this tracker is known to serve.
    async fn read(&self) -> Result<tokio::sync::MutexGuard<'_, Tracker>, Status> {
        if let Some(g) = &self.gate {
            g.check()?;
            g.confirm().await?;
        }
        Ok(self.state.lock().await)
    }

    /// Compare the tracker's incrementally kept state with a recomputation
    /// from scratch ([`Tracker::audit`]); `None` if a request holds the
    /// state now. For the simulator and tests: it walks everything.
    pub fn try_audit(&self) -> Option<Result<(), String>> {
        self.state.try_lock().ok().map(|t| t.audit())
    }

    /// Read the tracker's state; `None` if a request holds it now. For the
    /// simulator's checker.
    pub fn try_inspect<T>(&self, f: impl FnOnce(&Tracker) -> T) -> Option<T> {
        self.state.try_lock().ok().map(|t| f(&t))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The gRPC server wrapper, with message sizes bounded.
    pub fn into_server(self) -> pb::tracker_server::TrackerServer<Self> {
        pb::tracker_server::TrackerServer::new(self)
            .max_decoding_message_size(TRACKER_MESSAGE_SIZE_MAX_BYTES)
            .max_encoding_message_size(TRACKER_MESSAGE_SIZE_MAX_BYTES)
    }

    /// Declare silent nodes dead, forever, every `period`. Spawn this.
    pub async fn run_ticker(self, period: Duration) {
        let mut interval = tokio::time::interval(period);
        loop {
            interval.tick().await;
            let now = self.now_ms();
            if self.check().is_err() {
                continue;
            }
            let (dead, backlog, under) = {
                let mut t = self.state.lock().await;
                let dead = t.tick(now);
                (dead, t.repair_backlog(), t.under_replicated())
            };
            for n in &dead {
                tracing::warn!(node = %n, "node declared dead");
                self.note(format!("node {n} declared dead"));
            }
            self.journal.lock().expect("journal lock").backlog(
                now,
                under,
                (backlog.0 + backlog.1) as u64,
            );
            if backlog != (0, 0) {
                tracing::debug!(queued = backlog.0, in_flight = backlog.1, "repairing");
            }
        }
    }

    /// Apply a report's parts, `first` and the rest of `parts`; returns
    /// how many chunk ids they named.
    async fn report_parts(
        &self,
        id: &p2p_core::NodeId,
        first: pb::RegisterRequest,
        parts: &mut Streaming<pb::RegisterRequest>,
    ) -> Result<usize, Status> {
        let mut total = 0;
        let mut next = Some(first);
        while let Some(part) = next {
            if part.node_id != id.as_str() {
                return Err(Status::invalid_argument(
                    "a report's parts must all name the same node",
                ));
            }
            let chunks = convert::chunk_ids(&part.chunks)?;
            total += chunks.len();
            // A few thousand at a time under the lock: other requests go
            // between (a 64K part at once held a Locate up for 100 ms).
            for batch in chunks.chunks(REPORT_BATCH_CHUNKS) {
                self.mutate(|t, _| t.report_part(id, batch)).await?;
            }
            next = parts.message().await?;
        }
        Ok(total)
    }

    /// Note an event for the cluster page.
    fn note(&self, what: String) {
        let now = self.now_ms();
        self.journal.lock().expect("journal lock").event(now, what);
    }

    /// Recent events and the repair queue over time.
    pub fn journal(&self) -> Journal {
        self.journal.lock().expect("journal lock").clone()
    }

    /// The tracker's view as `status` shows it (with the default number
    /// of files at risk), its decisions so far, and how long this tracker
    /// has run (the journal's clock); `None` while it cannot serve (a group
    /// member that does not lead).
    pub async fn snapshot(&self) -> Option<(p2p_core::tracker::Status, HealCounters, u64)> {
        let t = self.read().await.ok()?;
        let now = self.now_ms();
        Some((t.status_capped(now, AT_RISK_LISTED), t.heal_counters(), now))
    }

    /// Whether this tracker can serve: its database has not failed.
    pub fn healthy(&self) -> bool {
        !self.poisoned.load(Ordering::SeqCst)
    }

    /// The Prometheus text of this tracker's metrics, with `rpc`'s; only
    /// the RPC timings while it cannot serve (a group member that does
    /// not lead: the leader has the cluster's).
    pub async fn metrics_text(&self, rpc: &crate::metrics::RpcMetrics) -> String {
        let snapshot = self.snapshot().await;
        crate::metrics::render(|r| {
            rpc.register(r);
            if let Some((s, heal, _)) = snapshot {
                crate::metrics::cluster(r, &s, &heal);
            }
        })
    }

    /// Spend enrollment token `token` (verified by the caller), durably:
    /// refused if it was spent before.
    pub async fn spend_token(
        &self,
        token: &p2p_core::enroll::Token,
        now_unix_s: u64,
    ) -> Result<(), Status> {
        self.mutate(|t, _| t.use_token(token, now_unix_s)).await
    }

    /// Run `f` on the state, persist what it recorded, then return its result.
    async fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Tracker, u64) -> Result<T, TrackerError>,
    ) -> Result<T, Status> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "tracker database failed; restart the tracker",
            ));
        }
        self.check()?;
        let mut state = self.state.lock().await;
        let now = self.now_ms();
        let out = f(&mut state, now).map_err(to_status);
        let records: Vec<_> = std::iter::from_fn(|| state.poll_record()).collect();
        if !records.is_empty()
            && p2p_core::mutants::on(p2p_core::mutants::Mutant::TrackerAckBeforePersist)
        {
            let meta = self.meta.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = meta.persist(records).await;
            });
            return out;
        }
        if !records.is_empty()
            && let Err(e) = self.meta.persist(records).await
        {
            if let Some(g) = &self.gate {
                // Not replicated (or not known to be): this state is ahead
                // of the group's. It is rebuilt if this tracker still leads.
                g.lost();
                tracing::warn!(error = %e, "a write through the tracker group failed");
                return Err(g
                    .check()
                    .err()
                    .unwrap_or_else(|| Status::unavailable(format!("tracker group: {e}"))));
            }
            self.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot persist tracker state; refusing further requests");
            return Err(Status::unavailable(format!("tracker database failed: {e}")));
        }
        out
    }
}

#[tonic::async_trait]
impl<M: MetaStore> pb::tracker_server::Tracker for TrackerService<M> {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = caller(&req);
        let req = req.into_inner();
        allow(&caller, Call::AsNode { node: &req.node_id })?;
        let id = convert::node_id(&req.node_id)?;
        let chunks = convert::chunk_ids(&req.chunks)?;
        let n = chunks.len();
        let space = convert::space_from_pb(req.space.as_ref());
        let (session, key) = self
            .mutate(|t, now| {
                if req.rejoin {
                    t.rejoin(&id);
                }
                let s = t.register(id.clone(), req.addr.clone(), chunks, now)?;
                describe(t, &id, &req.zone, space)?;
                Ok((s, t.receipt_key(&id)))
            })
            .await?;
        tracing::info!(node = %id, addr = %req.addr, chunks = n, "node registered");
        let interval = self.state.lock().await.config().heartbeat_interval_ms;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_interval_ms: interval,
            session,
            receipt_key: key
                .map(|k| bytes::Bytes::copy_from_slice(&k))
                .unwrap_or_default(),
        }))
    }

    async fn report(
        &self,
        req: Request<Streaming<pb::RegisterRequest>>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let _turn = self
            .reports
            .acquire()
            .await
            .map_err(|_| Status::unavailable("tracker shutting down"))?;
        let caller = caller(&req);
        let mut parts = req.into_inner();
        let first = parts
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty report"))?;
        allow(
            &caller,
            Call::AsNode {
                node: &first.node_id,
            },
        )?;
        let id = convert::node_id(&first.node_id)?;
        let addr = first.addr.clone();
        let (zone, space, rejoin) = (
            first.zone.clone(),
            convert::space_from_pb(first.space.as_ref()),
            first.rejoin,
        );
        let was_alive = self
            .mutate(|t, now| {
                let was_alive = t.is_alive(&id);
                if rejoin {
                    t.rejoin(&id);
                }
                t.begin_report(id.clone(), addr.clone(), now)?;
                describe(t, &id, &zone, space)?;
                Ok(was_alive)
            })
            .await?;
        if !was_alive {
            self.note(format!("node {id} ({addr}) joined"));
        }
        let total = match self.report_parts(&id, first, &mut parts).await {
            Ok(total) => total,
            Err(e) => {
                // The node reports again; nothing is trimmed meanwhile.
                let _ = self
                    .mutate(|t, _| {
                        t.abort_report(&id);
                        Ok(())
                    })
                    .await;
                return Err(e);
            }
        };
        let (session, key) = self
            .mutate(|t, now| {
                let s = t.end_report(&id, now)?;
                Ok((s, t.receipt_key(&id)))
            })
            .await?;
        tracing::info!(node = %id, addr = %addr, chunks = total, "node reported its inventory");
        let interval = self.state.lock().await.config().heartbeat_interval_ms;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_interval_ms: interval,
            session,
            receipt_key: key
                .map(|k| bytes::Bytes::copy_from_slice(&k))
                .unwrap_or_default(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = caller(&req);
        let req = req.into_inner();
        allow(&caller, Call::AsNode { node: &req.node_id })?;
        let id = convert::node_id(&req.node_id)?;
        let added = convert::chunk_ids(&req.added)?;
        if !req.added_puts.is_empty() && req.added_puts.len() != added.len() {
            return Err(Status::invalid_argument(
                "a heartbeat's added_puts do not match its added chunks",
            ));
        }
        let touched: Vec<(p2p_core::ChunkId, u64)> = added
            .iter()
            .copied()
            .zip(req.added_puts.iter().copied())
            .collect();
        let removed = convert::chunk_ids(&req.removed)?;
        if req.verified.len() > VERIFIED_MAX {
            return Err(Status::invalid_argument(format!(
                "a heartbeat reports {} verified copies; at most {VERIFIED_MAX}",
                req.verified.len()
            )));
        }
        let verified: Vec<(p2p_core::ChunkId, u64)> = req
            .verified
            .iter()
            .map(|v| Ok((convert::chunk_id(&v.chunk)?, v.asked)))
            .collect::<Result<_, Status>>()?;
        let failed = convert::handed_from_pb(&req.failed)?;
        let repaired = convert::handed_from_pb(&req.repaired)?;
        let space = convert::space_from_pb(req.space.as_ref());
        if req.corrupt_found > 0 {
            let n = req.corrupt_found;
            self.note(if n == 1 {
                format!("node {id} found a corrupt copy and removed it; repair restores it")
            } else {
                format!("node {id} found {n} corrupt copies and removed them; repair restores them")
            });
        }
        let reply = self
            .mutate(|t, now| {
                match t.sequence(&id, req.session, req.seq) {
                    Sequence::Fresh => {}
                    Sequence::Stale => {
                        tracing::info!(node = %id, seq = req.seq, "ignored an overtaken heartbeat");
                        return Ok(HeartbeatReply::Ok { commands: vec![] });
                    }
                    Sequence::Reregister => return Ok(HeartbeatReply::Reregister),
                }
                for (chunk, target) in &failed {
                    t.repair_failed(&id, chunk, target);
                }
                let mut done = 0;
                for (chunk, target) in &repaired {
                    done += usize::from(t.repair_done(&id, chunk, target));
                }
                if done > 0 || !failed.is_empty() {
                    // Plan the next repairs now, so this reply carries them.
                    t.plan(now);
                }
                t.touched(&id, &touched, now);
                t.verified(&id, &verified);
                if let Some(space) = space {
                    t.set_space(&id, space);
                }
                t.heartbeat(&id, added, removed, now)
            })
            .await?;
        Ok(Response::new(match reply {
            HeartbeatReply::Reregister => pb::HeartbeatResponse {
                reregister: true,
                commands: vec![],
                revoked: self.revoked.list(),
            },
            HeartbeatReply::Ok { commands } => pb::HeartbeatResponse {
                reregister: false,
                revoked: self.revoked.list(),
                commands: commands
                    .into_iter()
                    .map(|c| pb::Command {
                        kind: Some(match c {
                            p2p_core::tracker::NodeCommand::Replicate {
                                chunk,
                                size_bytes,
                                target,
                            } => pb::command::Kind::Replicate(convert::handoff_to_pb(
                                &p2p_core::tracker::Handoff {
                                    chunk,
                                    size_bytes,
                                    target,
                                },
                            )),
                            p2p_core::tracker::NodeCommand::Delete { chunk } => {
                                pb::command::Kind::Delete(pb::Delete {
                                    chunk: chunk.as_bytes().to_vec().into(),
                                })
                            }
                            p2p_core::tracker::NodeCommand::Verify { chunk } => {
                                pb::command::Kind::Verify(pb::Verify {
                                    chunk: chunk.as_bytes().to_vec().into(),
                                })
                            }
                        }),
                    })
                    .collect(),
            },
        }))
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        allow(&caller(&req), Call::Files)?;
        let req = req.into_inner();
        let exclude: BTreeSet<_> = req
            .exclude
            .iter()
            .map(|n| convert::node_id(n))
            .collect::<Result<_, _>>()?;
        let placements = self
            .mutate(|t, now| {
                t.touch_put(req.put, now);
                let placed =
                    t.allocate_sized(req.chunk_count, req.replicas, req.chunk_size, &exclude);
                if let Err(e @ TrackerError::NoRoom { .. }) = &placed {
                    tracing::info!(error = %e, "allocation refused: no room");
                }
                placed
            })
            .await?;
        Ok(Response::new(pb::AllocateResponse {
            placements: placements
                .iter()
                .map(|p| pb::Placement {
                    nodes: p.iter().map(convert::node_ref_to_pb).collect(),
                })
                .collect(),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        allow(&caller(&req), Call::Files)?;
        let req = req.into_inner();
        let (manifest, holders) = decode_commit(&req)?;
        let mut acked = Vec::with_capacity(holders.len());
        for (ids, pb) in holders.into_iter().zip(&req.holders) {
            if (!pb.stamps.is_empty() && pb.stamps.len() != ids.len())
                || (!pb.receipts.is_empty() && pb.receipts.len() != ids.len())
            {
                return Err(Status::invalid_argument(
                    "a commit's stamps or receipts do not match its holders",
                ));
            }
            let ack = |i: usize| {
                convert::ack_from_pb(pb.stamps.get(i), pb.receipts.get(i).map(|r| &r[..]))
            };
            acked.push(
                ids.into_iter()
                    .enumerate()
                    .map(|(i, n)| (n, ack(i)))
                    .collect(),
            );
        }
        let name = manifest.name.clone();
        let replace = req.replace;
        let hash = self
            .mutate(|t, now| {
                let hash = t.commit_with(manifest, acked, replace, now)?;
                t.end_put(req.put);
                Ok(hash)
            })
            .await?;
        tracing::info!(file = %name, manifest = %hash, "file committed");
        Ok(Response::new(pb::CommitResponse {
            manifest_hash: hash.0.to_vec().into(),
        }))
    }

    async fn locate(
        &self,
        req: Request<pb::LocateRequest>,
    ) -> Result<Response<pb::LocateResponse>, Status> {
        allow(&caller(&req), Call::Files)?;
        let name = req.into_inner().name;
        let located = self.read().await?.locate(&name).map_err(to_status)?;
        let refs =
            |v: &[p2p_core::tracker::NodeRef]| v.iter().map(convert::node_ref_to_pb).collect();
        Ok(Response::new(pb::LocateResponse {
            manifest: Some(convert::manifest_to_pb(&located.manifest)),
            manifest_hash: located.hash.0.to_vec().into(),
            locations: located
                .locations
                .iter()
                .map(|l| pb::ChunkLocation {
                    live: refs(&l.live),
                    suspect: refs(&l.suspect),
                })
                .collect(),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        allow(&caller(&req), Call::Files)?;
        let req = req.into_inner();
        let limit = match req.limit as usize {
            0 => LIST_PAGE_MAX_FILES,
            n => n.min(LIST_PAGE_MAX_FILES),
        };
        // One more than asked, to tell whether more follow.
        let mut files = self.read().await?.files_after(&req.after, limit + 1);
        let more = files.len() > limit;
        files.truncate(limit);
        Ok(Response::new(pb::ListResponse {
            files: files.iter().map(convert::file_info_to_pb).collect(),
            more,
        }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        allow(&caller(&req), Call::Files)?;
        let name = req.into_inner().name;
        let hash = self.mutate(|t, _| t.remove(&name)).await?;
        tracing::info!(file = %name, manifest = %hash, "file removed");
        Ok(Response::new(pb::RemoveResponse {
            manifest_hash: hash.0.to_vec().into(),
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        allow(&caller(&req), Call::Status)?;
        let limit = match req.get_ref().at_risk_limit {
            0 => AT_RISK_LISTED,
            n => (n as usize).min(AT_RISK_LISTED_MAX),
        };
        let s = self.read().await?.status_capped(self.now_ms(), limit);
        Ok(Response::new(pb::StatusResponse {
            nodes: s
                .nodes
                .into_iter()
                .map(|n| pb::NodeStatus {
                    id: n.id.to_string(),
                    addr: n.addr,
                    alive: n.alive,
                    leaving: n.leaving,
                    chunks: n.chunks,
                    last_seen_ms_ago: n.last_seen_ms_ago,
                    zone: n.zone,
                    space: n.space.map(|s| pb::DiskSpace {
                        used: s.used_bytes,
                        capacity: s.capacity_bytes,
                    }),
                })
                .collect(),
            files: s.files,
            chunks: s.chunks,
            under_replicated: s.under_replicated,
            lost: s.lost,
            repair_queue: s.repair_queue,
            repairs_in_flight: s.repairs_in_flight,
            deletes_pending: s.deletes_pending,
            at_risk: s.at_risk.iter().map(convert::file_info_to_pb).collect(),
            at_risk_total: s.at_risk_total,
            trackers: self.gate.as_ref().map(|g| g.members()).unwrap_or_default(),
            warnings: s.warnings.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn what_if(
        &self,
        req: Request<pb::WhatIfRequest>,
    ) -> Result<Response<pb::WhatIfResponse>, Status> {
        allow(&caller(&req), Call::Status)?;
        let req = req.into_inner();
        if req.nodes.len() > WHAT_IF_NODES_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {WHAT_IF_NODES_MAX} nodes in one question"
            )));
        }
        let dead: BTreeSet<_> = req
            .nodes
            .iter()
            .map(|n| convert::node_id(n))
            .collect::<Result<_, _>>()?;
        let w = self.read().await?.what_if(&dead).map_err(to_status)?;
        Ok(Response::new(pb::WhatIfResponse {
            lost: w.lost,
            at_risk: w.at_risk,
        }))
    }

    async fn begin_leave(
        &self,
        req: Request<pb::BeginLeaveRequest>,
    ) -> Result<Response<pb::BeginLeaveResponse>, Status> {
        let caller = caller(&req);
        let req = req.into_inner();
        allow(&caller, Call::AsNode { node: &req.node_id })?;
        let id = convert::node_id(&req.node_id)?;
        let handoffs = self
            .mutate(|t, now| t.begin_leave(&id, req.force, now))
            .await?;
        tracing::info!(node = %id, handoffs = handoffs.len(), force = req.force, "node leaving");
        Ok(Response::new(pb::BeginLeaveResponse {
            handoffs: handoffs.iter().map(convert::handoff_to_pb).collect(),
        }))
    }

    async fn finish_leave(
        &self,
        req: Request<pb::FinishLeaveRequest>,
    ) -> Result<Response<pb::FinishLeaveResponse>, Status> {
        let caller = caller(&req);
        let req = req.into_inner();
        allow(&caller, Call::AsNode { node: &req.node_id })?;
        let id = convert::node_id(&req.node_id)?;
        let handed = convert::handed_from_pb(&req.handed)?;
        let still = self
            .mutate(|t, now| t.finish_leave(&id, handed, req.force, now))
            .await?;
        if still.is_empty() {
            tracing::info!(node = %id, "node left");
            self.note(format!("node {id} left"));
        }
        Ok(Response::new(pb::FinishLeaveResponse {
            still_needed: convert::chunk_bytes(&still),
        }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        allow(&caller(&req), Call::Revoke)?;
        let id = req.into_inner().id;
        let new = self.mutate(|t, _| t.revoke(&id)).await?;
        self.sync_revoked().await;
        if new {
            tracing::info!(id = %id, "certificate revoked");
        }
        Ok(Response::new(pb::RevokeResponse { new }))
    }
}
