//! Fan-out replication of one chunk: the client sends the chunk to `R`
//! targets in parallel, and replaces a target that fails with one the
//! tracker chooses.
//!
//! # Drive contract
//! - Inputs: [`ReplicaPut::handle_acked`] (the target durably stored the
//!   chunk), [`ReplicaPut::handle_failed`], [`ReplicaPut::add_targets`] (the
//!   tracker's answer to a [`PutAction::NeedTargets`]), and
//!   [`ReplicaPut::handle_no_targets`] when the tracker has none.
//! - Output: after every input (and once after construction), drain
//!   [`ReplicaPut::poll_action`] until `None`, then check
//!   [`ReplicaPut::outcome`].
//!
//! The chunk counts as stored only when `R` distinct targets acknowledged a
//! durable write; at most `R` uploads of one chunk are ever outstanding.

use std::collections::{BTreeSet, VecDeque};

/// What the driver should do next for this chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutAction<H> {
    /// Upload the chunk to this target.
    Upload(H),
    /// Ask the tracker for `count` more targets, none of `exclude`.
    NeedTargets { count: usize, exclude: Vec<H> },
}

/// Final state of one chunk's replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome<H> {
    /// `R` distinct targets acknowledged a durable write.
    Stored(Vec<H>),
    /// Too many targets failed, or the tracker has no more to offer.
    Failed { acked: usize, failed: Vec<H> },
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ReplicaPut<H: Ord + Clone> {
    replicas: usize,
    failures_max: usize,
    queued: VecDeque<H>,
    in_flight: BTreeSet<H>,
    acked: BTreeSet<H>,
    failed: BTreeSet<H>,
    awaiting_targets: bool,
    no_targets: bool,
}

impl<H: Ord + Clone> ReplicaPut<H> {
    /// Replicate to `targets` (normally `replicas` of them), tolerating up to
    /// `failures_max` failed targets before giving up.
    pub fn new(targets: Vec<H>, replicas: usize, failures_max: usize) -> Self {
        assert!(replicas > 0);
        let mut queued = VecDeque::new();
        for t in targets {
            if !queued.contains(&t) {
                queued.push_back(t);
            }
        }
        Self {
            replicas,
            failures_max,
            queued,
            in_flight: BTreeSet::new(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            awaiting_targets: false,
            no_targets: false,
        }
    }

    fn known(&self, h: &H) -> bool {
        self.queued.contains(h)
            || self.in_flight.contains(h)
            || self.acked.contains(h)
            || self.failed.contains(h)
    }

    pub fn poll_action(&mut self) -> Option<PutAction<H>> {
        if self.outcome().is_some() {
            return None;
        }
        let deficit = self.replicas - self.acked.len() - self.in_flight.len();
        if deficit == 0 {
            return None;
        }
        if let Some(h) = self.queued.pop_front() {
            self.in_flight.insert(h.clone());
            return Some(PutAction::Upload(h));
        }
        // Once the tracker had no target to offer, asking again at once
        // would spin: the chunk now completes with the uploads in flight, or
        // fails.
        if self.awaiting_targets || self.no_targets {
            return None;
        }
        self.awaiting_targets = true;
        let exclude = self
            .acked
            .iter()
            .chain(&self.in_flight)
            .chain(&self.failed)
            .cloned()
            .collect();
        Some(PutAction::NeedTargets {
            count: deficit,
            exclude,
        })
    }

    pub fn handle_acked(&mut self, h: &H) {
        if self.in_flight.remove(h) {
            self.acked.insert(h.clone());
        }
    }

    pub fn handle_failed(&mut self, h: &H) {
        if self.in_flight.remove(h) {
            self.failed.insert(h.clone());
        }
    }

    pub fn add_targets(&mut self, targets: Vec<H>) {
        self.awaiting_targets = false;
        for t in targets {
            if !self.known(&t) {
                self.queued.push_back(t);
            }
        }
    }

    pub fn handle_no_targets(&mut self) {
        self.awaiting_targets = false;
        self.no_targets = true;
    }

    pub fn outcome(&self) -> Option<PutOutcome<H>> {
        if self.acked.len() >= self.replicas {
            return Some(PutOutcome::Stored(self.acked.iter().cloned().collect()));
        }
        let stuck = self.no_targets && self.in_flight.is_empty() && self.queued.is_empty();
        if (self.failed.len() > self.failures_max || stuck) && self.in_flight.is_empty() {
            return Some(PutOutcome::Failed {
                acked: self.acked.len(),
                failed: self.failed.iter().cloned().collect(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The happy path: R uploads, R acks, stored.
    #[test]
    fn stores_after_r_acks() {
        let mut p = ReplicaPut::new(vec![1, 2, 3], 3, 3);
        let ups: Vec<_> = std::iter::from_fn(|| p.poll_action()).collect();
        assert_eq!(
            ups,
            vec![
                PutAction::Upload(1),
                PutAction::Upload(2),
                PutAction::Upload(3)
            ]
        );
        p.handle_acked(&1);
        p.handle_acked(&2);
        assert_eq!(p.outcome(), None);
        p.handle_acked(&3);
        assert_eq!(p.outcome(), Some(PutOutcome::Stored(vec![1, 2, 3])));
    }

    // A failed target is replaced by one the tracker picks, excluding every
    // node already involved.
    #[test]
    fn failed_target_is_replaced() {
        let mut p = ReplicaPut::new(vec![1, 2, 3], 3, 3);
        while p.poll_action().is_some() {}
        p.handle_acked(&1);
        p.handle_failed(&2);
        assert_eq!(
            p.poll_action(),
            Some(PutAction::NeedTargets {
                count: 1,
                exclude: vec![1, 3, 2]
            })
        );
        assert_eq!(p.poll_action(), None, "one request at a time");
        p.add_targets(vec![4]);
        assert_eq!(p.poll_action(), Some(PutAction::Upload(4)));
        p.handle_acked(&3);
        p.handle_acked(&4);
        assert_eq!(p.outcome(), Some(PutOutcome::Stored(vec![1, 3, 4])));
    }

    // When the tracker has nothing to offer, the chunk fails once in-flight uploads settle.
    #[test]
    fn fails_without_targets() {
        let mut p = ReplicaPut::new(vec![1, 2], 2, 5);
        while p.poll_action().is_some() {}
        p.handle_failed(&1);
        assert!(matches!(
            p.poll_action(),
            Some(PutAction::NeedTargets { .. })
        ));
        p.handle_no_targets();
        assert_eq!(p.outcome(), None, "an upload is still in flight");
        p.handle_acked(&2);
        assert_eq!(
            p.outcome(),
            Some(PutOutcome::Failed {
                acked: 1,
                failed: vec![1]
            })
        );
    }

    // After the tracker had nothing to offer, the plan does not ask again
    // while an upload is still in flight (the simulator found that spin).
    #[test]
    fn no_targets_is_not_asked_again() {
        let mut p = ReplicaPut::new(vec![1, 2, 3], 3, 5);
        while p.poll_action().is_some() {}
        p.handle_failed(&1);
        assert!(matches!(
            p.poll_action(),
            Some(PutAction::NeedTargets { .. })
        ));
        p.handle_no_targets();
        assert_eq!(p.poll_action(), None);
        assert_eq!(p.outcome(), None);
        p.handle_acked(&2);
        assert_eq!(p.poll_action(), None);
        p.handle_acked(&3);
        assert_eq!(
            p.outcome(),
            Some(PutOutcome::Failed {
                acked: 2,
                failed: vec![1]
            })
        );
    }

    // Too many failures give up.
    #[test]
    fn gives_up_after_failures_max() {
        let mut p = ReplicaPut::new(vec![1], 1, 1);
        for next in [2, 3] {
            let Some(PutAction::Upload(h)) = p.poll_action() else {
                panic!()
            };
            p.handle_failed(&h);
            if let Some(PutAction::NeedTargets { .. }) = p.poll_action() {
                p.add_targets(vec![next]);
            }
        }
        assert!(matches!(
            p.outcome(),
            Some(PutOutcome::Failed { acked: 0, .. })
        ));
    }
}
