//! The leave rule as a property, without the simulator: a leave driven as
//! a node drives it (rounds of begin, hand-overs, finish asked again every
//! heartbeat), in a cluster where a holder may have crashed a moment before,
//! another's copy may have rotted unnoticed and the first copy handed over
//! may rot at once, never goes through while
//! a chunk the leaving node held has fewer intact copies elsewhere than its
//! factor, and goes through when the others have room.

use super::*;
use proptest::prelude::*;

const NODES: usize = 6;
/// The tracker's default heartbeat interval, which its freshness and
/// heard-since rules are measured in.
const HB_MS: u64 = 1_000;
const STEP_MS: u64 = 10;
/// As the node: rounds, and idle waits of a heartbeat within a round.
const ROUNDS: u32 = 3;
const IDLE_WAITS_MAX: u32 = 3;

fn nid(i: usize) -> NodeId {
    NodeId::new(format!("n{i:02}")).unwrap()
}

#[derive(Debug, Clone)]
struct Case {
    replicas: u32,
    chunks: usize,
    /// One more copy of every chunk, on a node that does not
    /// hold it (a repair's, say): the leaver's copy is then not needed.
    surplus: bool,
    /// When (after every node heartbeats at 0) a holder other than the
    /// leaver crashes for good.
    crash_ms: Option<u64>,
    /// How long after the crash (or 0) the leave begins.
    leave_after_ms: u64,
    /// The first copy handed over rots as soon as it is written.
    rot_first: bool,
    /// Another holder's copy of the first chunk rotted before the leave,
    /// unnoticed.
    rot_kept: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u32..=3,
        1usize..4,
        any::<bool>(),
        proptest::option::of(0u64..HB_MS),
        0u64..3 * HB_MS,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(replicas, chunks, surplus, crash_ms, leave_after_ms, rot_first, rot_kept)| Case {
                replicas,
                chunks,
                surplus,
                crash_ms,
                leave_after_ms,
                rot_first,
                rot_kept,
            },
        )
}

/// The cluster as it is, beside the tracker's view of it.
struct World {
    t: Tracker,
    /// Intact copies, by chunk.
    real: BTreeMap<ChunkId, BTreeSet<NodeId>>,
    /// Copies that rotted: their node finds out when it reads them back.
    rotten: BTreeSet<(ChunkId, NodeId)>,
    /// Copies each node holds and has not reported yet.
    unreported: BTreeMap<NodeId, Vec<ChunkId>>,
    /// Verifications each node was asked for, answered with its next
    /// heartbeat.
    asked: BTreeMap<NodeId, Vec<ChunkId>>,
    crashed: Option<NodeId>,
}

impl World {
    /// `n` heartbeats at `now_ms`, answering what it was asked last time.
    fn heartbeat(&mut self, n: &NodeId, now_ms: u64) {
        let mut verified = Vec::new();
        let mut removed = Vec::new();
        for c in self.asked.remove(n).unwrap_or_default() {
            if self.rotten.remove(&(c, n.clone())) {
                removed.push(c);
            } else if self.real.get(&c).is_some_and(|h| h.contains(n)) {
                verified.push((c, 0));
            }
        }
        self.t.verified(n, &verified);
        let added = self.unreported.remove(n).unwrap_or_default();
        if let Ok(HeartbeatReply::Ok { commands }) = self.t.heartbeat(n, added, removed, now_ms) {
            for c in commands {
                if let NodeCommand::Verify { chunk } = c {
                    self.asked.entry(n.clone()).or_default().push(chunk);
                }
            }
        }
    }

    /// `target` stores a copy of `chunk` (rotten at once if `rot`).
    fn store(&mut self, chunk: ChunkId, target: &NodeId, rot: bool) {
        if rot {
            self.rotten.insert((chunk, target.clone()));
        } else {
            self.real.entry(chunk).or_default().insert(target.clone());
        }
        self.unreported
            .entry(target.clone())
            .or_default()
            .push(chunk);
    }
}

/// What the leave's driver does next.
enum Next {
    Begin {
        round: u32,
    },
    Finish {
        round: u32,
        idle: u32,
        fewest: usize,
    },
}

/// Drive `case`; returns whether the leave went through, after checking
/// the chunks the leaver held when it did.
fn drive(case: &Case) -> Result<bool, TestCaseError> {
    let mut t = Tracker::new(TrackerConfig::default());
    for i in 0..NODES {
        t.register(nid(i), format!("a{i}"), vec![], 0).unwrap();
    }
    let chunks: Vec<ChunkId> = (0..case.chunks)
        .map(|i| ChunkId::of(format!("c{i}").as_bytes()))
        .collect();
    let m = Manifest::new(
        "f".into(),
        case.chunks as u64 * 1024,
        1024,
        case.replicas,
        chunks.clone(),
    )
    .unwrap();
    let placement = t
        .allocate(case.chunks as u64, case.replicas, &BTreeSet::new())
        .unwrap();
    let holders: Vec<Vec<NodeId>> = placement
        .iter()
        .map(|p| p.iter().map(|r| r.id.clone()).collect())
        .collect();
    t.commit(m, holders.clone()).unwrap();
    let mut w = World {
        t,
        real: BTreeMap::new(),
        rotten: BTreeSet::new(),
        unreported: BTreeMap::new(),
        asked: BTreeMap::new(),
        crashed: None,
    };
    for (c, hs) in chunks.iter().zip(&holders) {
        w.real.insert(*c, hs.iter().cloned().collect());
    }
    let leaver = holders[0][0].clone();
    if case.surplus {
        for (c, hs) in chunks.iter().zip(&holders) {
            let extra = (0..NODES).map(nid).find(|n| !hs.contains(n)).unwrap();
            w.store(*c, &extra, false);
        }
    }
    for i in 0..NODES {
        w.heartbeat(&nid(i), 0);
    }
    let held: BTreeSet<ChunkId> = w
        .real
        .iter()
        .filter(|(_, h)| h.contains(&leaver))
        .map(|(c, _)| *c)
        .collect();
    let victim = w.real[&chunks[0]].iter().find(|n| **n != leaver).cloned();
    if case.rot_kept {
        let keeper = w.real[&chunks[0]]
            .iter()
            .find(|n| **n != leaver && Some(*n) != victim.as_ref())
            .cloned();
        if let Some(k) = keeper {
            w.real.get_mut(&chunks[0]).unwrap().remove(&k);
            w.rotten.insert((chunks[0], k));
        }
    }
    let crash_at = case.crash_ms.filter(|_| victim.is_some());
    let begin_at = crash_at.unwrap_or(0) + case.leave_after_ms + STEP_MS;
    let mut next = (begin_at, Next::Begin { round: 0 });
    let mut rot_pending = case.rot_first;
    let end = begin_at + 40 * HB_MS;
    let mut now = STEP_MS;
    while now < end {
        if crash_at.is_some_and(|c| now >= c) && w.crashed.is_none() {
            let v = victim.clone().unwrap();
            for h in w.real.values_mut() {
                h.remove(&v);
            }
            w.crashed = Some(v);
        }
        // Every live node but the leaver heartbeats on its own phase.
        for i in 0..NODES {
            let n = nid(i);
            if n != leaver
                && w.crashed.as_ref() != Some(&n)
                && now % HB_MS == (i as u64 * 170) % HB_MS
            {
                w.heartbeat(&n, now);
            }
        }
        if now >= next.0 {
            next = match next.1 {
                Next::Begin { round } if round >= ROUNDS => return Ok(false),
                Next::Begin { round } => {
                    let Ok(handoffs) = w.t.begin_leave(&leaver, false, now) else {
                        return Ok(false);
                    };
                    let mut handed = Vec::new();
                    for h in handoffs {
                        w.store(h.chunk, &h.target.id, rot_pending);
                        rot_pending = false;
                        handed.push((h.chunk, h.target.id));
                    }
                    let still = w.t.finish_leave(&leaver, handed, false, now).unwrap();
                    if still.is_empty() {
                        break;
                    }
                    let fewest = still.len();
                    (
                        now + HB_MS,
                        Next::Finish {
                            round,
                            idle: 0,
                            fewest,
                        },
                    )
                }
                Next::Finish {
                    round,
                    idle,
                    fewest,
                } => {
                    let still = w.t.finish_leave(&leaver, vec![], false, now).unwrap();
                    if still.is_empty() {
                        break;
                    }
                    let idle = if still.len() < fewest { 0 } else { idle + 1 };
                    let fewest = fewest.min(still.len());
                    if idle >= IDLE_WAITS_MAX {
                        (now, Next::Begin { round: round + 1 })
                    } else {
                        (
                            now + HB_MS,
                            Next::Finish {
                                round,
                                idle,
                                fewest,
                            },
                        )
                    }
                }
            };
        }
        now += STEP_MS;
    }
    prop_assert!(now < end, "the leave neither went through nor gave up");
    for c in &held {
        let intact = w.real[c].iter().filter(|n| **n != leaver).count();
        prop_assert!(
            intact >= case.replicas as usize,
            "{leaver} left with chunk {c:?} at {intact} intact copies elsewhere, factor {}",
            case.replicas
        );
    }
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn a_graceful_leave_keeps_what_it_held_at_its_factor(case in case()) {
        // Six nodes, at most one crashed: always room for the hand-overs.
        prop_assert!(drive(&case)?, "the leave did not go through: {case:?}");
    }
}
