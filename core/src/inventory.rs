//! What a node holds, and the changes it has not yet reported to the tracker.

use std::collections::{BTreeMap, BTreeSet};

use crate::id::ChunkId;

/// A node's chunk inventory with an outbox of unreported changes.
///
/// Drive contract: call [`Inventory::added`] for every upload stored and
/// [`Inventory::removed`] for every copy lost; at each heartbeat, [`Inventory::take_delta`] gives what to
/// send. If the heartbeat fails, [`Inventory::restore_delta`] puts it back; if
/// the tracker asks for a full report, send [`Inventory::all`] with a register.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    held: BTreeSet<ChunkId>,
    /// Written since the last report, with the put each was for (0: none).
    unreported_added: BTreeMap<ChunkId, u64>,
    unreported_removed: BTreeSet<ChunkId>,
}

/// Changes since the last successful report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub added: Vec<ChunkId>,
    /// The put each added chunk was written for (0: none), in order.
    pub added_puts: Vec<u64>,
    pub removed: Vec<ChunkId>,
}

impl Inventory {
    pub fn new(held: impl IntoIterator<Item = ChunkId>) -> Self {
        Self {
            held: held.into_iter().collect(),
            ..Default::default()
        }
    }

    /// `id` was written here (an upload, new or not) for put `put` (0:
    /// none, such as a repair copy): reported as added at the next
    /// heartbeat even if it was held already, so the tracker learns that a
    /// put may be counting on this copy (see [`crate::ack`]).
    pub fn added(&mut self, id: ChunkId, put: u64) {
        self.held.insert(id);
        self.unreported_removed.remove(&id);
        let p = self.unreported_added.entry(id).or_insert(put);
        if put != 0 {
            *p = put;
        }
    }

    pub fn removed(&mut self, id: ChunkId) {
        if self.held.remove(&id) {
            self.unreported_added.remove(&id);
            self.unreported_removed.insert(id);
        }
    }

    /// The tracker asked for `id` to be deleted and it is gone (or was
    /// never here): report it removed either way, so the tracker knows the
    /// deletion was carried out rather than lost.
    pub fn deleted(&mut self, id: ChunkId) {
        self.held.remove(&id);
        self.unreported_added.remove(&id);
        self.unreported_removed.insert(id);
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.held.contains(id)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn all(&self) -> Vec<ChunkId> {
        self.held.iter().copied().collect()
    }

    /// Take the unreported changes; a full report also clears them.
    pub fn take_delta(&mut self) -> Delta {
        let (added, added_puts) = std::mem::take(&mut self.unreported_added)
            .into_iter()
            .unzip();
        Delta {
            added,
            added_puts,
            removed: std::mem::take(&mut self.unreported_removed)
                .into_iter()
                .collect(),
        }
    }

    /// A report failed: keep its changes for the next one (newer changes win).
    pub fn restore_delta(&mut self, delta: Delta) {
        for (i, id) in delta.added.into_iter().enumerate() {
            if self.held.contains(&id) && !self.unreported_removed.contains(&id) {
                let put = delta.added_puts.get(i).copied().unwrap_or(0);
                let p = self.unreported_added.entry(id).or_insert(put);
                if *p == 0 {
                    *p = put;
                }
            }
        }
        for id in delta.removed {
            if !self.held.contains(&id) && !self.unreported_added.contains_key(&id) {
                self.unreported_removed.insert(id);
            }
        }
    }

    /// A full report was sent: no removal is pending any more. Additions
    /// still are: a full report does not cancel a deletion the tracker has
    /// yet to send, and the heartbeat after it must (see [`crate::ack`]).
    pub fn reported_all(&mut self) {
        self.unreported_removed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A failed heartbeat loses no change, and later changes win.
    #[test]
    fn failed_report_keeps_changes() {
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        let mut inv = Inventory::default();
        inv.added(a, 7);
        inv.added(b, 0);
        let d = inv.take_delta();
        assert_eq!(d.added.len(), 2);
        inv.removed(b);
        inv.restore_delta(d);
        let d2 = inv.take_delta();
        assert_eq!(d2.added, vec![a]);
        assert_eq!(d2.added_puts, vec![7]);
        assert_eq!(d2.removed, vec![b]);
        assert!(inv.take_delta().added.is_empty());
    }
}
