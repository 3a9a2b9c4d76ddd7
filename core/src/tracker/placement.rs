//! Where new copies go: failure domains (zones) first, then room, then load.
//!
//! A chunk's copies go to as many distinct zones as have a node with room
//! for it, up to the chunk's factor: with `R` or more such zones, no two
//! copies share one; with fewer, every one of them gets a copy and the rest
//! go to the least loaded nodes of those zones again. Within that, the
//! least loaded node (the fewest chunks) is chosen first, ties by node id,
//! and a node whose disk cannot take the chunk is never chosen. A node
//! started without `--zone` is a zone of its own, so without zones this is
//! plain least-loaded placement.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// A node that may take copies: how loaded it is, its zone (any key that
/// is equal for nodes of one zone) and the bytes it can still take (`None`:
/// unknown, not limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) load: u64,
    pub(crate) zone: u64,
    pub(crate) room: Option<u64>,
}

/// Places the copies of many chunks among candidates, in time
/// proportional to the copies placed (times log of the candidates): each
/// zone keeps its candidates in a heap by load, and the zones are ordered
/// by their least loaded candidate.
#[derive(Debug)]
pub(crate) struct Placer {
    load: Vec<u64>,
    room: Vec<Option<u64>>,
    zone_of: Vec<usize>,
    /// By zone: its candidates as (load, rank).
    heaps: Vec<BinaryHeap<Reverse<(u64, usize)>>>,
    /// Zones with candidates left, by their least loaded one.
    order: BTreeSet<(u64, usize, usize)>,
    /// The key each zone has in `order`, if it is there.
    head: Vec<Option<(u64, usize)>>,
}

impl Placer {
    /// Candidates are known by their rank in `candidates`.
    pub(crate) fn new(candidates: &[Candidate]) -> Self {
        let mut zones: BTreeMap<u64, usize> = BTreeMap::new();
        let zone_of: Vec<usize> = candidates
            .iter()
            .map(|c| {
                let next = zones.len();
                *zones.entry(c.zone).or_insert(next)
            })
            .collect();
        let mut heaps = vec![BinaryHeap::new(); zones.len()];
        for (rank, c) in candidates.iter().enumerate() {
            heaps[zone_of[rank]].push(Reverse((c.load, rank)));
        }
        let mut p = Self {
            load: candidates.iter().map(|c| c.load).collect(),
            room: candidates.iter().map(|c| c.room).collect(),
            zone_of,
            heaps,
            order: BTreeSet::new(),
            head: vec![None; zones.len()],
        };
        for z in 0..p.heaps.len() {
            p.enqueue(z);
        }
        p
    }

    fn enqueue(&mut self, z: usize) {
        if let Some(key) = self.head[z].take() {
            self.order.remove(&(key.0, key.1, z));
        }
        if let Some(&Reverse(top)) = self.heaps[z].peek() {
            self.order.insert((top.0, top.1, z));
            self.head[z] = Some(top);
        }
    }

    /// Up to `replicas` distinct candidates for one chunk of `size` bytes
    /// (fewer only if fewer have room), in as many distinct zones as have
    /// room; each one chosen counts one chunk more and `size` bytes less
    /// room from now on. A candidate without room for `size` is dropped
    /// for good: `size` must never grow from one call to the next.
    pub(crate) fn place(&mut self, replicas: usize, size: u64) -> Vec<usize> {
        let mut chosen = Vec::with_capacity(replicas);
        while chosen.len() < replicas {
            // One round: one candidate from each zone, least loaded zones
            // first; a second round only if there are fewer zones than
            // copies.
            let mut round = Vec::new();
            while chosen.len() < replicas {
                let Some(&(load, rank, z)) = self.order.first() else {
                    break;
                };
                self.order.remove(&(load, rank, z));
                self.head[z] = None;
                while let Some(Reverse((_, rank))) = self.heaps[z].pop() {
                    if self.room[rank].is_none_or(|room| room >= size) {
                        chosen.push(rank);
                        break;
                    }
                }
                round.push(z);
            }
            if round.is_empty() {
                break;
            }
            for z in round {
                self.enqueue(z);
            }
        }
        for &rank in &chosen {
            self.load[rank] = self.load[rank].saturating_add(1);
            if let Some(room) = &mut self.room[rank] {
                *room -= size;
            }
            let z = self.zone_of[rank];
            self.heaps[z].push(Reverse((self.load[rank], rank)));
            self.enqueue(z);
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec((0u64..20, 0u64..5, prop::option::of(0u64..40)), 1..12).prop_map(
            |v| {
                v.into_iter()
                    .map(|(load, zone, room)| Candidate { load, zone, room })
                    .collect()
            },
        )
    }

    proptest! {
        /// Every chunk gets distinct nodes, in as many distinct zones as
        /// have room (up to its factor), never fewer nodes than have room,
        /// and no node ever gets more bytes than it had room for.
        #[test]
        fn zones_then_room(
            cands in candidates(),
            chunks in prop::collection::vec(1usize..5, 1..30),
            size in 1u64..8,
        ) {
            let mut p = Placer::new(&cands);
            let mut room: Vec<Option<u64>> = cands.iter().map(|c| c.room).collect();
            for replicas in chunks {
                let fits: Vec<usize> = (0..cands.len())
                    .filter(|&r| room[r].is_none_or(|x| x >= size))
                    .collect();
                let zones: BTreeSet<u64> = fits.iter().map(|&r| cands[r].zone).collect();
                let got = p.place(replicas, size);
                let distinct: BTreeSet<usize> = got.iter().copied().collect();
                prop_assert_eq!(distinct.len(), got.len(), "a node twice: {:?}", got);
                prop_assert_eq!(got.len(), replicas.min(fits.len()));
                let got_zones: BTreeSet<u64> = got.iter().map(|&r| cands[r].zone).collect();
                prop_assert_eq!(got_zones.len(), replicas.min(zones.len()).min(got.len()));
                for &r in &got {
                    if let Some(x) = room[r] {
                        prop_assert!(x >= size, "node {} past its room", r);
                        room[r] = Some(x - size);
                    }
                }
            }
        }
    }

    #[test]
    fn least_loaded_first_without_zones() {
        let cands: Vec<Candidate> = [5, 0, 3, 0]
            .iter()
            .enumerate()
            .map(|(i, &load)| Candidate {
                load,
                zone: i as u64,
                room: None,
            })
            .collect();
        let mut p = Placer::new(&cands);
        assert_eq!(p.place(3, 1), vec![1, 3, 2]);
        // 1 and 3 now hold 1 chunk, 2 holds 4, 0 holds 5.
        assert_eq!(p.place(2, 1), vec![1, 3]);
    }

    #[test]
    fn one_copy_per_zone_before_a_second() {
        // Zone 7 has the three least loaded nodes; zone 8 one busy node.
        let cands = [
            Candidate {
                load: 0,
                zone: 7,
                room: None,
            },
            Candidate {
                load: 0,
                zone: 7,
                room: None,
            },
            Candidate {
                load: 1,
                zone: 7,
                room: None,
            },
            Candidate {
                load: 9,
                zone: 8,
                room: None,
            },
        ];
        let mut p = Placer::new(&cands);
        let got = p.place(2, 1);
        assert_eq!(got, vec![0, 3]);
        let got = p.place(3, 1);
        assert_eq!(got, vec![1, 3, 0]);
    }
}
