//! The client's get plan: which holder to ask for which chunk.
//!
//! # Drive contract
//! - Input: [`GetPlan::handle_done`] when chunk `i` arrived and its hash
//!   matched; [`GetPlan::handle_failed`] when a fetch failed (unreachable,
//!   missing, or wrong bytes).
//! - Output: after every input (and once after construction), drain
//!   [`GetPlan::poll_fetch`] until `None` and start each fetch; then check
//!   [`GetPlan::poll_outcome`], which yields the result exactly once.
//!
//! Fetches are spread over holders (fewest in flight first, and chunk `i`
//! starts its search at holder `i mod n`), so a file downloads from every
//! holder at once. A holder that served wrong bytes or lacks the chunk is
//! never asked for it again; an unreachable one may be asked again in a
//! later round, up to `attempts_max` attempts per chunk.

use std::collections::{BTreeMap, BTreeSet};

/// One holder of a chunk, as the tracker reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<H> {
    pub holder: H,
    /// Believed alive by the tracker; others are tried only after these.
    pub preferred: bool,
}

/// Start fetching chunk `chunk` from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch<H> {
    pub chunk: usize,
    pub from: H,
}

/// How a fetch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// The holder could not be reached or timed out: it may work later.
    Unreachable,
    /// The holder does not have the chunk, or served bytes whose hash did
    /// not match: never ask it for this chunk again.
    Bad,
}

/// The plan's single result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOutcome<H> {
    /// Every chunk arrived intact.
    Complete,
    /// Chunk `chunk` could not be obtained from any holder.
    Failed {
        chunk: usize,
        attempts: Vec<(H, FetchFailure)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight,
    Done,
}

#[derive(Debug)]
struct ChunkPlan<H> {
    candidates: Vec<Candidate<H>>,
    state: State,
    bad: BTreeSet<usize>,
    tried_this_round: BTreeSet<usize>,
    attempts: Vec<(H, FetchFailure)>,
    in_flight_from: Option<usize>,
}

/// See the module docs.
#[derive(Debug)]
pub struct GetPlan<H: Ord + Clone> {
    chunks: Vec<ChunkPlan<H>>,
    waiting: BTreeSet<usize>,
    load: BTreeMap<H, usize>,
    in_flight: usize,
    in_flight_max: usize,
    attempts_max: usize,
    done: usize,
    outcome: Option<GetOutcome<H>>,
    outcome_taken: bool,
}

impl<H: Ord + Clone> GetPlan<H> {
    /// `candidates[i]` are the holders of chunk `i`. At most `in_flight_max`
    /// fetches run at once; a chunk is attempted at most `attempts_max` times.
    pub fn new(
        candidates: Vec<Vec<Candidate<H>>>,
        in_flight_max: usize,
        attempts_max: usize,
    ) -> Self {
        assert!(in_flight_max > 0 && attempts_max > 0);
        let waiting = (0..candidates.len()).collect();
        let chunks = candidates
            .into_iter()
            .map(|c| ChunkPlan {
                candidates: c,
                state: State::Waiting,
                bad: BTreeSet::new(),
                tried_this_round: BTreeSet::new(),
                attempts: Vec::new(),
                in_flight_from: None,
            })
            .collect();
        Self {
            chunks,
            waiting,
            load: BTreeMap::new(),
            in_flight: 0,
            in_flight_max,
            attempts_max,
            done: 0,
            outcome: None,
            outcome_taken: false,
        }
    }

    /// Number of fetches under way.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Chunks that arrived intact so far.
    pub fn done(&self) -> usize {
        self.done
    }

    /// Next fetch to start, if a slot is free and a chunk is waiting.
    pub fn poll_fetch(&mut self) -> Option<Fetch<H>> {
        if self.outcome.is_some() {
            return None;
        }
        if self.in_flight >= self.in_flight_max {
            return None;
        }
        let chunk = *self.waiting.first()?;
        let Some(cand) = self.pick_holder(chunk) else {
            let c = &self.chunks[chunk];
            self.outcome = Some(GetOutcome::Failed {
                chunk,
                attempts: c.attempts.clone(),
            });
            return None;
        };
        self.waiting.remove(&chunk);
        let c = &mut self.chunks[chunk];
        c.state = State::InFlight;
        c.in_flight_from = Some(cand);
        c.tried_this_round.insert(cand);
        let holder = c.candidates[cand].holder.clone();
        *self.load.entry(holder.clone()).or_default() += 1;
        self.in_flight += 1;
        Some(Fetch {
            chunk,
            from: holder,
        })
    }

    fn pick_holder(&mut self, chunk: usize) -> Option<usize> {
        let c = &mut self.chunks[chunk];
        if c.attempts.len() >= self.attempts_max {
            return None;
        }
        let usable: Vec<usize> = (0..c.candidates.len())
            .filter(|i| !c.bad.contains(i))
            .collect();
        if usable.is_empty() {
            return None;
        }
        if usable.iter().all(|i| c.tried_this_round.contains(i)) {
            c.tried_this_round.clear();
        }
        let n = c.candidates.len();
        usable
            .into_iter()
            .filter(|i| !c.tried_this_round.contains(i))
            .min_by_key(|&i| {
                let cand = &c.candidates[i];
                let load = self.load.get(&cand.holder).copied().unwrap_or(0);
                (!cand.preferred, load, (i + n - chunk % n) % n)
            })
    }

    fn settle(&mut self, chunk: usize, from: &H) -> Option<usize> {
        let c = self.chunks.get_mut(chunk)?;
        if c.state != State::InFlight || c.candidates[c.in_flight_from?].holder != *from {
            return None;
        }
        let cand = c.in_flight_from.take();
        self.in_flight -= 1;
        if let Some(l) = self.load.get_mut(from) {
            *l -= 1;
        }
        cand
    }

    /// Chunk `chunk` is already at hand (a resumed download verified it):
    /// it is never fetched. Only a chunk still waiting is affected.
    pub fn have(&mut self, chunk: usize) {
        if !self.waiting.remove(&chunk) {
            return;
        }
        self.chunks[chunk].state = State::Done;
        self.done += 1;
        if self.done == self.chunks.len() && self.outcome.is_none() {
            self.outcome = Some(GetOutcome::Complete);
        }
    }

    /// Chunk `chunk` arrived intact from `from`. Reports that match no fetch
    /// in flight are ignored, so a chunk completes exactly once.
    pub fn handle_done(&mut self, chunk: usize, from: &H) {
        if self.settle(chunk, from).is_none() {
            return;
        }
        self.chunks[chunk].state = State::Done;
        self.done += 1;
        if self.done == self.chunks.len() && self.outcome.is_none() {
            self.outcome = Some(GetOutcome::Complete);
        }
    }

    /// The fetch of `chunk` from `from` failed; it will be retried elsewhere.
    pub fn handle_failed(&mut self, chunk: usize, from: &H, why: FetchFailure) {
        let Some(cand) = self.settle(chunk, from) else {
            return;
        };
        let c = &mut self.chunks[chunk];
        c.state = State::Waiting;
        c.attempts.push((from.clone(), why));
        if why == FetchFailure::Bad {
            c.bad.insert(cand);
        }
        self.waiting.insert(chunk);
    }

    /// The result, exactly once: `Some` the first time the plan has one.
    pub fn poll_outcome(&mut self) -> Option<GetOutcome<H>> {
        if self.outcome_taken {
            return None;
        }
        if self.chunks.is_empty() && self.outcome.is_none() {
            self.outcome = Some(GetOutcome::Complete);
        }
        let o = self.outcome.clone()?;
        self.outcome_taken = true;
        Some(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cands(holders: &[u8]) -> Vec<Candidate<u8>> {
        holders
            .iter()
            .map(|&h| Candidate {
                holder: h,
                preferred: true,
            })
            .collect()
    }

    // Chunks are spread over holders, not all fetched from the first one.
    #[test]
    fn fetches_spread_over_holders() {
        let mut p = GetPlan::new(vec![cands(&[1, 2, 3]); 6], 6, 6);
        let mut from = BTreeMap::new();
        while let Some(f) = p.poll_fetch() {
            *from.entry(f.from).or_insert(0) += 1;
        }
        assert_eq!(from.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    // Chunks a resumed download already has are never fetched; with all of
    // them at hand the plan completes without a fetch, even with no holder.
    #[test]
    fn chunks_at_hand_are_not_fetched() {
        let mut p = GetPlan::new(vec![cands(&[1, 2]); 4], 8, 4);
        p.have(1);
        p.have(3);
        p.have(3);
        let mut fetched = Vec::new();
        while let Some(f) = p.poll_fetch() {
            fetched.push(f.chunk);
        }
        assert_eq!(fetched, vec![0, 2]);
        let from = fetched_from(&p, 0);
        p.handle_done(0, &from);
        assert_eq!(p.done(), 3);
        let mut all: GetPlan<u8> = GetPlan::new(vec![vec![]; 2], 8, 4);
        all.have(0);
        all.have(1);
        assert_eq!(all.poll_fetch(), None);
        assert_eq!(all.poll_outcome(), Some(GetOutcome::Complete));
    }

    fn fetched_from(p: &GetPlan<u8>, chunk: usize) -> u8 {
        let c = &p.chunks[chunk];
        c.candidates[c.in_flight_from.expect("in flight")].holder
    }

    // A holder believed dead is tried only after the live ones failed.
    #[test]
    fn suspects_come_last() {
        let c = vec![
            Candidate {
                holder: 9u8,
                preferred: false,
            },
            Candidate {
                holder: 1,
                preferred: true,
            },
        ];
        let mut p = GetPlan::new(vec![c], 1, 4);
        let f = p.poll_fetch().unwrap();
        assert_eq!(f.from, 1);
        p.handle_failed(0, &1, FetchFailure::Bad);
        assert_eq!(p.poll_fetch().unwrap().from, 9);
        p.handle_done(0, &9);
        assert_eq!(p.poll_outcome(), Some(GetOutcome::Complete));
        assert_eq!(p.poll_outcome(), None, "the outcome comes exactly once");
    }

    // A holder that served bad bytes is never asked again; the plan then fails.
    #[test]
    fn bad_holder_is_not_retried() {
        let mut p = GetPlan::new(vec![cands(&[1])], 1, 10);
        let f = p.poll_fetch().unwrap();
        p.handle_failed(f.chunk, &f.from, FetchFailure::Bad);
        assert_eq!(p.poll_fetch(), None);
        assert!(matches!(
            p.poll_outcome(),
            Some(GetOutcome::Failed { chunk: 0, .. })
        ));
    }

    // An empty file completes at once.
    #[test]
    fn empty_plan_completes() {
        let mut p: GetPlan<u8> = GetPlan::new(vec![], 4, 4);
        assert_eq!(p.poll_fetch(), None);
        assert_eq!(p.poll_outcome(), Some(GetOutcome::Complete));
    }

    #[derive(Debug, Clone, Copy)]
    enum Behaviour {
        Good,
        Corrupt,
        Flaky(u8),
        Down,
    }

    fn behaviour() -> impl Strategy<Value = Behaviour> {
        prop_oneof![
            Just(Behaviour::Good),
            Just(Behaviour::Corrupt),
            (1u8..3).prop_map(Behaviour::Flaky),
            Just(Behaviour::Down),
        ]
    }

    proptest! {
        // The plan completes iff every chunk has a holder that eventually
        // serves it intact within the attempt budget; it never runs two
        // fetches of one chunk at once nor more than the in-flight limit, and
        // its outcome comes exactly once.
        #[test]
        fn completes_iff_every_chunk_obtainable(
            chunks in proptest::collection::vec(proptest::collection::vec(behaviour(), 0..4), 0..12),
            in_flight_max in 1usize..5,
            order_seed in any::<u64>(),
        ) {
            // 3 holders answering at their 3rd try at worst (2 flaky
            // failures), one round over every holder at a time: 9 attempts.
            let attempts_max = 9;
            let candidates: Vec<Vec<Candidate<u8>>> = chunks
                .iter()
                .map(|hs| (0..hs.len() as u8).map(|h| Candidate { holder: h, preferred: true }).collect())
                .collect();
            let mut flaky_left: Vec<Vec<u8>> = chunks
                .iter()
                .map(|hs| hs.iter().map(|b| if let Behaviour::Flaky(n) = b { *n } else { 0 }).collect())
                .collect();
            let mut plan = GetPlan::new(candidates, in_flight_max, attempts_max);
            let mut running: Vec<Fetch<u8>> = Vec::new();
            let mut rng = order_seed;
            let mut served = vec![0usize; chunks.len()];
            let mut outcome = None;
            for _ in 0..10_000 {
                while let Some(f) = plan.poll_fetch() {
                    prop_assert!(running.iter().all(|r| r.chunk != f.chunk));
                    running.push(f);
                }
                prop_assert!(running.len() <= in_flight_max);
                if let Some(o) = plan.poll_outcome() {
                    prop_assert!(outcome.is_none());
                    outcome = Some(o);
                    break;
                }
                prop_assert!(!running.is_empty(), "plan stalled");
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let f = running.swap_remove((rng >> 33) as usize % running.len());
                match chunks[f.chunk][f.from as usize] {
                    Behaviour::Good => { served[f.chunk] += 1; plan.handle_done(f.chunk, &f.from) }
                    Behaviour::Corrupt => plan.handle_failed(f.chunk, &f.from, FetchFailure::Bad),
                    Behaviour::Down => plan.handle_failed(f.chunk, &f.from, FetchFailure::Unreachable),
                    Behaviour::Flaky(_) => {
                        let left = &mut flaky_left[f.chunk][f.from as usize];
                        if *left > 0 {
                            *left -= 1;
                            plan.handle_failed(f.chunk, &f.from, FetchFailure::Unreachable);
                        } else {
                            served[f.chunk] += 1;
                            plan.handle_done(f.chunk, &f.from);
                        }
                    }
                }
            }
            let outcome = outcome.expect("plan finished");
            let obtainable = chunks.iter().all(|hs| {
                hs.iter().any(|b| matches!(b, Behaviour::Good | Behaviour::Flaky(_)))
            });
            // With at most 3 holders, 2 flaky failures each and 9 attempts,
            // an obtainable chunk is always obtained.
            prop_assert_eq!(outcome == GetOutcome::Complete, obtainable);
            if obtainable {
                prop_assert!(served.iter().all(|&s| s == 1));
            }
        }
    }
}
