//! Repair, trimming and deletion, driven through a small model of nodes
//! that do exactly what the tracker asks.

use super::*;
use proptest::prelude::*;

pub(super) fn nid(i: usize) -> NodeId {
    NodeId::new(format!("n{i:02}")).unwrap()
}

/// Put a file of `n` 1 KiB chunks, their content named `{tag}{i}`, where
/// the tracker allocates: `store` puts each copy on its node's disk, then
/// the file is committed with those holders.
pub(super) fn put_allocated(
    t: &mut Tracker,
    name: &str,
    tag: &str,
    n: usize,
    replicas: u32,
    mut store: impl FnMut(&NodeId, ChunkId),
) -> Manifest {
    let chunks: Vec<ChunkId> = (0..n)
        .map(|i| ChunkId::of(format!("{tag}{i}").as_bytes()))
        .collect();
    let m = Manifest::new(name.into(), n as u64 * 1024, 1024, replicas, chunks).unwrap();
    let placement = t.allocate(n as u64, replicas, &BTreeSet::new()).unwrap();
    let mut holders = Vec::new();
    for (c, p) in m.chunks.iter().zip(&placement) {
        for r in p {
            store(&r.id, *c);
        }
        holders.push(p.iter().map(|r| r.id.clone()).collect());
    }
    t.commit(m.clone(), holders).unwrap();
    m
}

/// Nodes that hold chunks, heartbeat and obey commands.
struct World {
    t: Tracker,
    held: BTreeMap<NodeId, BTreeSet<ChunkId>>,
    added: BTreeMap<NodeId, Vec<ChunkId>>,
    removed: BTreeMap<NodeId, Vec<ChunkId>>,
    /// Copies found intact on request, to say so with the next heartbeat
    /// (these nodes never number their heartbeats: all are number 0).
    verified: BTreeMap<NodeId, Vec<(ChunkId, u64)>>,
    down: BTreeSet<NodeId>,
    now: u64,
    /// Repair commands executed so far.
    copies: usize,
}

impl World {
    fn new(n: usize, config: TrackerConfig) -> Self {
        let mut t = Tracker::new(config);
        let mut held = BTreeMap::new();
        for i in 0..n {
            t.register(nid(i), format!("a{i}"), vec![], 0).unwrap();
            held.insert(nid(i), BTreeSet::new());
        }
        Self {
            t,
            held,
            added: BTreeMap::new(),
            removed: BTreeMap::new(),
            verified: BTreeMap::new(),
            down: BTreeSet::new(),
            now: 0,
            copies: 0,
        }
    }

    /// Put a file of `n` chunks (content named by `tag`) where the tracker says.
    fn put(&mut self, name: &str, tag: &str, n: usize, replicas: u32) -> Manifest {
        let held = &mut self.held;
        put_allocated(&mut self.t, name, tag, n, replicas, |node, c| {
            held.get_mut(node).unwrap().insert(c);
        })
    }

    fn kill(&mut self, i: usize) {
        self.down.insert(nid(i));
    }

    /// One heartbeat interval: tick, then every live node heartbeats and
    /// carries out its commands.
    fn round(&mut self) {
        self.now += 1_000;
        self.t.tick(self.now);
        let ids: Vec<NodeId> = self.held.keys().cloned().collect();
        for id in ids {
            if self.down.contains(&id) {
                continue;
            }
            let added = self.added.remove(&id).unwrap_or_default();
            let removed = self.removed.remove(&id).unwrap_or_default();
            let verified = self.verified.remove(&id).unwrap_or_default();
            self.t.verified(&id, &verified);
            let reply = self.t.heartbeat(&id, added, removed, self.now).unwrap();
            let HeartbeatReply::Ok { commands } = reply else {
                let all = self.held[&id].iter().copied().collect();
                self.t
                    .register(id.clone(), "x".into(), all, self.now)
                    .unwrap();
                continue;
            };
            for c in commands {
                match c {
                    NodeCommand::Replicate { chunk, target, .. } => {
                        assert!(self.held[&id].contains(&chunk), "source must hold it");
                        assert_ne!(target.id, id);
                        if !self.down.contains(&target.id)
                            && self.held.get_mut(&target.id).unwrap().insert(chunk)
                        {
                            // Every other copy is confirmed by the source at
                            // once; the rest wait for the target's report.
                            if self.copies.is_multiple_of(2) {
                                assert!(self.t.repair_done(&id, &chunk, &target.id));
                            }
                            self.added.entry(target.id).or_default().push(chunk);
                            self.copies += 1;
                        }
                    }
                    NodeCommand::Delete { chunk } => {
                        // Confirmed whether or not it was there, as a node does.
                        self.held.get_mut(&id).unwrap().remove(&chunk);
                        self.removed.entry(id.clone()).or_default().push(chunk);
                    }
                    NodeCommand::Verify { chunk } => {
                        if self.held[&id].contains(&chunk) {
                            self.verified
                                .entry(id.clone())
                                .or_default()
                                .push((chunk, 0));
                        }
                    }
                }
            }
        }
        while self.t.poll_record().is_some() {}
        if let Err(e) = self.t.audit() {
            panic!("incremental state differs from a recomputation: {e}");
        }
    }

    /// Live copies of `chunk`, counted on the nodes themselves.
    fn copies_of(&self, chunk: &ChunkId) -> usize {
        self.held
            .iter()
            .filter(|(n, h)| !self.down.contains(*n) && h.contains(chunk))
            .count()
    }

    fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.round();
        }
    }
}

fn fast() -> TrackerConfig {
    TrackerConfig {
        dead_after_ms: 3_000,
        ..TrackerConfig::default()
    }
}

// A dead holder's chunks are copied back to R live nodes, and the tracker's
// counters agree with what the nodes hold.
#[test]
fn repair_restores_factor_after_a_death() {
    let mut w = World::new(5, fast());
    let m = w.put("f", "f", 6, 3);
    w.kill(0);
    w.settle(10);
    for c in &m.chunks {
        assert_eq!(w.copies_of(c), 3, "chunk {c}");
    }
    let s = w.t.status(w.now);
    assert_eq!(
        (s.under_replicated, s.repair_queue, s.repairs_in_flight),
        (0, 0, 0)
    );
    assert!(s.at_risk.is_empty());
    assert!(w.copies > 0);
}

// Chunks with two copies left wait the grace period; one copy left is urgent.
#[test]
fn grace_delays_only_chunks_with_two_copies() {
    let config = TrackerConfig {
        repair_grace_ms: 20_000,
        ..fast()
    };
    let mut w = World::new(4, config);
    let m = w.put("f", "f", 4, 3);
    w.kill(0);
    w.settle(6);
    let s = w.t.status(w.now);
    assert_eq!(w.copies, 0, "nothing repaired inside the grace period");
    assert_eq!(s.repair_queue, s.under_replicated);
    assert!(s.under_replicated > 0);
    assert_eq!(s.at_risk[0].name, "f");
    assert_eq!(s.at_risk[0].min_copies, 2);
    // Losing a second holder makes chunks with one copy left urgent.
    w.kill(1);
    w.settle(5);
    let single: Vec<&ChunkId> = m
        .chunks
        .iter()
        .filter(|c| !w.held[&nid(0)].contains(c) || !w.held[&nid(1)].contains(c))
        .collect();
    assert!(w.copies > 0);
    for c in &m.chunks {
        assert!(
            w.copies_of(c) >= 2,
            "chunk {c} was not repaired from one copy"
        );
    }
    assert!(!single.is_empty());
    // After the grace period everything is back at 2 = the live nodes left.
    w.settle(25);
    for c in &m.chunks {
        assert_eq!(w.copies_of(c), 2);
    }
}

// No node takes part in more repairs at once than its budget.
#[test]
fn repairs_respect_the_per_node_budget() {
    let config = TrackerConfig {
        repairs_per_node: 2,
        ..fast()
    };
    let mut w = World::new(6, config);
    w.put("f", "f", 30, 3);
    w.kill(0);
    for _ in 0..6 {
        w.round();
    }
    // Stop executing: look at what is planned.
    w.t.tick(w.now + 1);
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for r in w.t.repairs() {
        *load.entry(r.source).or_default() += 1;
        *load.entry(r.target).or_default() += 1;
    }
    assert!(!load.is_empty());
    assert!(load.values().all(|&l| l <= 2), "{load:?}");
    w.settle(40);
    assert_eq!(w.t.status(w.now).under_replicated, 0);
}

// A node that comes back after its chunks were repaired makes them
// over-replicated: the surplus copies are deleted, down to exactly R.
#[test]
fn copies_above_the_factor_are_trimmed() {
    let mut w = World::new(5, fast());
    let m = w.put("f", "f", 5, 3);
    w.kill(0);
    w.settle(10);
    w.down.clear();
    // Trims wait for the keepers' next two reports.
    w.settle(8);
    for c in &m.chunks {
        assert_eq!(w.copies_of(c), 3, "chunk {c}");
    }
    assert_eq!(w.t.status(w.now).deletes_pending, 0);
}

// Removing a file deletes the chunks only it used; shared chunks stay.
#[test]
fn remove_deletes_unshared_chunks() {
    let mut w = World::new(4, fast());
    let a = w.put("a", "x", 3, 3);
    let b = w.put("b", "x", 2, 2); // shares a's first two chunks
    w.settle(1);
    w.t.remove("a").unwrap();
    assert!(matches!(
        w.t.poll_record(),
        Some(Record::FileRemoved { name }) if name == "a"
    ));
    assert_eq!(w.t.remove("a"), Err(TrackerError::UnknownFile("a".into())));
    // Deletions go at once; trims once the surplus has lasted dead-after.
    w.settle(6);
    assert_eq!(w.copies_of(&a.chunks[2]), 0, "a's own chunk is gone");
    for c in &b.chunks {
        // b needs 2; a's higher factor no longer applies, so one is trimmed.
        assert_eq!(w.copies_of(c), 2);
    }
    assert_eq!(w.t.files().len(), 1);
    assert_eq!(w.t.status(w.now).chunks, 2);
}

// A holder that was down when its file was removed deletes its copies once
// it is back, without waiting for the orphan grace.
#[test]
fn removed_files_copies_go_from_holders_that_come_back() {
    let mut w = World::new(3, fast());
    let a = w.put("a", "x", 2, 3);
    w.kill(2);
    w.settle(5);
    w.t.remove("a").unwrap();
    w.settle(2);
    for c in &a.chunks {
        assert!(w.held[&nid(2)].contains(c), "down, so not told yet");
        assert_eq!(w.copies_of(c), 0);
    }
    w.down.clear();
    w.settle(3);
    for c in &a.chunks {
        assert!(!w.held[&nid(2)].contains(c), "deleted once back");
    }
}

// A put that stored a chunk on a node just told to delete it does not count
// that node when it commits.
#[test]
fn commit_ignores_holders_told_to_delete() {
    let mut w = World::new(3, fast());
    let a = w.put("a", "x", 1, 3);
    w.t.remove("a").unwrap();
    w.settle(1); // deletes sent
    let again = Manifest::new("b".into(), 1024, 1024, 3, a.chunks.clone()).unwrap();
    let holders = vec![vec![nid(0), nid(1), nid(2)]];
    assert!(matches!(
        w.t.commit(again, holders),
        Err(TrackerError::NotEnoughHolders { acked: 0, .. })
    ));
}

// A copy the source reports as failed is planned again at the next tick,
// not after the repair timeout.
#[test]
fn failed_copy_is_replanned_at_once() {
    let mut w = World::new(5, fast());
    w.put("f", "f", 1, 3);
    w.kill(0);
    w.now = 10_000;
    for i in 1..5 {
        w.t.heartbeat(&nid(i), vec![], vec![], w.now).unwrap();
    }
    w.t.tick(w.now);
    let planned = w.t.repairs();
    let Some(first) = planned.first().cloned() else {
        // n00 held no chunk of f: nothing to repair.
        assert_eq!(w.t.status(w.now).under_replicated, 0);
        return;
    };
    w.t.repair_failed(&first.source, &first.chunk, &first.target);
    assert!(
        w.t.repairs()
            .iter()
            .all(|r| r.target != first.target || r.chunk != first.chunk)
    );
    w.t.tick(w.now + 1);
    assert_eq!(w.t.repairs().len(), planned.len());
}

// A forced leave removes the node even when its chunks cannot all move.
#[test]
fn forced_leave_goes_anyway() {
    let mut w = World::new(3, fast());
    w.put("f", "f", 1, 3);
    assert!(w.t.begin_leave(&nid(0), false, 1).is_err());
    assert_eq!(w.t.begin_leave(&nid(0), true, 1).unwrap(), vec![]);
    assert_eq!(w.t.finish_leave(&nid(0), vec![], true, 1).unwrap(), vec![]);
    assert_eq!(w.t.status(1).nodes.len(), 2);
    assert_eq!(w.t.status(1).under_replicated, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    // Repair converges: after any set of deaths that leaves every chunk a
    // live copy, every chunk gets back to min(R, live nodes) copies on
    // distinct live nodes, and nothing with a live copy is lost.
    #[test]
    fn repair_converges(
        n_nodes in 3usize..9,
        files in proptest::collection::vec((0usize..6, 1u32..4), 1..5),
        kills in proptest::collection::vec(0usize..9, 0..4),
        grace in prop_oneof![Just(0u64), Just(5_000)],
        budget in 1usize..4,
    ) {
        let config = TrackerConfig { repair_grace_ms: grace, repairs_per_node: budget, ..fast() };
        let mut w = World::new(n_nodes, config);
        let mut manifests = Vec::new();
        for (i, (n, r)) in files.iter().enumerate() {
            let r = (*r).min(n_nodes as u32);
            manifests.push(w.put(&format!("f{i}"), &format!("c{i}"), *n, r));
        }
        for k in kills {
            let k = k % n_nodes;
            // Kill only if every chunk keeps a live copy, then let repair run.
            let mut down = w.down.clone();
            down.insert(nid(k));
            let safe = manifests.iter().flat_map(|m| &m.chunks).all(|c| {
                w.held.iter().any(|(n, h)| !down.contains(n) && h.contains(c))
            });
            if safe {
                w.kill(k);
            }
            w.round();
        }
        let live = n_nodes - w.down.len();
        w.settle(60);
        for m in &manifests {
            let want = (m.replicas as usize).min(live);
            for c in &m.chunks {
                prop_assert_eq!(w.copies_of(c), want, "chunk {} of {}", c, m.name);
            }
        }
        prop_assert_eq!(w.t.status(w.now).repairs_in_flight, 0);
    }
}

// ------------------------------------------------------------ zones, room

impl World {
    fn zone(&mut self, i: usize, zone: &str) {
        self.t.set_zone(&nid(i), Some(zone)).unwrap();
    }

    /// Node `i` comes back with an empty disk.
    fn revive_wiped(&mut self, i: usize) {
        self.down.remove(&nid(i));
        self.held.insert(nid(i), BTreeSet::new());
        self.t
            .register(nid(i), format!("a{i}"), vec![], self.now)
            .unwrap();
    }

    /// The zones of `chunk`'s live copies, counted on the nodes.
    fn zones_of(&self, chunk: &ChunkId, zone: impl Fn(usize) -> usize) -> Vec<usize> {
        let mut z: Vec<usize> = (0..self.held.len())
            .filter(|&i| !self.down.contains(&nid(i)) && self.held[&nid(i)].contains(chunk))
            .map(zone)
            .collect();
        z.sort();
        z
    }
}

// Three zones of two nodes: every chunk has one copy in each zone. A whole
// zone dies: every chunk still has two copies and goes back to three (two
// zones only: one shares). The zone comes back empty: each chunk gets a
// copy there and loses the one in the crowded zone.
#[test]
fn zones_hold_one_copy_each_and_are_restored_after_a_zone_returns() {
    let mut w = World::new(6, fast());
    let zone = |i: usize| i / 2;
    for i in 0..6 {
        w.zone(i, &format!("z{}", zone(i)));
    }
    let m = w.put("f", "f", 12, 3);
    for c in &m.chunks {
        assert_eq!(w.zones_of(c, zone), vec![0, 1, 2], "chunk {c}");
    }
    w.kill(0);
    w.kill(1);
    w.settle(12);
    for c in &m.chunks {
        let z = w.zones_of(c, zone);
        assert_eq!(z.len(), 3, "chunk {c} back at its factor: {z:?}");
        assert!(!z.contains(&0));
    }
    assert_eq!(w.t.heal_counters().spread_moves, 0);
    w.revive_wiped(0);
    w.revive_wiped(1);
    w.zone(0, "z0");
    w.zone(1, "z0");
    w.settle(30);
    for c in &m.chunks {
        assert_eq!(w.zones_of(c, zone), vec![0, 1, 2], "chunk {c} spread again");
    }
    assert_eq!(w.t.heal_counters().spread_moves, 12);
    let s = w.t.status(w.now);
    assert_eq!((s.under_replicated, s.repairs_in_flight), (0, 0));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

// A leaving node's copies go to a zone that has none yet.
#[test]
fn hand_off_goes_to_another_zone() {
    let mut w = World::new(4, fast());
    // n00 and n01 in zone a, n02 in b, n03 in c; the least loaded node of
    // all is n01, which shares n00's zone.
    for (i, z) in ["a", "a", "b", "c"].iter().enumerate() {
        w.zone(i, z);
    }
    let c = ChunkId::of(b"h");
    let m = Manifest::new("h".into(), 1024, 1024, 2, vec![c]).unwrap();
    for n in [0, 2] {
        w.held.get_mut(&nid(n)).unwrap().insert(c);
    }
    w.t.commit(m, vec![vec![nid(0), nid(2)]]).unwrap();
    for i in [2, 3] {
        let more = ChunkId::of(format!("load{i}").as_bytes());
        w.t.heartbeat(&nid(i), vec![more], vec![], 0).unwrap();
    }
    let handoffs = w.t.begin_leave(&nid(2), false, 0).unwrap();
    assert_eq!(handoffs.len(), 1);
    assert_eq!(handoffs[0].target.id, nid(3), "zone c has no copy yet");
}

// A node with room for two chunks gets two; when too few nodes have room
// for a chunk, the put is refused with the reason.
#[test]
fn placement_never_passes_a_node_s_room() {
    let mut w = World::new(4, fast());
    w.t.set_space(
        &nid(0),
        Space {
            used_bytes: 1000,
            capacity_bytes: 1000 + 2 * 1024,
        },
    );
    let p = w.t.allocate_sized(6, 3, 1024, &BTreeSet::new()).unwrap();
    let on_0 = p.iter().flatten().filter(|r| r.id == nid(0)).count();
    assert_eq!(on_0, 2, "{p:?}");
    // Now n00 is full (its placements count until it reports again).
    for i in 1..4 {
        w.t.set_space(
            &nid(i),
            Space {
                used_bytes: 0,
                capacity_bytes: 100,
            },
        );
    }
    let e =
        w.t.allocate_sized(1, 3, 1024, &BTreeSet::new())
            .unwrap_err();
    assert_eq!(
        e,
        TrackerError::NoRoom {
            wanted: 3,
            available: 0,
            chunk_bytes: 1024
        }
    );
    assert!(e.to_string().starts_with("no room"), "{e}");
    // The others (300 bytes free) could not take n00's 1000 if it died.
    let w = w.t.status(0).warnings;
    assert!(
        w.contains(&Warning::NoRoomToRepair {
            node: nid(0),
            used_bytes: 1000,
            spare_bytes: 300
        }),
        "{w:?}"
    );
}

// What-if: which files would be lost or at risk if some nodes died now.
#[test]
fn what_if_names_lost_and_at_risk_files() {
    let mut w = World::new(3, fast());
    let c = |s: &str| ChunkId::of(s.as_bytes());
    let put = |w: &mut World, name: &str, holders: &[usize], replicas: u32| {
        let m = Manifest::new(name.into(), 1024, 1024, replicas, vec![c(name)]).unwrap();
        for &i in holders {
            w.held.get_mut(&nid(i)).unwrap().insert(c(name));
        }
        w.t.commit(m, vec![holders.iter().map(|&i| nid(i)).collect()])
            .unwrap();
    };
    put(&mut w, "all3", &[0, 1, 2], 3);
    assert_eq!(
        w.t.status(0).warnings,
        vec![Warning::FewNodes {
            live: 3,
            replicas: 3
        }]
    );
    put(&mut w, "on01", &[0, 1], 2);
    put(&mut w, "on12", &[1, 2], 2);
    let ids = |v: &[usize]| v.iter().map(|&i| nid(i)).collect::<BTreeSet<_>>();
    let r = w.t.what_if(&ids(&[0])).unwrap();
    assert_eq!(r.lost, Vec::<String>::new());
    assert_eq!(r.at_risk, vec!["all3", "on01"]);
    let r = w.t.what_if(&ids(&[0, 1])).unwrap();
    assert_eq!(r.lost, vec!["on01"]);
    assert_eq!(r.at_risk, vec!["all3", "on12"]);
    let r = w.t.what_if(&ids(&[])).unwrap();
    assert_eq!(r, WhatIf::default());
    assert!(w.t.what_if(&[NodeId::new("zz").unwrap()].into()).is_err());
    // A node already dead counts as dead.
    w.kill(2);
    w.settle(5);
    let r = w.t.what_if(&ids(&[0])).unwrap();
    assert!(r.lost.is_empty(), "repair has run: {r:?}");
}
