//! A scenario: a typed fault plan interleaved with client operations,
//! generated and shrunk by proptest.

use std::fmt;

use proptest::prelude::*;

/// A host that faults can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A tracker: the only one, or a member of the tracker group.
    Tracker(u8),
    Node(u8),
    /// A client host (only partitions reach clients).
    Client(u8),
}

/// Client hosts in every scenario: operations are spread over them.
pub const CLIENTS: u8 = 3;

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tracker(i) => write!(f, "tracker{i}"),
            Target::Node(i) => write!(f, "node{i}"),
            Target::Client(i) => write!(f, "client{i}"),
        }
    }
}

/// One thing that happens at a scheduled time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Client `client` stores version `version` of file `f{file}` (`size`
    /// bytes the first time that version is put, the same bytes after) with
    /// `replicas` copies; with `replace`, in place of what the name holds.
    Put {
        file: u8,
        size: u32,
        replicas: u8,
        client: u8,
        version: u8,
        replace: bool,
    },
    /// Client `client` reads file `f{file}` back.
    Get { file: u8, client: u8 },
    /// Client `client` removes file `f{file}`.
    Rm { file: u8, client: u8 },
    /// Client `client` lists every file.
    Ls { client: u8 },
    /// Client `client` is dishonest: it stores one chunk on a node, then
    /// commits file `x{file}` of another chunk, never stored, naming that
    /// node as its holder with the first chunk's acknowledgement. The
    /// tracker must refuse it.
    Forge { file: u8, client: u8 },
    /// Client `client` asks node `node` to hand its chunks over and leave
    /// for good; with `force`, it leaves even if some cannot be handed over.
    /// `aim` puts a fault where a graceful leave must wait (see
    /// [`LeaveAim`]).
    Leave {
        node: u8,
        client: u8,
        force: bool,
        aim: Option<LeaveAim>,
    },
    /// The host stops at once (its disk survives) and starts again after
    /// `down_ms` (or at the heal, whichever comes first).
    CrashFor { target: Target, down_ms: u16 },
    /// Messages between the two hosts are dropped for `ms`.
    PartitionFor { a: Target, b: Target, ms: u16 },
    /// For `ms`, messages may take up to 2.5 s: requests time out and
    /// arrive after newer ones (late heartbeats, overtaken reports).
    Stall { ms: u16 },
    /// Aimed at the tracker's heartbeat sequencing: once node `node` next
    /// stores a chunk, what it sends the trackers for the next second takes
    /// `ms` to arrive (its heartbeat times out and the next goes on a new
    /// connection), and the new chunk rots, so the scrubber removes it and
    /// a fresh heartbeat reports that before the held one, which still
    /// reports the chunk added, arrives overtaken.
    Lag { node: u8, ms: u16 },
    /// Node `node`'s disk misbehaves (see [`DiskAction`]); `n` is how long
    /// (ms), or which chunk rots.
    Disk { node: u8, what: DiskAction, n: u16 },
    /// The host stops at once (its disk survives).
    Crash(Target),
    /// A crashed host starts again on its disk.
    Restart(Target),
    /// Messages between the two hosts are dropped.
    Partition(Target, Target),
    /// Every partition heals.
    Heal,
    /// A fraction of messages (per mille) is lost, until the heal.
    Loss { per_mille: u16 },
    /// Messages take up to this long, until the heal.
    Latency { max_ms: u16 },
    /// Member `tracker` of the tracker group crashes, loses its disk and
    /// starts again on an empty one after `down_ms` (at most one a
    /// scenario: the others keep a majority with their disks).
    Wipe { tracker: u8, down_ms: u16 },
    /// Tracker `tracker` crashes in the middle of its next disk write
    /// (before the write's sync ends: the write is lost), and starts again
    /// after `down_ms`.
    CrashMidWrite { tracker: u8, down_ms: u16 },
    /// Every holder of the first chunk of `f{file}` crashes and loses its
    /// disk for good: the file is expected to be lost.
    DestroyHolders { file: u8 },
    /// One node holding the first chunk of `f{file}` (one of the holders
    /// that acknowledged it, while any is left) crashes and loses its disk
    /// for good. Self-healing must make the copy again elsewhere.
    LoseHolder { file: u8 },
}

/// A fault aimed at the two waits of a graceful leave. Neither excuses the
/// leave from its promise: the chunks it held end at their factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveAim {
    /// Just before the leave, a node sharing one of its chunks loses its
    /// disk for good: the tracker still counts it live, and the leave
    /// must not count on it.
    Crash,
    /// The first copy the leave hands over rots as soon as the tracker
    /// hears of it: the leave must not count it before its target has
    /// read it back.
    Rot,
}

impl Action {
    /// Whether a client performs it (the others are faults).
    pub fn is_client_op(&self) -> bool {
        self.client().is_some()
    }

    /// The client that performs it, if it is a client operation.
    pub fn client(&self) -> Option<u8> {
        match self {
            Action::Put { client, .. }
            | Action::Get { client, .. }
            | Action::Rm { client, .. }
            | Action::Ls { client }
            | Action::Forge { client, .. }
            | Action::Leave { client, .. } => Some(*client),
            _ => None,
        }
    }
}

/// How a disk misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskAction {
    /// One stored chunk that has an intact copy elsewhere rots (a byte
    /// flips): verify-on-read and the scrubber must find it.
    Rot,
    /// The disk is full: creates and writes fail with `ENOSPC`.
    Full,
    /// Reads fail with `EIO`.
    ReadErrors,
    /// Every operation takes this many more milliseconds.
    Slow(u16),
}

/// An action at a time (milliseconds of simulated time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_ms: u32,
    pub action: Action,
}

/// A whole run: the seed of every random choice, the cluster size and the steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: u8,
    /// 1: a single tracker; 3: a tracker group.
    pub trackers: u8,
    /// Puts replicate by fan-out (`fanout` in the plan), else by chains.
    pub fanout: bool,
    /// Node `i` is in zone `z{i % zones}` (`zones=K` in the plan); 0: every
    /// node a zone of its own.
    pub zones: u8,
    /// Each node's disk holds this many KiB of chunks (`capacity=K` in the
    /// plan); 0: no limit.
    pub capacity_kib: u16,
    pub steps: Vec<Step>,
}

/// Faults stop and heal by this time; then the checker runs.
pub const FAULT_WINDOW_MS: u32 = 3_000;

/// A lag holds a node's messages back longer than its heartbeat waits for
/// an answer (1 s), so the next heartbeat overtakes the held one.
pub const LAG_MIN_MS: u16 = 1_300;

/// A tracker or a node: what crashes. Trackers get their share in a
/// group, where they are several.
fn target(nodes: u8, trackers: u8) -> impl Strategy<Value = Target> {
    prop_oneof![
        u32::from(trackers) => (0..trackers).prop_map(Target::Tracker),
        6 => (0..nodes).prop_map(Target::Node),
    ]
}

/// Any host, clients included: what a partition can separate.
fn party(nodes: u8, trackers: u8) -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => target(nodes, trackers),
        1 => (0..CLIENTS).prop_map(Target::Client),
    ]
}

/// Kinds of operations and faults a scenario may use. Each scenario enables
/// a random subset (swarm testing: Groce et al., ISSTA 2012), so rare
/// combinations get their turn and each kind sometimes runs undiluted.
/// Puts and gets are always on: they are what the checker checks.
pub mod kind {
    pub const RM: u16 = 1 << 0;
    pub const LS: u16 = 1 << 1;
    pub const LEAVE: u16 = 1 << 2;
    pub const REPLACE: u16 = 1 << 3;
    pub const CRASH: u16 = 1 << 4;
    pub const PARTITION: u16 = 1 << 5;
    pub const LOSS: u16 = 1 << 6;
    pub const LATENCY: u16 = 1 << 7;
    pub const LOSE_HOLDER: u16 = 1 << 8;
    pub const DISK: u16 = 1 << 9;
    /// A tracker group of 3 instead of one tracker (and, with `CRASH`, a
    /// member wiped).
    pub const GROUP: u16 = 1 << 10;
    /// Clients send each chunk to its holders themselves (fan-out) instead
    /// of down a chain of them.
    pub const FANOUT: u16 = 1 << 11;
    /// Nodes in 2 or 3 zones: copies spread over zones, and spread again
    /// when a zone comes back.
    pub const ZONES: u16 = 1 << 12;
    /// Small disks (128 to 320 KiB of chunks): placement must respect
    /// room, and full nodes refuse uploads.
    pub const CAPACITY: u16 = 1 << 13;
    pub const ALL: u16 = (1 << 14) - 1;
}

fn weighted(choices: Vec<(u32, BoxedStrategy<Action>)>) -> BoxedStrategy<Action> {
    proptest::strategy::Union::new_weighted(choices).boxed()
}

/// File sizes from empty to 16 chunks of the simulator's 4 KiB.
fn size() -> impl Strategy<Value = u32> {
    prop_oneof![1 => Just(0u32), 3 => 1u32..4_096, 4 => 4_096u32..65_536]
}

/// One client operation of the kinds `kinds` enables.
fn client_op(kinds: u16) -> BoxedStrategy<Action> {
    let replace = kinds & kind::REPLACE != 0;
    // Mostly 3 copies, as users store; 1 copy sometimes (a lost holder is
    // then a lost file, which the checker must tell from a bug).
    let replicas = prop_oneof![1 => Just(1u8), 2 => Just(2u8), 4 => Just(3u8)];
    let put = (
        (0u8..4, size(), replicas, 0..CLIENTS),
        (0u8..2, any::<bool>()),
    )
        .prop_map(
            move |((file, size, replicas, client), (version, r))| Action::Put {
                file,
                size,
                replicas,
                client,
                version,
                replace: replace && r,
            },
        )
        .boxed();
    let get = (0u8..4, 0..CLIENTS)
        .prop_map(|(file, client)| Action::Get { file, client })
        .boxed();
    let mut choices = vec![(5, put), (4, get)];
    if kinds & kind::RM != 0 {
        let rm = (0u8..4, 0..CLIENTS).prop_map(|(file, client)| Action::Rm { file, client });
        choices.push((1, rm.boxed()));
    }
    if kinds & kind::LS != 0 {
        choices.push((
            1,
            (0..CLIENTS)
                .prop_map(|client| Action::Ls { client })
                .boxed(),
        ));
        // Listing and forging share a kind: both check what the tracker
        // shows and accepts.
        choices.push((
            1,
            (0u8..4, 0..CLIENTS)
                .prop_map(|(file, client)| Action::Forge { file, client })
                .boxed(),
        ));
    }
    weighted(choices)
}

/// One fault of the kinds `kinds` enables (at least one is).
fn fault(nodes: u8, kinds: u16) -> BoxedStrategy<Action> {
    let trackers = trackers_of(kinds);
    let mut choices: Vec<(u32, BoxedStrategy<Action>)> = Vec::new();
    if kinds & kind::CRASH != 0 {
        let crash = (target(nodes, trackers), 50u16..2_500)
            .prop_map(|(target, down_ms)| Action::CrashFor { target, down_ms });
        choices.push((3, crash.boxed()));
        if trackers > 1 {
            let wipe = (0..trackers, 50u16..2_000)
                .prop_map(|(tracker, down_ms)| Action::Wipe { tracker, down_ms });
            choices.push((1, wipe.boxed()));
        }
        let mid_write = (0..trackers, 50u16..1_500)
            .prop_map(|(tracker, down_ms)| Action::CrashMidWrite { tracker, down_ms });
        choices.push((1, mid_write.boxed()));
    }
    if kinds & kind::PARTITION != 0 {
        let part = (
            party(nodes, trackers),
            party(nodes, trackers),
            100u16..2_500,
        )
            .prop_filter("a host is never partitioned from itself", |(a, b, _)| {
                a != b
            })
            .prop_map(|(a, b, ms)| Action::PartitionFor { a, b, ms });
        choices.push((2, part.boxed()));
    }
    if kinds & kind::LOSS != 0 {
        let loss = (1u16..50).prop_map(|per_mille| Action::Loss { per_mille });
        choices.push((1, loss.boxed()));
    }
    if kinds & kind::LATENCY != 0 {
        let lat = (4u16..80).prop_map(|max_ms| Action::Latency { max_ms });
        choices.push((1, lat.boxed()));
        // Half the stalls are lags: the same draw, so other seeds keep
        // their scenarios.
        let stall = (50u16..600).prop_map(move |ms| {
            if ms % 2 == 0 {
                Action::Lag {
                    node: ((ms / 2) % u16::from(nodes)) as u8,
                    ms: LAG_MIN_MS + (ms * 7) % 1_000,
                }
            } else {
                Action::Stall { ms }
            }
        });
        choices.push((1, stall.boxed()));
    }
    if kinds & kind::LOSE_HOLDER != 0 {
        let lose = (0u8..4).prop_map(|file| Action::LoseHolder { file });
        choices.push((1, lose.boxed()));
    }
    if kinds & kind::DISK != 0 {
        let what = prop_oneof![
            3 => Just(DiskAction::Rot),
            1 => Just(DiskAction::Full),
            1 => Just(DiskAction::ReadErrors),
            1 => (5u16..60).prop_map(DiskAction::Slow),
        ];
        let disk = (0..nodes, what, 100u16..1_500).prop_map(|(node, what, n)| Action::Disk {
            node,
            what,
            n,
        });
        choices.push((3, disk.boxed()));
    }
    if kinds & kind::LEAVE != 0 {
        // One u32 draw, as `any::<bool>()` makes: `force` is the same bit
        // it was before aims existed, so older seeds keep their scenarios
        // but for the aims of half their graceful leaves.
        let leave = (0..nodes, 0..CLIENTS, any::<u32>()).prop_map(|(node, client, bits)| {
            let force = (bits as i32) < 0;
            let aim = match bits % 4 {
                _ if force => None,
                0 => Some(LeaveAim::Crash),
                1 => Some(LeaveAim::Rot),
                _ => None,
            };
            Action::Leave {
                node,
                client,
                force,
                aim,
            }
        });
        choices.push((1, leave.boxed()));
    }
    weighted(choices)
}

/// How many trackers scenarios of `kinds` run.
fn trackers_of(kinds: u16) -> u8 {
    if kinds & kind::GROUP != 0 { 3 } else { 1 }
}

impl Scenario {
    /// Random scenarios: 4 to 6 nodes; one tracker or a group of 3; a
    /// random subset of operation and fault kinds; 16 to 40 client
    /// operations and up to 8 faults in the fault window.
    pub fn strategy() -> impl Strategy<Value = Scenario> {
        (any::<u64>(), 4u8..=6, 0..=kind::ALL)
            .prop_flat_map(|(seed, nodes, kinds)| {
                let op = (0..FAULT_WINDOW_MS, client_op(kinds))
                    .prop_map(|(at_ms, action)| Step { at_ms, action });
                let faults = if kinds
                    & (kind::CRASH
                        | kind::PARTITION
                        | kind::LOSS
                        | kind::LATENCY
                        | kind::LOSE_HOLDER
                        | kind::DISK
                        | kind::LEAVE)
                    != 0
                {
                    let f = (0..FAULT_WINDOW_MS, fault(nodes, kinds))
                        .prop_map(|(at_ms, action)| Step { at_ms, action });
                    proptest::collection::vec(f, 1..8).boxed()
                } else {
                    Just(Vec::new()).boxed()
                };
                (
                    Just(seed),
                    Just(nodes),
                    Just(kinds),
                    proptest::collection::vec(op, 16..40),
                    faults,
                )
            })
            .prop_map(|(seed, nodes, kinds, ops, faults)| {
                let mut steps: Vec<Step> = ops.into_iter().chain(faults).collect();
                steps.sort_by_key(|s| s.at_ms);
                // One wiped tracker at most: with two, the group could lose
                // what only they had.
                let mut wiped = false;
                steps.retain(|s| {
                    !matches!(s.action, Action::Wipe { .. }) || !std::mem::replace(&mut wiped, true)
                });
                Scenario {
                    seed,
                    nodes,
                    trackers: trackers_of(kinds),
                    fanout: kinds & kind::FANOUT != 0,
                    zones: if kinds & kind::ZONES != 0 {
                        2 + (seed % 2) as u8
                    } else {
                        0
                    },
                    capacity_kib: if kinds & kind::CAPACITY != 0 {
                        128 + 64 * (seed / 2 % 4) as u16
                    } else {
                        0
                    },
                    steps,
                }
            })
    }

    /// The scenario `--seed S` runs: generated from the seed alone.
    pub fn from_seed(seed: u64) -> Scenario {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let mut s = Self::strategy()
            .new_tree(&mut runner)
            .expect("the scenario strategy never rejects")
            .current();
        s.seed = seed;
        s
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Put {
                file,
                size,
                replicas,
                client,
                version,
                replace,
            } => {
                write!(f, "put(f{file},{size},{replicas},client{client}")?;
                if *version != 0 || *replace {
                    write!(f, ",v{version}")?;
                }
                if *replace {
                    f.write_str(",replace")?;
                }
                f.write_str(")")
            }
            Action::Get { file, client } => write!(f, "get(f{file},client{client})"),
            Action::Rm { file, client } => write!(f, "rm(f{file},client{client})"),
            Action::Ls { client } => write!(f, "ls(client{client})"),
            Action::Forge { file, client } => write!(f, "forge(x{file},client{client})"),
            Action::Leave {
                node,
                client,
                force,
                aim,
            } => {
                write!(f, "leave(node{node},client{client}")?;
                f.write_str(match (force, aim) {
                    (true, _) => ",force)",
                    (false, Some(LeaveAim::Crash)) => ",crash)",
                    (false, Some(LeaveAim::Rot)) => ",rot)",
                    (false, None) => ")",
                })
            }
            Action::CrashFor { target, down_ms } => write!(f, "crash({target},{down_ms})"),
            Action::PartitionFor { a, b, ms } => write!(f, "partition({a},{b},{ms})"),
            Action::Stall { ms } => write!(f, "stall({ms})"),
            Action::Lag { node, ms } => write!(f, "lag(node{node},{ms})"),
            Action::Disk { node, what, n } => {
                let what = match what {
                    DiskAction::Rot => "rot".to_string(),
                    DiskAction::Full => "full".to_string(),
                    DiskAction::ReadErrors => "eio".to_string(),
                    DiskAction::Slow(ms) => format!("slow{ms}"),
                };
                write!(f, "disk(node{node},{what},{n})")
            }
            Action::Crash(t) => write!(f, "crash({t})"),
            Action::Restart(t) => write!(f, "restart({t})"),
            Action::Partition(a, b) => write!(f, "partition({a},{b})"),
            Action::Heal => write!(f, "heal()"),
            Action::Loss { per_mille } => write!(f, "loss({per_mille})"),
            Action::Latency { max_ms } => write!(f, "latency({max_ms})"),
            Action::Wipe { tracker, down_ms } => write!(f, "wipe(tracker{tracker},{down_ms})"),
            Action::CrashMidWrite { tracker, down_ms } => {
                write!(f, "crashwrite(tracker{tracker},{down_ms})")
            }
            Action::DestroyHolders { file } => write!(f, "destroy(f{file})"),
            Action::LoseHolder { file } => write!(f, "lose(f{file})"),
        }
    }
}

/// The one-line form printed by failing tests and read by `--plan`:
/// `seed=S nodes=N [trackers=3] [fanout] [zones=K] [capacity=KIB] 120:put(f0,9000,3) 300:crash(node1) ...`.
impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed={} nodes={}", self.seed, self.nodes)?;
        if self.trackers != 1 {
            write!(f, " trackers={}", self.trackers)?;
        }
        if self.fanout {
            write!(f, " fanout")?;
        }
        if self.zones > 0 {
            write!(f, " zones={}", self.zones)?;
        }
        if self.capacity_kib > 0 {
            write!(f, " capacity={}", self.capacity_kib)?;
        }
        for s in &self.steps {
            write!(f, " {}:{}", s.at_ms, s.action)?;
        }
        Ok(())
    }
}

fn parse_target(s: &str) -> Result<Target, String> {
    // Plans written before tracker groups name the one tracker `tracker`.
    if s == "tracker" {
        return Ok(Target::Tracker(0));
    }
    if let Some(n) = s.strip_prefix("tracker") {
        return n
            .parse()
            .map(Target::Tracker)
            .map_err(|_| format!("bad host {s:?}"));
    }
    if let Some(n) = s.strip_prefix("client") {
        return n
            .parse()
            .map(Target::Client)
            .map_err(|_| format!("bad host {s:?}"));
    }
    s.strip_prefix("node")
        .and_then(|n| n.parse().ok())
        .map(Target::Node)
        .ok_or_else(|| format!("bad host {s:?}"))
}

fn parse_client(s: &str) -> Result<u8, String> {
    match parse_target(s)? {
        Target::Client(c) if c < CLIENTS => Ok(c),
        _ => Err(format!("bad client {s:?}")),
    }
}

fn parse_file(s: &str) -> Result<u8, String> {
    s.strip_prefix('f')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad file {s:?}"))
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad number {s:?}"))
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s
            .split_once('(')
            .ok_or_else(|| format!("bad action {s:?}"))?;
        let args: Vec<&str> = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("bad action {s:?}"))?
            .split(',')
            .filter(|a| !a.is_empty())
            .collect();
        match (name, args.as_slice()) {
            ("put", [f, size, r, c, more @ ..]) if more.len() <= 2 => {
                let version = match more.first() {
                    Some(v) => parse_num(
                        v.strip_prefix('v')
                            .ok_or_else(|| format!("bad version {v:?}"))?,
                    )?,
                    None => 0,
                };
                let replace = match more.get(1) {
                    Some(&"replace") => true,
                    Some(w) => return Err(format!("bad put option {w:?}")),
                    None => false,
                };
                Ok(Action::Put {
                    file: parse_file(f)?,
                    size: parse_num(size)?,
                    replicas: parse_num(r)?,
                    client: parse_client(c)?,
                    version,
                    replace,
                })
            }
            ("rm", [f, c]) => Ok(Action::Rm {
                file: parse_file(f)?,
                client: parse_client(c)?,
            }),
            ("get", [f, c]) => Ok(Action::Get {
                file: parse_file(f)?,
                client: parse_client(c)?,
            }),
            ("crash", [t]) => Ok(Action::Crash(parse_target(t)?)),
            ("crash", [t, ms]) => Ok(Action::CrashFor {
                target: parse_target(t)?,
                down_ms: parse_num(ms)?,
            }),
            ("partition", [a, b, ms]) => Ok(Action::PartitionFor {
                a: parse_target(a)?,
                b: parse_target(b)?,
                ms: parse_num(ms)?,
            }),
            ("disk", [t, what, n]) => {
                let node = match parse_target(t)? {
                    Target::Node(i) => i,
                    _ => return Err(format!("bad node {t:?}")),
                };
                let what = match *what {
                    "rot" => DiskAction::Rot,
                    "full" => DiskAction::Full,
                    "eio" => DiskAction::ReadErrors,
                    w => DiskAction::Slow(parse_num(
                        w.strip_prefix("slow")
                            .ok_or_else(|| format!("bad disk fault {w:?}"))?,
                    )?),
                };
                Ok(Action::Disk {
                    node,
                    what,
                    n: parse_num(n)?,
                })
            }
            ("stall", [ms]) => Ok(Action::Stall { ms: parse_num(ms)? }),
            ("lag", [n, ms]) => match parse_target(n)? {
                Target::Node(node) => Ok(Action::Lag {
                    node,
                    ms: parse_num(ms)?,
                }),
                _ => Err(format!("bad node {n:?}")),
            },
            ("ls", [c]) => Ok(Action::Ls {
                client: parse_client(c)?,
            }),
            ("forge", [x, c]) => Ok(Action::Forge {
                file: parse_num(
                    x.strip_prefix('x')
                        .ok_or_else(|| format!("bad forged file {x:?}"))?,
                )?,
                client: parse_client(c)?,
            }),
            ("leave", [n, c, more @ ..]) if more.len() <= 1 => {
                let (force, aim) = match more.first() {
                    Some(&"force") => (true, None),
                    Some(&"crash") => (false, Some(LeaveAim::Crash)),
                    Some(&"rot") => (false, Some(LeaveAim::Rot)),
                    Some(w) => return Err(format!("bad leave option {w:?}")),
                    None => (false, None),
                };
                let node = match parse_target(n)? {
                    Target::Node(i) => i,
                    _ => return Err(format!("bad node {n:?}")),
                };
                Ok(Action::Leave {
                    node,
                    client: parse_client(c)?,
                    force,
                    aim,
                })
            }
            ("restart", [t]) => Ok(Action::Restart(parse_target(t)?)),
            ("partition", [a, b]) => Ok(Action::Partition(parse_target(a)?, parse_target(b)?)),
            ("heal", []) => Ok(Action::Heal),
            ("loss", [p]) => Ok(Action::Loss {
                per_mille: parse_num(p)?,
            }),
            ("latency", [m]) => Ok(Action::Latency {
                max_ms: parse_num(m)?,
            }),
            ("wipe", [t, ms]) => match parse_target(t)? {
                Target::Tracker(tracker) => Ok(Action::Wipe {
                    tracker,
                    down_ms: parse_num(ms)?,
                }),
                _ => Err(format!("bad tracker {t:?}")),
            },
            ("crashwrite", [t, ms]) => match parse_target(t)? {
                Target::Tracker(tracker) => Ok(Action::CrashMidWrite {
                    tracker,
                    down_ms: parse_num(ms)?,
                }),
                _ => Err(format!("bad tracker {t:?}")),
            },
            ("destroy", [f]) => Ok(Action::DestroyHolders {
                file: parse_file(f)?,
            }),
            ("lose", [f]) => Ok(Action::LoseHolder {
                file: parse_file(f)?,
            }),
            _ => Err(format!("bad action {s:?}")),
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut words = s.split_whitespace();
        let seed = words
            .next()
            .and_then(|w| w.strip_prefix("seed="))
            .ok_or("the plan starts with seed=S")?;
        let nodes = words
            .next()
            .and_then(|w| w.strip_prefix("nodes="))
            .ok_or("then nodes=N")?;
        let nodes: u8 = parse_num(nodes)?;
        if !(1..=16).contains(&nodes) {
            return Err("nodes must be 1..=16".into());
        }
        let mut words = words.peekable();
        let trackers = match words.next_if(|w| w.starts_with("trackers=")) {
            Some(w) => parse_num(&w["trackers=".len()..])?,
            None => 1,
        };
        if ![1, 3, 5].contains(&trackers) {
            return Err("trackers must be 1, 3 or 5".into());
        }
        let fanout = words.next_if(|w| *w == "fanout").is_some();
        let zones: u8 = match words.next_if(|w| w.starts_with("zones=")) {
            Some(w) => parse_num(&w["zones=".len()..])?,
            None => 0,
        };
        if zones > 16 {
            return Err("zones must be 0..=16".into());
        }
        let capacity_kib: u16 = match words.next_if(|w| w.starts_with("capacity=")) {
            Some(w) => parse_num(&w["capacity=".len()..])?,
            None => 0,
        };
        let steps = words
            .map(|w| {
                let (at, action) = w.split_once(':').ok_or_else(|| format!("bad step {w:?}"))?;
                Ok(Step {
                    at_ms: parse_num(at)?,
                    action: action.parse()?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let scenario = Scenario {
            seed: parse_num(seed)?,
            nodes,
            trackers,
            fanout,
            zones,
            capacity_kib,
            steps,
        };
        for s in &scenario.steps {
            let tracker = match s.action {
                Action::CrashFor {
                    target: Target::Tracker(i),
                    ..
                }
                | Action::Crash(Target::Tracker(i))
                | Action::Restart(Target::Tracker(i))
                | Action::Wipe { tracker: i, .. }
                | Action::CrashMidWrite { tracker: i, .. } => Some(i),
                Action::PartitionFor { a, b, .. } | Action::Partition(a, b) => {
                    [a, b].into_iter().find_map(|t| match t {
                        Target::Tracker(i) if i >= trackers => Some(i),
                        _ => None,
                    })
                }
                _ => None,
            };
            if tracker.is_some_and(|i| i >= trackers) {
                return Err(format!("{}: there are {trackers} trackers", s.action));
            }
            if matches!(s.action, Action::Wipe { .. }) && trackers == 1 {
                return Err("wipe needs a tracker group (trackers=3)".into());
            }
        }
        Ok(scenario)
    }
}
