use super::*;
use proptest::prelude::*;

fn nid(i: usize) -> NodeId {
    NodeId::new(format!("n{i:02}")).unwrap()
}

fn cluster(n: usize) -> Tracker {
    let mut t = Tracker::new(TrackerConfig::default());
    for i in 0..n {
        t.register(nid(i), format!("127.0.0.1:{}", 7000 + i), vec![], 0)
            .unwrap();
    }
    while t.poll_record().is_some() {}
    t
}

fn manifest(name: &str, n_chunks: usize, replicas: u32) -> Manifest {
    let chunks = (0..n_chunks)
        .map(|i| ChunkId::of(format!("{name}{i}").as_bytes()))
        .collect();
    Manifest::new(name.into(), n_chunks as u64 * 1024, 1024, replicas, chunks).unwrap()
}

fn put(t: &mut Tracker, name: &str, n_chunks: usize, replicas: u32) -> Manifest {
    let m = manifest(name, n_chunks, replicas);
    let placement = t
        .allocate(n_chunks as u64, replicas, &BTreeSet::new())
        .unwrap();
    let holders = placement
        .iter()
        .map(|p| p.iter().map(|r| r.id.clone()).collect())
        .collect();
    t.commit(m.clone(), holders).unwrap();
    m
}

// Asking for more replicas than live nodes is a clear error, not a short placement.
#[test]
fn allocate_refuses_when_too_few_nodes() {
    let mut t = cluster(2);
    assert_eq!(
        t.allocate(1, 3, &BTreeSet::new()),
        Err(TrackerError::NotEnoughNodes {
            wanted: 3,
            available: 2
        })
    );
    assert!(matches!(
        t.allocate(1, 0, &BTreeSet::new()),
        Err(TrackerError::Manifest(_))
    ));
    // A dead node is not eligible.
    let mut t = cluster(3);
    t.heartbeat(&nid(0), vec![], vec![], 20_000).unwrap();
    t.heartbeat(&nid(1), vec![], vec![], 20_000).unwrap();
    assert_eq!(t.tick(20_000), vec![nid(2)]);
    assert!(t.allocate(1, 3, &BTreeSet::new()).is_err());
    assert!(t.allocate(1, 2, &BTreeSet::new()).is_ok());
}

// Placement spreads chunks evenly over equally loaded nodes.
#[test]
fn allocate_balances_load() {
    let mut t = cluster(4);
    let p = t.allocate(4, 3, &BTreeSet::new()).unwrap();
    let mut per_node = BTreeMap::new();
    for ids in &p {
        for r in ids {
            *per_node.entry(r.id.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3, 3]
    );
}

// A commit is a durable record, and restoring the records gives back the file.
#[test]
fn commit_emits_record_and_restore_rebuilds() {
    let mut t = cluster(3);
    let m = put(&mut t, "a", 2, 3);
    let rec = t.poll_record().unwrap();
    assert!(matches!(&rec, Record::FileCommitted { manifest, .. } if *manifest == m));
    assert_eq!(t.poll_record(), None);
    let joined = (0..3).map(|i| Record::NodeJoined {
        id: nid(i),
        addr: format!("127.0.0.1:{}", 7000 + i),
    });
    let restored = Tracker::restore(TrackerConfig::default(), joined.chain([rec]));
    let loc = restored.locate("a").unwrap();
    assert_eq!(loc.manifest, m);
    // Restored nodes are suspects until they report again.
    assert!(
        loc.locations
            .iter()
            .all(|l| l.live.is_empty() && l.suspect.len() == 3)
    );
    assert_eq!(restored.files().len(), 1);
}

// After a restart the tracker asks every node for its full inventory.
#[test]
fn restored_nodes_must_reregister() {
    let joined = Record::NodeJoined {
        id: nid(0),
        addr: "127.0.0.1:1".into(),
    };
    let mut t = Tracker::restore(TrackerConfig::default(), [joined]);
    assert_eq!(
        t.heartbeat(&nid(0), vec![], vec![], 5).unwrap(),
        HeartbeatReply::Reregister
    );
    t.register(nid(0), "127.0.0.1:1".into(), vec![], 6).unwrap();
    assert!(matches!(
        t.heartbeat(&nid(0), vec![], vec![], 7).unwrap(),
        HeartbeatReply::Ok { .. }
    ));
    assert_eq!(
        t.heartbeat(&nid(9), vec![], vec![], 7).unwrap(),
        HeartbeatReply::Reregister
    );
}

// Commit needs R distinct registered holders for every chunk; names are unique.
#[test]
fn commit_checks_holders_and_names() {
    let mut t = cluster(3);
    let m = manifest("f", 2, 2);
    let short = vec![vec![nid(0), nid(1)], vec![nid(0), nid(0)]];
    assert!(matches!(
        t.commit(m.clone(), short),
        Err(TrackerError::NotEnoughHolders {
            chunk: 1,
            acked: 1,
            wanted: 2,
            unconfirmed: 0,
        })
    ));
    let ghost = vec![vec![nid(0), nid(1)], vec![nid(0), nid(7)]];
    assert!(t.commit(m.clone(), ghost).is_err());
    let ok = vec![vec![nid(0), nid(1)], vec![nid(1), nid(2)]];
    let h = t.commit(m.clone(), ok.clone()).unwrap();
    assert_eq!(
        t.commit(m.clone(), ok.clone()),
        Ok(h),
        "same commit twice is idempotent"
    );
    let mut other = manifest("f", 1, 2);
    other.chunks[0] = ChunkId::of(b"other");
    assert_eq!(
        t.commit(other, vec![ok[0].clone()]),
        Err(TrackerError::FileExists("f".into()))
    );
}

// Killing holders shows up as under-replicated and lost chunks, and in locate.
#[test]
fn status_counts_under_replicated_and_lost() {
    let mut t = cluster(3);
    put(&mut t, "f", 2, 3);
    assert_eq!(t.status(0).under_replicated, 0);
    t.heartbeat(&nid(0), vec![], vec![], 11_000).unwrap();
    t.tick(11_000);
    let s = t.status(11_000);
    assert_eq!((s.under_replicated, s.lost), (2, 0));
    assert_eq!(t.files()[0].under_replicated, 2);
    t.tick(30_000);
    let s = t.status(30_000);
    assert_eq!((s.under_replicated, s.lost), (2, 2));
    let loc = t.locate("f").unwrap();
    assert!(
        loc.locations
            .iter()
            .all(|l| l.live.is_empty() && l.suspect.len() == 3)
    );
}

// A status lists at most the files at risk asked for, fewest copies first,
// and counts them all: a big node's death must not make it unreadable.
#[test]
fn status_lists_at_most_the_files_at_risk_asked_for() {
    let mut t = cluster(3);
    for name in ["e", "d", "c", "b", "a"] {
        put(&mut t, name, 1, 3);
    }
    for i in 0..2 {
        t.heartbeat(&nid(i), vec![], vec![], 11_000).unwrap();
    }
    t.tick(11_000);
    let all = t.status(11_000);
    assert_eq!(all.at_risk_total, 5);
    assert_eq!(all.at_risk.len(), 5);
    let few = t.status_capped(11_000, 2);
    assert_eq!(few.at_risk_total, 5);
    let names: Vec<&str> = few.at_risk.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(t.status_capped(11_000, 0).at_risk, vec![]);
}

/// `id` heartbeats at `now_ms` reporting `added`, and reads back intact
/// every copy the reply asks it to verify (its answer, as a node's, comes
/// with the next heartbeat: given at once here).
fn heartbeat_verifying(t: &mut Tracker, id: &NodeId, added: Vec<ChunkId>, now_ms: u64) {
    let asked: Vec<(ChunkId, u64)> = match t.heartbeat(id, added, vec![], now_ms).unwrap() {
        HeartbeatReply::Ok { commands } => commands
            .into_iter()
            .filter_map(|c| match c {
                NodeCommand::Verify { chunk } => Some((chunk, 0)),
                _ => None,
            })
            .collect(),
        other => panic!("{other:?}"),
    };
    t.verified(id, &asked);
}

/// Every one of the first `n` nodes but `except` heartbeats at `now_ms`,
/// verifying what it is asked to.
fn heard_from_all(t: &mut Tracker, except: &NodeId, n: usize, now_ms: u64) {
    for id in (0..n).map(nid).filter(|id| id != except) {
        heartbeat_verifying(t, &id, vec![], now_ms);
    }
}

// A leave hands every dependent chunk to a node that does not hold it, and
// the node is removed only when nothing depends on it any more: its other
// holders heard from since the leave began, its hand-overs read back intact.
#[test]
fn leave_hands_off_then_removes() {
    let mut t = cluster(4);
    put(&mut t, "f", 4, 3);
    while t.poll_record().is_some() {}
    let leaver = nid(0);
    let handoffs = t.begin_leave(&leaver, false, 1).unwrap();
    assert_eq!(handoffs.len(), 3, "n00 holds 3 of the 4 chunks");
    for h in &handoffs {
        assert_ne!(h.target.id, leaver);
        assert!(!t.holders(&h.chunk).contains(&h.target.id));
    }
    // Leaving nodes get no new chunks.
    let p = t.allocate(1, 3, &BTreeSet::new()).unwrap();
    assert!(p[0].iter().all(|r| r.id != leaver));
    // A partial report keeps the node.
    let first = vec![(handoffs[0].chunk, handoffs[0].target.id.clone())];
    assert_eq!(t.finish_leave(&leaver, first, false, 2).unwrap().len(), 3);
    heard_from_all(&mut t, &leaver, 4, 1_000);
    assert_eq!(
        t.finish_leave(&leaver, vec![], false, 1_000).unwrap().len(),
        2
    );
    let rest = handoffs[1..]
        .iter()
        .map(|h| (h.chunk, h.target.id.clone()))
        .collect();
    // Reported, not yet read back by their targets.
    assert_eq!(
        t.finish_leave(&leaver, rest, false, 1_001).unwrap().len(),
        2
    );
    heard_from_all(&mut t, &leaver, 4, 2_000);
    assert!(
        t.finish_leave(&leaver, vec![], false, 2_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        t.poll_record(),
        Some(Record::NodeLeft { id: leaver.clone() })
    );
    assert_eq!(t.status(2_000).under_replicated, 0);
    assert_eq!(t.status(2_000).nodes.len(), 3);

    // Started again, the node that left is refused, by this tracker and by
    // one restored from its records, until it asks to join again.
    let again =
        |t: &mut Tracker| t.register(leaver.clone(), "127.0.0.1:7000".into(), vec![], 3_000);
    assert_eq!(again(&mut t), Err(TrackerError::Departed(leaver.clone())));
    let records = vec![
        Record::NodeJoined {
            id: leaver.clone(),
            addr: "127.0.0.1:7000".into(),
        },
        Record::NodeLeft { id: leaver.clone() },
    ];
    let mut restored = Tracker::restore(TrackerConfig::default(), records);
    assert!(restored.departed(&leaver));
    assert_eq!(
        again(&mut restored),
        Err(TrackerError::Departed(leaver.clone()))
    );
    t.rejoin(&leaver);
    assert!(again(&mut t).is_ok());
    assert_eq!(
        t.poll_record(),
        Some(Record::NodeJoined {
            id: leaver.clone(),
            addr: "127.0.0.1:7000".into()
        })
    );
    assert!(!t.departed(&leaver));
    assert_eq!(t.status(3_000).nodes.len(), 4);
}

// A holder that crashed just before a leave began still counts as live
// (it is not declared dead for 10 s), but it is not heard from again: the
// leave does not count on it (the simulator's seeds 5000924, 9000841,
// 9001040 and 9001221). Once it has been silent for two heartbeats, the
// next round hands its copies over instead.
#[test]
fn a_leave_does_not_count_a_holder_silent_since_it_began() {
    let mut t = cluster(5);
    let m = put(&mut t, "f", 1, 3);
    let chunk = m.chunks[0];
    // A fourth copy (a repair's, say): without `crashed`, the leaver's
    // copy is one of the three.
    let extra = (0..5)
        .map(nid)
        .find(|n| !t.holders(&chunk).contains(n))
        .unwrap();
    t.heartbeat(&extra, vec![chunk], vec![], 500).unwrap();
    let holders: Vec<NodeId> = t.holders(&chunk).into_iter().collect();
    assert_eq!(holders.len(), 4);
    let (leaver, crashed) = (holders[0].clone(), holders[1].clone());
    let (ix, cx) = (t.node_ix[&leaver], t.node_ix[&crashed]);
    // Every holder heartbeats at 1 s; `crashed` dies right after.
    for id in &holders {
        t.heartbeat(id, vec![], vec![], 1_000).unwrap();
    }
    assert_eq!(t.begin_leave(&leaver, false, 1_100).unwrap(), vec![]);
    let others: Vec<NodeId> = (0..5).map(nid).filter(|n| *n != crashed).collect();
    for id in &others {
        heartbeat_verifying(&mut t, id, vec![], 2_000);
    }
    assert!(t.node(cx).alive && t.node(ix).leaving);
    assert_eq!(
        t.finish_leave(&leaver, vec![], false, 2_000).unwrap(),
        vec![chunk]
    );
    // Next round, 2 heartbeats on: `crashed` is stale, and a copy is
    // planned as if it were gone.
    for id in &others {
        heartbeat_verifying(&mut t, id, vec![], 3_200);
    }
    let h = t.begin_leave(&leaver, false, 3_200).unwrap();
    assert_eq!(h.len(), 1);
    assert!(h.iter().all(|h| !holders.contains(&h.target.id)));
    let handed: Vec<(ChunkId, NodeId)> = h.iter().map(|h| (chunk, h.target.id.clone())).collect();
    assert_eq!(
        t.finish_leave(&leaver, handed, false, 3_300).unwrap(),
        vec![chunk]
    );
    for id in &others {
        heartbeat_verifying(&mut t, id, vec![], 4_000);
    }
    // Three heard-from holders with the verified copies: the leave goes.
    assert!(
        t.finish_leave(&leaver, vec![], false, 4_000)
            .unwrap()
            .is_empty()
    );
}

// A copy handed over that rots before its target reads it back keeps the
// leaving node (the simulator's seed 9001730 lost a file of factor 1
// when the leaving node took the last intact copy): the target finds it
// rotten when asked, reports it gone, and the chunk still depends on the
// leaver until a copy is read back intact.
#[test]
fn a_handed_copy_found_rotten_keeps_the_leaver() {
    let mut t = cluster(3);
    let m = put(&mut t, "f", 1, 1);
    let chunk = m.chunks[0];
    let leaver = t.holders(&chunk).into_iter().next().unwrap();
    let h = t.begin_leave(&leaver, false, 1).unwrap();
    let target = h[0].target.id.clone();
    let handed = vec![(chunk, target.clone())];
    assert_eq!(
        t.finish_leave(&leaver, handed, false, 2).unwrap(),
        vec![chunk]
    );
    let asked = match t.heartbeat(&target, vec![], vec![], 1_000).unwrap() {
        HeartbeatReply::Ok { commands } => commands,
        other => panic!("{other:?}"),
    };
    assert!(asked.contains(&NodeCommand::Verify { chunk }), "{asked:?}");
    // Rotten: the target deletes it and says so instead of "intact".
    t.heartbeat(&target, vec![], vec![chunk], 2_000).unwrap();
    assert_eq!(
        t.finish_leave(&leaver, vec![], false, 2_000).unwrap(),
        vec![chunk]
    );
    assert_eq!(t.holders(&chunk), BTreeSet::from([leaver.clone()]));
    // The next round hands it over again; read back intact, it goes.
    let h = t.begin_leave(&leaver, false, 2_100).unwrap();
    assert_eq!(h.len(), 1);
    let target = h[0].target.id.clone();
    assert_eq!(
        t.finish_leave(&leaver, vec![(chunk, target.clone())], false, 2_200)
            .unwrap(),
        vec![chunk]
    );
    // The target says so itself too (a report of a copy it called gone
    // before does not count on the leaver's word).
    heartbeat_verifying(&mut t, &target, vec![chunk], 2_500);
    heard_from_all(&mut t, &leaver, 3, 3_000);
    assert!(
        t.finish_leave(&leaver, vec![], false, 3_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(t.holders(&chunk), BTreeSet::from([target]));
}

// A leaving node's report of a copy it handed over is not taken when the
// target has reported that copy gone since: the report can be stale (the
// simulator's seed 578: a forced leave confirmed seconds after its copy was
// trimmed and deleted). The target's own report counts it if it is there.
/// Four nodes, a one-chunk file on three, n00 leaving: the tracker, the
/// leaver, the chunk and its hand-off target, which has reported the copy.
fn handed_over() -> (Tracker, NodeId, ChunkId, NodeId) {
    let mut t = cluster(4);
    put(&mut t, "f", 1, 3);
    while t.poll_record().is_some() {}
    let leaver = nid(0);
    let h = t.begin_leave(&leaver, false, 1).unwrap();
    let (chunk, target) = (h[0].chunk, h[0].target.id.clone());
    t.heartbeat(&target, vec![chunk], vec![], 2).unwrap();
    assert!(t.holders(&chunk).contains(&target));
    (t, leaver, chunk, target)
}

#[test]
fn a_stale_hand_off_report_does_not_count_a_deleted_copy() {
    let (mut t, leaver, chunk, target) = handed_over();
    // The target deletes the copy again (found it rotten, say).
    t.heartbeat(&target, vec![], vec![chunk], 3).unwrap();
    assert!(!t.holders(&chunk).contains(&target));
    let still = t
        .finish_leave(&leaver, vec![(chunk, target.clone())], false, 3)
        .unwrap();
    assert_eq!(still, vec![chunk], "the chunk still depends on the leaver");
    assert!(!t.holders(&chunk).contains(&target));
    // Copied again: the target says so, and the leave completes once the
    // others are heard from.
    heartbeat_verifying(&mut t, &target, vec![chunk], 4);
    heard_from_all(&mut t, &leaver, 4, 1_000);
    assert!(
        t.finish_leave(&leaver, vec![], false, 1_000)
            .unwrap()
            .is_empty()
    );
}

// The same when the tracker itself deleted the copy (a removal, here):
// its tombstone keeps the stale report from counting it again.
#[test]
fn a_stale_hand_off_report_does_not_count_a_copy_the_tracker_deleted() {
    let (mut t, leaver, chunk, target) = handed_over();
    t.remove("f").unwrap();
    t.tick(3);
    let told = match t.heartbeat(&target, vec![], vec![], 4).unwrap() {
        HeartbeatReply::Ok { commands } => commands,
        other => panic!("{other:?}"),
    };
    assert!(told.contains(&NodeCommand::Delete { chunk }), "{told:?}");
    t.heartbeat(&target, vec![], vec![chunk], 5).unwrap();
    assert!(!t.holders(&chunk).contains(&target));
    t.finish_leave(&leaver, vec![(chunk, target.clone())], false, 5)
        .unwrap();
    assert!(
        !t.holders(&chunk).contains(&target),
        "a deleted copy counted"
    );
}

// A leave that would drop chunks below their factor is refused.
#[test]
fn leave_refused_without_room() {
    let mut t = cluster(3);
    put(&mut t, "f", 1, 3);
    assert!(matches!(
        t.begin_leave(&nid(0), false, 1),
        Err(TrackerError::NotEnoughNodes { .. })
    ));
    // Refusal leaves the node a full member.
    assert_eq!(t.allocate(1, 3, &BTreeSet::new()).unwrap()[0].len(), 3);
}

proptest! {
    // Placement never puts two replicas of a chunk on one node, never uses an
    // excluded, dead or leaving node, and is deterministic.
    #[test]
    fn placement_is_distinct_and_eligible(
        n_nodes in 1usize..12,
        dead in proptest::collection::btree_set(0usize..12, 0..4),
        excluded in proptest::collection::btree_set(0usize..12, 0..3),
        chunk_count in 0u64..40,
        replicas in 1u32..6,
    ) {
        let mut t = cluster(n_nodes);
        for i in 0..n_nodes {
            if !dead.contains(&i) {
                t.heartbeat(&nid(i), vec![], vec![], 50_000).unwrap();
            }
        }
        t.tick(50_000);
        let exclude: BTreeSet<NodeId> = excluded.iter().map(|&i| nid(i)).collect();
        let eligible = (0..n_nodes).filter(|i| !dead.contains(i) && !excluded.contains(i)).count();
        let again = t.clone().allocate(chunk_count, replicas, &exclude);
        match t.allocate(chunk_count, replicas, &exclude) {
            Ok(p) => {
                prop_assert!(eligible >= replicas as usize);
                prop_assert_eq!(p.len() as u64, chunk_count);
                for ids in &p {
                    let set: BTreeSet<_> = ids.iter().map(|r| r.id.clone()).collect();
                    prop_assert_eq!(set.len(), replicas as usize);
                    for r in ids {
                        prop_assert!(!exclude.contains(&r.id));
                        prop_assert!(t.is_alive(&r.id));
                    }
                }
                prop_assert_eq!(Ok(p), again);
            }
            Err(TrackerError::NotEnoughNodes { wanted, available }) => {
                prop_assert_eq!(wanted, replicas);
                prop_assert_eq!(available, eligible);
                prop_assert!(eligible < replicas as usize);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

proptest! {
    /// Through the tracker: with zones and disks of random sizes, every
    /// chunk's copies are on distinct live nodes, no node is given more
    /// bytes than its room, and a put is refused only when the room is not
    /// there. With room to spare (no node limited), each chunk's copies are
    /// in as many distinct zones as there are, up to the factor; when room
    /// is short, placing every copy comes before spreading zones.
    #[test]
    fn placement_spreads_zones_and_respects_room(
        nodes in proptest::collection::vec((0u8..4, proptest::option::of(0u64..12)), 1..10),
        chunk_count in 1u64..20,
        replicas in 1u32..5,
    ) {
        const CHUNK: u64 = 1024;
        let mut t = cluster(nodes.len());
        for (i, (zone, room)) in nodes.iter().enumerate() {
            t.set_zone(&nid(i), Some(&format!("z{zone}"))).unwrap();
            if let Some(chunks) = room {
                t.set_space(&nid(i), Space { used_bytes: 7, capacity_bytes: 7 + chunks * CHUNK });
            }
        }
        match t.allocate_sized(chunk_count, replicas, CHUNK, &BTreeSet::new()) {
            Ok(p) => {
                let mut room: Vec<Option<u64>> = nodes.iter().map(|n| n.1).collect();
                for ids in &p {
                    let ix: Vec<usize> = ids
                        .iter()
                        .map(|r| (0..nodes.len()).find(|&i| nid(i) == r.id).unwrap())
                        .collect();
                    let set: BTreeSet<usize> = ix.iter().copied().collect();
                    prop_assert_eq!(set.len(), replicas as usize);
                    let zones_with_room: BTreeSet<u8> = (0..nodes.len())
                        .filter(|&i| room[i].is_none_or(|r| r >= 1))
                        .map(|i| nodes[i].0)
                        .collect();
                    let zones: BTreeSet<u8> = ix.iter().map(|&i| nodes[i].0).collect();
                    if nodes.iter().all(|n| n.1.is_none()) {
                        prop_assert_eq!(zones.len(), zones_with_room.len().min(replicas as usize));
                    }
                    for &i in &ix {
                        if let Some(r) = &mut room[i] {
                            prop_assert!(*r >= 1, "node {} past its room", i);
                            *r -= 1;
                        }
                    }
                }
            }
            Err(TrackerError::NoRoom { wanted, available, chunk_bytes }) => {
                prop_assert_eq!((wanted, chunk_bytes), (replicas, CHUNK));
                prop_assert!(available < replicas as usize);
                prop_assert!(nodes.len() >= replicas as usize);
                // Refused for good reason: less room than the copies need.
                let copies: u64 = nodes
                    .iter()
                    .map(|n| n.1.map_or(chunk_count, |r| r.min(chunk_count)))
                    .sum();
                let fits_one = nodes.iter().filter(|n| n.1.is_none_or(|r| r >= 1)).count();
                prop_assert!(
                    copies < chunk_count * u64::from(replicas) || fits_one < replicas as usize,
                    "refused with room for every copy"
                );
            }
            Err(TrackerError::NotEnoughNodes { .. }) => {
                prop_assert!(nodes.len() < replicas as usize);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

// A full report in parts replaces what the node was counted holding only
// when it ends; meanwhile the node's heartbeats ask it to report again.
#[test]
fn report_in_parts_replaces_the_inventory_at_its_end() {
    let mut t = cluster(3);
    let m = put(&mut t, "f", 3, 3);
    let (a, b, c) = (m.chunks[0], m.chunks[1], m.chunks[2]);
    t.begin_report(nid(0), "127.0.0.1:7000".into(), 1).unwrap();
    assert_eq!(
        t.heartbeat(&nid(0), vec![], vec![], 2).unwrap(),
        HeartbeatReply::Reregister
    );
    t.report_part(&nid(0), &[a]).unwrap();
    t.report_part(&nid(0), &[b]).unwrap();
    // Not reported yet, still counted.
    assert!(t.holders(&c).contains(&nid(0)));
    let session = t.end_report(&nid(0), 3).unwrap();
    assert!(!t.holders(&c).contains(&nid(0)));
    assert!(t.holders(&a).contains(&nid(0)) && t.holders(&b).contains(&nid(0)));
    assert_eq!(t.sequence(&nid(0), session, 1), Sequence::Fresh);
    assert_eq!(t.status(3).under_replicated, 1);
    assert_eq!(
        t.report_part(&nid(0), &[c]),
        Err(TrackerError::NoReport(nid(0)))
    );
    t.audit().unwrap();
}

// Every node is asked for a full report once per interval, the first time
// between one and two intervals after it registered, spread by node id.
#[test]
fn full_reports_are_asked_for_periodically_and_spread() {
    let config = TrackerConfig {
        full_report_interval_ms: 10_000,
        dead_after_ms: 1_000_000,
        ..TrackerConfig::default()
    };
    let mut t = Tracker::new(config);
    let mut first_ask = Vec::new();
    for i in 0..8 {
        t.register(nid(i), format!("a{i}"), vec![], 0).unwrap();
    }
    for now in (1_000..=20_000).step_by(1_000) {
        for i in 0..8 {
            if first_ask.iter().any(|(n, _)| *n == i) {
                continue;
            }
            if t.heartbeat(&nid(i), vec![], vec![], now).unwrap() == HeartbeatReply::Reregister {
                first_ask.push((i, now));
            }
        }
    }
    assert_eq!(
        first_ask.len(),
        8,
        "every node was asked within two intervals"
    );
    assert!(first_ask.iter().all(|&(_, at)| at >= 10_000));
    let times: BTreeSet<u64> = first_ask.iter().map(|&(_, at)| at).collect();
    assert!(
        times.len() > 1,
        "not all at the same instant: {first_ask:?}"
    );
}

// After a restart, repairs wait for the nodes' reports (or dead-after),
// rather than copying chunks whose holders simply have not reported yet.
#[test]
fn restart_plans_nothing_until_nodes_report() {
    let mut t = cluster(4);
    put(&mut t, "f", 4, 3);
    let mut records = vec![];
    for i in 0..4 {
        records.push(Record::NodeJoined {
            id: nid(i),
            addr: format!("127.0.0.1:{}", 7000 + i),
        });
    }
    let m = manifest("f", 4, 3);
    let located = t.locate("f").unwrap();
    let holders = located
        .locations
        .iter()
        .map(|l| l.live.iter().map(|r| r.id.clone()).collect())
        .collect();
    records.push(Record::FileCommitted {
        manifest: m.clone(),
        holders,
    });
    let restored = Tracker::restore(TrackerConfig::default(), records);
    let report = |t: &mut Tracker, i: usize, now: u64| {
        let held: Vec<ChunkId> = m
            .chunks
            .iter()
            .copied()
            .filter(|c| t.holders(c).contains(&nid(i)))
            .collect();
        t.register(nid(i), format!("127.0.0.1:{}", 7000 + i), held, now)
            .unwrap();
    };
    // n00 and n01 have reported: chunks look under-replicated, and n01 or
    // n00 could take copies, but nothing is planned yet.
    let mut t = restored.clone();
    report(&mut t, 0, 100);
    report(&mut t, 1, 100);
    t.tick(200);
    assert!(t.status(200).under_replicated > 0);
    assert!(
        t.repairs().is_empty(),
        "planned while nodes were still to report"
    );
    // The others report: nothing was ever missing.
    report(&mut t, 2, 300);
    report(&mut t, 3, 300);
    t.tick(400);
    assert_eq!(t.status(400).under_replicated, 0);
    assert!(t.repairs().is_empty());
    // Had they stayed silent, planning starts once dead-after has passed.
    let mut t = restored;
    report(&mut t, 0, 100);
    report(&mut t, 1, 100);
    t.tick(200);
    t.heartbeat(&nid(0), vec![], vec![], 10_300).unwrap();
    t.heartbeat(&nid(1), vec![], vec![], 10_300).unwrap();
    t.tick(10_300);
    assert!(!t.repairs().is_empty());
}

// A copy no file references (a failed put's) is deleted once the grace has
// passed, but not while a put that began before it appeared is in flight;
// a lease nobody renews lapses.
#[test]
fn orphans_are_collected_after_the_grace_unless_a_put_may_commit_them() {
    let config = TrackerConfig {
        orphan_grace_ms: 10_000,
        dead_after_ms: 1_000_000,
        ..TrackerConfig::default()
    };
    let mut t = Tracker::new(config);
    for i in 0..2 {
        t.register(nid(i), format!("a{i}"), vec![], 0).unwrap();
    }
    let stray = ChunkId::of(b"failed put");
    // A put begins, uploads, and has not committed.
    t.touch_put(7, 1_000);
    t.heartbeat(&nid(0), vec![stray], vec![], 2_000).unwrap();
    t.tick(2_000);
    let deletes = |t: &mut Tracker, now| match t.heartbeat(&nid(0), vec![], vec![], now).unwrap() {
        HeartbeatReply::Ok { commands } => commands,
        HeartbeatReply::Reregister => panic!("asked to register"),
    };
    // Past the grace, but the put is still in flight (renewed): kept.
    t.touch_put(7, 9_000);
    t.tick(13_000);
    assert!(deletes(&mut t, 13_000).is_empty());
    assert_eq!(t.holders(&stray), BTreeSet::from([nid(0)]));
    // A put that began after the copy appeared does not protect it.
    t.touch_put(8, 14_000);
    t.end_put(7);
    t.tick(14_000);
    assert_eq!(
        deletes(&mut t, 14_000),
        vec![NodeCommand::Delete { chunk: stray }]
    );
    assert!(t.holders(&stray).is_empty());
    // A lease not renewed for the grace lapses: a copy that appeared under
    // it is collected after all.
    let late = ChunkId::of(b"abandoned put");
    t.touch_put(9, 20_000);
    t.heartbeat(&nid(1), vec![late], vec![], 21_000).unwrap();
    t.tick(21_000);
    t.touch_put(9, 25_000);
    t.tick(31_500);
    assert!(
        t.holders(&late).contains(&nid(1)),
        "put 9's lease still runs"
    );
    t.tick(36_000);
    assert!(t.holders(&late).is_empty(), "lease lapsed, copy collected");
    t.audit().unwrap();
}

// The case the simulator found (seed 1349): a copy acknowledged to a put,
// then found rotten and removed, reported gone before the put commits,
// was counted by the commit (from the acknowledgement), and the tracker
// believed in a copy no disk had until the node's next full report. An
// acknowledgement from before the report of the copy's loss no longer
// counts; nor does one from a registration the node has since replaced
// (its new report says what it holds).
#[test]
fn an_acknowledged_copy_reported_gone_before_the_commit_does_not_count() {
    let mut t = Tracker::new(TrackerConfig::default());
    let sessions: Vec<u64> = (0..4)
        .map(|i| t.register(nid(i), format!("a{i}"), vec![], 0).unwrap())
        .collect();
    let m = manifest("f", 1, 3);
    let chunk = m.chunks[0];
    let acks = || -> Vec<Vec<(NodeId, Ack)>> {
        vec![
            (0..3)
                .map(|i| (nid(i), signed(&nid(i), sessions[i], 0, &chunk)))
                .collect(),
        ]
    };
    // n00 reports the copy (its upload), then, a heartbeat later, gone.
    assert_eq!(t.sequence(&nid(0), sessions[0], 1), Sequence::Fresh);
    t.heartbeat(&nid(0), vec![chunk], vec![], 10).unwrap();
    assert_eq!(t.sequence(&nid(0), sessions[0], 2), Sequence::Fresh);
    t.heartbeat(&nid(0), vec![], vec![chunk], 20).unwrap();
    let r = t.commit_with(m.clone(), acks(), false, 30);
    assert!(
        matches!(r, Err(TrackerError::NotEnoughHolders { acked: 2, .. })),
        "{r:?}"
    );
    // n00 uploads it again (acknowledged after that report): it counts.
    let mut again = acks();
    again[0][0].1 = signed(&nid(0), sessions[0], 2, &chunk);
    t.commit_with(m.clone(), again, false, 40).unwrap();
    // A node that registered again since its acknowledgement counts only
    // if its new report names the copy.
    let g = manifest("g", 1, 3);
    let gc = g.chunks[0];
    let old = vec![
        (0..3)
            .map(|i| (nid(i), signed(&nid(i), sessions[i], 2, &gc)))
            .collect(),
    ];
    t.register(nid(1), "a1".into(), vec![], 50).unwrap();
    let r = t.commit_with(g.clone(), old, false, 60);
    assert!(
        matches!(r, Err(TrackerError::NotEnoughHolders { acked: 2, .. })),
        "{r:?}"
    );
}

/// An acknowledgement as node `n` makes it in `session`, under the default
/// config's secret.
fn signed(n: &NodeId, session: u64, seq: u64, chunk: &ChunkId) -> Ack {
    let key = crate::ack::receipt_key(&TrackerConfig::default().receipt_secret, n, session);
    let stamp = crate::ack::Stamp { session, seq };
    Ack {
        stamp,
        receipt: crate::ack::receipt(&key, chunk, stamp),
    }
}

// A client cannot commit a file naming holders that never stored its
// chunks: a holder counts on the client's word only with the receipt the
// node made for that chunk in its current session.
#[test]
fn a_commit_counts_only_holders_whose_receipts_hold() {
    let mut t = Tracker::new(TrackerConfig {
        receipt_secret: [9; 32],
        ..TrackerConfig::default()
    });
    let sessions: Vec<u64> = (0..4)
        .map(|i| t.register(nid(i), format!("a{i}"), vec![], 0).unwrap())
        .collect();
    let m = manifest("f", 1, 3);
    let chunk = m.chunks[0];
    let keys: Vec<_> = (0..4).map(|i| t.receipt_key(&nid(i)).unwrap()).collect();
    let made = |i: usize, session: u64, c: &ChunkId| {
        let key = if session == sessions[i] {
            keys[i]
        } else {
            crate::ack::receipt_key(&[9; 32], &nid(i), session)
        };
        let stamp = crate::ack::Stamp { session, seq: 1 };
        (
            nid(i),
            Ack {
                stamp,
                receipt: crate::ack::receipt(&key, c, stamp),
            },
        )
    };
    let other = ChunkId::of(b"another chunk");
    let forged = vec![vec![
        // No receipt; another chunk's receipt; another session's receipt;
        // a receipt under another tracker's secret.
        (nid(0), Ack::default()),
        made(1, sessions[1], &other),
        made(2, sessions[2] + 1, &chunk),
        (nid(3), signed(&nid(3), sessions[3], 1, &chunk)),
    ]];
    let r = t.commit_with(m.clone(), forged, false, 10);
    assert!(
        matches!(r, Err(TrackerError::NotEnoughHolders { acked: 0, .. })),
        "{r:?}"
    );
    assert!(t.locate("f").is_err());
    let real = vec![(0..3).map(|i| made(i, sessions[i], &chunk)).collect()];
    t.commit_with(m, real, false, 20).unwrap();
    assert_eq!(t.locate("f").unwrap().locations[0].live.len(), 3);
}

// A node restarted while a put ran: the copy it acknowledged before
// registering again is refused as unconfirmed (a commit worth making
// again), and the same commit passes once the node's registration lists
// the copy.
#[test]
fn a_copy_from_a_restarted_node_counts_once_it_registers() {
    let mut t = Tracker::new(TrackerConfig::default());
    let sessions: Vec<u64> = (0..3)
        .map(|i| t.register(nid(i), format!("a{i}"), vec![], 0).unwrap())
        .collect();
    let m = manifest("f", 1, 3);
    let chunk = m.chunks[0];
    let mut holders: Vec<(NodeId, Ack)> = (0..2)
        .map(|i| (nid(i), signed(&nid(i), sessions[i], 1, &chunk)))
        .collect();
    // Not registered yet: its book has no session.
    holders.push((nid(2), Ack::default()));
    let r = t.commit_with(m.clone(), vec![holders.clone()], false, 10);
    assert!(
        matches!(
            r,
            Err(TrackerError::NotEnoughHolders {
                acked: 2,
                unconfirmed: 1,
                ..
            })
        ),
        "{r:?}"
    );
    t.register(nid(2), "a2".into(), vec![chunk], 20).unwrap();
    t.commit_with(m, vec![holders], false, 30).unwrap();
    assert_eq!(t.locate("f").unwrap().locations[0].live.len(), 3);
}

// A revocation is a record: a tracker restored from the records (a
// restart, or a group's new leader) refuses the same identities.
#[test]
fn revocations_are_records_and_survive_a_restore() {
    let mut t = Tracker::new(TrackerConfig::default());
    assert_eq!(t.revoke("n1"), Ok(true));
    assert_eq!(t.revoke("n1"), Ok(false));
    assert!(t.revoke("").is_err());
    assert!(t.revoke(&"x".repeat(REVOKED_ID_MAX_BYTES + 1)).is_err());
    let records: Vec<Record> = std::iter::from_fn(|| t.poll_record()).collect();
    assert_eq!(records, vec![Record::Revoked { id: "n1".into() }]);
    let back = Tracker::restore(TrackerConfig::default(), records);
    assert!(back.revoked().contains("n1"));
}

// A tracker back from a restart knows copies only as its records left them
// (as of each chunk's last commit): a chunk with no holder known, live or
// still to report, names the nodes still to report, where a copy made since
// (a repair's) may be, and names them no more once they have reported.
#[test]
fn locate_after_restart_names_nodes_still_to_report() {
    let mut t = cluster(4);
    let m = put(&mut t, "f", 1, 1);
    let committed = t.poll_record().unwrap();
    let joined = (0..4).map(|i| Record::NodeJoined {
        id: nid(i),
        addr: format!("127.0.0.1:{}", 7000 + i),
    });
    let mut t = Tracker::restore(TrackerConfig::default(), joined.chain([committed]));
    let recorded: Vec<NodeId> = t.holders(&m.chunks[0]).into_iter().collect();
    assert_eq!(recorded.len(), 1);
    let ids = |l: &[NodeRef]| l.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let loc = &t.locate("f").unwrap().locations[0];
    assert!(loc.live.is_empty());
    assert_eq!(
        ids(&loc.suspect),
        recorded,
        "the holder the records name, still to report: no others"
    );
    // The copy moved to the last node to report: every other one reports
    // without it.
    let mover = (0..4).map(nid).find(|n| *n != recorded[0]).unwrap();
    for i in 0..4 {
        if nid(i) != mover {
            t.register(nid(i), format!("127.0.0.1:{}", 7000 + i), vec![], 10)
                .unwrap();
        }
    }
    let loc = &t.locate("f").unwrap().locations[0];
    assert_eq!(ids(&loc.live), Vec::<NodeId>::new());
    assert_eq!(ids(&loc.suspect), vec![mover.clone()]);
    let idx = (0..4).find(|&i| nid(i) == mover).unwrap();
    t.register(
        mover.clone(),
        format!("127.0.0.1:{}", 7000 + idx),
        vec![m.chunks[0]],
        11,
    )
    .unwrap();
    let loc = &t.locate("f").unwrap().locations[0];
    assert_eq!(ids(&loc.live), vec![mover]);
    assert!(loc.suspect.is_empty());
}

// An acknowledgement from a node that has left will never be confirmed:
// the commit is refused at once, not "ask again soon" (seed 22395016538: a
// put waited out its 10 s on a holder that had left with --force).
#[test]
fn a_commit_does_not_wait_for_a_holder_that_left() {
    let mut t = cluster(3);
    let m = manifest("f", 1, 2);
    t.begin_leave(&nid(2), true, 5).unwrap();
    t.finish_leave(&nid(2), vec![], true, 5).unwrap();
    assert!(t.departed(&nid(2)));
    assert_eq!(
        t.commit(m, vec![vec![nid(0), nid(2)]]),
        Err(TrackerError::NotEnoughHolders {
            chunk: 0,
            acked: 1,
            wanted: 2,
            unconfirmed: 0,
        })
    );
}
