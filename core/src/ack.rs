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
//!
//! An acknowledgement also carries a [`Receipt`]: a MAC over the chunk and
//! the stamp under a key only the node and the tracker know (handed to the
//! node with each registration session, derived by the tracker from a
//! secret of its own). A put's client passes receipts on to its commit, and
//! the tracker counts a holder on the client's word only if its receipt
//! checks: a client cannot commit a file naming holders that never stored
//! its chunks.

use std::collections::HashMap;

use crate::id::{ChunkId, NodeId};

/// The key a node's receipts are made with during one session.
pub type ReceiptKey = [u8; 32];

/// A node's proof that it durably stored a chunk (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receipt(pub [u8; 32]);

/// A node's acknowledgement of an upload, as a put carries it to its
/// commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ack {
    pub stamp: Stamp,
    pub receipt: Receipt,
}

/// The key of `node`'s receipts in `session`, from the tracker's secret.
pub fn receipt_key(secret: &[u8; 32], node: &NodeId, session: u64) -> ReceiptKey {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"p2p receipt key v1\0");
    h.update(node.as_str().as_bytes());
    h.update(&[0]);
    h.update(&session.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The receipt for `chunk` stored at `stamp`.
pub fn receipt(key: &ReceiptKey, chunk: &ChunkId, stamp: Stamp) -> Receipt {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"p2p receipt v1\0");
    h.update(chunk.as_bytes());
    h.update(&stamp.session.to_le_bytes());
    h.update(&stamp.seq.to_le_bytes());
    Receipt(*h.finalize().as_bytes())
}

/// Whether `ack` is a receipt made with `key` for `chunk` (compared in
/// constant time).
pub fn receipt_holds(key: &ReceiptKey, chunk: &ChunkId, ack: &Ack) -> bool {
    blake3::Hash::from(receipt(key, chunk, ack.stamp).0) == blake3::Hash::from(ack.receipt.0)
}

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
    /// This session's receipt key (see [`receipt`]).
    key: ReceiptKey,
    /// The latest acknowledgement of each chunk that could still make a
    /// delete be skipped.
    acked: HashMap<ChunkId, Stamp>,
}

impl AckBook {
    /// A new registration: heartbeats count from 1 again. Earlier
    /// acknowledgements cannot match a delete of this session.
    pub fn registered(&mut self, session: u64, key: ReceiptKey) {
        self.now = Stamp { session, seq: 0 };
        self.key = key;
        self.acked.clear();
    }

    /// The stamp of the heartbeat about to be sent.
    pub fn next_heartbeat(&mut self) -> Stamp {
        self.now.seq += 1;
        self.now
    }

    /// An upload of `chunk` is in place: the stamp and receipt its
    /// acknowledgement carries.
    pub fn acked(&mut self, chunk: ChunkId) -> Ack {
        self.acked.insert(chunk, self.now);
        Ack {
            stamp: self.now,
            receipt: receipt(&self.key, &chunk, self.now),
        }
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
        b.registered(7, [7; 32]);
        let before = b.acked(c).stamp;
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
        b.registered(8, [8; 32]);
        assert!(b.is_empty());
    }

    #[test]
    fn receipts_hold_only_for_their_key_chunk_and_stamp() {
        let secret = [3u8; 32];
        let n = NodeId::new("n1").unwrap();
        let key = receipt_key(&secret, &n, 5);
        let mut b = AckBook::default();
        b.registered(5, key);
        let c = ChunkId::of(b"c");
        let ack = b.acked(c);
        assert!(receipt_holds(&key, &c, &ack));
        // Another chunk, another stamp, another session's or node's key,
        // another tracker's secret: no.
        assert!(!receipt_holds(&key, &ChunkId::of(b"d"), &ack));
        let later = Ack {
            stamp: s(5, 9),
            ..ack
        };
        assert!(!receipt_holds(&key, &c, &later));
        assert!(!receipt_holds(&receipt_key(&secret, &n, 6), &c, &ack));
        let m = NodeId::new("n2").unwrap();
        assert!(!receipt_holds(&receipt_key(&secret, &m, 5), &c, &ack));
        assert!(!receipt_holds(&receipt_key(&[4; 32], &n, 5), &c, &ack));
        assert!(!receipt_holds(&key, &c, &Ack::default()));
    }
}
