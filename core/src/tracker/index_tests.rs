//! The incremental upkeep (chunk table, holder lists, node inventories,
//! health sets, per-file counts) against a full recomputation, after every
//! step of random event sequences: commits of files that share chunks and
//! repeat them, removals, deaths, returns, reports, leaves and restarts.

use proptest::prelude::*;

use super::repair_tests::nid;
use super::*;

#[derive(Debug, Clone)]
enum Step {
    /// Commit a file of these chunk tags (from a small pool, so files share
    /// chunks and repeat them) with this factor, on these nodes.
    Put(Vec<u8>, u32),
    Remove(usize),
    /// A node reports gaining / losing a chunk of the pool.
    Gain(usize, u8),
    Lose(usize, u8),
    /// Time passes: silent nodes die, planning runs.
    Tick(u64),
    /// A node heartbeats (coming back if it was dead) and obeys nothing.
    Heartbeat(usize),
    /// A node registers afresh with part of what it was counted holding.
    Register(usize, Vec<u8>),
    Leave(usize, bool),
    Restart,
    /// A full report in parts: begin, a part naming these chunks, end.
    Begin(usize),
    Part(usize, Vec<u8>),
    End(usize),
    /// The report's stream broke.
    Abort(usize),
    /// A put's lease is taken or renewed / ends.
    Touch(u64),
    EndPut(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (proptest::collection::vec(0u8..12, 0..6), 1u32..4).prop_map(|(c, r)| Step::Put(c, r)),
        2 => (0usize..8).prop_map(Step::Remove),
        2 => (0usize..6, 0u8..12).prop_map(|(n, c)| Step::Gain(n, c)),
        2 => (0usize..6, 0u8..12).prop_map(|(n, c)| Step::Lose(n, c)),
        2 => (500u64..8_000).prop_map(Step::Tick),
        3 => (0usize..6).prop_map(Step::Heartbeat),
        1 => (0usize..6, proptest::collection::vec(0u8..12, 0..6)).prop_map(|(n, c)| Step::Register(n, c)),
        1 => (0usize..6, any::<bool>()).prop_map(|(n, f)| Step::Leave(n, f)),
        1 => Just(Step::Restart),
        1 => (0usize..6).prop_map(Step::Begin),
        2 => (0usize..6, proptest::collection::vec(0u8..12, 0..4)).prop_map(|(n, c)| Step::Part(n, c)),
        1 => (0usize..6).prop_map(Step::End),
        1 => (0usize..6).prop_map(Step::Abort),
        1 => (1u64..4).prop_map(Step::Touch),
        1 => (1u64..4).prop_map(Step::EndPut),
    ]
}

fn chunk(tag: u8) -> ChunkId {
    ChunkId::of(&[tag])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn incremental_state_equals_a_recomputation(steps in proptest::collection::vec(step(), 1..60)) {
        let config = TrackerConfig {
            dead_after_ms: 3_000,
            orphan_grace_ms: 5_000,
            ..TrackerConfig::default()
        };
        let mut t = Tracker::new(config.clone());
        let mut records = Vec::new();
        let mut now = 0;
        for i in 0..6 {
            t.register(nid(i), format!("a{i}"), vec![], now).unwrap();
        }
        let mut names = Vec::new();
        for (k, s) in steps.iter().enumerate() {
            match s {
                Step::Put(tags, r) => {
                    let name = format!("f{k}");
                    let chunks: Vec<ChunkId> = tags.iter().map(|&c| chunk(c)).collect();
                    let m = Manifest::new(name.clone(), chunks.len() as u64 * 1024, 1024, *r, chunks).unwrap();
                    if let Ok(p) = t.allocate(m.chunks.len() as u64, *r, &BTreeSet::new()) {
                        let holders = p.iter().map(|p| p.iter().map(|n| n.id.clone()).collect()).collect();
                        if t.commit(m, holders).is_ok() {
                            names.push(name);
                        }
                    }
                }
                Step::Remove(i) => {
                    if !names.is_empty() {
                        let name = names.remove(i % names.len());
                        t.remove(&name).unwrap();
                    }
                }
                Step::Gain(n, c) => {
                    let _ = t.heartbeat(&nid(*n), vec![chunk(*c)], vec![], now);
                }
                Step::Lose(n, c) => {
                    let _ = t.heartbeat(&nid(*n), vec![], vec![chunk(*c)], now);
                }
                Step::Tick(ms) => {
                    now += ms;
                    t.tick(now);
                }
                Step::Heartbeat(n) => {
                    let _ = t.heartbeat(&nid(*n), vec![], vec![], now);
                }
                Step::Register(n, tags) => {
                    let _ = t.register(nid(*n), format!("a{n}"), tags.iter().map(|&c| chunk(c)).collect(), now);
                }
                Step::Leave(n, force) => {
                    if t.begin_leave(&nid(*n), *force, now).is_ok() {
                        let _ = t.finish_leave(&nid(*n), vec![], *force, now);
                    }
                }
                Step::Begin(n) => {
                    // Refused only for a node that left (it stays out).
                    if let Err(e) = t.begin_report(nid(*n), format!("a{n}"), now) {
                        assert_eq!(e, TrackerError::Departed(nid(*n)));
                    }
                }
                Step::Part(n, tags) => {
                    let tags: Vec<ChunkId> = tags.iter().map(|&c| chunk(c)).collect();
                    let _ = t.report_part(&nid(*n), &tags);
                }
                Step::End(n) => {
                    let _ = t.end_report(&nid(*n), now);
                }
                Step::Abort(n) => t.abort_report(&nid(*n)),
                Step::Touch(p) => t.touch_put(*p, now),
                Step::EndPut(p) => t.end_put(*p),
                Step::Restart => {
                    records.extend(std::iter::from_fn(|| t.poll_record()));
                    t = Tracker::restore(config.clone(), records.clone());
                }
            }
            records.extend(std::iter::from_fn(|| t.poll_record()));
            if let Err(e) = t.audit() {
                prop_assert!(false, "after step {} ({:?}): {}", k, s, e);
            }
        }
    }
}

// 200 000 chunks, 3 holders each, in 200 files on 20 nodes: the tracker's
// chunk-proportional state stays within 120 bytes a chunk (the process-wide
// target is 200 bytes of RSS a chunk; see the tracker benchmark).
#[test]
fn bytes_per_chunk_stay_bounded() {
    let mut t = Tracker::new(TrackerConfig::default());
    for i in 0..20 {
        t.register(nid(i), format!("a{i}"), vec![], 0).unwrap();
    }
    let per_file = 1_000;
    let files = 200;
    for f in 0..files {
        let chunks: Vec<ChunkId> = (0..per_file)
            .map(|i| ChunkId::of(format!("{f}/{i}").as_bytes()))
            .collect();
        let m = Manifest::new(format!("f{f}"), per_file as u64 * 1024, 1024, 3, chunks).unwrap();
        let p = t.allocate(per_file as u64, 3, &BTreeSet::new()).unwrap();
        let holders = p
            .iter()
            .map(|p| p.iter().map(|n| n.id.clone()).collect())
            .collect();
        t.commit(m, holders).unwrap();
        while t.poll_record().is_some() {}
    }
    let chunks = (per_file * files) as usize;
    assert_eq!(t.chunk_records(), chunks);
    let per_chunk = t.heap_bytes() / chunks;
    println!("{per_chunk} bytes a chunk ({CHUNK_RECORD_BYTES} in its record)");
    assert!(per_chunk <= 120, "{per_chunk} bytes a chunk");
}
