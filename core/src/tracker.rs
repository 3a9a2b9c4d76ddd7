//! The tracker state machine: membership, placement, commit, locate, leave,
//! and self-healing (repair, trimming, deletion; see [`repair`]).
//!
//! # Drive contract
//! - Inputs (`&mut self`, each takes `now_ms` where time matters):
//!   [`Tracker::register`], [`Tracker::heartbeat`], [`Tracker::allocate`],
//!   [`Tracker::commit`], [`Tracker::remove`], [`Tracker::begin_leave`],
//!   [`Tracker::finish_leave`], [`Tracker::tick`].
//! - Getters (`&self`): [`Tracker::locate`], [`Tracker::files`],
//!   [`Tracker::status`].
//! - Output: after every input, the driver drains [`Tracker::poll_record`]
//!   and makes those records durable *before* it answers the request that
//!   caused them. Records are the tracker's durable facts; replaying them with
//!   [`Tracker::restore`] rebuilds the state after a restart, so the same
//!   state machine can later sit behind a replicated log.
//! - The driver calls `tick` periodically (every heartbeat interval is enough)
//!   so silent nodes are declared dead and repairs are planned. Work for a
//!   node (copy a chunk to another node, delete a chunk) rides on the reply
//!   to that node's next heartbeat, so the tracker never dials a node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::id::{ChunkId, ManifestHash, NodeId};
use crate::limits::{ADDR_MAX_BYTES, FILE_CHUNKS_MAX, INVENTORY_MAX_CHUNKS};
use crate::manifest::{Manifest, ManifestError, validate_replicas};

/// Timing of failure detection and repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// A node silent for this long is declared dead.
    pub dead_after_ms: u64,
    /// How often nodes should heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long a chunk that still has two or more live copies waits before
    /// it is re-replicated (a chunk with one copy left never waits).
    pub repair_grace_ms: u64,
    /// Repairs one node takes part in at once as source, and as target.
    pub repairs_per_node: usize,
    /// A repair confirmed neither by its source nor by the target's
    /// inventory after this long is planned again.
    pub repair_timeout_ms: u64,
    /// Where this process's registration sessions start. Give every tracker
    /// process a different random value (the binary does): a heartbeat a
    /// node sent to a restarted tracker with its old session must not match
    /// a session the new process handed out.
    pub session_base: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            dead_after_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            repair_grace_ms: 0,
            repairs_per_node: 4,
            repair_timeout_ms: 60_000,
            session_base: 0,
        }
    }
}

/// A node's identity and the address it serves chunks on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRef {
    pub id: NodeId,
    pub addr: String,
}

/// A durable fact the driver must persist before it acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A node joined, or came back with a new address.
    NodeJoined { id: NodeId, addr: String },
    /// A node left gracefully; no chunk depends on it any more.
    NodeLeft { id: NodeId },
    /// A file was committed; `holders[i]` acknowledged chunk `i` durably.
    FileCommitted {
        manifest: Manifest,
        holders: Vec<Vec<NodeId>>,
    },
    /// A file was removed; chunks no other file uses are deleted from nodes.
    FileRemoved { name: String },
}

/// Why the tracker refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// Fewer eligible live nodes than the replication factor.
    #[error("need {wanted} distinct live nodes, only {available} available")]
    NotEnoughNodes { wanted: u32, available: usize },
    /// The node is not registered (it should register again).
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// No file by that name.
    #[error("no such file: {0:?}")]
    UnknownFile(String),
    /// A different file by that name already exists.
    #[error("a file named {0:?} already exists")]
    FileExists(String),
    /// The manifest is malformed.
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The holder list does not cover every chunk with `R` distinct registered nodes.
    #[error("chunk {chunk} has {acked} acknowledged holders, needs {wanted}")]
    NotEnoughHolders {
        chunk: usize,
        acked: usize,
        wanted: u32,
    },
    /// A request asked for more chunks than a file may have.
    #[error("too many chunks: {0}")]
    TooManyChunks(u64),
    /// An address is empty or too long.
    #[error("invalid node address {0:?}")]
    Addr(String),
    /// An inventory report is larger than allowed.
    #[error("inventory of {0} chunks is too large")]
    Inventory(usize),
}

#[derive(Debug, Clone)]
struct NodeEntry {
    addr: String,
    last_seen_ms: u64,
    alive: bool,
    leaving: bool,
    /// Known only from records (after a restart): ask for a full report.
    needs_full_report: bool,
    chunks: BTreeSet<ChunkId>,
    /// The node's registration with this tracker process, and the highest
    /// heartbeat number seen in it (see [`Tracker::sequence`]).
    session: u64,
    last_seq: u64,
}

#[derive(Debug, Clone)]
struct FileEntry {
    manifest: Manifest,
    hash: ManifestHash,
}

/// A chunk referenced by at least one file.
#[derive(Debug, Clone)]
struct ChunkRef {
    size_bytes: u64,
    /// How many references ask for each replication factor; the chunk's
    /// factor is the largest.
    uses: BTreeMap<u32, u32>,
}

impl ChunkRef {
    fn replicas(&self) -> u32 {
        self.uses.keys().next_back().copied().unwrap_or(0)
    }
}

/// Where to fetch one chunk: live holders first, then holders believed dead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub live: Vec<NodeRef>,
    pub suspect: Vec<NodeRef>,
}

/// Answer to `locate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub manifest: Manifest,
    pub hash: ManifestHash,
    pub locations: Vec<ChunkLocation>,
}

/// One row of `ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub name: String,
    pub size_bytes: u64,
    pub replicas: u32,
    pub chunks: u64,
    pub hash: ManifestHash,
    /// Chunks with fewer live copies than the factor.
    pub under_replicated: u64,
    /// The fewest live copies any chunk of the file has (the factor for an
    /// empty file).
    pub min_copies: u32,
    /// Chunks with no live copy: the file cannot be read until a holder
    /// comes back.
    pub lost: u64,
}

/// One node in `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    pub id: NodeId,
    pub addr: String,
    pub alive: bool,
    pub leaving: bool,
    pub chunks: u64,
    pub last_seen_ms_ago: u64,
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub nodes: Vec<NodeSummary>,
    pub files: u64,
    pub chunks: u64,
    pub under_replicated: u64,
    pub lost: u64,
    /// Under-replicated chunks waiting for a repair to be planned (for the
    /// grace period, or for a free source or target).
    pub repair_queue: u64,
    /// Repairs planned or under way.
    pub repairs_in_flight: u64,
    /// Copies above their factor or of removed files, still to delete.
    pub deletes_pending: u64,
    /// Files with at least one under-replicated chunk, fewest copies first.
    pub at_risk: Vec<FileSummary>,
}

/// A chunk a leaving node must copy to `target` before it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub chunk: ChunkId,
    pub size_bytes: u64,
    pub target: NodeRef,
}

/// Where a heartbeat stands in its node's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// Newer than any seen: apply it.
    Fresh,
    /// Overtaken by a newer one (it was delayed past its timeout and the
    /// node sent another): ignore it, its report is out of date.
    Stale,
    /// From another registration, or from a node the tracker does not know:
    /// the node must register again.
    Reregister,
}

/// What the tracker tells a node in a heartbeat reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatReply {
    /// Carry on, and do `commands`.
    Ok { commands: Vec<NodeCommand> },
    /// Register again with a full inventory.
    Reregister,
}

/// Work the tracker asks a node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Copy `chunk` to `target`, which verifies and syncs it before it
    /// acknowledges; the copy counts when the source reports it made (see
    /// [`Tracker::repair_done`]) or the target reports holding it.
    Replicate {
        chunk: ChunkId,
        size_bytes: u64,
        target: NodeRef,
    },
    /// Delete the local copy of `chunk`.
    Delete { chunk: ChunkId },
}

/// The tracker's whole state. See the module docs for the drive contract.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    config: TrackerConfig,
    nodes: BTreeMap<NodeId, NodeEntry>,
    files: BTreeMap<String, FileEntry>,
    refs: BTreeMap<ChunkId, ChunkRef>,
    holders: BTreeMap<ChunkId, BTreeSet<NodeId>>,
    outbox: VecDeque<Record>,
    heal: repair::HealState,
    /// The last registration session handed out by this process.
    last_session: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            last_session: config.session_base,
            config,
            ..Default::default()
        }
    }

    /// Rebuild the state from persisted records. Restored nodes count as dead
    /// until they are heard from, and are asked for a full inventory then.
    pub fn restore(config: TrackerConfig, records: impl IntoIterator<Item = Record>) -> Self {
        let mut t = Self::new(config);
        for r in records {
            t.apply(r);
        }
        t.outbox.clear();
        for n in t.nodes.values_mut() {
            n.alive = false;
            n.needs_full_report = true;
        }
        t
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Next durable record to persist before answering.
    pub fn poll_record(&mut self) -> Option<Record> {
        self.outbox.pop_front()
    }

    fn apply(&mut self, record: Record) {
        match &record {
            Record::NodeJoined { id, addr } => {
                let entry = self.nodes.entry(id.clone()).or_insert_with(|| NodeEntry {
                    addr: addr.clone(),
                    last_seen_ms: 0,
                    alive: false,
                    leaving: false,
                    needs_full_report: false,
                    chunks: BTreeSet::new(),
                    session: 0,
                    last_seq: 0,
                });
                entry.addr = addr.clone();
            }
            Record::NodeLeft { id } => {
                if let Some(n) = self.nodes.remove(id) {
                    for c in n.chunks {
                        self.unlink(id, &c);
                    }
                }
            }
            Record::FileCommitted { manifest, holders } => {
                for (i, chunk) in manifest.chunks.iter().enumerate() {
                    let r = self.refs.entry(*chunk).or_insert(ChunkRef {
                        size_bytes: manifest.chunk_len(i),
                        uses: BTreeMap::new(),
                    });
                    *r.uses.entry(manifest.replicas).or_default() += 1;
                    for n in holders.get(i).into_iter().flatten() {
                        self.link(n, *chunk);
                    }
                }
                self.files.insert(
                    manifest.name.clone(),
                    FileEntry {
                        hash: manifest.hash(),
                        manifest: manifest.clone(),
                    },
                );
            }
            Record::FileRemoved { name } => {
                if let Some(f) = self.files.remove(name) {
                    let replicas = f.manifest.replicas;
                    for chunk in &f.manifest.chunks {
                        let Some(r) = self.refs.get_mut(chunk) else {
                            continue;
                        };
                        if let Some(n) = r.uses.get_mut(&replicas) {
                            *n -= 1;
                            if *n == 0 {
                                r.uses.remove(&replicas);
                            }
                        }
                        if r.uses.is_empty() {
                            self.refs.remove(chunk);
                            self.heal.garbage.insert(*chunk);
                        }
                    }
                }
            }
        }
        self.outbox.push_back(record);
    }

    fn link(&mut self, node: &NodeId, chunk: ChunkId) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.chunks.insert(chunk);
            self.holders.entry(chunk).or_default().insert(node.clone());
        }
    }

    fn unlink(&mut self, node: &NodeId, chunk: &ChunkId) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.chunks.remove(chunk);
        }
        if let Some(h) = self.holders.get_mut(chunk) {
            h.remove(node);
            if h.is_empty() {
                self.holders.remove(chunk);
            }
        }
    }

    /// A node announces itself with its full inventory, which replaces what
    /// the tracker believed it held. Returns the session its heartbeats
    /// carry from now on (see [`Tracker::sequence`]).
    pub fn register(
        &mut self,
        id: NodeId,
        addr: String,
        chunks: Vec<ChunkId>,
        now_ms: u64,
    ) -> Result<u64, TrackerError> {
        if addr.is_empty() || addr.len() > ADDR_MAX_BYTES {
            return Err(TrackerError::Addr(addr));
        }
        if chunks.len() > INVENTORY_MAX_CHUNKS {
            return Err(TrackerError::Inventory(chunks.len()));
        }
        let known_addr = self.nodes.get(&id).map(|n| n.addr.clone());
        if known_addr.as_deref() != Some(addr.as_str()) {
            self.apply(Record::NodeJoined {
                id: id.clone(),
                addr,
            });
        }
        let reported: BTreeSet<ChunkId> = chunks.into_iter().collect();
        let old = self
            .nodes
            .get(&id)
            .map(|n| n.chunks.clone())
            .unwrap_or_default();
        for c in old.difference(&reported) {
            self.unlink(&id, c);
        }
        // A full report shows what the node holds now, whatever happened to
        // deletions sent before; one still to be sent will go out.
        self.heal.settle(&id);
        for c in reported {
            if !self.heal.deleting(&c, &id) {
                self.link(&id, c);
            }
        }
        // Never 0, which no registration has.
        self.last_session = self.last_session.wrapping_add(1).max(1);
        let n = self.nodes.get_mut(&id).expect("node was just recorded");
        n.alive = true;
        n.leaving = false;
        n.needs_full_report = false;
        n.last_seen_ms = now_ms;
        n.session = self.last_session;
        n.last_seq = 0;
        Ok(self.last_session)
    }

    /// Check a heartbeat's place in its node's sequence before applying it:
    /// `session` is what [`Tracker::register`] returned to the node, `seq`
    /// the heartbeat's number in that session, higher for each one sent
    /// (retries included). A heartbeat that timed out at the node may still
    /// arrive after the next one; applied then, its out-of-date report could
    /// count a copy the node no longer has, and the planner could trim a
    /// real one for it. Sessions start at [`TrackerConfig::session_base`],
    /// different for every tracker process.
    pub fn sequence(&mut self, id: &NodeId, session: u64, seq: u64) -> Sequence {
        match self.nodes.get_mut(id) {
            Some(n) if !n.needs_full_report && n.session == session && session != 0 => {
                if seq > n.last_seq {
                    n.last_seq = seq;
                    Sequence::Fresh
                } else {
                    Sequence::Stale
                }
            }
            _ => Sequence::Reregister,
        }
    }

    /// Liveness plus inventory changes since the last report.
    pub fn heartbeat(
        &mut self,
        id: &NodeId,
        added: Vec<ChunkId>,
        removed: Vec<ChunkId>,
        now_ms: u64,
    ) -> Result<HeartbeatReply, TrackerError> {
        if added.len() + removed.len() > INVENTORY_MAX_CHUNKS {
            return Err(TrackerError::Inventory(added.len() + removed.len()));
        }
        let Some(n) = self.nodes.get_mut(id) else {
            return Ok(HeartbeatReply::Reregister);
        };
        if n.needs_full_report {
            return Ok(HeartbeatReply::Reregister);
        }
        n.alive = true;
        n.last_seen_ms = now_ms;
        for c in &removed {
            self.unlink(id, c);
            self.heal.gone(id, c);
        }
        // A node confirms every deletion it carries out in its next report
        // (see `Inventory::deleted`), so one sent with the previous reply and
        // missing from this report was lost with that reply: the node still
        // holds the copy. Count it again; planning decides afresh whether it
        // goes. (Only a fresh heartbeat gets here: see `sequence`.)
        // Every other copy the report names is there now, unless a deletion
        // still to be sent takes it.
        let removed: BTreeSet<ChunkId> = removed.into_iter().collect();
        let lost: Vec<ChunkId> = self
            .heal
            .settle(id)
            .into_iter()
            .filter(|c| !removed.contains(c))
            .collect();
        for c in lost.into_iter().chain(added) {
            if !self.heal.deleting(&c, id) {
                self.link(id, c);
            }
        }
        Ok(HeartbeatReply::Ok {
            commands: self.take_commands(id, now_ms),
        })
    }

    /// Declare nodes dead that have been silent longer than `dead_after_ms`,
    /// then plan repairs, trims and deletions (see [`repair`]). Returns the
    /// nodes newly declared dead.
    pub fn tick(&mut self, now_ms: u64) -> Vec<NodeId> {
        let mut dead = Vec::new();
        for (id, n) in &mut self.nodes {
            if n.alive && now_ms.saturating_sub(n.last_seen_ms) > self.config.dead_after_ms {
                n.alive = false;
                dead.push(id.clone());
            }
        }
        self.plan(now_ms);
        dead
    }

    fn eligible(&self, exclude: &BTreeSet<NodeId>) -> Vec<(usize, NodeId)> {
        self.nodes
            .iter()
            .filter(|(id, n)| n.alive && !n.leaving && !exclude.contains(*id))
            .map(|(id, n)| (n.chunks.len(), id.clone()))
            .collect()
    }

    fn node_ref(&self, id: &NodeId) -> NodeRef {
        NodeRef {
            id: id.clone(),
            addr: self.nodes[id].addr.clone(),
        }
    }

    /// Choose `replicas` distinct live nodes for each of `chunk_count`
    /// chunks: least loaded first (chunks held plus those placed by this
    /// call), ties broken by node id.
    pub fn allocate(
        &mut self,
        chunk_count: u64,
        replicas: u32,
        exclude: &BTreeSet<NodeId>,
    ) -> Result<Vec<Vec<NodeRef>>, TrackerError> {
        validate_replicas(replicas)?;
        if chunk_count > FILE_CHUNKS_MAX {
            return Err(TrackerError::TooManyChunks(chunk_count));
        }
        let mut load = self.eligible(exclude);
        if load.len() < replicas as usize {
            return Err(TrackerError::NotEnoughNodes {
                wanted: replicas,
                available: load.len(),
            });
        }
        let mut placements = Vec::with_capacity(chunk_count as usize);
        for _ in 0..chunk_count {
            load.sort();
            let chosen: Vec<NodeRef> = load[..replicas as usize]
                .iter()
                .map(|(_, id)| self.node_ref(id))
                .collect();
            for entry in &mut load[..replicas as usize] {
                entry.0 += 1;
            }
            placements.push(chosen);
        }
        Ok(placements)
    }

    /// Record a file whose every chunk is durably on `R` distinct registered
    /// nodes. Committing the same manifest twice is a no-op; a different
    /// manifest under an existing name is refused.
    pub fn commit(
        &mut self,
        manifest: Manifest,
        holders: Vec<Vec<NodeId>>,
    ) -> Result<ManifestHash, TrackerError> {
        manifest.validate()?;
        let hash = manifest.hash();
        if let Some(existing) = self.files.get(&manifest.name) {
            return if existing.hash == hash {
                Ok(hash)
            } else {
                Err(TrackerError::FileExists(manifest.name))
            };
        }
        if holders.len() != manifest.chunks.len() {
            return Err(TrackerError::NotEnoughHolders {
                chunk: holders.len().min(manifest.chunks.len()),
                acked: 0,
                wanted: manifest.replicas,
            });
        }
        let mut clean = Vec::with_capacity(holders.len());
        for (i, h) in holders.into_iter().enumerate() {
            let chunk = &manifest.chunks[i];
            // A holder told to delete this chunk since may no longer have
            // it (an `rm` or a trim raced with this put): it does not count,
            // but live holders that reported the chunk themselves do.
            let mut set: BTreeSet<NodeId> = h
                .into_iter()
                .filter(|n| self.nodes.contains_key(n) && !self.heal.deleted(chunk, n))
                .collect();
            if set.len() < manifest.replicas as usize {
                set.extend(
                    self.holders
                        .get(chunk)
                        .into_iter()
                        .flatten()
                        .filter(|n| self.nodes[*n].alive)
                        .cloned(),
                );
            }
            if set.len() < manifest.replicas as usize {
                return Err(TrackerError::NotEnoughHolders {
                    chunk: i,
                    acked: set.len(),
                    wanted: manifest.replicas,
                });
            }
            clean.push(set.into_iter().collect());
        }
        self.apply(Record::FileCommitted {
            manifest,
            holders: clean,
        });
        Ok(hash)
    }

    /// Remove the file `name`. Chunks no other file uses are deleted from
    /// their holders over the next heartbeats.
    pub fn remove(&mut self, name: &str) -> Result<ManifestHash, TrackerError> {
        let hash = self
            .files
            .get(name)
            .ok_or_else(|| TrackerError::UnknownFile(name.to_string()))?
            .hash;
        self.apply(Record::FileRemoved {
            name: name.to_string(),
        });
        Ok(hash)
    }

    fn live_holders(&self, chunk: &ChunkId) -> usize {
        self.holders
            .get(chunk)
            .map(|h| h.iter().filter(|n| self.nodes[*n].alive).count())
            .unwrap_or(0)
    }

    /// The manifest of `name` and, per chunk, its live and suspect holders.
    pub fn locate(&self, name: &str) -> Result<Located, TrackerError> {
        let f = self
            .files
            .get(name)
            .ok_or_else(|| TrackerError::UnknownFile(name.to_string()))?;
        let locations = f
            .manifest
            .chunks
            .iter()
            .map(|c| {
                let mut loc = ChunkLocation {
                    live: Vec::new(),
                    suspect: Vec::new(),
                };
                for n in self.holders.get(c).into_iter().flatten() {
                    if self.nodes[n].alive {
                        loc.live.push(self.node_ref(n));
                    } else {
                        loc.suspect.push(self.node_ref(n));
                    }
                }
                loc
            })
            .collect();
        Ok(Located {
            manifest: f.manifest.clone(),
            hash: f.hash,
            locations,
        })
    }

    fn summary(&self, f: &FileEntry) -> FileSummary {
        let m = &f.manifest;
        let mut under = 0;
        let mut lost = 0;
        let mut min_copies = m.replicas;
        for c in &m.chunks {
            let live = self.live_holders(c);
            min_copies = min_copies.min(live as u32);
            under += u64::from(live < m.replicas as usize);
            lost += u64::from(live == 0);
        }
        FileSummary {
            name: m.name.clone(),
            size_bytes: m.size_bytes,
            replicas: m.replicas,
            chunks: m.chunks.len() as u64,
            hash: f.hash,
            under_replicated: under,
            min_copies,
            lost,
        }
    }

    /// Every file, by name.
    pub fn files(&self) -> Vec<FileSummary> {
        self.files.values().map(|f| self.summary(f)).collect()
    }

    /// Nodes and durability counters.
    pub fn status(&self, now_ms: u64) -> Status {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, n)| NodeSummary {
                id: id.clone(),
                addr: n.addr.clone(),
                alive: n.alive,
                leaving: n.leaving,
                chunks: n.chunks.len() as u64,
                last_seen_ms_ago: now_ms.saturating_sub(n.last_seen_ms),
            })
            .collect();
        let mut under = 0;
        let mut lost = 0;
        for (c, r) in &self.refs {
            let live = self.live_holders(c);
            if live < r.replicas() as usize {
                under += 1;
            }
            if live == 0 {
                lost += 1;
            }
        }
        let mut at_risk: Vec<FileSummary> = self
            .files
            .values()
            .map(|f| self.summary(f))
            .filter(|f| f.under_replicated > 0)
            .collect();
        at_risk.sort_by(|a, b| (a.min_copies, &a.name).cmp(&(b.min_copies, &b.name)));
        Status {
            nodes,
            files: self.files.len() as u64,
            chunks: self.refs.len() as u64,
            under_replicated: under,
            lost,
            repair_queue: self.heal.queued as u64,
            repairs_in_flight: self.heal.in_flight() as u64,
            deletes_pending: self.heal.deletes_pending() as u64,
            at_risk,
        }
    }

    /// Chunks of `node` that would drop below their factor without it.
    fn dependent_chunks(&self, node: &NodeId) -> Vec<(ChunkId, usize, u32, u64)> {
        let Some(n) = self.nodes.get(node) else {
            return Vec::new();
        };
        n.chunks
            .iter()
            .filter_map(|c| {
                let r = self.refs.get(c)?;
                let others = self.holders[c]
                    .iter()
                    .filter(|h| *h != node && self.nodes[*h].alive && !self.nodes[*h].leaving)
                    .count();
                (others < r.replicas() as usize).then_some((*c, others, r.replicas(), r.size_bytes))
            })
            .collect()
    }

    /// A node asks to leave: it stops receiving new chunks, and the reply
    /// lists where to copy each chunk that would otherwise drop below its
    /// factor. Refused, and the node stays a full member, if the rest of the
    /// cluster cannot take them, unless `force`: then it lists what the
    /// others can take.
    pub fn begin_leave(
        &mut self,
        node: &NodeId,
        force: bool,
        now_ms: u64,
    ) -> Result<Vec<Handoff>, TrackerError> {
        let n = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| TrackerError::UnknownNode(node.clone()))?;
        n.alive = true;
        n.last_seen_ms = now_ms;
        n.leaving = true;
        let mut handoffs = Vec::new();
        let mut extra_load: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (chunk, others, replicas, size_bytes) in self.dependent_chunks(node) {
            let mut exclude = self.holders[&chunk].clone();
            exclude.extend(self.deleting_nodes(&chunk));
            let mut candidates: Vec<(usize, NodeId)> = self
                .eligible(&exclude)
                .into_iter()
                .map(|(l, id)| (l + extra_load.get(&id).copied().unwrap_or(0), id))
                .collect();
            let missing = replicas as usize - others;
            if candidates.len() < missing && !force {
                self.nodes.get_mut(node).expect("checked above").leaving = false;
                return Err(TrackerError::NotEnoughNodes {
                    wanted: replicas,
                    available: others + candidates.len(),
                });
            }
            candidates.sort();
            for (_, id) in candidates.into_iter().take(missing) {
                *extra_load.entry(id.clone()).or_default() += 1;
                handoffs.push(Handoff {
                    chunk,
                    size_bytes,
                    target: self.node_ref(&id),
                });
            }
        }
        Ok(handoffs)
    }

    /// A leaving node reports the copies it made. If no chunk depends on it
    /// any more (or `force`) it is removed and the result is empty;
    /// otherwise the result lists the chunks that still do, and the node
    /// stays.
    pub fn finish_leave(
        &mut self,
        node: &NodeId,
        handed: Vec<(ChunkId, NodeId)>,
        force: bool,
    ) -> Result<Vec<ChunkId>, TrackerError> {
        if !self.nodes.contains_key(node) {
            return Err(TrackerError::UnknownNode(node.clone()));
        }
        for (chunk, target) in handed {
            if !self.heal.deleting(&chunk, &target) {
                self.link(&target, chunk);
            }
        }
        let still: Vec<ChunkId> = self
            .dependent_chunks(node)
            .into_iter()
            .map(|d| d.0)
            .collect();
        if still.is_empty() || force {
            self.apply(Record::NodeLeft { id: node.clone() });
            return Ok(Vec::new());
        }
        Ok(still)
    }
}

#[cfg(test)]
mod chaos_tests;
pub mod repair;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod tests;
