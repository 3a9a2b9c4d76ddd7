//! When a stored copy may be deleted: the rule a node and the tracker share
//! so that a copy a put was told is durable is never deleted under it.
//!
//! The race: the tracker tells node `N` to delete chunk `C` (its file was
//! removed, or `C` has a copy too many) in the reply to one of `N`'s
//! heartbeats, while a put of a file that also contains `C` uploads `C` to
//! `N` and is told "stored". If `N` carries out the delete after the upload,
//! the put's copy is gone; if the put then commits `N` as a holder, a file
//! is acknowledged with a copy fewer than counted.
//!
//! The rule, in three parts:
//! - Every acknowledgement of an upload carries a [`Stamp`]: the node's
//!   registration session and the number of the last heartbeat it sent.
//!   The node also reports the chunk in its next heartbeat as written, even
//!   if it already held it ("touched").
//! - The tracker applies a heartbeat's touched chunks before it hands out
//!   that heartbeat's commands: a deletion of `C` on `N` not yet sent is
//!   cancelled, and an orphan `C` waits its grace again. So a delete that
//!   goes out in reply to heartbeat `h` was decided after every upload `N`
//!   acknowledged before sending `h`, unless the tracker decided afresh.
//! - The node skips a delete of `C` that came in the reply to heartbeat `h`
//!   if it acknowledged an upload of `C` after sending `h` (same session,
//!   stamp at least `h`): that upload may be a put the tracker did not know
//!   of when it decided. A skipped delete is not reported as done, so the
//!   tracker counts the copy again and decides anew. The tracker, at commit,
//!   counts a holder it sent a delete to exactly when the same
//!   [`survives`] says the node skipped it.
//!
//! Node side: [`AckBook`]. Its uploads and deletes of one chunk must not
//! interleave (the node serialises them per chunk), and the stamp is taken
//! after the copy is in place.

use std::collections::HashMap;

use crate::id::ChunkId;

/// Where in a node's heartbeat sequence something happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The node's registration session with the tracker (0: none yet).
    pub session: u64,
    /// The number of the last heartbeat sent in that session (0: none).
    pub seq: u64,
}

/// Whether a copy acknowledged at `ack` survives a delete sent in the reply
/// to heartbeat `delete`, given the node's `current` session at the
/// tracker. The node and the tracker both decide by this function.
///
/// - Same session: the node skips the delete iff it acknowledged the copy
///   after sending that heartbeat.
/// - The delete went out in an earlier session than the current one and the
///   acknowledgement came in the current one: the node finished with every
///   reply of the earlier session before it registered again, so the copy
///   was written after the delete.
/// - Otherwise the order is unknown: the copy is not counted.
pub fn survives(ack: Stamp, delete: Stamp, current: u64) -> bool {
    if ack.session == 0 {
        return false;
    }
    if ack.session == delete.session {
        return ack.seq >= delete.seq;
    }
    ack.session == current && delete.session != current
}

/// A node's record of recent upload acknowledgements, and its place in the
/// heartbeat sequence. Drive contract:
/// - [`AckBook::registered`] when a registration returns a session;
/// - [`AckBook::next_heartbeat`] just before sending a heartbeat, in the
///   same critical section that takes the inventory changes to report;
/// - [`AckBook::acked`] after an upload's copy is in place, in the same
///   critical section that records it in the inventory as touched;
/// - [`AckBook::may_delete`] before carrying out each delete of a reply;
///   [`AckBook::replied`] once the reply's commands are done (or the
///   heartbeat failed).
#[derive(Debug, Default, Clone)]
pub struct AckBook {
    now: Stamp,
    /// The latest acknowledgement of each chunk that could still make a
    /// delete be skipped.
    acked: HashMap<ChunkId, Stamp>,
}

impl AckBook {
    /// A new registration: heartbeats count from 1 again. Earlier
    /// acknowledgements cannot match a delete of this session.
    pub fn registered(&mut self, session: u64) {
        self.now = Stamp { session, seq: 0 };
        self.acked.clear();
    }

    /// The stamp of the heartbeat about to be sent.
    pub fn next_heartbeat(&mut self) -> Stamp {
        self.now.seq += 1;
        self.now
    }

    /// An upload of `chunk` is in place: the stamp its acknowledgement
    /// carries.
    pub fn acked(&mut self, chunk: ChunkId) -> Stamp {
        self.acked.insert(chunk, self.now);
        self.now
    }

    /// Whether to carry out a delete of `chunk` that came in the reply to
    /// heartbeat `reply`: not if an upload of it was acknowledged since
    /// that heartbeat was sent (see [`survives`]).
    pub fn may_delete(&self, chunk: &ChunkId, reply: Stamp) -> bool {
        !self
            .acked
            .get(chunk)
            .is_some_and(|&a| survives(a, reply, self.now.session))
    }

    /// The reply to heartbeat `reply` is done with (or never came): no
    /// acknowledgement so far can match a later delete (the next heartbeat
    /// reports every one of them as touched).
    pub fn replied(&mut self, reply: Stamp) {
        self.acked
            .retain(|_, a| a.session == reply.session && a.seq > reply.seq);
    }

    /// Acknowledgements still remembered.
    pub fn len(&self) -> usize {
        self.acked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(session: u64, seq: u64) -> Stamp {
        Stamp { session, seq }
    }

    #[test]
    fn survives_by_order_within_a_session_and_across_sessions() {
        assert!(survives(s(5, 3), s(5, 3), 5));
        assert!(survives(s(5, 4), s(5, 3), 5));
        assert!(!survives(s(5, 2), s(5, 3), 5));
        // Delete in an earlier session, ack in the current one.
        assert!(survives(s(9, 0), s(5, 3), 9));
        // Ack in an earlier session than the delete: unknown, not counted.
        assert!(!survives(s(5, 7), s(9, 1), 9));
        // Neither current: unknown.
        assert!(!survives(s(5, 7), s(7, 1), 9));
        // No session: never.
        assert!(!survives(s(0, 0), s(0, 0), 0));
    }

    #[test]
    fn book_skips_deletes_of_chunks_acknowledged_after_the_heartbeat() {
        let c = ChunkId::of(b"c");
        let d = ChunkId::of(b"d");
        let mut b = AckBook::default();
        b.registered(7);
        let before = b.acked(c);
        assert_eq!(before, s(7, 0));
        let h1 = b.next_heartbeat();
        assert_eq!(h1, s(7, 1));
        // Acked before h1 was sent: h1 carried the touch; a delete in its
        // reply is the tracker's informed decision.
        assert!(b.may_delete(&c, h1));
        b.acked(d);
        // Acked after h1 was sent: the delete may predate the put.
        assert!(!b.may_delete(&d, h1));
        b.replied(h1);
        // Acknowledged before h2 is sent: h2 carries the touch.
        assert!(b.is_empty());
        let h2 = b.next_heartbeat();
        assert!(b.may_delete(&d, h2));
        b.acked(c);
        b.registered(8);
        assert!(b.is_empty());
    }
}
