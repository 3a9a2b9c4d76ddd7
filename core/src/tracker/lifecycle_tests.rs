//! A file's life as users drive it: put, `rm`, put the same bytes again at
//! once, replace a name with other bytes, while nodes heartbeat, lose
//! replies and take uploads between sending a heartbeat and carrying out
//! its reply. Nodes follow [`crate::ack`] exactly as the real node does.
//!
//! Safety: no disk is destroyed here, so every copy the tracker counts for
//! a chunk of a committed file must be on that node's disk: a deletion
//! carried out under a put's acknowledged copy shows as a counted copy that
//! is not there. Liveness: an `rm` followed by a put of the same bytes, on
//! a quiet cluster, commits.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::repair_tests::nid;
use super::*;
use crate::ack::AckBook;
use crate::inventory::Inventory;

const NODES: usize = 5;
const NAMES: usize = 3;
const CONTENTS: usize = 4;

/// Content `k` is chunks `k` and `k + 1` (neighbouring contents share one).
fn content(k: usize) -> Vec<ChunkId> {
    (k..k + 2)
        .map(|i| ChunkId::of(format!("chunk{i}").as_bytes()))
        .collect()
}

fn manifest(name: usize, k: usize) -> Manifest {
    Manifest::new(format!("f{name}"), 2 * 1024, 1024, 3, content(k)).unwrap()
}

#[derive(Debug, Clone)]
enum Step {
    /// A put of content `k` under name `name` allocates its targets.
    Put {
        name: usize,
        k: usize,
        replace: bool,
    },
    /// The `p`-th put in flight uploads its next copy.
    Upload(usize),
    /// The `p`-th put in flight commits (all its copies uploaded or not).
    Commit(usize),
    Rm(usize),
    /// Node `i` heartbeats; `uploads`: puts in flight upload every copy
    /// meant for it between the send and the reply; `lose`: the reply is
    /// lost.
    Heartbeat {
        i: usize,
        uploads: bool,
        lose: bool,
    },
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..NAMES, 0..CONTENTS, any::<bool>())
            .prop_map(|(name, k, replace)| Step::Put { name, k, replace }),
        6 => (0usize..4).prop_map(Step::Upload),
        3 => (0usize..4).prop_map(Step::Commit),
        2 => (0..NAMES).prop_map(Step::Rm),
        6 => (0..NODES, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(i, uploads, lose)| Step::Heartbeat { i, uploads, lose }),
        2 => Just(Step::Tick),
    ]
}

struct Node {
    disk: BTreeSet<ChunkId>,
    inv: Inventory,
    book: AckBook,
    /// Copies found intact on request, for the next heartbeat.
    verified: Vec<(ChunkId, u64)>,
}

struct InFlight {
    /// Its lease id with the tracker.
    id: u64,
    m: Manifest,
    replace: bool,
    /// Copies still to upload: (chunk index, node).
    todo: Vec<(usize, NodeId)>,
    acks: Vec<Vec<(NodeId, Ack)>>,
}

struct World {
    t: Tracker,
    nodes: BTreeMap<NodeId, Node>,
    puts: Vec<InFlight>,
    now: u64,
    commits: usize,
    next_put: u64,
}

impl World {
    fn new() -> Self {
        let config = TrackerConfig {
            orphan_grace_ms: 2_000,
            ..TrackerConfig::default()
        };
        let mut t = Tracker::new(config);
        let mut nodes = BTreeMap::new();
        for i in 0..NODES {
            let session = t.register(nid(i), format!("a{i}"), vec![], 0).unwrap();
            let mut book = AckBook::default();
            book.registered(session, t.receipt_key(&nid(i)).unwrap());
            nodes.insert(
                nid(i),
                Node {
                    disk: BTreeSet::new(),
                    inv: Inventory::default(),
                    book,
                    verified: Vec::new(),
                },
            );
        }
        Self {
            t,
            nodes,
            puts: Vec::new(),
            now: 0,
            commits: 0,
            next_put: 0,
        }
    }

    fn start_put(&mut self, m: Manifest, replace: bool) {
        let Ok(placement) = self.t.allocate(2, 3, &BTreeSet::new()) else {
            return;
        };
        self.next_put += 1;
        self.t.touch_put(self.next_put, self.now);
        let todo = placement
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.iter().map(move |r| (i, r.id.clone())))
            .collect();
        self.puts.push(InFlight {
            id: self.next_put,
            m,
            replace,
            todo,
            acks: vec![Vec::new(); 2],
        });
    }

    /// The node stores the copy and acknowledges it, as `put_chunk` does.
    fn upload(&mut self, p: usize) {
        let put = &mut self.puts[p];
        let Some((i, node)) = put.todo.pop() else {
            return;
        };
        let chunk = put.m.chunks[i];
        let n = self.nodes.get_mut(&node).unwrap();
        n.disk.insert(chunk);
        n.inv.added(chunk, put.id);
        let ack = n.book.acked(chunk);
        put.acks[i].push((node, ack));
    }

    fn commit(&mut self, p: usize) {
        let put = self.puts.remove(p);
        let r = self
            .t
            .commit_with(put.m.clone(), put.acks, put.replace, self.now);
        // The client ends its lease whatever the outcome.
        self.t.end_put(put.id);
        if r.is_ok() {
            self.commits += 1;
        }
    }

    fn heartbeat(&mut self, id: &NodeId, uploads: bool, lose: bool) {
        let n = self.nodes.get_mut(id).unwrap();
        let delta = n.inv.take_delta();
        let stamp = n.book.next_heartbeat();
        let reply = match self.t.sequence(id, stamp.session, stamp.seq) {
            Sequence::Fresh => {
                let touched: Vec<(ChunkId, u64)> = delta
                    .added
                    .iter()
                    .copied()
                    .zip(delta.added_puts.iter().copied())
                    .collect();
                self.t.touched(id, &touched, self.now);
                self.t.verified(id, &std::mem::take(&mut n.verified));
                self.t
                    .heartbeat(id, delta.added.clone(), delta.removed.clone(), self.now)
                    .unwrap()
            }
            _ => unreachable!("every heartbeat here is fresh"),
        };
        if uploads {
            // Uploads land after the heartbeat left, before its reply.
            for p in 0..self.puts.len() {
                while let Some(at) = self.puts[p].todo.iter().position(|(_, n)| n == id) {
                    let last = self.puts[p].todo.len() - 1;
                    self.puts[p].todo.swap(at, last);
                    self.upload(p);
                }
            }
        }
        let n = self.nodes.get_mut(id).unwrap();
        let HeartbeatReply::Ok { commands } = reply else {
            unreachable!("nodes here never need to register again")
        };
        if lose {
            n.inv.restore_delta(delta);
            n.book.replied(stamp);
            return;
        }
        for c in commands {
            match c {
                NodeCommand::Delete { chunk } if n.book.may_delete(&chunk, stamp) => {
                    n.disk.remove(&chunk);
                    n.inv.deleted(chunk);
                }
                NodeCommand::Verify { chunk } if n.disk.contains(&chunk) => {
                    n.verified.push((chunk, stamp.seq));
                }
                _ => {}
            }
        }
        n.book.replied(stamp);
    }

    /// Every node heartbeats once (see [`World::heartbeat`]).
    fn heartbeat_all(&mut self, uploads: bool) {
        for i in 0..NODES {
            self.heartbeat(&nid(i), uploads, false);
        }
    }

    /// `step_ms` pass (the client of put `renew` renews its lease, as it
    /// does every `lease_renew`), the tracker ticks, every node heartbeats.
    fn round(&mut self, step_ms: u64, renew: Option<usize>) {
        self.now += step_ms;
        if let Some(p) = renew {
            self.t.touch_put(self.puts[p].id, self.now);
        }
        self.t.tick(self.now);
        self.heartbeat_all(false);
    }

    /// Put `p` uploads every copy it has left.
    fn upload_all(&mut self, p: usize) {
        while !self.puts[p].todo.is_empty() {
            self.upload(p);
        }
    }

    fn apply(&mut self, s: &Step) {
        match *s {
            Step::Put { name, k, replace } => self.start_put(manifest(name, k), replace),
            Step::Upload(p) if p < self.puts.len() => self.upload(p),
            Step::Commit(p) if p < self.puts.len() => self.commit(p),
            Step::Rm(name) => {
                let _ = self.t.remove(&format!("f{name}"));
            }
            Step::Heartbeat { i, uploads, lose } => self.heartbeat(&nid(i), uploads, lose),
            Step::Tick => {
                self.now += 1_000;
                self.t.tick(self.now);
            }
            _ => {}
        }
    }

    /// Every copy the tracker counts for a committed file is on its disk.
    fn check(&self) -> Result<(), String> {
        for f in self.t.files() {
            let located = self.t.locate(&f.name).unwrap();
            for (c, loc) in located.manifest.chunks.iter().zip(&located.locations) {
                for r in loc.live.iter().chain(&loc.suspect) {
                    if !self.nodes[&r.id].disk.contains(c) {
                        return Err(format!("{} counted on {} but not there", c, r.id));
                    }
                }
            }
        }
        self.t.audit().map_err(|e| e.to_string())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn rm_reput_and_replace_never_lose_an_acknowledged_copy(
        steps in prop::collection::vec(step(), 1..120)
    ) {
        let mut w = World::new();
        for s in &steps {
            w.apply(s);
            if let Err(e) = w.check() {
                prop_assert!(false, "after {:?}: {}", s, e);
            }
        }
    }
}

// The session from the issue: put, rm, put the same bytes again at once:
// the deletions the rm queued never make the second put fail or lose a
// copy, whether the put commits before they go out (cancelled), its copies
// land between a heartbeat and the reply carrying them (skipped), or its
// copies are reported before they go out (cancelled by the touch).
#[test]
fn put_rm_put_again_commits_at_once() {
    for order in ["commit first", "uploads inside heartbeats", "touch first"] {
        let mut w = World::new();
        w.start_put(manifest(0, 0), false);
        w.upload_all(0);
        w.commit(0);
        w.heartbeat_all(false);
        w.t.remove("f0").unwrap();
        w.now += 1_000;
        w.t.tick(w.now);
        w.start_put(manifest(0, 0), false);
        match order {
            "uploads inside heartbeats" => {
                w.heartbeat_all(true);
            }
            _ => {
                w.upload_all(0);
            }
        }
        if order == "touch first" {
            for _ in 0..3 {
                w.round(1_000, Some(0));
            }
        }
        let before = w.commits;
        w.commit(0);
        assert_eq!(w.commits, before + 1, "{order}");
        w.heartbeat_all(false);
        w.check().unwrap();
        let located = w.t.locate("f0").unwrap();
        for loc in &located.locations {
            assert_eq!(loc.live.len(), 3, "{order}");
        }
    }
}

// Replacing a name: the old version's chunks stay for the orphan grace (a
// reader that located it can finish), then go; the new one is whole.
#[test]
fn replaced_version_is_kept_for_the_grace_then_deleted() {
    let mut w = World::new();
    w.start_put(manifest(0, 0), false);
    w.upload_all(0);
    w.commit(0);
    w.start_put(manifest(0, 2), false);
    w.upload_all(0);
    let refused =
        w.t.commit_with(w.puts[0].m.clone(), w.puts[0].acks.clone(), false, w.now);
    assert!(matches!(refused, Err(TrackerError::FileExists(_))));
    w.puts[0].replace = true;
    w.commit(0);
    let old = content(0)[0];
    let held = |w: &World| w.nodes.values().filter(|n| n.disk.contains(&old)).count();
    assert_eq!(held(&w), 3);
    for _ in 0..2 {
        w.round(500, None);
    }
    assert_eq!(held(&w), 3, "deleted within the grace");
    for _ in 0..4 {
        w.round(1_000, None);
    }
    assert_eq!(held(&w), 0, "kept after the grace");
    assert_eq!(w.t.locate("f0").unwrap().manifest.chunks, content(2));
    w.check().unwrap();
}

// An rm right after a put, while another put (begun after the rm) is in
// flight: the first put's copies are reported (touched) after the rm, but
// their put has committed, so the deletions stand and every copy goes at
// once.
#[test]
fn rm_right_after_a_put_deletes_its_copies_at_once() {
    let mut w = World::new();
    w.start_put(manifest(0, 0), false);
    w.upload_all(0);
    w.commit(0);
    w.t.remove("f0").unwrap();
    // Begun after the rm, so the deletions need not wait for it.
    w.start_put(manifest(1, 2), false);
    for _ in 0..3 {
        w.round(100, None);
    }
    for c in content(0) {
        let left = w.nodes.values().filter(|n| n.disk.contains(&c)).count();
        assert_eq!(left, 0, "copies of a removed file kept");
    }
    w.check().unwrap();
}

// A put in flight that stored copies of chunks another file also has,
// which is then removed: the put began before the removal, so those
// copies stay until it commits, and it commits.
#[test]
fn rm_of_a_file_sharing_chunks_with_a_put_in_flight() {
    let mut w = World::new();
    w.start_put(manifest(0, 0), false);
    w.upload_all(0);
    w.commit(0);
    // Content 1 shares chunk 1 with content 0.
    w.start_put(manifest(1, 1), false);
    w.upload_all(0);
    w.heartbeat_all(false);
    w.t.remove("f0").unwrap();
    for _ in 0..3 {
        w.round(100, Some(0));
    }
    let before = w.commits;
    w.commit(0);
    assert_eq!(w.commits, before + 1);
    w.check().unwrap();
    // Chunk 0, of the removed file only, went once the put was over.
    for _ in 0..3 {
        w.round(100, None);
    }
    let only_removed = content(0)[0];
    assert!(w.nodes.values().all(|n| !n.disk.contains(&only_removed)));
}
