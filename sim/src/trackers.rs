//! The simulated trackers: one, or a group of three replicated with Raft,
//! each on its own turmoil host with a disk that survives its crashes (and
//! that a wipe replaces with an empty one); which of them answers now; and
//! the group's own invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use p2p_core::tracker::{Record, Tracker, TrackerConfig};
use p2p_net::group::{Leading, LogStore, Member, Timing};
use p2p_net::meta::{MemoryMeta, MetaError, MetaStore, encode_records};
use p2p_net::tracker::TrackerService;
use p2p_net::transport::{Timeouts, server_builder};

use crate::transport::{SimDialer, incoming};

/// The port every simulated service listens on.
pub const PORT: u16 = 7000;

/// Election timing of a simulated group: a LAN's election timeout, halved,
/// so that a scenario's 3 s of faults see several elections, and its
/// heartbeat.
pub fn group_timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(250),
        election_max: Duration::from_millis(500),
    }
}

/// The host name of tracker `i`.
pub fn host(i: u8) -> String {
    format!("tracker{i}")
}

/// What nodes and clients are given as the tracker address: every tracker.
pub fn addresses(trackers: u8) -> String {
    (0..trackers)
        .map(|i| format!("{}:{PORT}", host(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes the group committed: the term and index each landed at, and the
/// member whose tracker made it.
pub type Writes = Arc<Mutex<Vec<(u64, u64, u8)>>>;

/// A tracker's records: a single tracker's own, or a group member's,
/// written through the group (and noted in [`Writes`]).
pub enum SimMeta {
    /// A single tracker's records on its disk, whose syncs take `sync`.
    Single {
        meta: MemoryMeta,
        sync: Duration,
        trap: Arc<WriteTrap>,
    },
    Group {
        member: Arc<Member<MemoryMeta>>,
        me: u8,
        writes: Writes,
        trap: Arc<WriteTrap>,
    },
}

#[async_trait]
impl MetaStore for SimMeta {
    async fn restore(&self, config: TrackerConfig) -> Result<Tracker, MetaError> {
        match self {
            SimMeta::Single { meta, .. } => meta.restore(config).await,
            SimMeta::Group { member, .. } => member.store().restore(config).await,
        }
    }

    async fn persist(&self, records: Vec<Record>) -> Result<(), MetaError> {
        match self {
            SimMeta::Single { meta, sync, trap } => {
                trap.spring();
                // A write is on the disk once its sync ends: a crash before
                // (this future dropped with the host's tasks) loses it, as
                // it loses a redb commit whose fsync had not returned.
                let unsynced = Unsynced;
                tokio::time::sleep(*sync).await;
                std::mem::forget(unsynced);
                meta.persist(records).await
            }
            SimMeta::Group {
                member,
                me,
                writes,
                trap,
            } => {
                trap.spring();
                let w = member.write(&records).await.map_err(|e| MetaError::Db {
                    path: "tracker group".into(),
                    msg: e.to_string(),
                })?;
                writes
                    .lock()
                    .expect("writes lock")
                    .push((w.term, w.index, *me));
                Ok(())
            }
        }
    }
}

/// Set to crash a tracker in the middle of its next write: the write
/// springs it, and the run crashes the host before the next step (the
/// write's sync, longer than a step, has not ended).
#[derive(Default)]
pub struct WriteTrap {
    armed: AtomicBool,
    sprung: AtomicBool,
}

impl WriteTrap {
    pub fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::Relaxed);
    }

    fn spring(&self) {
        if self.armed.swap(false, Ordering::Relaxed) {
            self.sprung.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a write sprang it since the last call.
    pub fn sprung(&self) -> bool {
        self.sprung.swap(false, Ordering::Relaxed)
    }
}

/// A tracker write in flight; dropped before its sync ended, it is lost.
struct Unsynced;

impl Drop for Unsynced {
    fn drop(&mut self) {
        crate::coverage::count("tracker_writes_lost");
    }
}

/// A tracker's disk: the group's log (unused by a single tracker), the
/// records, and how long a sync takes.
#[derive(Clone)]
pub struct Disk {
    pub log: LogStore,
    pub meta: MemoryMeta,
    pub sync: Duration,
    pub trap: Arc<WriteTrap>,
}

impl Disk {
    pub fn empty(sync: Duration) -> Self {
        Self {
            log: LogStore::in_memory()
                .expect("an in-memory log opens")
                .with_sync_time(sync),
            meta: MemoryMeta::default(),
            sync,
            trap: Arc::default(),
        }
    }
}

/// A group member's Raft and what decides when its tracker answers.
pub type GroupPart = (Arc<Member<MemoryMeta>>, Arc<Leading<MemoryMeta>>);

/// A tracker process: its service and, in a group, its member.
#[derive(Clone)]
pub struct Handle {
    pub service: TrackerService<SimMeta>,
    pub group: Option<GroupPart>,
    /// False once its host crashed (a new process gets a new handle).
    pub up: bool,
}

impl Handle {
    /// The term it serves in, if it answers requests now.
    fn serving(&self) -> Option<u64> {
        if !self.up {
            return None;
        }
        match &self.group {
            None => Some(0),
            Some((_, leading)) => leading.serving(),
        }
    }
}

/// The tracker processes of a run.
#[derive(Default)]
pub struct TrackerSet {
    /// The process running now, or last, on each tracker host.
    pub running: BTreeMap<u8, Handle>,
    /// The one that answered last.
    last: Option<u8>,
    /// Heal counters of processes that ended (coverage).
    pub ended: crate::coverage::Counts,
}

pub type TrackerRef = Arc<Mutex<TrackerSet>>;

impl TrackerSet {
    /// The tracker that answers requests now (in a group: the member that
    /// leads; of two that believe they do, the later term's), else the one
    /// that answered last: whose view the checker goes by.
    pub fn current(&mut self) -> Option<TrackerService<SimMeta>> {
        let now = self
            .running
            .iter()
            .filter_map(|(i, h)| h.serving().map(|t| (t, *i)))
            .max();
        if let Some((_, i)) = now {
            self.last = Some(i);
        }
        let i = self.last.or_else(|| self.running.keys().next().copied())?;
        self.running.get(&i).map(|h| h.service.clone())
    }

    /// Host `name`'s process stopped (crash or wipe), if it is a tracker.
    pub fn crashed(&mut self, name: &str) {
        let i = name.strip_prefix("tracker").and_then(|i| i.parse().ok());
        if let Some(h) = i.and_then(|i: u8| self.running.get_mut(&i)) {
            h.up = false;
        }
    }

    /// A new process on tracker host `i`.
    fn started(&mut self, i: u8, handle: Handle) {
        if let Some(old) = self.running.insert(i, handle)
            && let Some(h) = old.service.try_inspect(|t| t.heal_counters())
        {
            crate::coverage::add_heal(&mut self.ended, &h);
        }
    }
}

/// The trackers' settings for one run.
pub struct Setup {
    pub trackers: u8,
    pub seed: u64,
    pub config: TrackerConfig,
    pub timeouts: Timeouts,
    pub heartbeat: Duration,
}

/// Start the tracker hosts of a run; returns their disks (by tracker).
pub fn spawn(
    sim: &mut turmoil::Sim<'_>,
    setup: Setup,
    set: &TrackerRef,
    writes: &Writes,
) -> Vec<Arc<Mutex<Disk>>> {
    let peers: Vec<String> = (0..setup.trackers)
        .map(|i| format!("{}:{PORT}", host(i)))
        .collect();
    let mut disks = Vec::new();
    for i in 0..setup.trackers {
        // 11 to 30 ms a sync (a disk's fsync, give or take): longer than a
        // simulation step, so a write lands in a later step than the one it
        // started in, and a crash between the two loses it.
        let sync = Duration::from_millis(11 + (setup.seed >> 8) % 20);
        let disk = Arc::new(Mutex::new(Disk::empty(sync)));
        disks.push(disk.clone());
        // Each start hands out sessions of its own, and draws its
        // elections from a seed of its own (from the scenario's, not a
        // random one: the run replays).
        let starts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (set, writes, peers) = (set.clone(), writes.clone(), peers.clone());
        let (config, timeouts, heartbeat, seed) = (
            setup.config.clone(),
            setup.timeouts.clone(),
            setup.heartbeat,
            setup.seed,
        );
        let group = setup.trackers > 1;
        sim.host(host(i).as_str(), move || {
            let start = starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let base = seed ^ (start << 40) ^ (u64::from(i) << 56);
            let config = TrackerConfig {
                session_base: base >> 1,
                receipt_secret: *blake3::hash(&base.to_le_bytes()).as_bytes(),
                ..config.clone()
            };
            let disk = disk.lock().expect("disk lock").clone();
            let (set, writes, peers, timeouts) =
                (set.clone(), writes.clone(), peers.clone(), timeouts.clone());
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let dialer = SimDialer {
                    timeouts: timeouts.clone(),
                };
                let mut server = server_builder(&timeouts);
                let handle = if group {
                    let me = format!("{}:{PORT}", host(i));
                    let member = Arc::new(
                        Member::start(
                            &me,
                            &peers,
                            disk.log,
                            disk.meta,
                            dialer,
                            &group_timing(),
                            base,
                        )
                        .await?,
                    );
                    let leading = Leading::new(member.clone());
                    let meta = SimMeta::Group {
                        member: member.clone(),
                        me: i,
                        writes,
                        trap: disk.trap.clone(),
                    };
                    let service = TrackerService::open(config, meta)
                        .await?
                        .with_gate(leading.clone());
                    tokio::spawn(leading.clone().run(service.clone()));
                    Handle {
                        service,
                        group: Some((member, leading)),
                        up: true,
                    }
                } else {
                    let meta = SimMeta::Single {
                        meta: disk.meta,
                        sync: disk.sync,
                        trap: disk.trap.clone(),
                    };
                    let service = TrackerService::open(config, meta).await?;
                    Handle {
                        service,
                        group: None,
                        up: true,
                    }
                };
                set.lock()
                    .expect("tracker set lock")
                    .started(i, handle.clone());
                tokio::spawn(handle.service.clone().run_ticker(heartbeat / 2));
                let router = match &handle.group {
                    Some((member, _)) => server
                        .add_service(handle.service.into_server())
                        .add_service(member.service().into_server()),
                    None => server.add_service(handle.service.into_server()),
                };
                router.serve_with_incoming(incoming(listener)).await?;
                Ok(())
            }
        });
    }
    disks
}

/// Terms in which more than one member's tracker had a write committed:
/// two leaders accepting writes in one term.
pub fn two_leaders(writes: &Writes) -> Vec<String> {
    let mut by_term: BTreeMap<u64, BTreeSet<u8>> = BTreeMap::new();
    for (term, _, me) in writes.lock().expect("writes lock").iter() {
        by_term.entry(*term).or_default().insert(*me);
    }
    by_term
        .into_iter()
        .filter(|(_, who)| who.len() > 1)
        .map(|(term, who)| {
            let who: Vec<String> = who.into_iter().map(host).collect();
            format!("term {term}: writes committed by {}", who.join(" and "))
        })
        .collect()
}

/// Each member's last applied index and a digest of its records (what a
/// snapshot of it would hold).
pub fn states(set: &TrackerRef, disks: &[Arc<Mutex<Disk>>]) -> Vec<(String, u64, String)> {
    let set = set.lock().expect("tracker set lock");
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let i = i as u8;
            let applied = set
                .running
                .get(&i)
                .and_then(|h| h.group.as_ref())
                .map_or(0, |(m, _)| m.applied());
            let records = d.lock().expect("disk lock").meta.load();
            let digest = blake3::hash(&encode_records(&records)).to_hex()[..12].to_string();
            (host(i), applied, digest)
        })
        .collect()
}

/// Whether every member has applied as far and holds the same records.
pub fn agree(states: &[(String, u64, String)]) -> bool {
    states
        .windows(2)
        .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2)
}
