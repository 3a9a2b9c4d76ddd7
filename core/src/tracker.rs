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

use roaring::RoaringBitmap;
use smallvec::SmallVec;

use crate::ack::{self, Ack, ReceiptKey, Stamp};
use crate::id::{ChunkId, ManifestHash, NodeId};
use crate::limits::{
    ADDR_MAX_BYTES, FILE_CHUNKS_MAX, INVENTORY_MAX_CHUNKS, PUT_LEASES_MAX, REPLICAS_MAX,
    REVOKED_ID_MAX_BYTES, REVOKED_MAX, USED_TOKENS_MAX, ZONE_MAX_BYTES, ZONES_MAX,
};
use crate::manifest::{Manifest, ManifestError, validate_replicas};
use crate::mutants::{self, Mutant};

pub use index::CHUNK_RECORD_BYTES;
use index::{ChunkIx, ChunkTable, FileIx, MANY_FILES, NO_FILE, NodeIx};
use placement::{Candidate, Placer};

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
    /// How often each node is asked for a full inventory report, to
    /// reconcile what heartbeats may have missed (0: never). The first
    /// request comes between one and two intervals after a node registers,
    /// spread by its id, so nodes do not all report at once.
    pub full_report_interval_ms: u64,
    /// A copy no file references is deleted once it has been so for this
    /// long, and no put that began before it appeared is still in flight
    /// (see [`Tracker::touch_put`]). A put whose lease (renewed by every
    /// allocation) lapses for this long counts as over.
    pub orphan_grace_ms: u64,
    /// The secret nodes' receipt keys are derived from ([`ack::receipt`]).
    /// Give every tracker process a random one (the binary does): whoever
    /// knows it can forge any node's receipts.
    pub receipt_secret: [u8; 32],
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
            full_report_interval_ms: 60 * 60 * 1000,
            orphan_grace_ms: 60 * 60 * 1000,
            receipt_secret: [0; 32],
        }
    }
}

/// A node's disk as it last reported it: the bytes its chunks take, and
/// the most it offers (`p2p node --capacity`, or what its disk has free
/// plus what it uses, less a reserve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
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
    /// An enrollment token was used: it works no more (remembered until it
    /// expires).
    TokenUsed {
        nonce: [u8; 16],
        expires_unix_s: u64,
    },
    /// A certificate was revoked: the identity it names is refused.
    Revoked { id: String },
}

/// Why the tracker refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// Fewer eligible live nodes than the replication factor.
    #[error("need {wanted} distinct live nodes, only {available} available")]
    NotEnoughNodes { wanted: u32, available: usize },
    /// Enough live nodes, but too few with room for the chunks.
    #[error(
        "no room: need {wanted} distinct live nodes with {} free, only {available} have it",
        human_bytes(*chunk_bytes)
    )]
    NoRoom {
        wanted: u32,
        available: usize,
        chunk_bytes: u64,
    },
    /// A zone name is empty, too long, or one too many.
    #[error(
        "invalid zone {0:?}: 1 to {ZONE_MAX_BYTES} bytes, at most {ZONES_MAX} zones in a cluster"
    )]
    Zone(String),
    /// Too few nodes have reported since the tracker was restored from
    /// its records; the rest may be about to (ask again soon).
    #[error(
        "need {wanted} distinct live nodes, only {available} have reported since the tracker started; the others may still report"
    )]
    Recovering { wanted: u32, available: usize },
    /// The node is not registered (it should register again).
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// The node left the network: it joins again only if it asks to.
    #[error("node {0} left the network; it joins again only when started with --rejoin")]
    Departed(NodeId),
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
        /// Acknowledgements not counted because they come from a session of
        /// their node the tracker does not know (yet): a node that
        /// restarted and has not registered again. Once it has, its report
        /// lists the copy, so the same commit may pass if made again soon.
        unconfirmed: usize,
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
    /// Part of a full report arrived without its beginning.
    #[error("node {0} sent part of a report it did not begin")]
    NoReport(NodeId),
    /// The node has not reported its inventory to this tracker (it was
    /// restarted, or took over the group): what it holds is not known yet.
    #[error(
        "node {0} has not reported its chunks to this tracker since it started; try again in a moment"
    )]
    Unreported(NodeId),
    /// An enrollment token was refused.
    #[error(transparent)]
    Token(#[from] crate::enroll::TokenError),
    /// Too many enrollment tokens are in use at once.
    #[error("too many enrollment tokens in use; try again once some have expired")]
    TooManyTokens,
    /// Revoking an identity past [`REVOKED_MAX`], or one too long.
    #[error(
        "cannot revoke {0:?}: at most {REVOKED_MAX} identities of at most {REVOKED_ID_MAX_BYTES} bytes"
    )]
    Revocation(String),
}

#[derive(Debug, Clone)]
struct NodeEntry {
    id: NodeId,
    addr: String,
    last_seen_ms: u64,
    alive: bool,
    leaving: bool,
    /// When its leave's latest round began (soft state, like liveness):
    /// the other holders must be heard from after that for it to go.
    leave_began_ms: Option<u64>,
    /// Known only from records (after a restart): ask for a full report.
    needs_full_report: bool,
    /// A full report under way: the chunks it named so far.
    report: Option<RoaringBitmap>,
    /// Chunks the report under way named whose deletion is still to be
    /// sent: not counted, but still there to delete.
    report_deleting: Vec<ChunkId>,
    /// When its next full report is due (see
    /// [`TrackerConfig::full_report_interval_ms`]); 0 before the first.
    next_full_report_ms: u64,
    /// The chunks it holds, by index.
    chunks: RoaringBitmap,
    /// The node's registration with this tracker process, and the highest
    /// heartbeat number seen in it (see [`Tracker::sequence`]).
    session: u64,
    last_seq: u64,
    /// Its zone, by index into the tracker's zone names (`None`: a zone of
    /// its own).
    zone: Option<u32>,
    /// Its disk as last reported (`None`: not reported, not limited).
    space: Option<Space>,
    /// Bytes placed on it since that report.
    pending_bytes: u64,
}

#[derive(Debug, Clone)]
struct FileEntry {
    name: String,
    size_bytes: u64,
    chunk_size_bytes: u64,
    replicas: u32,
    /// The manifest's hash, made when first asked for: a restore applies
    /// 10^4 manifests of 10^3 chunk ids each, and hashing them all was a
    /// twentieth of it (see [`Tracker::hash_of`]).
    hash: std::sync::OnceLock<ManifestHash>,
    chunks: Vec<ChunkIx>,
    /// `short[k]`: how many of the file's chunk references have exactly `k`
    /// live copies, for every `k` below the file's factor. Kept up to date
    /// as copies come and go, so `ls` never walks the chunks.
    short: Vec<u32>,
}

impl NodeEntry {
    /// Whether its copies are still to be learnt from a full report: known
    /// only from records (after a restart), or a report under way.
    fn awaits_report(&self) -> bool {
        self.needs_full_report || self.report.is_some()
    }
}

impl FileEntry {
    fn under_replicated(&self) -> u64 {
        self.short.iter().map(|&c| u64::from(c)).sum()
    }
}

/// Health of every referenced chunk, kept up to date by
/// [`Tracker::reclassify`] whenever a chunk's holders, their liveness or its
/// factor change: the repair planner and `status` read these and never walk
/// the chunk table.
#[derive(Debug, Clone)]
struct Health {
    /// `under[k]`: chunks with exactly `k` live copies, fewer than their factor.
    under: Vec<RoaringBitmap>,
    /// Chunks with more live copies than their factor.
    over: RoaringBitmap,
    /// Chunks held but referenced by no file.
    orphans: RoaringBitmap,
    /// Referenced chunks two of whose live copies share a zone.
    crowded: RoaringBitmap,
    /// Files with a chunk below the file's factor.
    at_risk: BTreeSet<FileIx>,
    /// Chunks some file references.
    referenced: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            under: vec![RoaringBitmap::new(); REPLICAS_MAX as usize],
            over: RoaringBitmap::new(),
            orphans: RoaringBitmap::new(),
            crowded: RoaringBitmap::new(),
            at_risk: BTreeSet::new(),
            referenced: 0,
        }
    }
}

impl Health {
    /// The set a class of chunks is kept in (none for settled chunks).
    fn set_of(&mut self, class: Class) -> Option<&mut RoaringBitmap> {
        match class {
            Class::Under(k) => Some(&mut self.under[k as usize]),
            Class::Over => Some(&mut self.over),
            Class::Orphan => Some(&mut self.orphans),
            Class::Settled => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// It has exactly its factor, or no file references it and no node
    /// holds it.
    Settled,
    Under(u8),
    Over,
    /// Held, but no file references it (a failed put's copy, or one whose
    /// deletion a tracker restart forgot).
    Orphan,
}

fn class(live: u8, factor: u8, held: bool) -> Class {
    if factor == 0 && held {
        Class::Orphan
    } else if factor == 0 || live == factor {
        Class::Settled
    } else if live < factor {
        Class::Under(live)
    } else {
        Class::Over
    }
}

/// Unreported nodes a `locate` names for a chunk with no live holder known.
const UNREPORTED_CANDIDATES: usize = 8;

/// Where to fetch one chunk: live holders first, then holders believed dead
/// (and, for a chunk with no live holder, nodes yet to report in full).
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
    /// The zone it gave, or its id.
    pub zone: String,
    /// Its disk as last reported (`None` if it never said).
    pub space: Option<Space>,
}

/// Something an operator should act on before it matters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    /// The live nodes' free space could not take the copies of the
    /// fullest one if it died.
    #[error(
        "if node {node} ({}) died, the others would have only {} free to restore its copies",
        human_bytes(*used_bytes),
        human_bytes(*spare_bytes)
    )]
    NoRoomToRepair {
        node: NodeId,
        used_bytes: u64,
        spare_bytes: u64,
    },
    /// So few live nodes that losing one leaves fewer than a file's
    /// factor: its copies could not all be restored.
    #[error(
        "{live} live nodes for files of factor {replicas}: after losing one, repair could not restore {replicas} copies"
    )]
    FewNodes { live: usize, replicas: u32 },
    /// Fewer live zones than the highest replication factor in use: some
    /// chunks have two copies in one zone.
    #[error("{zones} live zones for files of factor {replicas}: some copies share a zone")]
    FewZones { zones: usize, replicas: u32 },
}

/// Bytes as a person reads them: `44.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What would become of the files if some nodes died now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WhatIf {
    /// Files with a chunk no other live node holds: unreadable.
    pub lost: Vec<String>,
    /// Files still readable but with a chunk below its factor.
    pub at_risk: Vec<String>,
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
    /// Files with at least one under-replicated chunk, fewest copies first
    /// (at most as many as asked: see [`Tracker::status_capped`]).
    pub at_risk: Vec<FileSummary>,
    /// How many files are at risk, listed or not.
    pub at_risk_total: u64,
    pub warnings: Vec<Warning>,
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
    /// Read `chunk` and check it against its id: remove it if it is
    /// corrupt, and if it is intact, say so with the next heartbeat (see
    /// [`Tracker::verified`]). A surplus copy elsewhere is trimmed only
    /// once every holder that keeps one has.
    Verify { chunk: ChunkId },
}

/// The tracker's whole state. See the module docs for the drive contract,
/// and [`index`] for how chunks are stored.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    config: TrackerConfig,
    /// Registered nodes by index; a node that left leaves a hole.
    nodes: Vec<Option<NodeEntry>>,
    node_ix: BTreeMap<NodeId, NodeIx>,
    /// Committed files by index, with free slots reused.
    files: Vec<Option<FileEntry>>,
    free_files: Vec<FileIx>,
    by_name: BTreeMap<String, FileIx>,
    chunks: ChunkTable,
    /// Chunks more than one file references: each file, and how many times
    /// it lists the chunk.
    shared: BTreeMap<ChunkIx, Vec<(FileIx, u32)>>,
    health: Health,
    outbox: VecDeque<Record>,
    heal: repair::HealState,
    /// The last registration session handed out by this process.
    last_session: u64,
    /// Restored from records and not every node has reported yet.
    recovery: Option<Recovery>,
    /// Enrollment tokens used, by nonce: until when each would have worked.
    used_tokens: BTreeMap<[u8; 16], u64>,
    /// Identities whose certificates were revoked.
    revoked: BTreeSet<String>,
    /// Nodes that left: their registration is refused (see
    /// [`Tracker::rejoin`]). Durable, from the records that said they left.
    departed: BTreeSet<NodeId>,
    /// Zone names nodes gave, indexed by `NodeEntry::zone`.
    zone_names: Vec<String>,
    zone_ix: BTreeMap<String, u32>,
}

/// Every chunk's copies among `candidates` (by rank), or how many copies
/// the first chunk that could not get `replicas` of them got.
fn place_all(
    candidates: &[Candidate],
    chunk_count: u64,
    replicas: u32,
    chunk_bytes: u64,
) -> Result<Vec<Vec<usize>>, usize> {
    let mut placer = Placer::new(candidates);
    (0..chunk_count)
        .map(|_| {
            let chosen = placer.place(replicas as usize, chunk_bytes);
            if chosen.len() < replicas as usize {
                Err(chosen.len())
            } else {
                Ok(chosen)
            }
        })
        .collect()
}

/// After a restart, chunks look under-replicated only because their
/// holders have not reported yet. As in HDFS's safe mode, repairs and trims
/// wait until every node known from the records has sent its full report,
/// or `dead_after_ms` has passed since the first tick, whichever is first.
#[derive(Debug, Clone, Copy)]
struct Recovery {
    first_tick_ms: Option<u64>,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            last_session: config.session_base,
            // Keyed by the process's random session base, so nobody outside
            // can grind chunk ids into one bucket.
            chunks: ChunkTable::new(config.session_base ^ 0x9e37_79b9_7f4a_7c15),
            config,
            ..Default::default()
        }
    }

    /// Rebuild the state from persisted records. Restored nodes count as dead
    /// until they are heard from, and are asked for a full inventory then.
    pub fn restore(config: TrackerConfig, records: impl IntoIterator<Item = Record>) -> Self {
        Self::restore_sized(config, 0, records)
    }

    /// [`Tracker::restore`], with room made first for about `chunks_hint`
    /// chunks (an estimate is fine: it only saves the table's regrowth).
    pub fn restore_sized(
        config: TrackerConfig,
        chunks_hint: usize,
        records: impl IntoIterator<Item = Record>,
    ) -> Self {
        let mut t = Self::new(config);
        t.chunks.reserve(chunks_hint);
        for r in records {
            t.apply(r);
            // Applying queues the record to persist: a restore has nothing
            // to persist, and keeping every manifest read until the end
            // held the whole database in memory once more.
            t.outbox.clear();
        }
        for n in t.nodes.iter_mut().flatten() {
            assert!(!n.alive, "a restored node is heard from before it counts");
            n.needs_full_report = true;
        }
        t.recovery = Some(Recovery {
            first_tick_ms: None,
        });
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
            Record::NodeJoined { id, .. } => {
                self.departed.remove(id);
            }
            Record::NodeLeft { id } => {
                self.departed.insert(id.clone());
            }
            _ => {}
        }
        match &record {
            Record::NodeJoined { id, addr } => match self.node_ix.get(id) {
                Some(&nx) => self.node_mut(nx).addr = addr.clone(),
                None => {
                    let nx = self.nodes.len() as NodeIx;
                    self.nodes.push(Some(NodeEntry {
                        id: id.clone(),
                        addr: addr.clone(),
                        last_seen_ms: 0,
                        alive: false,
                        leaving: false,
                        leave_began_ms: None,
                        needs_full_report: false,
                        report: None,
                        report_deleting: Vec::new(),
                        next_full_report_ms: 0,
                        chunks: RoaringBitmap::new(),
                        session: 0,
                        last_seq: 0,
                        zone: None,
                        space: None,
                        pending_bytes: 0,
                    }));
                    self.node_ix.insert(id.clone(), nx);
                }
            },
            Record::NodeLeft { id } => {
                if let Some(nx) = self.node_ix.get(id).copied() {
                    self.set_alive(nx, false);
                    let held: Vec<ChunkIx> = self.node(nx).chunks.iter().collect();
                    for cx in held {
                        self.unlink(nx, cx);
                    }
                    self.nodes[nx as usize] = None;
                    self.node_ix.remove(id);
                    self.heal.forget_node(id);
                    self.heal.forget_leave_checks(nx);
                }
            }
            Record::FileCommitted { manifest, holders } => {
                if self.by_name.contains_key(&manifest.name) {
                    self.drop_file(&manifest.name.clone(), None);
                }
                let chunks: Vec<ChunkIx> = manifest
                    .chunks
                    .iter()
                    .map(|c| self.chunks.find_or_insert(*c))
                    .collect();
                let entry = FileEntry {
                    name: manifest.name.clone(),
                    size_bytes: manifest.size_bytes,
                    chunk_size_bytes: manifest.chunk_size_bytes,
                    replicas: manifest.replicas,
                    hash: std::sync::OnceLock::new(),
                    chunks,
                    short: vec![0; manifest.replicas as usize],
                };
                let fx = match self.free_files.pop() {
                    Some(fx) => {
                        self.files[fx as usize] = Some(entry);
                        fx
                    }
                    None => {
                        self.files.push(Some(entry));
                        (self.files.len() - 1) as FileIx
                    }
                };
                self.by_name.insert(manifest.name.clone(), fx);
                // A restored record names each of a few nodes thousands of
                // times through one shared string: look each up once, by
                // the string's address, and the last few again first
                // (neighbouring chunks mostly share holders; a map lookup
                // per holder was a twentieth of a restart).
                let mut known: BTreeMap<usize, Option<NodeIx>> = BTreeMap::new();
                let mut recent: [(usize, Option<NodeIx>); 4] = [(0, None); 4];
                let mut next = 0;
                for i in 0..manifest.chunks.len() {
                    let cx = self.file(fx).chunks[i];
                    self.add_ref(cx, fx, manifest.chunk_len(i));
                    for n in holders.get(i).into_iter().flatten() {
                        let at = n.as_str().as_ptr() as usize;
                        let nx = match recent.iter().find(|r| r.0 == at) {
                            Some(r) => r.1,
                            None => {
                                let nx = *known
                                    .entry(at)
                                    .or_insert_with(|| self.node_ix.get(n).copied());
                                recent[next] = (at, nx);
                                next = (next + 1) % recent.len();
                                nx
                            }
                        };
                        if let Some(nx) = nx {
                            self.link(nx, cx);
                        }
                    }
                }
            }
            Record::FileRemoved { name } => self.drop_file(name, None),
            Record::TokenUsed {
                nonce,
                expires_unix_s,
            } => {
                self.used_tokens.insert(*nonce, *expires_unix_s);
            }
            Record::Revoked { id } => {
                self.revoked.insert(id.clone());
            }
        }
        self.outbox.push_back(record);
    }

    /// Forget the file `name`; chunks no other file references become
    /// orphans, to be deleted from every holder at once, or (a replaced
    /// version, which readers may still be fetching) once the orphan grace
    /// from `kept_from` is over.
    fn drop_file(&mut self, name: &str, kept_from: Option<u64>) {
        let Some(fx) = self.by_name.remove(name) else {
            return;
        };
        let chunks = std::mem::take(&mut self.file_mut(fx).chunks);
        for &cx in &chunks {
            self.remove_ref(cx, fx, kept_from);
        }
        self.files[fx as usize] = None;
        self.free_files.push(fx);
        self.health.at_risk.remove(&fx);
    }

    // ------------------------------------------------------------ tables

    fn node(&self, nx: NodeIx) -> &NodeEntry {
        self.nodes[nx as usize].as_ref().expect("node index in use")
    }

    fn node_mut(&mut self, nx: NodeIx) -> &mut NodeEntry {
        self.nodes[nx as usize].as_mut().expect("node index in use")
    }

    fn file(&self, fx: FileIx) -> &FileEntry {
        self.files[fx as usize].as_ref().expect("file index in use")
    }

    fn file_mut(&mut self, fx: FileIx) -> &mut FileEntry {
        self.files[fx as usize].as_mut().expect("file index in use")
    }

    fn alive(&self, nx: NodeIx) -> bool {
        self.nodes[nx as usize].as_ref().is_some_and(|n| n.alive)
    }

    /// The files that reference `cx`, with how many times each lists it.
    fn files_of(&self, cx: ChunkIx) -> SmallVec<[(FileIx, u32); 2]> {
        let rec = self.chunks.get(cx);
        match rec.file {
            NO_FILE => SmallVec::new(),
            MANY_FILES => self.shared[&cx].iter().copied().collect(),
            fx => smallvec::smallvec![(fx, rec.file_refs)],
        }
    }

    /// The factor of `cx`: the largest of its files' (0 if none).
    fn factor_of(&self, cx: ChunkIx) -> u8 {
        self.files_of(cx)
            .iter()
            .map(|&(fx, _)| self.file(fx).replicas as u8)
            .max()
            .unwrap_or(0)
    }

    /// The live holders of `cx`, in node id order.
    fn live_holder_ids(&self, cx: ChunkIx) -> Vec<NodeId> {
        self.chunks
            .get(cx)
            .holders
            .iter()
            .filter(|&&nx| self.alive(nx))
            .map(|&nx| self.node(nx).id.clone())
            .collect()
    }

    fn holder_ids(&self, cx: ChunkIx) -> BTreeSet<NodeId> {
        self.chunks
            .get(cx)
            .holders
            .iter()
            .map(|&nx| self.node(nx).id.clone())
            .collect()
    }

    // ------------------------------------------------- health upkeep

    /// A file's reference count of chunks with `live` copies moves by `delta`.
    fn count_in_file(&mut self, fx: FileIx, live: u8, delta: i64) {
        let f = self.file_mut(fx);
        if u32::from(live) < f.replicas {
            let c = &mut f.short[live as usize];
            *c = u32::try_from(i64::from(*c) + delta).expect("file health count in range");
        }
        if f.under_replicated() > 0 {
            self.health.at_risk.insert(fx);
        } else {
            self.health.at_risk.remove(&fx);
        }
    }

    /// Move `cx` to the class its live copies and factor give it.
    fn set_class(&mut self, cx: ChunkIx, live: u8, factor: u8) {
        let rec = self.chunks.get(cx);
        let old = if rec.orphan {
            Class::Orphan
        } else {
            class(rec.live, rec.factor, false)
        };
        let new = class(live, factor, !rec.holders.is_empty());
        let id = rec.id;
        if old != new {
            if let Some(set) = self.health.set_of(old) {
                set.remove(cx);
            }
            if let Some(set) = self.health.set_of(new) {
                set.insert(cx);
            }
            if old == Class::Orphan {
                self.heal.left_orphans(cx);
            }
            if matches!(old, Class::Under(_)) && !matches!(new, Class::Under(_)) {
                // Back at its factor (a holder returned, a copy landed
                // unplanned) or no longer needed: repairs still planned are
                // moot.
                self.heal.left_under(cx, &id);
            }
            if old == Class::Over {
                self.heal.left_over(cx);
            }
        }
        let rec = self.chunks.get_mut(cx);
        rec.live = live;
        rec.factor = factor;
        rec.orphan = new == Class::Orphan;
        if factor > 0 && live > 1 && self.is_crowded(cx) {
            self.health.crowded.insert(cx);
        } else {
            self.health.crowded.remove(cx);
        }
    }

    /// Recount `cx`'s live copies and bring every count that depends on
    /// them up to date. Called whenever a holder is added or removed, or a
    /// holder's liveness changes.
    fn reclassify(&mut self, cx: ChunkIx) {
        let rec = self.chunks.get(cx);
        let live = rec.holders.iter().filter(|&&nx| self.alive(nx)).count() as u8;
        let (old, factor) = (rec.live, rec.factor);
        if live != old {
            for (fx, refs) in self.files_of(cx) {
                self.count_in_file(fx, old, -i64::from(refs));
                self.count_in_file(fx, live, i64::from(refs));
            }
        }
        self.set_class(cx, live, factor);
    }

    /// File `fx` lists `cx` once more.
    fn add_ref(&mut self, cx: ChunkIx, fx: FileIx, size_bytes: u64) {
        let rec = self.chunks.get_mut(cx);
        rec.size_bytes = u32::try_from(size_bytes).expect("chunk sizes are bounded");
        match rec.file {
            NO_FILE => {
                rec.file = fx;
                rec.file_refs = 1;
                self.health.referenced += 1;
            }
            f if f == fx => rec.file_refs += 1,
            MANY_FILES => {
                let list = self.shared.get_mut(&cx).expect("shared chunk listed");
                match list.iter_mut().find(|(f, _)| *f == fx) {
                    Some((_, n)) => *n += 1,
                    None => list.push((fx, 1)),
                }
            }
            other => {
                let first = (other, rec.file_refs);
                rec.file = MANY_FILES;
                rec.file_refs = 0;
                self.shared.insert(cx, vec![first, (fx, 1)]);
            }
        }
        let live = self.chunks.get(cx).live;
        self.count_in_file(fx, live, 1);
        let factor = self.factor_of(cx);
        self.set_class(cx, live, factor);
    }

    /// File `fx` lists `cx` once less. A chunk no file references any more
    /// is forgotten if nobody holds it, otherwise an orphan whose copies go
    /// at once, or after the grace from `kept_from`.
    fn remove_ref(&mut self, cx: ChunkIx, fx: FileIx, kept_from: Option<u64>) {
        let live = self.chunks.get(cx).live;
        self.count_in_file(fx, live, -1);
        let rec = self.chunks.get_mut(cx);
        match rec.file {
            MANY_FILES => {
                let list = self.shared.get_mut(&cx).expect("shared chunk listed");
                if let Some(i) = list.iter().position(|(f, _)| *f == fx) {
                    list[i].1 -= 1;
                    if list[i].1 == 0 {
                        list.remove(i);
                    }
                }
                if list.len() == 1 {
                    let (f, n) = list[0];
                    self.shared.remove(&cx);
                    rec.file = f;
                    rec.file_refs = n;
                }
            }
            f if f == fx => {
                rec.file_refs -= 1;
                if rec.file_refs == 0 {
                    rec.file = NO_FILE;
                    self.health.referenced -= 1;
                }
            }
            _ => unreachable!("file {fx} does not reference chunk {cx}"),
        }
        let factor = self.factor_of(cx);
        self.set_class(cx, live, factor);
        if factor == 0 {
            if self.chunks.get(cx).holders.is_empty() {
                self.chunks.remove(cx);
            } else if let Some(at) = kept_from {
                self.heal.orphan_wait(cx, at);
            } else {
                self.heal.removed(cx);
            }
        }
    }

    fn set_alive(&mut self, nx: NodeIx, alive: bool) {
        let n = self.node_mut(nx);
        if n.alive == alive {
            return;
        }
        n.alive = alive;
        let held: Vec<ChunkIx> = n.chunks.iter().collect();
        for cx in held {
            self.reclassify(cx);
        }
    }

    fn link(&mut self, nx: NodeIx, cx: ChunkIx) {
        let rec = self.chunks.get(cx);
        if rec.holders.contains(&nx) {
            return;
        }
        let id = &self.node(nx).id;
        // Holders mostly arrive in id order (a restore's records list them
        // so): one comparison with the last then.
        let pos = match rec.holders.last() {
            None => 0,
            Some(&last) if self.node(last).id < *id => rec.holders.len(),
            Some(_) => rec.holders.partition_point(|&h| self.node(h).id < *id),
        };
        self.chunks.get_mut(cx).holders.insert(pos, nx);
        let held = &mut self.node_mut(nx).chunks;
        // Chunk indices mostly arrive in increasing order: append if so.
        if held.try_push(cx).is_err() {
            held.insert(cx);
        }
        // A holder that is not alive does not change the live count (a
        // restart links every holder while all of them are), but a first
        // holder makes an unreferenced chunk an orphan.
        if self.alive(nx) || self.chunks.get(cx).file == NO_FILE {
            self.reclassify(cx);
        }
    }

    fn unlink(&mut self, nx: NodeIx, cx: ChunkIx) {
        let rec = self.chunks.get_mut(cx);
        if let Some(p) = rec.holders.iter().position(|&h| h == nx) {
            rec.holders.remove(p);
        }
        if let Some(n) = self.nodes[nx as usize].as_mut() {
            n.chunks.remove(cx);
        }
        if self.alive(nx) || self.chunks.get(cx).file == NO_FILE {
            self.reclassify(cx);
        }
        let rec = self.chunks.get(cx);
        if rec.file == NO_FILE && rec.holders.is_empty() {
            self.chunks.remove(cx);
        }
    }

    fn link_id(&mut self, node: &NodeId, chunk: ChunkId) {
        if let Some(&nx) = self.node_ix.get(node) {
            let cx = self.chunks.find_or_insert(chunk);
            self.link(nx, cx);
        }
    }

    fn unlink_id(&mut self, node: &NodeId, chunk: &ChunkId) {
        if let (Some(&nx), Some(cx)) = (self.node_ix.get(node), self.chunks.find(chunk)) {
            self.unlink(nx, cx);
        }
    }

    // ------------------------------------------------------------ inputs

    /// A node announces itself with its full inventory, which replaces what
    /// the tracker believed it held. Returns the session its heartbeats
    /// carry from now on (see [`Tracker::sequence`]). The same as
    /// [`Tracker::begin_report`], one [`Tracker::report_part`] and
    /// [`Tracker::end_report`].
    pub fn register(
        &mut self,
        id: NodeId,
        addr: String,
        chunks: Vec<ChunkId>,
        now_ms: u64,
    ) -> Result<u64, TrackerError> {
        if chunks.len() > INVENTORY_MAX_CHUNKS {
            return Err(TrackerError::Inventory(chunks.len()));
        }
        self.begin_report(id.clone(), addr, now_ms)?;
        self.report_part(&id, &chunks)?;
        self.end_report(&id, now_ms)
    }

    /// Node `id` left and asks to join again (`p2p node --rejoin`): its next
    /// registration is taken, and recorded as a join, which the group
    /// remembers. Until then a node that left is refused: one restarted by
    /// its service manager after its leave would undo the leave unseen.
    pub fn rejoin(&mut self, id: &NodeId) {
        self.departed.remove(id);
    }

    /// Whether node `id` left and has not joined again.
    pub fn departed(&self, id: &NodeId) -> bool {
        self.departed.contains(id)
    }

    /// A node starts a full inventory report, to be sent in parts of any
    /// number (a node may hold far more chunk ids than one message can
    /// carry). Until [`Tracker::end_report`] the node counts as alive and
    /// as holding what it was believed to hold plus what the parts name so
    /// far; nothing is trimmed meanwhile (see `plan`), and its heartbeats
    /// are answered with a request to report again.
    pub fn begin_report(
        &mut self,
        id: NodeId,
        addr: String,
        now_ms: u64,
    ) -> Result<(), TrackerError> {
        if addr.is_empty() || addr.len() > ADDR_MAX_BYTES {
            return Err(TrackerError::Addr(addr));
        }
        if self.departed.contains(&id) {
            return Err(TrackerError::Departed(id));
        }
        let known_addr = self.node_ix.get(&id).map(|&nx| self.node(nx).addr.clone());
        if known_addr.as_deref() != Some(addr.as_str()) {
            self.apply(Record::NodeJoined {
                id: id.clone(),
                addr,
            });
        }
        let nx = self.node_ix[&id];
        // A full report shows what the node holds now, whatever happened to
        // deletions sent before; one still to be sent will go out.
        self.heal.settle(&id);
        self.set_alive(nx, true);
        let n = self.node_mut(nx);
        n.report = Some(RoaringBitmap::new());
        n.report_deleting.clear();
        n.last_seen_ms = now_ms;
        // No heartbeat of an earlier registration applies any more.
        n.session = 0;
        Ok(())
    }

    /// Part of a full report: `chunks` are on the node's disk.
    pub fn report_part(&mut self, id: &NodeId, chunks: &[ChunkId]) -> Result<(), TrackerError> {
        if chunks.len() > INVENTORY_MAX_CHUNKS {
            return Err(TrackerError::Inventory(chunks.len()));
        }
        let nx = *self
            .node_ix
            .get(id)
            .ok_or_else(|| TrackerError::UnknownNode(id.clone()))?;
        if self.node(nx).report.is_none() {
            return Err(TrackerError::NoReport(id.clone()));
        }
        let mut seen = Vec::with_capacity(chunks.len());
        let mut deleting = Vec::new();
        for &c in chunks {
            if self.heal.deleting(&c, id) {
                deleting.push(c);
                continue;
            }
            let cx = self.chunks.find_or_insert(c);
            self.link(nx, cx);
            seen.push(cx);
        }
        let n = self.node_mut(nx);
        n.report.as_mut().expect("checked above").extend(seen);
        n.report_deleting.extend(deleting);
        Ok(())
    }

    /// A full report broke off (its stream failed): what its parts named
    /// stays counted, what they did not is still believed held, and the
    /// node is asked for a full report again at its next heartbeat.
    pub fn abort_report(&mut self, id: &NodeId) {
        if let Some(&nx) = self.node_ix.get(id) {
            let n = self.node_mut(nx);
            if n.report.take().is_some() {
                n.needs_full_report = true;
            }
        }
    }

    /// The full report is complete: copies it did not name are no longer
    /// counted. Returns the session the node's heartbeats carry from now on.
    pub fn end_report(&mut self, id: &NodeId, now_ms: u64) -> Result<u64, TrackerError> {
        let nx = *self
            .node_ix
            .get(id)
            .ok_or_else(|| TrackerError::UnknownNode(id.clone()))?;
        let seen = self
            .node_mut(nx)
            .report
            .take()
            .ok_or_else(|| TrackerError::NoReport(id.clone()))?;
        let gone = &self.node(nx).chunks - &seen;
        for cx in &gone {
            self.unlink(nx, cx);
        }
        // A deletion still to be sent of a copy the report did not name has
        // nothing left to delete: dropped, or a commit that cancels it
        // would count the copy again (seed 22395057073: a rotten copy the
        // node had removed while down, counted from then on).
        let named: BTreeSet<ChunkId> = std::mem::take(&mut self.node_mut(nx).report_deleting)
            .into_iter()
            .collect();
        self.heal.keep_queued_deletes(id, |c| named.contains(c));
        // Never 0, which no registration has.
        self.last_session = self.last_session.wrapping_add(1).max(1);
        let session = self.last_session;
        let interval = self.config.full_report_interval_ms;
        let first = self.node(nx).next_full_report_ms == 0;
        // The first periodic report comes one to two intervals from now,
        // spread by node id; later ones every interval.
        let spread = if first && interval > 0 {
            let h = blake3::hash(id.as_str().as_bytes());
            u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) % interval
        } else {
            0
        };
        self.heal.forget_leave_of(nx);
        let n = self.node_mut(nx);
        n.needs_full_report = false;
        n.leaving = false;
        n.leave_began_ms = None;
        n.last_seen_ms = now_ms;
        n.session = session;
        n.last_seq = 0;
        n.next_full_report_ms = now_ms
            .saturating_add(interval)
            .saturating_add(spread)
            .max(1);
        Ok(session)
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
        let Some(&nx) = self.node_ix.get(id) else {
            return Sequence::Reregister;
        };
        let n = self.node_mut(nx);
        if n.needs_full_report || n.session != session || session == 0 {
            return Sequence::Reregister;
        }
        if seq > n.last_seq || mutants::on(Mutant::ApplyOvertakenHeartbeat) {
            n.last_seq = n.last_seq.max(seq);
            Sequence::Fresh
        } else {
            Sequence::Stale
        }
    }

    /// The zone `node` says it is in (`None`: a zone of its own, the
    /// default). Placement, repair and hand-off spread each chunk's copies
    /// over as many zones as they can (see [`placement`]). Not a durable
    /// fact: a node says it with every registration.
    pub fn set_zone(&mut self, node: &NodeId, zone: Option<&str>) -> Result<(), TrackerError> {
        let Some(&nx) = self.node_ix.get(node) else {
            return Err(TrackerError::UnknownNode(node.clone()));
        };
        let zone = match zone {
            None => None,
            Some(name) => {
                if name.is_empty() || name.len() > ZONE_MAX_BYTES {
                    return Err(TrackerError::Zone(name.to_string()));
                }
                match self.zone_ix.get(name) {
                    Some(&z) => Some(z),
                    None if self.zone_names.len() < ZONES_MAX => {
                        let z = self.zone_names.len() as u32;
                        self.zone_names.push(name.to_string());
                        self.zone_ix.insert(name.to_string(), z);
                        Some(z)
                    }
                    None => return Err(TrackerError::Zone(name.to_string())),
                }
            }
        };
        if self.node(nx).zone != zone {
            self.node_mut(nx).zone = zone;
            let held: Vec<ChunkIx> = self.node(nx).chunks.iter().collect();
            for cx in held {
                self.reclassify(cx);
            }
        }
        Ok(())
    }

    /// What `node`'s disk holds and offers, as it reports with every
    /// registration and heartbeat: no chunk is placed where it would not
    /// fit.
    pub fn set_space(&mut self, node: &NodeId, space: Space) {
        if let Some(&nx) = self.node_ix.get(node) {
            let n = self.node_mut(nx);
            n.space = Some(space);
            n.pending_bytes = 0;
        }
    }

    /// A key equal for nodes of one zone and only for them.
    fn zone_key(&self, nx: NodeIx) -> u64 {
        match self.node(nx).zone {
            Some(z) if !mutants::on(Mutant::IgnoreZones) => u64::from(z),
            _ => (1 << 32) | u64::from(nx),
        }
    }

    /// The name of `nx`'s zone: the one it gave, or its id.
    fn zone_name(&self, nx: NodeIx) -> String {
        let n = self.node(nx);
        match n.zone {
            Some(z) => self.zone_names[z as usize].clone(),
            None => n.id.to_string(),
        }
    }

    /// Bytes `nx` can still take (`None`: it never said, not limited).
    fn room(&self, nx: NodeIx) -> Option<u64> {
        let n = self.node(nx);
        n.space.map(|s| {
            s.capacity_bytes
                .saturating_sub(s.used_bytes)
                .saturating_sub(n.pending_bytes)
        })
    }

    fn fits(&self, nx: NodeIx, size_bytes: u64) -> bool {
        self.room(nx).is_none_or(|r| r >= size_bytes)
    }

    /// `size_bytes` more are on their way to `nx`.
    fn expect_bytes(&mut self, nx: NodeIx, size_bytes: u64) {
        let n = self.node_mut(nx);
        n.pending_bytes = n.pending_bytes.saturating_add(size_bytes);
    }

    /// Whether two of `cx`'s live copies share a zone.
    fn is_crowded(&self, cx: ChunkIx) -> bool {
        let mut zones: SmallVec<[u64; 4]> = SmallVec::new();
        for &nx in &self.chunks.get(cx).holders {
            if self.alive(nx) {
                let z = self.zone_key(nx);
                if zones.contains(&z) {
                    return true;
                }
                zones.push(z);
            }
        }
        false
    }

    /// The zones of `cx`'s live copies.
    fn live_zones(&self, cx: ChunkIx) -> SmallVec<[u64; 4]> {
        self.chunks
            .get(cx)
            .holders
            .iter()
            .filter(|&&nx| self.alive(nx))
            .map(|&nx| self.zone_key(nx))
            .collect()
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
        let Some(&nx) = self.node_ix.get(id) else {
            return Ok(HeartbeatReply::Reregister);
        };
        let n = self.node(nx);
        let interval = self.config.full_report_interval_ms;
        if n.needs_full_report
            || n.report.is_some()
            || (interval > 0 && now_ms >= n.next_full_report_ms)
        {
            // The reply asks for a full report, which supersedes this one.
            return Ok(HeartbeatReply::Reregister);
        }
        self.set_alive(nx, true);
        self.node_mut(nx).last_seen_ms = now_ms;
        let at = Stamp {
            session: self.node(nx).session,
            seq: self.node(nx).last_seq,
        };
        for c in removed
            .iter()
            .filter(|_| !mutants::on(Mutant::DropHeartbeatRemovals))
        {
            self.unlink_id(id, c);
            self.heal.gone(id, c, at, now_ms);
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
                self.link_id(id, c);
            }
        }
        Ok(HeartbeatReply::Ok {
            commands: self.take_commands(id, now_ms),
        })
    }

    /// Uploads `node` stored since its last heartbeat, each with the put it
    /// was for (0: none, such as a repair copy). Call it with each fresh
    /// heartbeat, before [`Tracker::heartbeat`]. A copy written for a put
    /// still in flight may be counted by that put's commit: a deletion of
    /// it not sent yet is cancelled, and an orphan waits its grace again
    /// (see [`crate::ack`]). A copy of a put that has committed changes
    /// nothing: deletions decided since (an `rm` right after the put) stand.
    pub fn touched(&mut self, node: &NodeId, chunks: &[(ChunkId, u64)], now_ms: u64) {
        for (c, put) in chunks {
            if *put == 0 || !self.heal.leases.contains_key(put) {
                continue;
            }
            self.heal.cancel_delete(node, c);
            if let Some(cx) = self.chunks.find(c)
                && self.chunks.get(cx).file == NO_FILE
            {
                self.heal.orphan_wait(cx, now_ms);
            }
        }
    }

    /// Copies `node` read and found intact because the reply to its
    /// heartbeat number `asked` told it to ([`NodeCommand::Verify`]). Call
    /// it with each fresh heartbeat, before [`Tracker::heartbeat`]. Only an
    /// answer to the request a trim is waiting for counts: an older one may
    /// predate the damage the trim must not miss.
    pub fn verified(&mut self, node: &NodeId, chunks: &[(ChunkId, u64)]) {
        let Some(&nx) = self.node_ix.get(node) else {
            return;
        };
        let session = self.node(nx).session;
        for &(c, seq) in chunks {
            if let Some(cx) = self.chunks.find(&c) {
                self.heal.verified(cx, nx, Stamp { session, seq });
            }
        }
    }

    /// Declare nodes dead that have been silent longer than `dead_after_ms`,
    /// then plan repairs, trims and deletions (see [`repair`]). Returns the
    /// nodes newly declared dead. Costs a walk of the nodes plus work
    /// proportional to what changed, never a walk of the chunks.
    pub fn tick(&mut self, now_ms: u64) -> Vec<NodeId> {
        let dead: Vec<(NodeId, NodeIx)> = self
            .node_ix
            .iter()
            .filter(|&(_, &nx)| {
                let n = self.node(nx);
                n.alive && now_ms.saturating_sub(n.last_seen_ms) > self.config.dead_after_ms
            })
            .map(|(id, &nx)| (id.clone(), nx))
            .collect();
        for (id, nx) in &dead {
            self.abort_report(id);
            self.set_alive(*nx, false);
        }
        self.plan(now_ms);
        dead.into_iter().map(|(id, _)| id).collect()
    }

    /// Live nodes that may take new chunks, not in `exclude`, with how many
    /// chunks each holds, in node id order.
    fn eligible(&self, exclude: &BTreeSet<NodeId>) -> Vec<(u64, NodeId)> {
        self.node_ix
            .iter()
            .filter(|(id, nx)| {
                let n = self.node(**nx);
                n.alive && !n.leaving && !exclude.contains(*id)
            })
            .map(|(id, &nx)| (self.node(nx).chunks.len(), id.clone()))
            .collect()
    }

    fn node_ref(&self, id: &NodeId) -> NodeRef {
        self.node_ref_at(self.node_ix[id])
    }

    fn node_ref_at(&self, nx: NodeIx) -> NodeRef {
        let n = self.node(nx);
        NodeRef {
            id: n.id.clone(),
            addr: n.addr.clone(),
        }
    }

    /// Choose `replicas` distinct live nodes for each of `chunk_count`
    /// chunks (see [`Tracker::allocate_sized`]) of a size not said: room
    /// is not considered.
    pub fn allocate(
        &mut self,
        chunk_count: u64,
        replicas: u32,
        exclude: &BTreeSet<NodeId>,
    ) -> Result<Vec<Vec<NodeRef>>, TrackerError> {
        self.allocate_sized(chunk_count, replicas, 0, exclude)
    }

    /// Choose `replicas` distinct live nodes for each of `chunk_count`
    /// chunks of at most `chunk_bytes` each: in distinct zones as far as
    /// zones allow, least loaded first (chunks held plus those placed by
    /// this call), ties broken by node id, and never a node whose disk
    /// cannot take the chunk (see [`placement`]).
    pub fn allocate_sized(
        &mut self,
        chunk_count: u64,
        replicas: u32,
        chunk_bytes: u64,
        exclude: &BTreeSet<NodeId>,
    ) -> Result<Vec<Vec<NodeRef>>, TrackerError> {
        validate_replicas(replicas)?;
        if chunk_count > FILE_CHUNKS_MAX {
            return Err(TrackerError::TooManyChunks(chunk_count));
        }
        let eligible = self.eligible(exclude);
        if eligible.len() < replicas as usize && self.recovery.is_some() {
            // Restarted (or newly leading a group): the others may be
            // about to report.
            return Err(TrackerError::Recovering {
                wanted: replicas,
                available: eligible.len(),
            });
        }
        if eligible.len() < replicas as usize {
            return Err(TrackerError::NotEnoughNodes {
                wanted: replicas,
                available: eligible.len(),
            });
        }
        let ixs: Vec<NodeIx> = eligible.iter().map(|(_, id)| self.node_ix[id]).collect();
        let no_room = |available| TrackerError::NoRoom {
            wanted: replicas,
            available,
            chunk_bytes,
        };
        let with_room = ixs.iter().filter(|&&nx| self.fits(nx, chunk_bytes)).count();
        if with_room < replicas as usize {
            return Err(no_room(with_room));
        }
        let mut candidates: Vec<Candidate> = eligible
            .iter()
            .zip(&ixs)
            .map(|((load, _), &nx)| Candidate {
                load: *load,
                zone: self.zone_key(nx),
                room: self.room(nx),
            })
            .collect();
        // Zones, then least loaded. Where room is short that can strand
        // copies (small nodes filled early, a big one left alone with the
        // last chunks; a small zone spent by every chunk taking a copy
        // there): then zones and the most room first; and last, room
        // alone, which places every copy whenever the room suffices.
        let placed = match place_all(&candidates, chunk_count, replicas, chunk_bytes) {
            Ok(p) => p,
            Err(_) if chunk_bytes > 0 => {
                for c in &mut candidates {
                    c.load = c.room.map_or(0, |r| u64::MAX - r / chunk_bytes);
                }
                match place_all(&candidates, chunk_count, replicas, chunk_bytes) {
                    Ok(p) => p,
                    Err(_) => {
                        for (rank, c) in candidates.iter_mut().enumerate() {
                            c.zone = rank as u64;
                        }
                        place_all(&candidates, chunk_count, replicas, chunk_bytes)
                            .map_err(no_room)?
                    }
                }
            }
            Err(got) => return Err(no_room(got)),
        };
        let mut counts = vec![0u64; ixs.len()];
        let mut refs: Vec<Option<NodeRef>> = vec![None; ixs.len()];
        let mut placements = Vec::with_capacity(placed.len());
        for chosen in placed {
            let mut nodes = Vec::with_capacity(chosen.len());
            for r in chosen {
                counts[r] += 1;
                let node = refs[r].get_or_insert_with(|| self.node_ref_at(ixs[r]));
                nodes.push(node.clone());
            }
            placements.push(nodes);
        }
        for (r, n) in counts.into_iter().enumerate() {
            if n > 0 {
                self.expect_bytes(ixs[r], n.saturating_mul(chunk_bytes));
            }
        }
        Ok(placements)
    }

    /// A put is in flight: `put` (a random id its client chose, not 0)
    /// allocated, or asked to keep its lease, at `now_ms`. Copies that
    /// appear after a put in flight began are not collected as orphans:
    /// they may be that put's, still to be committed.
    pub fn touch_put(&mut self, put: u64, now_ms: u64) {
        if put == 0 {
            return;
        }
        if !self.heal.leases.contains_key(&put) && self.heal.leases.len() >= PUT_LEASES_MAX {
            // Bounded: the lease touched longest ago goes first.
            if let Some(oldest) = self
                .heal
                .leases
                .iter()
                .min_by_key(|(id, l)| (l.1, **id))
                .map(|(id, _)| *id)
            {
                self.heal.leases.remove(&oldest);
            }
        }
        if !self.heal.leases.contains_key(&put) {
            self.heal.leases_begun += 1;
        }
        let begun = self.heal.leases_begun;
        let lease = self
            .heal
            .leases
            .entry(put)
            .or_insert((now_ms, now_ms, begun));
        lease.1 = now_ms;
    }

    /// The put `put` committed (or gave up): its lease ends.
    pub fn end_put(&mut self, put: u64) {
        self.heal.leases.remove(&put);
    }

    /// Spend the enrollment token `token` (already verified: issued by this
    /// cluster, not expired at `now_unix_s`): refused if it was used
    /// before. Tokens that expired are forgotten, and at most
    /// [`USED_TOKENS_MAX`] are remembered at once.
    pub fn use_token(
        &mut self,
        token: &crate::enroll::Token,
        now_unix_s: u64,
    ) -> Result<(), TrackerError> {
        self.used_tokens.retain(|_, until| *until > now_unix_s);
        if self.used_tokens.contains_key(&token.nonce) {
            return Err(TrackerError::Token(crate::enroll::TokenError::Used));
        }
        if self.used_tokens.len() >= USED_TOKENS_MAX {
            return Err(TrackerError::TooManyTokens);
        }
        self.apply(Record::TokenUsed {
            nonce: token.nonce,
            expires_unix_s: token.expires_unix_s,
        });
        Ok(())
    }

    /// Revoke the certificates that name `id` (a node's id, a person's
    /// name): refused from now on, by every tracker of a group once the
    /// record is applied. Returns whether it is new.
    pub fn revoke(&mut self, id: &str) -> Result<bool, TrackerError> {
        if self.revoked.contains(id) {
            return Ok(false);
        }
        if id.is_empty() || id.len() > REVOKED_ID_MAX_BYTES || self.revoked.len() >= REVOKED_MAX {
            return Err(TrackerError::Revocation(id.to_string()));
        }
        self.apply(Record::Revoked { id: id.to_string() });
        Ok(true)
    }

    /// The identities revoked so far.
    pub fn revoked(&self) -> &BTreeSet<String> {
        &self.revoked
    }

    /// Record a file whose every chunk is durably on `R` distinct registered
    /// nodes. Committing the same manifest twice is a no-op; a different
    /// manifest under an existing name is refused. For tests and tools
    /// that hold no receipts: every named holder counts as acknowledged at
    /// no stamp (so not over a deletion sent to it), as if it had proved
    /// it. A client's commit goes through [`Tracker::commit_with`].
    pub fn commit(
        &mut self,
        manifest: Manifest,
        holders: Vec<Vec<NodeId>>,
    ) -> Result<ManifestHash, TrackerError> {
        let holders = holders
            .into_iter()
            .map(|h| h.into_iter().map(|n| (n, Ack::default())).collect())
            .collect();
        self.commit_checked(manifest, holders, false, 0, false)
    }

    /// The key of `node`'s receipts in its current session (none before it
    /// registered), handed to the node with its session.
    pub fn receipt_key(&self, node: &NodeId) -> Option<ReceiptKey> {
        let nx = *self.node_ix.get(node)?;
        let session = self.node(nx).session;
        (session != 0).then(|| ack::receipt_key(&self.config.receipt_secret, node, session))
    }

    /// Record a file whose every chunk is durably on `R` distinct registered
    /// nodes: `holders[i]` are the nodes that acknowledged chunk `i`, each
    /// with its acknowledgement ([`Ack`]: stamp and receipt). A holder
    /// counts on the client's word only if its receipt holds for the
    /// chunk, the stamp and the node's current session; the tracker's own
    /// records (holders that reported the chunk) count regardless. Committing the same
    /// manifest twice is a no-op. A different manifest under an existing
    /// name is refused unless `replace`: then readers see the old version
    /// or this one, and the old version's chunks no other file uses are
    /// kept for the orphan grace from `now_ms`, so gets that located it
    /// can finish.
    ///
    /// A holder that was sent a deletion of its chunk counts only if it
    /// acknowledged late enough to skip that deletion ([`ack::survives`]);
    /// a deletion of a committed chunk not sent yet is cancelled, on every
    /// node, since the chunk is referenced again.
    pub fn commit_with(
        &mut self,
        manifest: Manifest,
        holders: Vec<Vec<(NodeId, Ack)>>,
        replace: bool,
        now_ms: u64,
    ) -> Result<ManifestHash, TrackerError> {
        self.commit_checked(manifest, holders, replace, now_ms, true)
    }

    fn commit_checked(
        &mut self,
        manifest: Manifest,
        holders: Vec<Vec<(NodeId, Ack)>>,
        replace: bool,
        now_ms: u64,
        check_receipts: bool,
    ) -> Result<ManifestHash, TrackerError> {
        manifest.validate()?;
        let hash = manifest.hash();
        let existing = self.by_name.get(&manifest.name).copied();
        if let Some(fx) = existing {
            if self.hash_of(self.file(fx)) == hash {
                return Ok(hash);
            }
            if !replace {
                return Err(TrackerError::FileExists(manifest.name));
            }
        }
        if holders.len() != manifest.chunks.len() {
            return Err(TrackerError::NotEnoughHolders {
                chunk: holders.len().min(manifest.chunks.len()),
                acked: 0,
                wanted: manifest.replicas,
                unconfirmed: 0,
            });
        }
        let mut clean = Vec::with_capacity(holders.len());
        let mut cancel: Vec<(NodeId, ChunkId)> = Vec::new();
        for (i, h) in holders.into_iter().enumerate() {
            let chunk = &manifest.chunks[i];
            let pending = if self.heal.deletes_pending() > 0 {
                self.heal.pending_deletes(chunk)
            } else {
                Vec::new()
            };
            let mut set: BTreeSet<NodeId> = BTreeSet::new();
            let mut unconfirmed = 0;
            for (n, a) in h {
                let Some(&nx) = self.node_ix.get(&n) else {
                    // A node that left has no report to come (seed
                    // 22395016538: a put waited out its 10 s on a holder
                    // that had left with --force, then failed).
                    if !self.departed.contains(&n) {
                        unconfirmed += 1;
                    }
                    continue;
                };
                let session = self.node(nx).session;
                let stamp = a.stamp;
                // An acknowledgement counts if the node made it (its
                // receipt holds), unless the copy may be gone since:
                // deleted at the tracker's word (the tombstone), the node
                // registered again since (its report decides, below), or it
                // reported the copy gone (found rotten) afterwards.
                let current = if check_receipts {
                    session != 0
                        && stamp.session == session
                        && (ack::receipt_holds(
                            &ack::receipt_key(&self.config.receipt_secret, &n, session),
                            chunk,
                            &a,
                        ) || mutants::on(Mutant::CommitWithoutReceipt))
                } else {
                    stamp.session == 0 || stamp.session == session
                };
                let not_gone = self
                    .heal
                    .reported_gone(chunk, &n)
                    .is_none_or(|g| g.session != stamp.session || g.seq <= stamp.seq);
                let counts = pending.contains(&n)
                    || (current
                        && not_gone
                        && self
                            .heal
                            .tombstone(chunk, &n)
                            .is_none_or(|sent| ack::survives(stamp, sent, session)));
                // Not counted, but the node's report may still count it:
                // it acknowledged before registering (session 0) or in a
                // registration the tracker has not seen, or it has not
                // reported in full since. A node whose full report since
                // did not name the copy will not.
                if counts {
                    set.insert(n);
                } else if stamp.session != session
                    && (self.node(nx).awaits_report()
                        || stamp.session == 0
                        || stamp.session > session)
                {
                    unconfirmed += 1;
                }
            }
            // Live holders that reported the chunk themselves count too, and
            // so do those whose deletion is cancelled below.
            if let Some(cx) = self.chunks.find(chunk) {
                set.extend(self.live_holder_ids(cx));
            }
            set.extend(pending.iter().filter(|n| self.is_alive(n)).cloned());
            if set.len() < manifest.replicas as usize {
                return Err(TrackerError::NotEnoughHolders {
                    chunk: i,
                    acked: set.len(),
                    wanted: manifest.replicas,
                    unconfirmed,
                });
            }
            cancel.extend(pending.into_iter().map(|n| (n, *chunk)));
            clean.push(set.into_iter().collect());
        }
        for (n, chunk) in cancel {
            self.heal.cancel_delete(&n, &chunk);
            self.link_id(&n, chunk);
        }
        if existing.is_some() {
            self.drop_file(&manifest.name, Some(now_ms));
        }
        let name = manifest.name.clone();
        self.apply(Record::FileCommitted {
            manifest,
            holders: clean,
        });
        if let Some(&fx) = self.by_name.get(&name) {
            let _ = self.file(fx).hash.set(hash);
        }
        Ok(hash)
    }

    /// Remove the file `name`. Chunks no other file uses are deleted from
    /// their holders over the next heartbeats.
    pub fn remove(&mut self, name: &str) -> Result<ManifestHash, TrackerError> {
        let fx = *self
            .by_name
            .get(name)
            .ok_or_else(|| TrackerError::UnknownFile(name.to_string()))?;
        let hash = self.hash_of(self.file(fx));
        self.apply(Record::FileRemoved {
            name: name.to_string(),
        });
        Ok(hash)
    }

    /// The hash of `f`'s manifest (made once, when first asked for).
    fn hash_of(&self, f: &FileEntry) -> ManifestHash {
        *f.hash.get_or_init(|| self.manifest_of(f).hash())
    }

    fn manifest_of(&self, f: &FileEntry) -> Manifest {
        Manifest {
            name: f.name.clone(),
            size_bytes: f.size_bytes,
            chunk_size_bytes: f.chunk_size_bytes,
            replicas: f.replicas,
            chunks: f.chunks.iter().map(|&cx| self.chunks.get(cx).id).collect(),
        }
    }

    /// The manifest of `name` and, per chunk, its live and suspect holders.
    /// Costs the file's chunks times their holders.
    pub fn locate(&self, name: &str) -> Result<Located, TrackerError> {
        let fx = *self
            .by_name
            .get(name)
            .ok_or_else(|| TrackerError::UnknownFile(name.to_string()))?;
        let f = self.file(fx);
        // Until a node has reported in full, the tracker knows its copies
        // only as its records left them (after a restart: as of each
        // chunk's last commit): a chunk with no live holder known, and no
        // holder still to report, may be on a node still to report (seed
        // 22395001669: a repaired copy, read before its holder's report got
        // through). The reader verifies what it gets, so asking a node that
        // lacks it costs one round trip. (A node that left has no entry.)
        let awaiting = |nx: NodeIx| self.node(nx).awaits_report();
        let unreported: Vec<NodeIx> = (0..self.nodes.len() as NodeIx)
            .filter(|&nx| {
                self.nodes[nx as usize]
                    .as_ref()
                    .is_some_and(|n| n.awaits_report() && !n.leaving)
            })
            .collect();
        let locations = f
            .chunks
            .iter()
            .enumerate()
            .map(|(i, &cx)| {
                let mut loc = ChunkLocation {
                    live: Vec::new(),
                    suspect: Vec::new(),
                };
                let holders = &self.chunks.get(cx).holders;
                for &nx in holders {
                    let r = self.node_ref_at(nx);
                    if self.alive(nx) {
                        loc.live.push(r);
                    } else {
                        loc.suspect.push(r);
                    }
                }
                // Only once every holder known has reported: right after a
                // restart, the holders the records name are the likely ones,
                // and an answer naming every chunk's candidates would be
                // several times larger.
                if loc.live.is_empty()
                    && !unreported.is_empty()
                    && !holders.iter().any(|&nx| awaiting(nx))
                {
                    // A few, starting at a different one for each chunk, so
                    // a big cluster's answer stays small and readers spread.
                    let start = i % unreported.len();
                    let candidates = unreported[start..]
                        .iter()
                        .chain(&unreported[..start])
                        .filter(|nx| !holders.contains(nx))
                        .take(UNREPORTED_CANDIDATES);
                    loc.suspect
                        .extend(candidates.map(|&nx| self.node_ref_at(nx)));
                }
                loc
            })
            .collect();
        let manifest = self.manifest_of(f);
        let hash = *f.hash.get_or_init(|| manifest.hash());
        Ok(Located {
            manifest,
            hash,
            locations,
        })
    }

    fn summary(&self, f: &FileEntry) -> FileSummary {
        FileSummary {
            name: f.name.clone(),
            size_bytes: f.size_bytes,
            replicas: f.replicas,
            chunks: f.chunks.len() as u64,
            hash: self.hash_of(f),
            under_replicated: f.under_replicated(),
            min_copies: f
                .short
                .iter()
                .position(|&c| c > 0)
                .map_or(f.replicas, |k| k as u32),
            lost: u64::from(f.short[0]),
        }
    }

    /// Every file, by name.
    pub fn files(&self) -> Vec<FileSummary> {
        self.files_after("", usize::MAX)
    }

    /// At most `limit` files whose names sort after `after`, by name: `ls`
    /// pages through large listings with it.
    pub fn files_after(&self, after: &str, limit: usize) -> Vec<FileSummary> {
        use std::ops::Bound;
        self.by_name
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .take(limit)
            .map(|(_, &fx)| self.summary(self.file(fx)))
            .collect()
    }

    /// Nodes and durability counters; costs the nodes plus the files at
    /// risk, never a walk of the chunks. Every file at risk is listed: see
    /// [`Tracker::status_capped`].
    pub fn status(&self, now_ms: u64) -> Status {
        self.status_capped(now_ms, usize::MAX)
    }

    /// [`Tracker::status`] listing at most `at_risk_max` files at risk, those
    /// with the fewest copies first (`at_risk_total` counts them all): a
    /// big node's death may put every file at risk, and an answer must stay
    /// small enough to read.
    pub fn status_capped(&self, now_ms: u64, at_risk_max: usize) -> Status {
        let nodes = self
            .node_ix
            .iter()
            .map(|(id, &nx)| {
                let n = self.node(nx);
                NodeSummary {
                    id: id.clone(),
                    addr: n.addr.clone(),
                    alive: n.alive,
                    leaving: n.leaving,
                    chunks: n.chunks.len(),
                    last_seen_ms_ago: now_ms.saturating_sub(n.last_seen_ms),
                    zone: self.zone_name(nx),
                    space: n.space,
                }
            })
            .collect();
        let mut at_risk: Vec<FileSummary> = self
            .health
            .at_risk
            .iter()
            .map(|&fx| self.summary(self.file(fx)))
            .collect();
        at_risk.sort_by(|a, b| (a.min_copies, &a.name).cmp(&(b.min_copies, &b.name)));
        let at_risk_total = at_risk.len() as u64;
        at_risk.truncate(at_risk_max);
        let (queued, in_flight) = self.repair_backlog();
        Status {
            nodes,
            files: self.by_name.len() as u64,
            chunks: self.health.referenced,
            under_replicated: self.under_replicated(),
            lost: self.health.under[0].len(),
            repair_queue: queued as u64,
            repairs_in_flight: in_flight as u64,
            deletes_pending: self.heal.deletes_pending() as u64,
            at_risk,
            at_risk_total,
            warnings: self.warnings(),
        }
    }

    fn warnings(&self) -> Vec<Warning> {
        let mut out = Vec::new();
        let live: Vec<NodeIx> = self
            .node_ix
            .values()
            .copied()
            .filter(|&nx| self.alive(nx) && !self.node(nx).leaving)
            .collect();
        let fullest = live
            .iter()
            .filter_map(|&nx| self.node(nx).space.map(|s| (s.used_bytes, nx)))
            .max();
        if let Some((used_bytes, fullest)) = fullest
            && used_bytes > 0
        {
            let spare_bytes: u64 = live
                .iter()
                .filter(|&&nx| nx != fullest)
                .map(|&nx| self.room(nx).unwrap_or(u64::MAX))
                .fold(0u64, u64::saturating_add);
            if spare_bytes < used_bytes {
                out.push(Warning::NoRoomToRepair {
                    node: self.node(fullest).id.clone(),
                    used_bytes,
                    spare_bytes,
                });
            }
        }
        let replicas = self
            .files
            .iter()
            .flatten()
            .map(|f| f.replicas)
            .max()
            .unwrap_or(0);
        if replicas > 0 && live.len() <= replicas as usize {
            out.push(Warning::FewNodes {
                live: live.len(),
                replicas,
            });
        }
        let zones: BTreeSet<u64> = live.iter().map(|&nx| self.zone_key(nx)).collect();
        let named = live.iter().any(|&nx| self.node(nx).zone.is_some());
        if named && zones.len() < replicas as usize {
            out.push(Warning::FewZones {
                zones: zones.len(),
                replicas,
            });
        }
        out
    }

    /// Which files would be lost, and which would drop below their factor,
    /// if `dead` died now (as well as any already dead). Costs the chunks
    /// those nodes hold plus the chunks already short, never a walk of
    /// every chunk.
    pub fn what_if(&self, dead: &BTreeSet<NodeId>) -> Result<WhatIf, TrackerError> {
        let mut gone: Vec<NodeIx> = Vec::with_capacity(dead.len());
        for id in dead {
            let nx = *self
                .node_ix
                .get(id)
                .ok_or_else(|| TrackerError::UnknownNode(id.clone()))?;
            gone.push(nx);
        }
        let mut affected = RoaringBitmap::new();
        for &nx in &gone {
            affected |= &self.node(nx).chunks;
        }
        for level in &self.health.under {
            affected |= level;
        }
        let mut lost: BTreeSet<FileIx> = BTreeSet::new();
        let mut at_risk: BTreeSet<FileIx> = BTreeSet::new();
        for cx in &affected {
            let rec = self.chunks.get(cx);
            if rec.factor == 0 {
                continue;
            }
            let left = rec
                .holders
                .iter()
                .filter(|&&h| self.alive(h) && !gone.contains(&h))
                .count();
            for (fx, _) in self.files_of(cx) {
                if left == 0 {
                    lost.insert(fx);
                } else if left < self.file(fx).replicas as usize {
                    at_risk.insert(fx);
                }
            }
        }
        let names = |set: &BTreeSet<FileIx>| {
            let mut v: Vec<String> = set.iter().map(|&fx| self.file(fx).name.clone()).collect();
            v.sort();
            v
        };
        let at_risk: BTreeSet<FileIx> = at_risk.difference(&lost).copied().collect();
        Ok(WhatIf {
            lost: names(&lost),
            at_risk: names(&at_risk),
        })
    }

    /// Chunks with fewer live copies than their factor.
    pub fn under_replicated(&self) -> u64 {
        self.health.under.iter().map(RoaringBitmap::len).sum()
    }

    /// Chunks of `node` that would drop below their factor without it,
    /// counting only the other holders `counts` accepts (alive and not
    /// leaving, always).
    fn dependent_chunks(
        &self,
        node: &NodeId,
        counts: impl Fn(ChunkIx, NodeIx) -> bool,
    ) -> Vec<(ChunkId, usize, u32, u64)> {
        let Some(&me) = self.node_ix.get(node) else {
            return Vec::new();
        };
        self.node(me)
            .chunks
            .iter()
            .filter_map(|cx| {
                let rec = self.chunks.get(cx);
                if rec.factor == 0 {
                    return None;
                }
                let others = rec
                    .holders
                    .iter()
                    .filter(|&&h| {
                        h != me && self.alive(h) && !self.node(h).leaving && counts(cx, h)
                    })
                    .count();
                (others < rec.factor as usize).then_some((
                    rec.id,
                    others,
                    u32::from(rec.factor),
                    u64::from(rec.size_bytes),
                ))
            })
            .collect()
    }

    /// Whether holder `h` was heard from after `since_ms`, by a heartbeat
    /// sent after it: half an interval later, which a heartbeat in flight
    /// when `since_ms` came takes less than.
    fn heard_since(&self, h: NodeIx, since_ms: u64) -> bool {
        let margin = self.config.heartbeat_interval_ms / 2;
        self.node(h).last_seen_ms >= since_ms.saturating_add(margin)
            || mutants::on(Mutant::LeaveTrustsSilentHolders)
    }

    /// Whether node `h` was heard from within two heartbeats: one that
    /// crashed a moment ago still counts as live until it is declared
    /// dead, and a trim or a leave must not count on its copies.
    fn heard_lately(&self, h: NodeIx, now_ms: u64) -> bool {
        let fresh_ms = self.config.heartbeat_interval_ms.saturating_mul(2);
        now_ms.saturating_sub(self.node(h).last_seen_ms) <= fresh_ms
    }

    /// [`Tracker::heard_lately`], for a leave.
    fn fresh(&self, h: NodeIx, now_ms: u64) -> bool {
        self.heard_lately(h, now_ms) || mutants::on(Mutant::LeaveTrustsSilentHolders)
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
        let nx = *self
            .node_ix
            .get(node)
            .ok_or_else(|| TrackerError::UnknownNode(node.clone()))?;
        // A tracker restarted from its records knows what the node held
        // then, not now (seed 22395094654: a forced leave made a node that
        // had not reported count again with copies it had deleted).
        if self.node(nx).needs_full_report {
            return Err(TrackerError::Unreported(node.clone()));
        }
        self.set_alive(nx, true);
        let n = self.node_mut(nx);
        n.last_seen_ms = now_ms;
        n.leaving = true;
        // Each round of a leave starts its wait for the other holders
        // afresh (see `finish_leave`).
        n.leave_began_ms = Some(now_ms);
        let mut handoffs = Vec::new();
        let mut extra_load: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut extra_bytes: BTreeMap<NodeIx, u64> = BTreeMap::new();
        // Holders silent for two heartbeats are not counted on: the copy
        // is handed over rather than left to one that may be gone.
        let dependent = self.dependent_chunks(node, |_, h| self.fresh(h, now_ms));
        for (chunk, others, replicas, size_bytes) in dependent {
            let mut exclude = self.holders(&chunk);
            exclude.extend(self.deleting_nodes(&chunk));
            // The zones of the copies that stay.
            let cx = self
                .chunks
                .find(&chunk)
                .expect("a held chunk is in the table");
            let mut zones: SmallVec<[u64; 4]> = self
                .chunks
                .get(cx)
                .holders
                .iter()
                .filter(|&&h| {
                    h != nx && self.alive(h) && !self.node(h).leaving && self.fresh(h, now_ms)
                })
                .map(|&h| self.zone_key(h))
                .collect();
            let mut candidates: Vec<(u64, NodeIx)> = self
                .eligible(&exclude)
                .into_iter()
                .map(|(l, id)| {
                    (
                        l + extra_load.get(&id).copied().unwrap_or(0),
                        self.node_ix[&id],
                    )
                })
                .filter(|&(_, h)| {
                    let extra = extra_bytes.get(&h).copied().unwrap_or(0);
                    self.room(h)
                        .is_none_or(|r| r >= extra.saturating_add(size_bytes))
                })
                .collect();
            let missing = replicas as usize - others;
            if candidates.len() < missing && !force {
                let n = self.node_mut(nx);
                n.leaving = false;
                n.leave_began_ms = None;
                return Err(TrackerError::NotEnoughNodes {
                    wanted: replicas,
                    available: others + candidates.len(),
                });
            }
            for _ in 0..missing {
                // Another zone first, then the least loaded, ties by id.
                let Some(i) = (0..candidates.len()).min_by_key(|&i| {
                    let (load, h) = candidates[i];
                    (zones.contains(&self.zone_key(h)), load, &self.node(h).id)
                }) else {
                    break;
                };
                let (_, h) = candidates.swap_remove(i);
                zones.push(self.zone_key(h));
                let id = self.node(h).id.clone();
                self.heal.counters.handoffs += 1;
                *extra_load.entry(id.clone()).or_default() += 1;
                *extra_bytes.entry(h).or_default() += size_bytes;
                handoffs.push(Handoff {
                    chunk,
                    size_bytes,
                    target: self.node_ref(&id),
                });
            }
        }
        for (h, bytes) in extra_bytes {
            self.expect_bytes(h, bytes);
        }
        // The copies the leave counts on are read back before it goes, as
        // a trim's keepers are.
        let mut kept: Vec<(ChunkIx, NodeIx, NodeId)> = Vec::new();
        for cx in &self.node(nx).chunks {
            for &h in &self.chunks.get(cx).holders {
                if h != nx && self.alive(h) && !self.node(h).leaving {
                    kept.push((cx, h, self.node(h).id.clone()));
                }
            }
        }
        for (cx, h, id) in kept {
            self.heal.kept(cx, (h, &id), nx, now_ms);
        }
        Ok(handoffs)
    }

    /// A leaving node reports the copies it made. If no chunk depends on it
    /// any more (or `force`) it is removed and the result is empty;
    /// otherwise the result lists the chunks that still do, and the node
    /// stays: it asks again a heartbeat or so later (see below).
    ///
    /// A holder counts only once heard from after the round began (one
    /// that crashed just before the leave is silent since), and a copy
    /// handed over only once its target has read it back intact, asked
    /// after this report: a copy that rotted at once would otherwise leave
    /// the leaving node's copy the last intact one as it goes.
    pub fn finish_leave(
        &mut self,
        node: &NodeId,
        handed: Vec<(ChunkId, NodeId)>,
        force: bool,
        now_ms: u64,
    ) -> Result<Vec<ChunkId>, TrackerError> {
        let Some(&me) = self.node_ix.get(node) else {
            return Err(TrackerError::UnknownNode(node.clone()));
        };
        // A copy handed over counts on the leaving node's word unless its
        // target was told to delete it or reported it gone: the report may
        // be older than that (a leave asked again after its reply was
        // lost, long after the copy was made, trimmed and deleted). A
        // target that holds it still says so itself, with its next
        // heartbeat.
        // Either way the copy waits for its target to read it back.
        for (chunk, target) in handed {
            if !self.heal.deleting(&chunk, &target)
                && self.heal.tombstone(&chunk, &target).is_none()
                && self.heal.reported_gone(&chunk, &target).is_none()
            {
                self.link_id(&target, chunk);
            }
            if let (Some(cx), Some(&tx)) = (self.chunks.find(&chunk), self.node_ix.get(&target)) {
                self.heal.handed(cx, (tx, &target), me, now_ms);
            }
        }
        self.heal
            .ask_leave_checks_again(me, now_ms, self.config.repair_timeout_ms);
        // A round begun by another leader (liveness is not in the log)
        // begins its wait now.
        let since = *self.node_mut(me).leave_began_ms.get_or_insert(now_ms);
        let still: Vec<ChunkId> = self
            .dependent_chunks(node, |cx, h| {
                self.heard_since(h, since) && self.heal.read_back_intact(cx, h)
            })
            .into_iter()
            .map(|d| d.0)
            .collect();
        if still.is_empty() || force || mutants::on(Mutant::LeaveWhileDependent) {
            self.apply(Record::NodeLeft { id: node.clone() });
            return Ok(Vec::new());
        }
        Ok(still)
    }

    // ------------------------------------------------------------ getters

    /// The nodes counted as holding `chunk`, live or not.
    pub fn holders(&self, chunk: &ChunkId) -> BTreeSet<NodeId> {
        self.chunks
            .find(chunk)
            .map(|cx| self.holder_ids(cx))
            .unwrap_or_default()
    }

    /// The holders of `chunk` that count toward its live copies now (alive:
    /// heard from since the tracker started and not declared dead).
    pub fn live_holders(&self, chunk: &ChunkId) -> Vec<NodeId> {
        self.chunks
            .find(chunk)
            .map(|cx| self.live_holder_ids(cx))
            .unwrap_or_default()
    }

    /// Copies leaving nodes handed over that their targets have not read
    /// back intact yet, as (chunk, leaving node, target).
    pub fn unverified_handoffs(&self) -> Vec<(ChunkId, NodeId, NodeId)> {
        self.heal
            .unverified_handoffs()
            .filter_map(|(cx, leaver, target)| {
                let leaver = self.nodes.get(leaver as usize)?.as_ref()?.id.clone();
                Some((self.chunks.get(cx).id, leaver, target.clone()))
            })
            .collect()
    }

    /// Whether `node` is registered and counted alive.
    pub fn is_alive(&self, node: &NodeId) -> bool {
        self.node_ix.get(node).is_some_and(|&nx| self.alive(nx))
    }

    /// Whether `node` is sending a full report: until it ends, the node
    /// counts as holding what it was believed to hold (from the records,
    /// after a restart) plus what the report named so far.
    pub fn reporting(&self, node: &NodeId) -> bool {
        self.node_ix
            .get(node)
            .is_some_and(|&nx| self.node(nx).report.is_some())
    }

    /// Files by name.
    pub fn files_count(&self) -> usize {
        self.by_name.len()
    }

    /// Chunk records in the table (referenced, or held by some node).
    pub fn chunk_records(&self) -> usize {
        self.chunks.len()
    }

    /// Heap bytes the chunk-proportional state holds: the chunk table,
    /// manifests, node inventories and health sets. What the memory test
    /// bounds; a process's RSS adds the allocator's slack.
    pub fn heap_bytes(&self) -> usize {
        let files: usize = self
            .files
            .iter()
            .flatten()
            .map(|f| {
                f.chunks.capacity() * std::mem::size_of::<ChunkIx>()
                    + f.short.capacity() * 4
                    + f.name.capacity()
            })
            .sum();
        let nodes: usize = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.chunks.serialized_size())
            .sum();
        let health: usize = self
            .health
            .under
            .iter()
            .chain([&self.health.over, &self.health.orphans])
            .map(RoaringBitmap::serialized_size)
            .sum();
        self.chunks.heap_bytes()
            + self.files.capacity() * std::mem::size_of::<Option<FileEntry>>()
            + files
            + nodes
            + health
            + self.shared.len() * 64
    }
}

mod audit;
#[cfg(test)]
mod chaos_tests;
mod index;
#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod leave_tests;
#[cfg(test)]
mod lifecycle_tests;
mod placement;
pub mod repair;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod tests;
