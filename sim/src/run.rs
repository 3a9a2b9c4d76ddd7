//! Running one scenario: a tracker, nodes and a client on turmoil hosts,
//! running the real `p2p-net` services; faults applied between simulation
//! steps; invariants checked as the client goes and at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use p2p_core::NodeId;
use p2p_core::tracker::TrackerConfig;
use p2p_net::client::{Client, ClientConfig, NoProgress, Replication};
use p2p_net::node::{NodeConfig, NodeService};
use p2p_net::transport::{Timeouts, server_builder};
use rand::{RngCore, SeedableRng};

use crate::plan::{Action, CLIENTS, DiskAction, FAULT_WINDOW_MS, LeaveAim, Scenario, Target};
use crate::store::{DiskFault, MemSink, MemStore};
use crate::trackers::{Disk, PORT, TrackerRef};
use crate::transport::{SimDialer, incoming};

/// Timing of a simulated cluster. Small values keep runs short.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub tick: Duration,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub chunk_size_bytes: u64,
    /// After the heal, how long the cluster settles before the final check.
    pub settle_ms: u64,
    /// After the heal, by when every chunk must be back at its factor.
    pub converge_ms: u64,
    /// A run that has not finished by then is a hang.
    pub limit: Duration,
    pub timeouts: Timeouts,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(10),
            heartbeat_ms: 100,
            dead_after_ms: 1_000,
            chunk_size_bytes: 4_096,
            settle_ms: 1_500,
            converge_ms: 8_000,
            limit: Duration::from_secs(60),
            timeouts: Timeouts {
                connect: Duration::from_millis(300),
                request: Duration::from_secs(2),
                piece: Duration::from_secs(1),
                // Longer than `dead_after_ms`, as in a real deployment
                // (10 s and 10 s), so a connection whose segments are lost
                // outlives the tracker's patience unless the product gives
                // up on it sooner (heartbeats do, within 1 s). Scenarios
                // with a tracker group use `GROUP_KEEPALIVE`.
                keepalive: Duration::from_millis(2_000),
            },
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every event, in order, with its simulated time.
    pub trace: Vec<String>,
    /// Broken invariants: each is a bug unless the checker is wrong.
    pub violations: Vec<String>,
    /// Files lost because the scenario destroyed every holder of a chunk.
    pub expected_losses: Vec<String>,
    /// Simulated time the run took.
    pub sim_ms: u64,
    /// How often each operation, fault and protocol event happened (see
    /// [`crate::coverage`]).
    pub coverage: crate::coverage::Counts,
}

impl Report {
    /// Puts that returned success.
    pub fn acked_puts(&self) -> usize {
        self.trace
            .iter()
            .filter(|l| l.contains(" put ") && l.contains("-> ok"))
            .count()
    }

    /// Reads whose bytes were checked against what was put.
    pub fn verified_reads(&self) -> usize {
        self.trace
            .iter()
            .filter(|l| l.contains(" verified"))
            .count()
    }
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// One version of a file: its bytes, and what its last acknowledged put said.
#[derive(Debug, Clone)]
struct Version {
    data: Arc<Vec<u8>>,
    replicas: u8,
    acked: bool,
    /// Host names that acknowledged each chunk, in its last acknowledged put.
    holders: Vec<Vec<String>>,
}

/// What the checker knows of one name.
#[derive(Debug, Clone)]
struct NameRecord {
    /// Every version ever put under the name.
    versions: BTreeMap<u8, Version>,
    /// What the name may hold now (`None`: no file), from the puts and
    /// removals that completed: one value after an operation that ran
    /// alone and succeeded, more when operations overlapped or failed (a
    /// failed put may still have committed).
    possible: BTreeSet<Option<u8>>,
    /// Puts and removals of the name under way.
    in_flight: BTreeSet<u64>,
    /// Operations that overlapped another on the same name.
    tainted: BTreeSet<u64>,
    /// Bumped whenever a put or removal of the name starts or ends.
    epoch: u64,
    /// The version its last acknowledged put stored.
    last_acked: Option<u8>,
}

impl Default for NameRecord {
    fn default() -> Self {
        Self {
            versions: BTreeMap::new(),
            possible: BTreeSet::from([None]),
            in_flight: BTreeSet::new(),
            tainted: BTreeSet::new(),
            epoch: 0,
            last_acked: None,
        }
    }
}

impl NameRecord {
    /// A put or removal starts: returns its id.
    fn begin(&mut self, id: u64) {
        if !self.in_flight.is_empty() {
            self.tainted.extend(self.in_flight.iter().copied());
            self.tainted.insert(id);
        }
        self.in_flight.insert(id);
        self.epoch += 1;
    }

    /// Operation `id` ended; `now` is what the name holds after it if it
    /// ran alone (`Some(x)`: it took effect; the name holds `x`), or
    /// `None` if it may or may not have. Returns whether it ran alone.
    fn end(&mut self, id: u64, now: Option<Option<u8>>, maybe: Option<Option<u8>>) -> bool {
        self.in_flight.remove(&id);
        self.epoch += 1;
        let alone = !self.tainted.remove(&id);
        if let Some(value) = now {
            if alone {
                self.possible = BTreeSet::from([value]);
            } else {
                self.possible.insert(value);
            }
        }
        if let Some(value) = maybe {
            self.possible.insert(value);
        }
        alone
    }

    /// The version whose bytes these are: one the name may hold if any
    /// (two versions may have the same bytes).
    fn version_of(&self, bytes: &[u8]) -> Option<u8> {
        let same = || {
            self.versions
                .iter()
                .filter(|(_, v)| *v.data == bytes)
                .map(|(k, _)| *k)
        };
        same()
            .find(|k| self.possible.contains(&Some(*k)))
            .or_else(|| same().next())
    }

    /// The one acknowledged version the name surely holds.
    fn surely(&self) -> Option<(u8, &Version)> {
        match self.possible.iter().collect::<Vec<_>>().as_slice() {
            [Some(v)] => self
                .versions
                .get(v)
                .filter(|rec| rec.acked)
                .map(|rec| (*v, rec)),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let each: Vec<String> = self
            .possible
            .iter()
            .map(|p| p.map_or("none".to_string(), |v| format!("v{v}")))
            .collect();
        each.join("|")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// The final reads are done: check that repair has converged.
    WantConverged,
    Converged,
    /// The client asks for this many nodes to be crashed.
    WantDegraded(usize),
    Degraded,
}

struct Shared {
    trace: Vec<String>,
    names: BTreeMap<u8, NameRecord>,
    next_op: u64,
    destroyed: BTreeSet<String>,
    /// Nodes that left the cluster for good (`leave`).
    left: BTreeSet<String>,
    /// Nodes whose leave returned an error, which may have happened all
    /// the same (the reply was lost), and whether it was forced: settled
    /// by whether the node process stopped because it left.
    leave_unsure: BTreeMap<String, bool>,
    /// Nodes whose process stopped because they left.
    exited: BTreeSet<String>,
    /// Clients still running their operations.
    scripts_running: u8,
    /// Operations and faults, by kind (see [`crate::coverage::NAMES`]).
    coverage: crate::coverage::Counts,
    /// Versions a destruction left with a chunk on no surviving disk: truly
    /// gone, so an expected loss rather than a bug.
    gone: BTreeSet<(u8, u8)>,
    chunk_size: u64,
    violations: Vec<String>,
    expected_losses: Vec<String>,
    phase: Phase,
    /// Faults applied so far: a leave checked alone had none meanwhile.
    faults: u64,
    /// A fault a leave's script asked the run loop for (see [`LeaveAim`]);
    /// not counted in `faults`: the leave must cope with it.
    aimed: Option<Aimed>,
    /// The leaving node each aimed fault applied so far was aimed for: to
    /// every other leave under way, it is a fault like any other (seed
    /// 6286624362: a node lost for one leave as another finished).
    aimed_for: Vec<String>,
    /// Leaves under way: (leaving node, leave number, another leave of the
    /// same node overlapped it). A leave that overlapped another may end
    /// with the other's outcome (seed 22395014718: a node lost for the
    /// second leave just as the first, begun before, finished).
    leaves_now: Vec<(String, u64, bool)>,
    leave_numbers: u64,
    /// When the last forced leave took its copies away: one after the heal
    /// (a client's script may run late) starts repair's time again.
    last_forced_leave_ms: u64,
    /// A destruction's check of what the tracker counts could not read
    /// its state: the run loop makes it again.
    gone_pending: bool,
}

/// A fault aimed at a graceful leave, applied by the run loop.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Aimed {
    /// Destroy `victim` at once.
    Lose { victim: String, leaver: String },
    /// Rot the first copy `leaver` hands over, as soon as the tracker
    /// hears of it and before its target reads it back.
    RotHandoff { leaver: String },
}

type SharedRef = Arc<Mutex<Shared>>;

/// A chunk of an acknowledged file, as the disks hold it.
struct Copies {
    id: p2p_core::ChunkId,
    /// Intact copies on every disk still in the cluster.
    on: usize,
    /// Its file's factor.
    replicas: u8,
    /// Its name's epoch.
    epoch: u64,
}

impl Shared {
    /// Whether name `file` may be lost without a bug: a version it may hold
    /// is gone from every surviving disk, or every holder that acknowledged
    /// one of its chunks was destroyed.
    fn doomed(&self, file: u8) -> bool {
        let Some(rec) = self.names.get(&file) else {
            return false;
        };
        rec.possible.iter().flatten().any(|v| {
            self.gone.contains(&(file, *v))
                || rec.versions.get(v).is_some_and(|ver| {
                    ver.holders
                        .iter()
                        .any(|h| h.iter().all(|n| self.destroyed.contains(n)))
                })
        })
    }

    /// After a destruction: mark versions with a chunk left on no surviving
    /// disk, or (as far as the tracker knows, which is what a get goes by)
    /// with as many holders of a chunk destroyed as its factor: a surviving
    /// copy the tracker does not count, such as an idempotent re-put's, is
    /// collected later, and surplus copies are trimmed.
    /// `host` left the cluster; forced, what it did not hand over is gone
    /// with it.
    fn has_left(
        &mut self,
        host: &str,
        force: bool,
        stores: &BTreeMap<String, MemStore>,
        tracker: &TrackerRef,
    ) {
        self.leave_unsure.remove(host);
        self.left.insert(host.to_string());
        if force {
            // Its copies go with it: a fault to every leave under way
            // (seed 22395034525).
            self.faults += 1;
            self.last_forced_leave_ms = sim_ms();
            self.destroyed.insert(host.to_string());
            self.mark_gone(stores, tracker);
        }
    }

    /// Leaves that returned an error but happened: the node stopped
    /// because it left. (Not "the tracker no longer lists it": a tracker
    /// restarted before its nodes registered lists none.)
    fn settle_leaves(&mut self, stores: &BTreeMap<String, MemStore>, tracker: &TrackerRef) {
        let done: Vec<(String, bool)> = self
            .leave_unsure
            .iter()
            .filter(|(h, _)| self.exited.contains(*h))
            .map(|(h, f)| (h.clone(), *f))
            .collect();
        for (host, force) in done {
            self.has_left(&host, force, stores, tracker);
        }
    }

    fn mark_gone(&mut self, stores: &BTreeMap<String, MemStore>, tracker: &TrackerRef) {
        let service = tracker.lock().expect("tracker set lock").current();
        self.gone_pending = false;
        for (file, rec) in &self.names {
            // A tracker holds its state while it persists a write (in a
            // group, for a quorum's round trips): look again at the next
            // step rather than not at all (seed 31338748: the only copy of
            // an R=1 file was lost while a commit persisted, its surplus
            // copies were deleted, and the loss was not expected).
            let located = match service
                .as_ref()
                .and_then(|t| t.try_inspect(|t| t.locate(&format!("f{file}")).ok()))
            {
                None => {
                    self.gone_pending = true;
                    continue;
                }
                Some(l) => l,
            };
            let Some(located) = located else { continue };
            // Surplus copies are trimmed down to the factor, keeping holders
            // believed alive: R destroyed holders of a chunk not yet known
            // dead may be the R it keeps.
            let factor = located.manifest.replicas as usize;
            let doomed = located.locations.iter().any(|l| {
                let gone = |n: &&p2p_core::tracker::NodeRef| self.destroyed.contains(n.id.as_str());
                let live_gone = l.live.iter().filter(gone).count();
                l.live.iter().chain(&l.suspect).all(|n| gone(&n)) || live_gone >= factor
            });
            if !doomed {
                continue;
            }
            for (v, ver) in &rec.versions {
                let ids: Vec<p2p_core::ChunkId> = ver
                    .data
                    .chunks(self.chunk_size as usize)
                    .map(p2p_core::ChunkId::of)
                    .collect();
                if ids == located.manifest.chunks {
                    self.gone.insert((*file, *v));
                }
            }
        }
        let surviving: Vec<&MemStore> = stores
            .iter()
            .filter(|(h, _)| !self.destroyed.contains(*h))
            .map(|(_, st)| st)
            .collect();
        for (file, rec) in &self.names {
            for (v, ver) in &rec.versions {
                let lost = ver.data.chunks(self.chunk_size as usize).any(|piece| {
                    let id = p2p_core::ChunkId::of(piece);
                    !surviving.iter().any(|st| st.holds_intact(&id))
                });
                if lost {
                    self.gone.insert((*file, *v));
                }
            }
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.coverage.entry(what).or_default() += 1;
    }

    /// Intact copies of each chunk of each acknowledged file (with its
    /// epoch) on every disk still in the cluster, down or not: what a
    /// graceful leave must not take below the factor.
    fn copies(&self, stores: &BTreeMap<String, MemStore>) -> BTreeMap<(u8, usize), Copies> {
        let (disks, chunks) = live_and_acked(self, stores, &BTreeSet::new(), self.chunk_size);
        chunks
            .into_iter()
            .map(|(file, i, replicas, piece)| {
                let id = p2p_core::ChunkId::of(piece);
                let on = disks.iter().filter(|(_, st)| st.holds_intact(&id)).count();
                let epoch = self.names.get(&file).map_or(0, |r| r.epoch);
                let copies = Copies {
                    id,
                    on,
                    replicas,
                    epoch,
                };
                ((file, i), copies)
            })
            .collect()
    }

    /// Start a put or removal of `file`.
    fn begin(&mut self, file: u8) -> u64 {
        self.next_op += 1;
        let id = self.next_op;
        self.names.entry(file).or_default().begin(id);
        id
    }
}

fn log(shared: &SharedRef, ms: u64, line: String) {
    shared
        .lock()
        .expect("shared lock")
        .trace
        .push(format!("{ms:>6}ms {line}"));
}

fn sim_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

fn file_data(seed: u64, file: u8, version: u8, size: u32) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ (u64::from(file) << 56) ^ (u64::from(version) << 48) ^ 0x5eed,
    );
    let mut data = vec![0u8; size as usize];
    rng.fill_bytes(&mut data);
    data
}

/// Short, stable form of an error for the trace.
fn short(e: &p2p_net::ClientError) -> String {
    let s = e.to_string();
    s.chars().take(120).collect()
}

/// How a forged commit went.
enum Forged {
    /// The tracker refused it, as it must.
    Refused,
    /// Not tried: no live node took the chunk it stores first.
    Skipped,
    /// The tracker took it: a bug.
    Accepted,
}

/// A dishonest client (see [`Action::Forge`]): store a chunk on a live
/// node, then commit `x{file}`, a file of another chunk never stored,
/// naming that node as its holder with the first chunk's acknowledgement
/// (the right session and stamp, a receipt for the wrong chunk).
async fn forge(client: &Client<SimDialer>, me: u8, file: u8) -> (Forged, String) {
    let name = format!("x{file}");
    let skipped = |why: String| {
        (
            Forged::Skipped,
            format!("client{me} forge {name} skipped: {why}"),
        )
    };
    let node = match client.status().await {
        Ok(st) => st.nodes.into_iter().find(|n| n.alive),
        Err(e) => return skipped(short(&e)),
    };
    let Some(node) = node else {
        return skipped("no live node".into());
    };
    let Ok(id) = p2p_core::NodeId::new(node.id.clone()) else {
        return skipped(format!("bad node id {:?}", node.id));
    };
    let stored = bytes::Bytes::from(format!("stored by forger {me} for {name}"));
    let ack = match p2p_net::client::upload_chunk(
        client.peers(),
        &node.addr,
        p2p_core::ChunkId::of(&stored),
        stored,
        0,
    )
    .await
    {
        Ok(ack) => ack,
        Err(e) => return skipped(short(&e)),
    };
    let never = format!("never stored, claimed by forger {me} for {name}");
    let manifest = match p2p_core::Manifest::new(
        name.clone(),
        never.len() as u64,
        4096,
        1,
        vec![p2p_core::ChunkId::of(never.as_bytes())],
    ) {
        Ok(m) => m,
        Err(e) => return skipped(e.to_string()),
    };
    match client.commit(&manifest, &[vec![(id, ack)]], 0, false).await {
        Ok(_) => (
            Forged::Accepted,
            format!(
                "client{me} forge {name} naming {} -> ACCEPTED: the tracker committed a file naming a holder that never stored it",
                node.id
            ),
        ),
        // Refused for the holder it named, as it must be.
        Err(e) if e.to_string().contains("acknowledged holders") => (
            Forged::Refused,
            format!(
                "client{me} forge {name} naming {} -> refused: {}",
                node.id,
                short(&e)
            ),
        ),
        // The tracker could not be reached, say: nothing was tried.
        Err(e) => skipped(short(&e)),
    }
}

/// Read `name` back in full into memory.
async fn get_bytes(
    client: &Client<SimDialer>,
    name: &str,
) -> Result<Vec<u8>, p2p_net::ClientError> {
    let located = client.locate(name).await?;
    let sink = Arc::new(MemSink::new(located.manifest.size_bytes as usize));
    client
        .fetch_into(&located, sink.clone(), &NoProgress)
        .await?;
    let sink = Arc::try_unwrap(sink).map_err(|_| p2p_net::ClientError::Protocol {
        peer: "client".into(),
        msg: "a fetch still holds the output".into(),
    })?;
    Ok(sink.into_bytes())
}

/// Check what a get of `file` returned against what the name may hold.
/// `strict`: no put or removal of the name ran during the get, so the
/// answer must be one of the values it may hold; otherwise it may be any
/// version ever put, or none. `must_read`: faults have healed, so a get
/// of a file the name holds must succeed. Returns the trace line.
fn judge_get(
    s: &mut Shared,
    label: &str,
    file: u8,
    got: Result<Vec<u8>, p2p_net::ClientError>,
    strict: bool,
    must_read: bool,
) -> String {
    let name = format!("f{file}");
    s.count(match &got {
        Ok(_) => "get_verified",
        Err(p2p_net::ClientError::UnknownFile(_)) => "get_no_such_file",
        Err(_) => "get_failed",
    });
    let doomed = s.doomed(file);
    let rec = s.names.get(&file).cloned().unwrap_or_default();
    let violation = |s: &mut Shared, v: String| {
        s.violations.push(format!("{label} get {name}: {v}"));
    };
    match got {
        Ok(bytes) => match rec.version_of(&bytes) {
            Some(v) if !strict || rec.possible.contains(&Some(v)) => {
                format!("{label} get {name} -> ok, v{v} {}B verified", bytes.len())
            }
            Some(v) => {
                violation(
                    s,
                    format!("returned v{v}, but the name holds {}", rec.describe()),
                );
                format!("{label} get {name} -> STALE v{v}")
            }
            None => {
                violation(
                    s,
                    format!(
                        "returned {} bytes that were never put under that name",
                        bytes.len()
                    ),
                );
                format!("{label} get {name} -> WRONG BYTES")
            }
        },
        Err(p2p_net::ClientError::UnknownFile(_)) if !strict || rec.possible.contains(&None) => {
            format!("{label} get {name} -> no such file, as expected")
        }
        Err(e) if doomed => {
            s.expected_losses.push(name.clone());
            format!(
                "{label} get {name} -> lost as expected (every holder of a chunk destroyed): {}",
                short(&e)
            )
        }
        Err(e) if must_read => {
            violation(
                s,
                format!("the name holds {} but the get failed: {e}", rec.describe()),
            );
            format!("{label} get {name} -> LOST: {}", short(&e))
        }
        Err(e) => format!("{label} get {name} -> error: {}", short(&e)),
    }
}

/// The operations of client `me`, in order; client 0 then runs the final checks.
async fn client_script(
    scenario: Scenario,
    cfg: SimConfig,
    shared: SharedRef,
    stores: BTreeMap<String, MemStore>,
    tracker: TrackerRef,
    me: u8,
) -> turmoil::Result {
    let client = Client::new(
        SimDialer {
            timeouts: cfg.timeouts.clone(),
        },
        &crate::trackers::addresses(scenario.trackers),
        ClientConfig {
            chunk_size_bytes: cfg.chunk_size_bytes,
            chunks_in_flight: 2,
            fetches_in_flight: 4,
            lease_renew: Duration::from_millis(400),
            replication: if scenario.fanout {
                Replication::FanOut
            } else {
                Replication::Chain
            },
        },
    );
    let start = tokio::time::Instant::now();
    for step in scenario
        .steps
        .iter()
        .filter(|s| s.action.client() == Some(me))
    {
        tokio::time::sleep_until(start + Duration::from_millis(step.at_ms.into())).await;
        match step.action {
            Action::Put {
                file,
                size,
                replicas,
                version,
                replace,
                ..
            } => {
                let (op, data) = {
                    let mut s = shared.lock().expect("shared lock");
                    let op = s.begin(file);
                    let data = s
                        .names
                        .get_mut(&file)
                        .expect("begun above")
                        .versions
                        .entry(version)
                        .or_insert_with(|| Version {
                            data: Arc::new(file_data(scenario.seed, file, version, size)),
                            replicas,
                            acked: false,
                            holders: vec![],
                        })
                        .clone();
                    (op, data)
                };
                let name = format!("f{file}");
                let r = client
                    .put_reader(
                        &data.data[..],
                        data.data.len() as u64,
                        &name,
                        data.replicas.into(),
                        replace,
                        &NoProgress,
                        std::path::Path::new(&name),
                    )
                    .await;
                let how = if replace { " --replace" } else { "" };
                let line = {
                    let mut s = shared.lock().expect("shared lock");
                    match r {
                        Ok(report) => {
                            *s.coverage.entry("put_ok").or_default() += 1;
                            if scenario.fanout {
                                s.count("put_fanout_ok");
                            }
                            if replace {
                                *s.coverage.entry("put_replace_ok").or_default() += 1;
                            }
                            let rec = s.names.get_mut(&file).expect("begun above");
                            rec.end(op, Some(Some(version)), None);
                            rec.last_acked = Some(version);
                            let ver = rec.versions.get_mut(&version).expect("recorded above");
                            ver.acked = true;
                            ver.holders = report
                                .holders
                                .iter()
                                .map(|h| h.iter().map(|n| n.to_string()).collect())
                                .collect();
                            format!(
                                "client{me} put {name} v{version}{how} {}B R={} -> ok, {} chunks",
                                data.data.len(),
                                data.replicas,
                                report.manifest.chunks.len()
                            )
                        }
                        Err(e) => {
                            // Refused for an existing name: it took no effect.
                            let maybe = !matches!(e, p2p_net::ClientError::FileExists(_));
                            s.count(if maybe {
                                "put_failed"
                            } else {
                                "put_refused_exists"
                            });
                            let rec = s.names.get_mut(&file).expect("begun above");
                            rec.end(op, None, maybe.then_some(Some(version)));
                            format!(
                                "client{me} put {name} v{version}{how} {}B R={} -> error: {}",
                                data.data.len(),
                                data.replicas,
                                short(&e)
                            )
                        }
                    }
                };
                log(&shared, sim_ms(), line);
            }
            Action::Rm { file, .. } => {
                let op = shared.lock().expect("shared lock").begin(file);
                let name = format!("f{file}");
                let r = client.remove(&name).await;
                let line = {
                    let mut s = shared.lock().expect("shared lock");
                    s.count(match &r {
                        Ok(()) => "rm_ok",
                        Err(p2p_net::ClientError::UnknownFile(_)) => "rm_no_such_file",
                        Err(_) => "rm_failed",
                    });
                    let rec = s.names.get_mut(&file).expect("begun above");
                    match r {
                        Ok(()) => {
                            rec.end(op, Some(None), None);
                            format!("client{me} rm {name} -> ok")
                        }
                        Err(p2p_net::ClientError::UnknownFile(_)) => {
                            let held = rec.describe();
                            let sure = rec.possible.contains(&None);
                            if rec.end(op, Some(None), None) && !sure {
                                s.violations.push(format!(
                                    "rm {name} found no such file, but the name holds {held}"
                                ));
                            }
                            format!("client{me} rm {name} -> no such file")
                        }
                        Err(e) => {
                            rec.end(op, None, Some(None));
                            format!("client{me} rm {name} -> error: {}", short(&e))
                        }
                    }
                };
                log(&shared, sim_ms(), line);
            }
            Action::Ls { .. } => {
                let before = quiet_names(&shared);
                let r = client.list().await;
                let mut s = shared.lock().expect("shared lock");
                let line = match r {
                    Ok(files) => {
                        s.count("ls_ok");
                        let listed: Vec<(String, u64)> =
                            files.iter().map(|f| (f.name.clone(), f.size)).collect();
                        judge_ls(&mut s, &before, &listed);
                        format!("client{me} ls -> {} files", listed.len())
                    }
                    Err(e) => format!("client{me} ls -> error: {}", short(&e)),
                };
                let at = sim_ms();
                s.trace.push(format!("{at:>6}ms {line}"));
            }
            Action::Forge { file, .. } => {
                let (outcome, line) = forge(&client, me, file).await;
                let mut s = shared.lock().expect("shared lock");
                match outcome {
                    Forged::Refused => s.count("forge_refused"),
                    Forged::Skipped => {}
                    Forged::Accepted => s.violations.push(line.clone()),
                }
                s.trace.push(format!("{:>6}ms {line}", sim_ms()));
            }
            Action::Leave {
                node, force, aim, ..
            } => {
                let host = {
                    let s = shared.lock().expect("shared lock");
                    let live = stores
                        .keys()
                        .filter(|h| !s.destroyed.contains(*h) && !s.left.contains(*h))
                        .count();
                    (live > 2)
                        .then(|| resolve(Target::Node(node), &stores, &s))
                        .flatten()
                };
                let how = if force { " --force" } else { "" };
                let Some(host) = host else {
                    log(
                        &shared,
                        sim_ms(),
                        format!("client{me} leave{how} skipped: two nodes are left"),
                    );
                    continue;
                };
                let before = {
                    let mut s = shared.lock().expect("shared lock");
                    s.leave_numbers += 1;
                    let number = s.leave_numbers;
                    let mut overlapped = false;
                    for l in s.leaves_now.iter_mut().filter(|l| l.0 == host) {
                        l.2 = true;
                        overlapped = true;
                    }
                    s.leaves_now.push((host.clone(), number, overlapped));
                    (s.faults, s.copies(&stores), s.aimed_for.len(), number)
                };
                // The chunks the leave is held to: all, or with a holder
                // destroyed just before it, the leaving node's.
                let mut held_to: Option<BTreeSet<p2p_core::ChunkId>> = None;
                // Only while faults may happen: after the heal, the run
                // waits for repair to converge.
                let aim = aim.filter(|_| sim_ms() < u64::from(FAULT_WINDOW_MS));
                match aim {
                    Some(LeaveAim::Crash) => {
                        if let Some(victim) = sharing_holder(&shared, &stores, &host) {
                            held_to = Some(stores[&host].ids().into_iter().collect());
                            shared.lock().expect("shared lock").aimed = Some(Aimed::Lose {
                                victim,
                                leaver: host.clone(),
                            });
                            // The run loop takes it at its next step.
                            for _ in 0..50 {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                if shared.lock().expect("shared lock").aimed.is_none() {
                                    break;
                                }
                            }
                        }
                    }
                    Some(LeaveAim::Rot) => {
                        shared.lock().expect("shared lock").aimed = Some(Aimed::RotHandoff {
                            leaver: host.clone(),
                        });
                    }
                    None => {}
                }
                let r = client
                    .leave_node(&format!("{host}:{PORT}"), force, &|_, _| {})
                    .await;
                shared.lock().expect("shared lock").aimed = None;
                let line = match r {
                    Ok(()) => {
                        let mut s = shared.lock().expect("shared lock");
                        s.count(if force { "leave_forced_ok" } else { "leave_ok" });
                        s.has_left(&host, force, &stores, &tracker);
                        // A graceful leave hands every copy over first: with
                        // no fault meanwhile, it takes no chunk of a file left
                        // alone below its factor.
                        let aimed_elsewhere = s.aimed_for[before.2..].iter().any(|l| *l != host);
                        let overlapped = s.leaves_now.iter().any(|l| l.1 == before.3 && l.2);
                        if !force && s.faults == before.0 && !aimed_elsewhere && !overlapped {
                            let after = s.copies(&stores);
                            let mut short = Vec::new();
                            for (k, had) in &before.1 {
                                if held_to.as_ref().is_some_and(|h| !h.contains(&had.id)) {
                                    continue;
                                }
                                let want = had.on.min(usize::from(had.replicas));
                                if let Some(now) = after.get(k)
                                    && now.epoch == had.epoch
                                    && now.on < want
                                {
                                    short.push(format!(
                                        "f{} chunk {}: {} copies, had {}, factor {}",
                                        k.0, k.1, now.on, had.on, had.replicas
                                    ));
                                }
                            }
                            if !short.is_empty() {
                                s.violations.push(format!(
                                    "{host} left and took copies with it: {}",
                                    short.join("; ")
                                ));
                            }
                        }
                        format!("client{me} leave{how} {host} -> left")
                    }
                    Err(e) => {
                        let mut s = shared.lock().expect("shared lock");
                        s.count("leave_refused");
                        s.leave_unsure.insert(host.clone(), force);
                        format!("client{me} leave{how} {host} -> error: {}", short(&e))
                    }
                };
                shared
                    .lock()
                    .expect("shared lock")
                    .leaves_now
                    .retain(|l| l.1 != before.3);
                log(&shared, sim_ms(), line);
            }
            Action::Get { file, .. } => {
                let name = format!("f{file}");
                let before = {
                    let s = shared.lock().expect("shared lock");
                    s.names
                        .get(&file)
                        .map(|r| (r.epoch, r.in_flight.is_empty()))
                };
                let got = get_bytes(&client, &name).await;
                let mut s = shared.lock().expect("shared lock");
                let after = s.names.get(&file).map(|r| r.epoch);
                let strict = matches!(before, Some((e, true)) if Some(e) == after);
                let line = if before.is_none() && after.is_none() {
                    match got {
                        Ok(bytes) => {
                            s.violations.push(format!(
                                "get {name} returned {} bytes of a name never put",
                                bytes.len()
                            ));
                            format!("client{me} get {name} -> WRONG BYTES")
                        }
                        Err(e) => format!("client{me} get {name} -> error: {}", short(&e)),
                    }
                } else {
                    judge_get(&mut s, &format!("client{me}"), file, got, strict, false)
                };
                let at = sim_ms();
                s.trace.push(format!("{at:>6}ms {line}"));
            }
            _ => unreachable!("filtered to client operations"),
        }
    }

    shared.lock().expect("shared lock").scripts_running -= 1;
    if me != 0 {
        return Ok(());
    }
    // The final checks read what every operation left: wait for the other
    // clients to finish theirs.
    while shared.lock().expect("shared lock").scripts_running > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Final check: every fault has healed; every name must read back as
    // what it holds (an acknowledged version, byte-identical, or no file),
    // unless every holder of one of its chunks was destroyed.
    let final_at = u64::from(FAULT_WINDOW_MS) + cfg.settle_ms;
    tokio::time::sleep_until(start + Duration::from_millis(final_at)).await;
    check_all(&client, &shared, "final").await;
    shared.lock().expect("shared lock").phase = Phase::WantConverged;
    while shared.lock().expect("shared lock").phase != Phase::Converged {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Degraded check: with R-1 nodes down, every file still reads back.
    let (acked_min_r, destroyed) = {
        let s = shared.lock().expect("shared lock");
        // Over every version any name may hold.
        let min_r = s
            .names
            .values()
            .flat_map(|r| r.possible.iter().flatten().map(|v| r.versions[v].replicas))
            .min();
        (min_r, !s.destroyed.is_empty())
    };
    if let (Some(r), false) = (acked_min_r, destroyed)
        && r > 1
    {
        shared.lock().expect("shared lock").phase = Phase::WantDegraded(usize::from(r) - 1);
        while shared.lock().expect("shared lock").phase != Phase::Degraded {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check_all(&client, &shared, "degraded").await;
    }
    Ok(())
}

/// For each name: its epoch, and whether no put or removal of it is under
/// way (see [`judge_ls`]).
fn quiet_names(shared: &SharedRef) -> BTreeMap<u8, (u64, bool)> {
    let s = shared.lock().expect("shared lock");
    s.names
        .iter()
        .map(|(k, r)| (*k, (r.epoch, r.in_flight.is_empty())))
        .collect()
}

/// Check a listing against what each name may hold. A name nothing ran on
/// during the listing must be listed exactly when it holds a file, with
/// that file's size; any listed name must have had a version of that size.
fn judge_ls(s: &mut Shared, before: &BTreeMap<u8, (u64, bool)>, listed: &[(String, u64)]) {
    let mut seen = BTreeSet::new();
    for (name, size) in listed {
        let rec = name
            .strip_prefix('f')
            .and_then(|k| k.parse::<u8>().ok())
            .and_then(|k| s.names.get(&k).map(|r| (k, r)));
        let Some((k, rec)) = rec else {
            s.violations
                .push(format!("ls listed {name:?}, a name never put"));
            continue;
        };
        seen.insert(k);
        let strict = before.get(&k) == Some(&(rec.epoch, true));
        let fits = |v: &u8| {
            rec.versions
                .get(v)
                .is_some_and(|x| x.data.len() as u64 == *size)
        };
        let ok = if strict {
            rec.possible.iter().flatten().any(fits)
        } else {
            rec.versions.keys().any(fits)
        };
        if !ok {
            let held = rec.describe();
            s.violations.push(format!(
                "ls listed {name} with {size}B, but it holds {held}"
            ));
        }
    }
    let missing: Vec<String> = s
        .names
        .iter()
        .filter(|(k, r)| {
            before.get(k) == Some(&(r.epoch, true))
                && !seen.contains(k)
                && !r.possible.contains(&None)
                && r.versions.values().any(|v| v.acked)
        })
        .map(|(k, r)| format!("f{k} (holds {})", r.describe()))
        .collect();
    for m in missing {
        s.violations.push(format!("ls did not list {m}"));
    }
}

/// Every name ever put, read back and judged strictly (nothing is in
/// flight any more). Names that surely hold nothing are read too: a
/// removed file must stay removed.
async fn check_all(client: &Client<SimDialer>, shared: &SharedRef, label: &str) {
    let files: Vec<u8> = {
        let s = shared.lock().expect("shared lock");
        s.names
            .iter()
            .filter(|(_, r)| {
                // A name only failed puts touched may hold nothing or a
                // version no put acknowledged: nothing to require.
                r.possible
                    .iter()
                    .any(|p| p.is_none_or(|v| r.versions.get(&v).is_some_and(|x| x.acked)))
            })
            .map(|(k, _)| *k)
            .collect()
    };
    for file in files {
        let result = get_bytes(client, &format!("f{file}")).await;
        let mut s = shared.lock().expect("shared lock");
        let line = judge_get(&mut s, label, file, result, true, true);
        s.trace.push(format!("{:>6}ms {line}", sim_ms()));
    }
}

fn host_name(t: Target) -> String {
    t.to_string()
}

/// HTTP/2 keepalive in scenarios with a tracker group: ten times the
/// group's election timeout, as deployed (10 s and 1 s), so a member's
/// connection whose segments are lost outlives several elections unless
/// the product gives up on it sooner (members do, within an election).
pub const GROUP_KEEPALIVE: Duration = Duration::from_millis(5_000);

/// Run one scenario to completion and check it.
pub fn run(scenario: &Scenario, cfg: &SimConfig) -> Report {
    align_task_ids();
    let mut cfg = cfg.clone();
    if scenario.trackers > 1 {
        cfg.timeouts.keepalive = cfg.timeouts.keepalive.max(GROUP_KEEPALIVE);
    }
    let cfg = &cfg;
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        trace: vec![],
        names: BTreeMap::new(),
        next_op: 0,
        destroyed: BTreeSet::new(),
        left: BTreeSet::new(),
        leave_unsure: BTreeMap::new(),
        exited: BTreeSet::new(),
        scripts_running: CLIENTS,
        coverage: Default::default(),
        gone: BTreeSet::new(),
        chunk_size: cfg.chunk_size_bytes,
        violations: vec![],
        expected_losses: vec![],
        phase: Phase::Running,
        faults: 0,
        aimed: None,
        aimed_for: Vec::new(),
        leaves_now: Vec::new(),
        leave_numbers: 0,
        last_forced_leave_ms: 0,
        gone_pending: false,
    }));
    let mut sim = turmoil::Builder::new()
        .rng_seed(scenario.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .tick_duration(cfg.tick)
        .simulation_duration(cfg.limit)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .build();

    // The tracker processes, to audit their state as the run goes and at
    // the end, and what the group committed, by term.
    let tracker_service: TrackerRef = Arc::default();
    let group_writes: crate::trackers::Writes = Arc::default();
    crate::coverage::take_logged();
    let tcfg = TrackerConfig {
        dead_after_ms: cfg.dead_after_ms,
        heartbeat_interval_ms: cfg.heartbeat_ms,
        repair_grace_ms: 0,
        repairs_per_node: 4,
        repair_timeout_ms: 2_000,
        session_base: 0,
        // Often enough that every scenario has nodes re-send their whole
        // inventory while the workload and the faults go on.
        full_report_interval_ms: 4_000,
        // Short, so failed puts' copies are collected within a scenario
        // while other puts are in flight.
        orphan_grace_ms: 1_500,
        // Each tracker start draws its own (see `trackers::spawn`).
        receipt_secret: [0; 32],
    };
    let tracker_disks = crate::trackers::spawn(
        &mut sim,
        crate::trackers::Setup {
            trackers: scenario.trackers,
            seed: scenario.seed,
            config: tcfg,
            timeouts: cfg.timeouts.clone(),
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
        },
        &tracker_service,
        &group_writes,
    );
    let mut stores = BTreeMap::new();
    for i in 0..scenario.nodes {
        let name = host_name(Target::Node(i));
        let store = MemStore::with_capacity(
            (scenario.capacity_kib > 0).then(|| u64::from(scenario.capacity_kib) * 1024),
        );
        stores.insert(name.clone(), store.clone());
        let timeouts = cfg.timeouts.clone();
        // Scrub often where disks may rot (the scrubber must find it); not
        // at all otherwise, which keeps other scenarios fast.
        let rot = scenario.steps.iter().any(|s| {
            matches!(
                s.action,
                Action::Disk {
                    what: DiskAction::Rot,
                    ..
                } | Action::Lag { .. }
            )
        });
        let ncfg = NodeConfig {
            heartbeat_interval: Duration::from_millis(cfg.heartbeat_ms),
            scrub_bytes_per_sec: if rot { 4 << 20 } else { 0 },
            scrub_every: Duration::from_millis(500),
            zone: zone_of(scenario, &name).map(|z| format!("z{z}")),
            disk_reserve_bytes: 0,
            ..NodeConfig::default()
        };
        let host = name.clone();
        let exited = shared.clone();
        let trackers = crate::trackers::addresses(scenario.trackers);
        sim.host(host.as_str(), move || {
            let (store, timeouts, ncfg, name, exited, trackers) = (
                store.clone(),
                timeouts.clone(),
                ncfg.clone(),
                name.clone(),
                exited.clone(),
                trackers.clone(),
            );
            async move {
                // A process starting: one that had left and stopped may
                // be running again (a restart fault brought it back; seed
                // 1750681496), and the run stops it for good below.
                exited.lock().expect("shared lock").exited.remove(&name);
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let id = NodeId::new(name.clone())?;
                let node = NodeService::open(
                    id,
                    format!("{name}:{PORT}"),
                    trackers.clone(),
                    store,
                    SimDialer {
                        timeouts: timeouts.clone(),
                    },
                    ncfg,
                )
                .await?;
                tokio::spawn(node.clone().run_heartbeats());
                tokio::spawn(node.clone().run_scrubber());
                let mut left = node.shutdown_signal();
                let server = server_builder(&timeouts)
                    .add_service(node.into_server())
                    .serve_with_incoming(incoming(listener));
                tokio::select! {
                    r = server => r?,
                    _ = left.wait_for(|v| *v) => {
                        // It left: let the leave's last reply go out, then
                        // stop for good.
                        exited.lock().expect("shared lock").exited.insert(name.clone());
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
                Ok(())
            }
        });
    }
    for me in 0..CLIENTS {
        let name = host_name(Target::Client(me));
        sim.client(
            name.as_str(),
            client_script(
                scenario.clone(),
                cfg.clone(),
                shared.clone(),
                stores.clone(),
                tracker_service.clone(),
                me,
            ),
        );
    }

    let mut faults = scenario
        .steps
        .iter()
        .filter(|s| !s.action.is_client_op())
        .peekable();
    let mut down: BTreeSet<String> = BTreeSet::new();
    let mut partitions: BTreeSet<(String, String)> = BTreeSet::new();
    // Restarts and partition repairs that faults scheduled, by time.
    let mut deferred: Vec<(u64, Deferred)> = Vec::new();
    // The message latency bound in force (a stall returns to it).
    let mut latency_ms: u16 = 3;
    let mut healed = false;
    // Trackers set to crash in their next write, and for how long.
    let mut mid_write: BTreeMap<u8, u16> = BTreeMap::new();
    // What a fault at time `now` acts on (the borrows of this run's state).
    macro_rules! hosts {
        ($now:expr) => {
            Hosts {
                sim: &mut sim,
                stores: &stores,
                down: &mut down,
                partitions: &mut partitions,
                deferred: &mut deferred,
                tracker: &tracker_service,
                tracker_disks: &tracker_disks,
                now: $now,
            }
        };
    }
    let mut lags = crate::lag::Lags::new(scenario.trackers);
    // Intact copies nodes removed lately (see `counted_after_delete`).
    let mut deleted_lately: Vec<(String, p2p_core::ChunkId, u64)> = Vec::new();
    // Destructions seen, and when the last was (see `REMOVAL_GRACE_MS`).
    let mut destroyed_seen = 0;
    let mut last_destroyed_ms: Option<u64> = None;
    let mut next_convergence_check = 0;
    let mut phantoms_checked = false;
    let mut sim_error = None;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        // A node that left is down for good. One whose process was
        // crashed during its leave and restarted may run again without
        // knowing that the leave went through (seed 2532 of 1000..3000):
        // as its operator would, the run stops it for good.
        {
            let mut s = shared.lock().expect("shared lock");
            s.settle_leaves(&stores, &tracker_service);
            for h in s.left.clone() {
                if down.insert(h.clone()) && !s.exited.contains(&h) {
                    sim.crash(h.as_str());
                    s.trace.push(format!(
                        "{now:>6}ms {h} left while restarted: stopped for good"
                    ));
                }
            }
        }
        let aimed = shared.lock().expect("shared lock").aimed.clone();
        if let Some(aimed) = aimed {
            let mut hosts = hosts!(now);
            if let Some(line) = apply_aimed(&mut hosts, &aimed, &shared) {
                let mut s = shared.lock().expect("shared lock");
                s.aimed = None;
                s.trace.push(format!("{now:>6}ms {line}"));
            }
        }
        while let Some(step) = faults.next_if(|s| u64::from(s.at_ms) <= now) {
            let mut hosts = hosts!(now);
            let line = match step.action {
                Action::Latency { max_ms } => {
                    latency_ms = max_ms;
                    lags.follow_latency(hosts.sim, max_ms);
                    apply_fault(&mut hosts, &step.action, &shared)
                }
                Action::Lag { node, ms } => {
                    let host = resolve(
                        Target::Node(node),
                        &stores,
                        &shared.lock().expect("shared lock"),
                    );
                    match host {
                        Some(h) if !hosts.down.contains(&h) => {
                            lags.arm(h.clone(), ms, &stores[&h]);
                            format!("lag {h} by {ms}ms once it stores a chunk")
                        }
                        Some(h) => format!("{}: {h} is down", step.action),
                        None => format!("{}: every node is gone", step.action),
                    }
                }
                Action::CrashMidWrite { tracker, down_ms } => {
                    let host = crate::trackers::host(tracker);
                    match tracker_disks.get(usize::from(tracker)) {
                        Some(disk) if !hosts.down.contains(&host) => {
                            disk.lock().expect("disk lock").trap.arm(true);
                            mid_write.insert(tracker, down_ms);
                            format!("{host} set to crash in its next write")
                        }
                        _ => format!("{}: {host} is down", step.action),
                    }
                }
                Action::Stall { ms } => {
                    // Everything sent meanwhile may arrive up to 2.5 s late:
                    // past request timeouts, after newer messages.
                    hosts
                        .sim
                        .set_max_message_latency(Duration::from_millis(2_500));
                    lags.follow_latency(hosts.sim, 2_500);
                    hosts
                        .deferred
                        .push((now + u64::from(ms), Deferred::Latency(latency_ms)));
                    format!("stall: messages up to 2500ms late for {ms}ms")
                }
                _ => apply_fault(&mut hosts, &step.action, &shared),
            };
            let kind = match &step.action {
                Action::CrashFor {
                    target: Target::Tracker(_),
                    ..
                }
                | Action::Crash(Target::Tracker(_)) => Some("crash_tracker"),
                Action::Wipe { .. } => Some("wipe_tracker"),
                Action::CrashFor { .. } | Action::Crash(_) => Some("crash"),
                Action::PartitionFor { .. } | Action::Partition(..) => Some("partition"),
                Action::Loss { .. } => Some("loss"),
                Action::Latency { .. } => Some("latency"),
                Action::Stall { .. } => Some("stall"),
                Action::Lag { .. } => None,
                Action::LoseHolder { .. } if line.starts_with("lose node") => Some("lose_holder"),
                Action::Disk { what, .. } if !line.contains(':') => Some(match what {
                    DiskAction::Rot => "disk_rot",
                    DiskAction::Full => "disk_full",
                    DiskAction::ReadErrors => "disk_eio",
                    DiskAction::Slow(_) => "disk_slow",
                }),
                _ => None,
            };
            {
                let mut s = shared.lock().expect("shared lock");
                s.faults += 1;
                if let Some(kind) = kind {
                    s.count(kind);
                }
            }
            log(&shared, now, line);
        }
        {
            let running = |h: &str| {
                let s = shared.lock().expect("shared lock");
                !down.contains(h) && !s.destroyed.contains(h) && !s.left.contains(h)
            };
            let survivable = |h: &str, c: &p2p_core::ChunkId| {
                let s = shared.lock().expect("shared lock");
                rot_survivable(&s, &stores, &tracker_service, h, c)
            };
            let open = now < u64::from(FAULT_WINDOW_MS);
            let env = crate::lag::Env {
                stores: &stores,
                running: &running,
                survivable: &survivable,
                open,
                latency_ms,
            };
            for e in lags.step(&sim, now, &env) {
                let mut s = shared.lock().expect("shared lock");
                if e.started {
                    s.count("lag");
                }
                s.faults += u64::from(e.fault);
                drop(s);
                log(&shared, now, e.line);
            }
        }
        {
            let removed: Vec<(String, p2p_core::ChunkId)> = stores
                .iter()
                .flat_map(|(h, st)| {
                    st.take_removed()
                        .into_iter()
                        .filter(|(_, intact)| *intact)
                        .map(|(c, _)| (h.clone(), c))
                })
                .collect();
            for (h, c) in &removed {
                deleted_lately.push((h.clone(), *c, now));
            }
            let mut s = shared.lock().expect("shared lock");
            if s.gone_pending {
                s.mark_gone(&stores, &tracker_service);
            }
            for v in counted_after_delete(
                &s,
                &stores,
                &down,
                &tracker_service,
                &mut deleted_lately,
                now,
            ) {
                s.trace.push(format!("{now:>6}ms VIOLATION: {v}"));
                s.violations.push(v);
            }
            if s.destroyed.len() != destroyed_seen {
                destroyed_seen = s.destroyed.len();
                last_destroyed_ms = Some(now);
            }
            let grace = last_destroyed_ms.is_some_and(|t| now < t + REMOVAL_GRACE_MS);
            if !grace {
                for v in removals_below_factor(&s, &stores, &removed) {
                    s.trace.push(format!("{now:>6}ms VIOLATION: {v}"));
                    s.violations.push(v);
                }
            }
        }
        // A write sprang its tracker's trap in the last step: the crash
        // comes before its sync ends.
        let sprung: Vec<(u8, u16)> = mid_write
            .iter()
            .filter(|(i, _)| {
                tracker_disks
                    .get(usize::from(**i))
                    .is_some_and(|d| d.lock().expect("disk lock").trap.sprung())
            })
            .map(|(i, ms)| (*i, *ms))
            .collect();
        for (i, down_ms) in sprung {
            mid_write.remove(&i);
            let crash = Action::CrashFor {
                target: Target::Tracker(i),
                down_ms,
            };
            let mut hosts = hosts!(now);
            let line = apply_fault(&mut hosts, &crash, &shared);
            {
                let mut s = shared.lock().expect("shared lock");
                s.faults += 1;
                s.count("crash_mid_write");
            }
            log(&shared, now, format!("{line}, in the middle of a write"));
        }
        if !healed {
            deferred.sort_by_key(|(at, _)| *at);
            while deferred.first().is_some_and(|(at, _)| *at <= now) {
                let (_, d) = deferred.remove(0);
                let line = match d {
                    Deferred::Restart(h) => {
                        let gone = {
                            let s = shared.lock().expect("shared lock");
                            s.destroyed.contains(&h) || s.left.contains(&h)
                        };
                        if !gone && down.remove(&h) {
                            sim.bounce(h.as_str());
                            Some(format!("restart {h}"))
                        } else {
                            None
                        }
                    }
                    Deferred::Repair(a, b) => {
                        partitions.remove(&(a.clone(), b.clone())).then(|| {
                            sim.repair(a.as_str(), b.as_str());
                            format!("partition {a} | {b} repaired")
                        })
                    }
                    Deferred::Latency(ms) => {
                        sim.set_max_message_latency(Duration::from_millis(ms.into()));
                        lags.follow_latency(&sim, ms);
                        latency_ms = ms;
                        Some(format!("stall over: latency up to {ms}ms"))
                    }
                };
                if let Some(line) = line {
                    log(&shared, now, line);
                }
            }
        }
        if !healed && now >= u64::from(FAULT_WINDOW_MS) {
            healed = true;
            for (i, _) in std::mem::take(&mut mid_write) {
                if let Some(d) = tracker_disks.get(usize::from(i)) {
                    d.lock().expect("disk lock").trap.arm(false);
                }
            }
            for (a, b) in std::mem::take(&mut partitions) {
                sim.repair(a.as_str(), b.as_str());
            }
            sim.set_fail_rate(0.0);
            sim.set_max_message_latency(Duration::from_millis(3));
            latency_ms = 3;
            lags.follow_latency(&sim, 3);
            let (destroyed, left) = {
                let s = shared.lock().expect("shared lock");
                (s.destroyed.clone(), s.left.clone())
            };
            let restart: Vec<String> = down
                .iter()
                .filter(|h| !destroyed.contains(*h) && !left.contains(*h))
                .cloned()
                .collect();
            for h in &restart {
                sim.bounce(h.as_str());
                down.remove(h);
            }
            log(
                &shared,
                now,
                format!(
                    "heal: partitions repaired, loss and latency cleared, restarted [{}]",
                    restart.join(",")
                ),
            );
        }
        let want = shared.lock().expect("shared lock").phase;
        if want == Phase::WantConverged && !phantoms_checked {
            // The final reads are done, well after the heal: every removal
            // has had many heartbeats to be reported.
            phantoms_checked = true;
            let phantoms = phantom_copies(
                &shared,
                &stores,
                &down,
                &tracker_service,
                cfg.chunk_size_bytes,
            );
            if !phantoms.is_empty() {
                let mut s = shared.lock().expect("shared lock");
                let v = format!(
                    "the tracker counts copies that are on no disk: {}",
                    phantoms.join("; ")
                );
                s.violations.push(v.clone());
                s.trace.push(format!("{now:>6}ms PHANTOM: {v}"));
            }
        }
        if want == Phase::WantConverged && now >= next_convergence_check {
            next_convergence_check = now + 100;
            let short = under_replicated(
                &shared,
                &stores,
                &down,
                &tracker_service,
                cfg.chunk_size_bytes,
            );
            let mut short = short;
            short.extend(badly_spread(
                &shared,
                &stores,
                &down,
                scenario,
                cfg.chunk_size_bytes,
            ));
            let mut s = shared.lock().expect("shared lock");
            // From the heal, or from a forced leave after it (seed
            // 22395016538: a client's late forced leave 390 ms before the
            // check).
            let deadline = u64::from(FAULT_WINDOW_MS).max(s.last_forced_leave_ms) + cfg.converge_ms;
            if short.is_empty() || now >= deadline {
                let line = if short.is_empty() {
                    "converged: every chunk of every acknowledged file has its copies on live nodes"
                        .to_string()
                } else {
                    let v = format!(
                        "repair did not converge within {}ms of the heal: {}",
                        cfg.converge_ms,
                        short.join("; ")
                    );
                    s.violations.push(v.clone());
                    format!("NOT CONVERGED: {v}")
                };
                s.trace.push(format!("{now:>6}ms {line}"));
                s.phase = Phase::Converged;
            }
        }
        if let Phase::WantDegraded(k) = want {
            let victims: Vec<String> = stores
                .keys()
                .filter(|h| !down.contains(*h))
                .take(k)
                .cloned()
                .collect();
            for v in &victims {
                sim.crash(v.as_str());
                down.insert(v.clone());
            }
            log(
                &shared,
                now,
                format!(
                    "degrade: crashed [{}] (R-1 of the smallest factor)",
                    victims.join(",")
                ),
            );
            shared.lock().expect("shared lock").phase = Phase::Degraded;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                sim_error = Some(e.to_string());
                break;
            }
        }
    }
    // A group's members converge once the faults are over: each has
    // applied the whole log, and all hold the same records.
    let mut group_states = None;
    if scenario.trackers > 1 && sim_error.is_none() {
        // Keepalive (2 s, and 2 s more for the ping's answer) ends a
        // member's connection to another whose segments were lost; then it
        // catches up.
        let until = sim.elapsed() + Duration::from_secs(6);
        loop {
            let states = crate::trackers::states(&tracker_service, &tracker_disks);
            if crate::trackers::agree(&states) || sim.elapsed() >= until {
                group_states = Some(states);
                break;
            }
            if let Err(e) = sim.step() {
                sim_error = Some(e.to_string());
                break;
            }
        }
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    let (audit, mut coverage) = {
        let mut set = tracker_service.lock().expect("tracker set lock");
        let audit = set.current().and_then(|t| t.try_audit());
        let mut coverage = std::mem::take(&mut set.ended);
        for h in set.running.values() {
            if let Some(c) = h.service.try_inspect(|t| t.heal_counters()) {
                crate::coverage::add_heal(&mut coverage, &c);
            }
        }
        (audit, coverage)
    };
    for (k, v) in crate::coverage::take_logged() {
        *coverage.entry(k).or_default() += v;
    }
    let mut s = shared.lock().expect("shared lock");
    for (k, v) in std::mem::take(&mut s.coverage) {
        *coverage.entry(k).or_default() += v;
    }
    if let Some(n) = coverage.get("corrupt_served").filter(|n| **n > 0) {
        // No network corrupts bytes here: a node served a copy it did not
        // verify (seen only where the coverage layer is installed).
        s.violations
            .push(format!("nodes served corrupt bytes {n} times"));
    }
    if let Some(Err(e)) = audit {
        s.violations.push(format!(
            "the tracker's incremental state differs from a recomputation: {e}"
        ));
    }
    let two = crate::trackers::two_leaders(&group_writes);
    if !two.is_empty() {
        s.violations.push(format!(
            "two trackers accepted writes in one term: {}",
            two.join("; ")
        ));
    }
    if let Some(states) = group_states {
        let each: Vec<String> = states
            .iter()
            .map(|(h, applied, digest)| format!("{h} applied {applied} records {digest}"))
            .collect();
        let line = each.join(", ");
        if crate::trackers::agree(&states) {
            s.trace
                .push(format!("{sim_ms:>6}ms tracker group agrees: {line}"));
        } else {
            s.violations.push(format!(
                "the tracker group's members differ 6s after the run: {line}"
            ));
            s.trace
                .push(format!("{sim_ms:>6}ms TRACKER GROUP DIFFERS: {line}"));
        }
    }
    if let Some(e) = sim_error {
        s.violations.push(format!(
            "simulation error (panic, host failure or hang): {e}"
        ));
        s.trace.push(format!("{sim_ms:>6}ms SIMULATION ERROR: {e}"));
    }
    Report {
        trace: std::mem::take(&mut s.trace),
        violations: std::mem::take(&mut s.violations),
        expected_losses: std::mem::take(&mut s.expected_losses),
        sim_ms,
        coverage,
    }
}

/// A live disk: its host and store.
type LiveDisk<'a> = (&'a String, &'a MemStore);
/// A chunk of an acknowledged file: (file, index, factor, bytes).
type AckedChunk<'a> = (u8, usize, u8, &'a [u8]);

/// The live disks (not down, destroyed or left), and the chunks of every
/// acknowledged file that is not an expected loss.
fn live_and_acked<'a>(
    s: &'a Shared,
    stores: &'a BTreeMap<String, MemStore>,
    down: &BTreeSet<String>,
    chunk_size: u64,
) -> (Vec<LiveDisk<'a>>, Vec<AckedChunk<'a>>) {
    let live = stores
        .iter()
        .filter(|(h, _)| !down.contains(*h) && !s.destroyed.contains(*h) && !s.left.contains(*h))
        .collect();
    let mut chunks = Vec::new();
    for (file, rec) in &s.names {
        let Some((_, rec)) = rec.surely() else {
            continue;
        };
        if s.doomed(*file) {
            continue;
        }
        for (i, piece) in rec.data.chunks(chunk_size as usize).enumerate() {
            chunks.push((*file, i, rec.replicas, piece));
        }
    }
    (live, chunks)
}

/// Chunks of acknowledged files with fewer intact copies on live disks than
/// `min(R, live nodes)`, counted on the stores themselves (a node that left
/// is not live, whatever its disk still holds). Files every
/// holder of a chunk of which was destroyed are left out (expected losses).
fn under_replicated(
    shared: &SharedRef,
    stores: &BTreeMap<String, MemStore>,
    down: &BTreeSet<String>,
    tracker: &TrackerRef,
    chunk_size: u64,
) -> Vec<String> {
    let s = shared.lock().expect("shared lock");
    let (live, chunks) = live_and_acked(&s, stores, down, chunk_size);
    let service = tracker.lock().expect("tracker set lock").current();
    let mut short = Vec::new();
    for (file, i, replicas, piece) in chunks {
        let want = usize::from(replicas).min(live.len());
        let id = p2p_core::ChunkId::of(piece);
        let on: Vec<&str> = live
            .iter()
            .filter(|(_, st)| st.holds_intact(&id))
            .map(|(h, _)| h.as_str())
            .collect();
        // Disks too full to take a copy excuse a chunk's shortness:
        // repair never places a copy where it does not fit.
        let room = live.iter().any(|(_, st)| {
            !st.holds_intact(&id) && st.room().is_none_or(|r| r >= piece.len() as u64)
        });
        if on.len() < want && room {
            // What the tracker believes, for whoever reads the trace.
            let counted = service
                .as_ref()
                .and_then(|t| t.try_inspect(|t| t.holders(&id)))
                .map(|h| {
                    h.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "?".into());
            short.push(format!(
                "f{file} chunk {i} ({}): {}/{want} copies on [{}], tracker counts [{counted}]",
                &id.to_hex()[..8],
                on.len(),
                on.join(",")
            ));
        }
    }
    short
}

/// The zone node host `host` is in, in a scenario with zones.
fn zone_of(scenario: &Scenario, host: &str) -> Option<u8> {
    if scenario.zones == 0 {
        return None;
    }
    (0..scenario.nodes)
        .find(|&i| host_name(Target::Node(i)) == host)
        .map(|i| i % scenario.zones)
}

/// In a scenario with zones: chunks of acknowledged files whose intact
/// copies on live disks are in fewer zones than `min(R, live zones)`.
fn badly_spread(
    shared: &SharedRef,
    stores: &BTreeMap<String, MemStore>,
    down: &BTreeSet<String>,
    scenario: &Scenario,
    chunk_size: u64,
) -> Vec<String> {
    if scenario.zones == 0 {
        return Vec::new();
    }
    let s = shared.lock().expect("shared lock");
    let (live, chunks) = live_and_acked(&s, stores, down, chunk_size);
    let live: Vec<(&String, &MemStore, u8)> = live
        .into_iter()
        .filter_map(|(h, st)| zone_of(scenario, h).map(|z| (h, st, z)))
        .collect();
    let live_zones: BTreeSet<u8> = live.iter().map(|l| l.2).collect();
    let mut bad = Vec::new();
    for (file, i, replicas, piece) in chunks {
        let want = usize::from(replicas).min(live_zones.len());
        let id = p2p_core::ChunkId::of(piece);
        let zones: BTreeSet<u8> = live
            .iter()
            .filter(|(_, st, _)| st.holds_intact(&id))
            .map(|l| l.2)
            .collect();
        // A zone without a copy whose disks are all too full cannot
        // take one.
        let room = live.iter().any(|(_, st, z)| {
            !zones.contains(z) && st.room().is_none_or(|r| r >= piece.len() as u64)
        });
        if zones.len() < want && room {
            bad.push(format!(
                "f{file} chunk {i} ({}): copies in zones {zones:?}, {want} of the live {live_zones:?} wanted",
                &id.to_hex()[..8],
            ));
        }
    }
    bad
}

/// How long after a node removed an intact copy the checker watches that
/// the tracker does not count it.
const DELETED_WATCH_MS: u64 = 1_000;

/// Copies a running node removed intact (as the tracker told it: trims,
/// moves, orphans) in the last [`DELETED_WATCH_MS`] and has not stored
/// again that the tracker counts among the live copies (a tracker back
/// from a crash counts nothing of a node before its report, and while the
/// report is under way what the records said as well; seeds 193 of
/// 0..2000 and 22395094654): it stopped counting each when it chose
/// it to go, and a report or heartbeat taken before the deletion must not
/// bring it back. (The final phantom check sees only what is left at the
/// end; this sees the moment it happens.) Each is said once.
fn counted_after_delete(
    s: &Shared,
    stores: &BTreeMap<String, MemStore>,
    down: &BTreeSet<String>,
    tracker: &TrackerRef,
    watched: &mut Vec<(String, p2p_core::ChunkId, u64)>,
    now: u64,
) -> Vec<String> {
    watched.retain(|(h, c, at)| {
        now < at + DELETED_WATCH_MS && stores.get(h).is_some_and(|st| !st.holds(c))
    });
    if watched.is_empty() {
        return Vec::new();
    }
    let Some(service) = tracker.lock().expect("tracker set lock").current() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    watched.retain(|(h, c, _)| {
        let running = !down.contains(h) && !s.destroyed.contains(h) && !s.left.contains(h);
        let counted = running
            && service
                .try_inspect(|t| {
                    let id = p2p_core::NodeId::new(h.as_str()).ok();
                    !id.as_ref().is_some_and(|id| t.reporting(id))
                        && t.live_holders(c).iter().any(|n| n.as_str() == h.as_str())
                })
                .unwrap_or(false);
        if counted {
            out.push(format!(
                "the tracker counts {h}'s copy of {} though {h} deleted it as told",
                &c.to_hex()[..8]
            ));
        }
        !counted
    });
    out
}

/// After a destruction, how long a deletion may leave a chunk below its
/// factor: a holder the tracker counted as a keeper may have been lost
/// after it verified its copy and before the surplus copy went.
const REMOVAL_GRACE_MS: u64 = 3_000;

/// Intact copies the nodes removed since the last look (trims, moves,
/// deletions of copies the tracker no longer wants) that left a chunk of
/// an acknowledged file with fewer intact copies than its factor on the
/// disks still in the cluster (down or not). A trim keeps copies it has
/// had read back intact on nodes heard from lately; nothing else removes
/// an intact copy of a wanted chunk.
fn removals_below_factor(
    s: &Shared,
    stores: &BTreeMap<String, MemStore>,
    removed: &[(String, p2p_core::ChunkId)],
) -> Vec<String> {
    if removed.is_empty() {
        return Vec::new();
    }
    let (disks, chunks) = live_and_acked(s, stores, &BTreeSet::new(), s.chunk_size);
    let mut out = Vec::new();
    for (file, i, replicas, piece) in chunks {
        // A put, replace or rm under way may free these copies.
        if s.names.get(&file).is_some_and(|r| !r.in_flight.is_empty()) {
            continue;
        }
        let id = p2p_core::ChunkId::of(piece);
        for (host, _) in removed.iter().filter(|(_, c)| *c == id) {
            let on = disks.iter().filter(|(_, st)| st.holds_intact(&id)).count();
            if on < usize::from(replicas) {
                out.push(format!(
                    "{host} removed its intact copy of f{file} chunk {i} ({}): {on} intact copies left, factor {replicas}",
                    &id.to_hex()[..8]
                ));
            }
        }
    }
    out
}

/// Copies of acknowledged files' chunks the tracker counts on a live node
/// whose disk does not hold them at all (rotten copies still count as held:
/// only the scrubber or a read can know).
fn phantom_copies(
    shared: &SharedRef,
    stores: &BTreeMap<String, MemStore>,
    down: &BTreeSet<String>,
    tracker: &TrackerRef,
    chunk_size: u64,
) -> Vec<String> {
    let s = shared.lock().expect("shared lock");
    let service = tracker.lock().expect("tracker set lock").current();
    let Some(service) = service else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (file, rec) in &s.names {
        let Some((_, rec)) = rec.surely() else {
            continue;
        };
        for (i, piece) in rec.data.chunks(chunk_size as usize).enumerate() {
            let id = p2p_core::ChunkId::of(piece);
            let Some(counted) = service.try_inspect(|t| t.holders(&id)) else {
                return Vec::new();
            };
            for n in counted {
                let host = n.as_str();
                let live =
                    !down.contains(host) && !s.destroyed.contains(host) && !s.left.contains(host);
                if live && stores.get(host).is_some_and(|st| !st.holds(&id)) {
                    out.push(format!(
                        "f{file} chunk {i} ({}) on {host}",
                        &id.to_hex()[..8]
                    ));
                }
            }
        }
    }
    out
}

/// A fault's undoing, due later.
enum Deferred {
    Restart(String),
    Repair(String, String),
    /// Messages take at most this long again.
    Latency(u16),
}

/// What faults act on.
struct Hosts<'a, 'b> {
    sim: &'a mut turmoil::Sim<'b>,
    stores: &'a BTreeMap<String, MemStore>,
    down: &'a mut BTreeSet<String>,
    partitions: &'a mut BTreeSet<(String, String)>,
    deferred: &'a mut Vec<(u64, Deferred)>,
    tracker: &'a TrackerRef,
    tracker_disks: &'a [Arc<Mutex<Disk>>],
    now: u64,
}

/// The host a fault aimed at `t` hits: `t` itself, or, if it is a node
/// that left or lost its disk for good, the next node that has not.
fn resolve(t: Target, stores: &BTreeMap<String, MemStore>, s: &Shared) -> Option<String> {
    let gone = |h: &String| s.destroyed.contains(h) || s.left.contains(h);
    match t {
        Target::Node(i) => {
            let n = stores.len();
            (0..n)
                .map(|k| host_name(Target::Node(((usize::from(i) + k) % n) as u8)))
                .find(|h| !gone(h))
        }
        t => Some(host_name(t)),
    }
}

/// Tokio numbers tasks from one counter for the whole process, and a
/// runtime shuts its tasks down (a crashed host's) shard by shard, a task's
/// shard being its number modulo the shard count (4 on a current-thread
/// runtime): the order in which a crashed host's connections close, and
/// so the run, depended on how many tasks the process had spawned before.
/// Seed 424256 ran differently after seeds 424251..424256 than alone.
/// Every run starts the counter at a multiple of this, so a scenario runs
/// the same first or after others in the process (not while another
/// thread spawns tasks: sweeps run in parallel in processes of their own).
const TASK_ID_ALIGN: u64 = 64;

fn align_task_ids() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        for _ in 0..TASK_ID_ALIGN {
            let task = tokio::spawn(async {});
            let id: u64 = task.id().to_string().parse().unwrap_or(0);
            let _ = task.await;
            if (id + 1).is_multiple_of(TASK_ID_ALIGN) {
                break;
            }
        }
    });
}

/// A live node other than `leaver` holding an intact copy of a chunk
/// `leaver` holds intact, while at least four nodes are live (the leave
/// still has somewhere to go).
fn sharing_holder(
    shared: &SharedRef,
    stores: &BTreeMap<String, MemStore>,
    leaver: &str,
) -> Option<String> {
    let s = shared.lock().expect("shared lock");
    let gone = |h: &str| s.destroyed.contains(h) || s.left.contains(h);
    let live = stores.keys().filter(|h| !gone(h)).count();
    if live < 4 {
        return None;
    }
    let held: Vec<p2p_core::ChunkId> = stores[leaver]
        .ids()
        .into_iter()
        .filter(|c| stores[leaver].holds_intact(c))
        .collect();
    stores
        .iter()
        .filter(|(h, _)| h.as_str() != leaver && !gone(h))
        .find(|(_, st)| held.iter().any(|c| st.holds_intact(c)))
        .map(|(h, _)| h.clone())
}

/// Apply a fault a leave asked for; `None` while it must wait (no copy
/// handed over yet).
fn apply_aimed(h: &mut Hosts<'_, '_>, aimed: &Aimed, shared: &SharedRef) -> Option<String> {
    match aimed {
        Aimed::Lose { victim, leaver } => {
            if let Some(store) = h.stores.get(victim) {
                store.wipe();
            }
            if h.down.insert(victim.clone()) {
                h.sim.crash(victim.as_str());
            }
            let mut s = shared.lock().expect("shared lock");
            s.destroyed.insert(victim.clone());
            s.mark_gone(h.stores, h.tracker);
            s.count("leave_aimed_crash");
            s.aimed_for.push(leaver.clone());
            Some(format!(
                "lose {victim} (aimed: it shares a chunk with a node about to leave; crashed, disk lost)"
            ))
        }
        Aimed::RotHandoff { leaver } => {
            let service = h.tracker.lock().expect("tracker set lock").current()?;
            let pending = service.try_inspect(|t| t.unverified_handoffs())?;
            let (chunk, target) = pending
                .into_iter()
                .find(|(c, l, t)| {
                    l.as_str() == leaver.as_str()
                        && h.stores
                            .get(t.as_str())
                            .is_some_and(|st| st.holds_intact(c))
                })
                .map(|(c, _, t)| (c, t.to_string()))?;
            h.stores[&target].rot(0, |c| *c == chunk)?;
            {
                let mut s = shared.lock().expect("shared lock");
                s.count("leave_aimed_rot");
                s.aimed_for.push(leaver.clone());
            }
            Some(format!(
                "rot the copy of {} {leaver} handed to {target} (aimed, before its target reads it back)",
                &chunk.to_hex()[..8]
            ))
        }
    }
}

/// Whether rot of `host`'s copy of `c` leaves an intact copy the tracker
/// counts on another disk still in the cluster: rot of the last copy is a
/// loss no system prevents (a copy the tracker does not count, such as a
/// repeated put's, is deleted later). Not while a trim waits for the
/// copies it keeps to be verified, nor until the copies it chose to go
/// are gone (seed 6286624441): rot of one it kept after its verification
/// would go unseen until the other copies are gone.
fn rot_survivable(
    s: &Shared,
    stores: &BTreeMap<String, MemStore>,
    tracker: &TrackerRef,
    host: &str,
    c: &p2p_core::ChunkId,
) -> bool {
    let service = tracker.lock().expect("tracker set lock").current();
    let (counted, trimming) = service
        .as_ref()
        .and_then(|t| t.try_inspect(|t| (t.holders(c), t.trimming(c) || t.deletion_pending(c))))
        .unwrap_or_default();
    if trimming {
        return false;
    }
    stores.iter().any(|(o, st)| {
        o.as_str() != host
            && counted.iter().any(|n| n.as_str() == o.as_str())
            && !s.destroyed.contains(o)
            && !s.left.contains(o)
            // A leaving node's copy is on its way out: with it as the
            // other copy, the rot and the leave are two losses (seed
            // 22395030325: R=1, the hand-off's copy rotted after it was
            // verified, and the leave ended before the scrubber saw it).
            && !s.leaves_now.iter().any(|l| l.0 == *o)
            && st.holds_intact(c)
    })
}

fn apply_fault(h: &mut Hosts<'_, '_>, action: &Action, shared: &SharedRef) -> String {
    let tracker = h.tracker;
    let (sim, stores, down, partitions) = (&mut *h.sim, h.stores, &mut *h.down, &mut *h.partitions);
    match action {
        Action::CrashFor { target, down_ms } => {
            let Some(host) = resolve(*target, stores, &shared.lock().expect("shared lock")) else {
                return format!("{action}: every node is gone");
            };
            if down.contains(&host) {
                // Already down: the fault is that it comes back now.
                down.remove(&host);
                sim.bounce(host.as_str());
                return format!("restart {host} (it was down)");
            }
            sim.crash(host.as_str());
            tracker.lock().expect("tracker set lock").crashed(&host);
            down.insert(host.clone());
            h.deferred
                .push((h.now + u64::from(*down_ms), Deferred::Restart(host.clone())));
            format!("crash {host} for {down_ms}ms")
        }
        Action::Wipe {
            tracker: i,
            down_ms,
        } => {
            let host = crate::trackers::host(*i);
            let Some(disk) = h.tracker_disks.get(usize::from(*i)) else {
                return format!("{action}: no such tracker");
            };
            if down.insert(host.clone()) {
                sim.crash(host.as_str());
                tracker.lock().expect("tracker set lock").crashed(&host);
            }
            {
                let mut disk = disk.lock().expect("disk lock");
                *disk = Disk::empty(disk.sync);
            }
            h.deferred
                .push((h.now + u64::from(*down_ms), Deferred::Restart(host.clone())));
            format!("wipe {host}: crashed, disk lost, back on an empty one in {down_ms}ms")
        }
        Action::Disk { node, what, n } => {
            let s = shared.lock().expect("shared lock");
            let Some(host) = resolve(Target::Node(*node), stores, &s) else {
                return format!("{action}: every node is gone");
            };
            let store = &stores[&host];
            let until = h.now + u64::from(*n);
            match what {
                DiskAction::Rot => {
                    // Only a chunk with an intact copy on another disk that
                    // is still there and that the tracker counts (a copy it
                    // does not count, such as a repeated put's, is deleted
                    // later): rot of the last copy is a loss no system
                    // prevents.
                    let elsewhere =
                        |c: &p2p_core::ChunkId| rot_survivable(&s, stores, tracker, &host, c);
                    // A copy of a chunk with more copies than its factor
                    // first, where there is one: a trim is coming, and must
                    // check that the copies it keeps are intact.
                    let surplus: BTreeSet<p2p_core::ChunkId> = s
                        .copies(stores)
                        .into_values()
                        .filter(|c| c.on > usize::from(c.replicas))
                        .map(|c| c.id)
                        .collect();
                    let rotted = store
                        .rot(usize::from(*n), |c| surplus.contains(c) && elsewhere(c))
                        .or_else(|| store.rot(usize::from(*n), elsewhere));
                    match rotted {
                        Some(c) => format!("rot a copy of {} on {host}", &c.to_hex()[..8]),
                        None => format!("{action}: no chunk on {host} has another copy"),
                    }
                }
                DiskAction::Full => {
                    store.fail(DiskFault::Full, until);
                    format!("disk of {host} full for {n}ms")
                }
                DiskAction::ReadErrors => {
                    store.fail(DiskFault::ReadErrors, until);
                    format!("disk of {host} fails reads for {n}ms")
                }
                DiskAction::Slow(ms) => {
                    store.fail(DiskFault::Slow(*ms), until);
                    format!("disk of {host} {ms}ms slower for {n}ms")
                }
            }
        }
        Action::PartitionFor { a, b, ms } => {
            let (a, b) = (host_name(*a), host_name(*b));
            let pair = if a < b { (a, b) } else { (b, a) };
            sim.partition(pair.0.as_str(), pair.1.as_str());
            let line = format!("partition {} | {} for {ms}ms", pair.0, pair.1);
            h.deferred.push((
                h.now + u64::from(*ms),
                Deferred::Repair(pair.0.clone(), pair.1.clone()),
            ));
            partitions.insert(pair);
            line
        }
        Action::Crash(Target::Client(c)) | Action::Restart(Target::Client(c)) => {
            format!("{action} ignored: client{c} is not crashed, only partitioned")
        }
        Action::Crash(t) => {
            let h = host_name(*t);
            if down.insert(h.clone()) {
                sim.crash(h.as_str());
                tracker.lock().expect("tracker set lock").crashed(&h);
                format!("crash {h}")
            } else {
                format!("crash {h} (already down)")
            }
        }
        Action::Restart(t) => {
            let h = host_name(*t);
            if shared.lock().expect("shared lock").destroyed.contains(&h) {
                format!("restart {h} (destroyed, stays down)")
            } else if down.remove(&h) {
                sim.bounce(h.as_str());
                format!("restart {h}")
            } else {
                format!("restart {h} (already up)")
            }
        }
        Action::Partition(a, b) => {
            let (a, b) = (host_name(*a), host_name(*b));
            if a == b {
                return format!("partition {a} from itself (no-op)");
            }
            let pair = if a < b { (a, b) } else { (b, a) };
            sim.partition(pair.0.as_str(), pair.1.as_str());
            let line = format!("partition {} | {}", pair.0, pair.1);
            partitions.insert(pair);
            line
        }
        Action::Heal => {
            for (a, b) in std::mem::take(partitions) {
                sim.repair(a.as_str(), b.as_str());
            }
            "heal partitions".into()
        }
        Action::Loss { per_mille } => {
            sim.set_fail_rate(f64::from(*per_mille) / 1000.0);
            format!("message loss {per_mille}/1000")
        }
        Action::Latency { max_ms } => {
            sim.set_max_message_latency(Duration::from_millis((*max_ms).into()));
            format!("latency up to {max_ms}ms")
        }
        Action::DestroyHolders { file } => {
            let holders: BTreeSet<String> = {
                let s = shared.lock().expect("shared lock");
                let last = s
                    .names
                    .get(file)
                    .and_then(|r| r.last_acked.and_then(|v| r.versions.get(&v)));
                match last {
                    Some(f) if !f.holders.is_empty() => f.holders[0].iter().cloned().collect(),
                    _ => {
                        return format!(
                            "destroy holders of f{file} (no acknowledged put with chunks)"
                        );
                    }
                }
            };
            for h in &holders {
                if let Some(store) = stores.get(h) {
                    store.wipe();
                }
                if down.insert(h.clone()) {
                    sim.crash(h.as_str());
                }
            }
            {
                let mut s = shared.lock().expect("shared lock");
                s.destroyed.extend(holders.iter().cloned());
                s.mark_gone(stores, tracker);
            }
            format!(
                "destroy {} (crashed, disks lost)",
                holders.into_iter().collect::<Vec<_>>().join(",")
            )
        }
        Action::LoseHolder { file } => {
            let victim = {
                let s = shared.lock().expect("shared lock");
                let Some(rec) = s.names.get(file).and_then(|r| {
                    let v = r.last_acked.or_else(|| r.versions.keys().next().copied())?;
                    r.versions.get(&v)
                }) else {
                    return format!("lose a holder of f{file} (never put)");
                };
                let Some(first) = rec.data.chunks(s.chunk_size as usize).next() else {
                    return format!("lose a holder of f{file} (no chunks)");
                };
                let id = p2p_core::ChunkId::of(first);
                let acked: BTreeSet<&String> = rec.holders.first().into_iter().flatten().collect();
                let holding: Vec<&String> = stores
                    .iter()
                    .filter(|(h, st)| !s.destroyed.contains(*h) && st.holds_intact(&id))
                    .map(|(h, _)| h)
                    .collect();
                holding
                    .iter()
                    .find(|h| acked.contains(**h))
                    .or(holding.first())
                    .map(|h| (*h).clone())
            };
            let Some(h) = victim else {
                return format!("lose a holder of f{file} (no copy left)");
            };
            if let Some(store) = stores.get(&h) {
                store.wipe();
            }
            if down.insert(h.clone()) {
                sim.crash(h.as_str());
            }
            let mut s = shared.lock().expect("shared lock");
            s.destroyed.insert(h.clone());
            s.mark_gone(stores, tracker);
            let gone = if s.gone.iter().any(|(f, _)| f == file) {
                ", no copy left"
            } else {
                ""
            };
            format!("lose {h} (holder of f{file}; crashed, disk lost{gone})")
        }
        Action::Put { .. }
        | Action::Get { .. }
        | Action::Rm { .. }
        | Action::Ls { .. }
        | Action::Forge { .. }
        | Action::Leave { .. } => {
            unreachable!("client operations are not faults")
        }
        Action::Stall { .. } | Action::Lag { .. } | Action::CrashMidWrite { .. } => {
            unreachable!("applied by the run loop")
        }
    }
}
