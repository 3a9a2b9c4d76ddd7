//! Self-healing: which chunks to copy where, which copies to delete.
//!
//! Every [`Tracker::tick`] walks the chunks the health sets name (never the
//! whole chunk table: see `Tracker::reclassify`, which keeps them up to
//! date as copies come and go) and:
//! - takes chunks with fewer live copies than their factor by urgency,
//!   fewest live copies first (at most [`PLAN_SCAN_MAX`] a tick, and only
//!   while some node can still receive a copy). A chunk with one copy left
//!   is planned at once; one with two or more waits `repair_grace_ms` from the moment it
//!   was first seen under its factor, so a short outage causes no storm.
//! - plans a repair per missing copy: a live holder (the source) copies the
//!   chunk to a live node that does not hold it (the target, least loaded
//!   first). A node takes part in at most `repairs_per_node` repairs at once,
//!   as source or target, so repair never starves users' reads and writes.
//!   The command rides on the source's next heartbeat reply; the repair is
//!   done when the target reports the chunk in its inventory (it verified the
//!   hash and synced first), and planned again if that takes longer than
//!   `repair_timeout_ms` or if the source or target dies.
//! - trims copies above the factor (a node that was declared dead came back
//!   after its chunks were repaired): the most loaded holders delete theirs,
//!   once the surplus has lasted `dead_after_ms`, while every holder that
//!   keeps its copy was heard from within two heartbeats, and only after
//!   every keeper has read its copy back and found it intact, on request
//!   ([`NodeCommand::Verify`]) after the trim was chosen: a keeper's copy
//!   may have rotted unnoticed, or been found rotten and removed just
//!   before, and the trim would then leave the chunk short, or with none.
//! - deletes every copy of an orphan (a chunk held that no file references):
//!   at once when `rm` removed its last file, otherwise once it has been an
//!   orphan for `orphan_grace_ms` and no put in flight began before (see
//!   [`Tracker::touch_put`]). The orphan and surplus sets are scanned from
//!   where the last pass stopped, so copies that must wait (dead holders, a
//!   grace not yet over) never hide the ones after them.
//!
//! A deletion is remembered for [`TOMBSTONE_MS`], with the heartbeat whose
//! reply carried it: a put that raced with it counts that node as a holder
//! when it commits only if the node acknowledged the upload late enough to
//! skip the delete (see [`crate::ack`]). A deletion not sent yet is
//! cancelled by a commit or an upload of the chunk.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use roaring::RoaringBitmap;

use super::index::{ChunkIx, NodeIx};
use super::{NodeCommand, Tracker};
use crate::ack::Stamp;
use crate::id::{ChunkId, NodeId};
use crate::mutants::{self, Mutant};

/// How long a deletion is remembered against racing commits.
pub const TOMBSTONE_MS: u64 = 60 * 60 * 1000;

/// Commands of one kind sent in one heartbeat reply, at most.
pub const COMMANDS_PER_REPLY: usize = 1024;

/// Verifications asked of a node in one heartbeat reply, at most: each
/// reads a whole chunk.
pub const VERIFIES_PER_REPLY: usize = 64;

/// Chunks one planning pass looks at, at most, in each of the under- and
/// over-replicated sets: a tick's cost stays bounded however much is
/// waiting (the rest waits for the next tick, most urgent first).
pub const PLAN_SCAN_MAX: usize = 16 * 1024;

#[derive(Debug, Clone)]
struct Repair {
    source: NodeId,
    /// When the command left in a heartbeat reply; `None` while it waits
    /// for the source's next heartbeat.
    sent_ms: Option<u64>,
    planned_ms: u64,
}

/// How often the tracker decided each kind of self-healing work, since it
/// started: for tests and the simulator's coverage line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealCounters {
    /// Repair copies planned.
    pub repairs_planned: u64,
    /// Surplus copies told to go.
    pub trims: u64,
    /// Copies of removed files told to go.
    pub removed_deletions: u64,
    /// Copies no file referenced for the grace told to go.
    pub orphan_deletions: u64,
    /// Deletions sent in heartbeat replies.
    pub deletes_sent: u64,
    /// Deletions not sent yet that an upload or a commit cancelled.
    pub deletes_cancelled: u64,
    /// Copies a leaving node was told to hand over.
    pub handoffs: u64,
    /// Keepers' copies verified intact on request before a trim.
    pub keepers_verified: u64,
    /// Copies a leave counted on (handed over, or kept by another holder)
    /// read back intact on request before the leave went through.
    pub leave_copies_verified: u64,
    /// Extra copies planned to spread a chunk over more zones (the copy in
    /// the crowded zone is trimmed once the new one is in).
    pub spread_moves: u64,
}

/// A surplus chosen to go, waiting for every holder that keeps a copy to
/// verify it.
#[derive(Debug, Clone)]
struct TrimCheck {
    /// Each keeper, the heartbeat whose reply asked it to verify (`None`
    /// until the request is sent), and whether it answered that intact.
    keepers: Vec<(NodeIx, Option<Stamp>, bool)>,
    /// When the surplus was chosen: asked again if the answers take longer
    /// than the repair timeout (a reply or a report was lost).
    began_ms: u64,
}

/// A copy a leave counts on, waiting for its holder to read it back intact:
/// a copy the leaving node handed over (seed 9001730 lost a file of factor
/// 1 when one rotted at once and the leaving node took the last intact
/// copy away), or one another holder kept (seed 1750681844: a keeper's copy
/// had rotted unnoticed). A leave, like a trim, takes a copy away.
#[derive(Debug, Clone)]
struct LeaveCheck {
    /// A copy handed over (not one its holder had before the leave).
    handed: bool,
    /// The leaving node it was made for, and the holder's id.
    leaver: NodeIx,
    holder: NodeId,
    /// The heartbeat of the holder whose reply asked it to verify (`None`
    /// until the request is sent), and whether it answered that intact.
    asked: Option<Stamp>,
    intact: bool,
    /// When it was reported (or asked again): asked again if the answer
    /// takes longer than the repair timeout (a reply or a report was lost).
    began_ms: u64,
}

/// The tracker's repair bookkeeping. None of it is durable: after a restart
/// the nodes' full reports rebuild what matters and planning starts over.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealState {
    pub(crate) counters: HealCounters,
    /// Planned repairs, by chunk and target.
    repairs: BTreeMap<ChunkId, BTreeMap<NodeId, Repair>>,
    /// When each chunk was first seen by the planner under its factor;
    /// dropped when it leaves the under-replicated set.
    under_since: BTreeMap<ChunkIx, u64>,
    /// When each chunk was first seen by the planner above its factor.
    over_since: BTreeMap<ChunkIx, u64>,
    /// Surplus copies chosen to go, waiting for every keeper to verify
    /// its copy.
    trim_checks: BTreeMap<ChunkIx, TrimCheck>,
    /// Copies leaves count on (handed over, or kept by other holders), by
    /// chunk and holder, waiting for the holder to verify them.
    leave_checks: BTreeMap<(ChunkIx, NodeIx), LeaveCheck>,
    /// Verifications waiting for the keeper's next heartbeat.
    verifies: BTreeMap<NodeId, BTreeSet<ChunkIx>>,
    /// Orphans (held, referenced by no file) the planner has seen, and
    /// when they are due for deletion.
    orphan_since: BTreeMap<ChunkIx, OrphanSince>,
    /// Where the next planning pass resumes in the orphan and surplus
    /// sets, so entries that must wait never hide the ones after them.
    orphan_cursor: ChunkIx,
    over_cursor: ChunkIx,
    crowded_cursor: ChunkIx,
    /// Puts in flight: (when the lease began, when it was last renewed,
    /// its number in the order leases began).
    pub(crate) leases: BTreeMap<u64, (u64, u64, u64)>,
    /// Leases begun so far: numbers them.
    pub(crate) leases_begun: u64,
    /// Deletions waiting for the holder's next heartbeat.
    deletes: BTreeMap<NodeId, BTreeSet<ChunkId>>,
    /// Deletions sent, by chunk and node: when, and the heartbeat whose
    /// reply carried it (see [`crate::ack`]).
    tombstones: BTreeMap<(ChunkId, NodeId), (u64, Stamp)>,
    /// The same, oldest first, so expiry costs what expires.
    tombstone_queue: VecDeque<(u64, ChunkId, NodeId)>,
    /// Copies nodes reported gone (found rotten, or deleted), with the
    /// heartbeat that said so: an upload acknowledged before that heartbeat
    /// no longer counts when its put commits (see `Tracker::commit_with`).
    reported_gone: BTreeMap<(ChunkId, NodeId), (u64, Stamp)>,
    gone_queue: VecDeque<(u64, ChunkId, NodeId)>,
    /// Deletions sent whose outcome the node has not reported yet: until
    /// its next heartbeat it may or may not still hold the chunk.
    unconfirmed: BTreeMap<NodeId, BTreeSet<ChunkId>>,
}

impl HealState {
    /// The heartbeat in whose reply `node` was last told to delete
    /// `chunk`, if that was recent.
    pub(crate) fn tombstone(&self, chunk: &ChunkId, node: &NodeId) -> Option<Stamp> {
        self.tombstones
            .get(&(*chunk, node.clone()))
            .map(|&(_, stamp)| stamp)
    }

    /// Cancel a deletion of `chunk` on `node` that has not been sent yet;
    /// returns whether there was one.
    pub(crate) fn cancel_delete(&mut self, node: &NodeId, chunk: &ChunkId) -> bool {
        let Some(d) = self.deletes.get_mut(node) else {
            return false;
        };
        let had = d.remove(chunk);
        if d.is_empty() {
            self.deletes.remove(node);
        }
        self.counters.deletes_cancelled += u64::from(had);
        had
    }

    /// Keep only the deletions still to be sent to `node` that `keep` says
    /// still have a copy to delete.
    pub(crate) fn keep_queued_deletes(&mut self, node: &NodeId, keep: impl Fn(&ChunkId) -> bool) {
        if let Some(d) = self.deletes.get_mut(node) {
            d.retain(|c| keep(c));
            if d.is_empty() {
                self.deletes.remove(node);
            }
        }
    }

    /// Nodes with a deletion of `chunk` not sent yet.
    pub(crate) fn pending_deletes(&self, chunk: &ChunkId) -> Vec<NodeId> {
        self.deletes
            .iter()
            .filter(|(_, d)| d.contains(chunk))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A copy of orphan `cx` was just written by a put in flight (which
    /// may be about to reference it), or its file was replaced (a reader
    /// may still be fetching it): it waits the whole grace from `now_ms`.
    pub(crate) fn orphan_wait(&mut self, cx: ChunkIx, now_ms: u64) {
        self.orphan_since.insert(cx, OrphanSince::Seen(now_ms));
    }

    /// Whether a deletion of `chunk` on `node` is waiting to be sent or has
    /// been sent without the node reporting its outcome. Such a node never
    /// counts as a holder of `chunk`: it would be counted while the copy
    /// disappears, and the planner could then trim the last other copy.
    pub(crate) fn deleting(&self, chunk: &ChunkId, node: &NodeId) -> bool {
        if mutants::on(Mutant::DeletingCountsAsHolder) {
            return false;
        }
        let has = |m: &BTreeMap<NodeId, BTreeSet<ChunkId>>| {
            m.get(node).is_some_and(|d| d.contains(chunk))
        };
        has(&self.deletes) || has(&self.unconfirmed)
    }

    /// Whether a deletion of `chunk` is pending or unconfirmed on any node
    /// (what is, whatever a planted bug makes of it).
    pub(crate) fn any_deleting(&self, chunk: &ChunkId) -> bool {
        self.deletes
            .values()
            .chain(self.unconfirmed.values())
            .any(|d| d.contains(chunk))
    }

    /// Whether a trim of `cx` is waiting for its keepers' verifications.
    pub(crate) fn trimming(&self, cx: ChunkIx) -> bool {
        self.trim_checks.contains_key(&cx)
    }

    /// Keeper `nx` found its copy of `cx` intact, asked by the reply to
    /// heartbeat `asked`.
    pub(crate) fn verified(&mut self, cx: ChunkIx, nx: NodeIx, asked: Stamp) {
        if let Some(h) = self.leave_checks.get_mut(&(cx, nx))
            && h.asked == Some(asked)
            && !h.intact
        {
            h.intact = true;
            self.counters.leave_copies_verified += 1;
        }
        let Some(check) = self.trim_checks.get_mut(&cx) else {
            return;
        };
        for k in &mut check.keepers {
            if k.0 == nx && k.1 == Some(asked) && !k.2 {
                k.2 = true;
                self.counters.keepers_verified += 1;
            }
        }
    }

    /// `leaver` says it handed `cx` to `target`: the copy counts for the
    /// leave once `target` has read it back intact, asked from now on.
    pub(crate) fn handed(
        &mut self,
        cx: ChunkIx,
        target: (NodeIx, &NodeId),
        leaver: NodeIx,
        now_ms: u64,
    ) {
        let ask = !mutants::on(Mutant::CountUnverifiedHandoff);
        self.read_back(cx, target, leaver, true, ask, now_ms);
    }

    /// `leaver`'s leave counts on `holder`'s copy of `cx`: it counts once
    /// `holder` has read it back intact, asked from now on (unless already
    /// asked in this leave).
    pub(crate) fn kept(
        &mut self,
        cx: ChunkIx,
        holder: (NodeIx, &NodeId),
        leaver: NodeIx,
        now_ms: u64,
    ) {
        if !self.leave_checks.contains_key(&(cx, holder.0)) {
            let ask = !mutants::on(Mutant::LeaveTrustsSilentHolders);
            self.read_back(cx, holder, leaver, false, ask, now_ms);
        }
    }

    /// Record that `leaver`'s leave waits for `holder` to read its copy of
    /// `cx` back, and (unless a planted bug skips it) ask it to.
    fn read_back(
        &mut self,
        cx: ChunkIx,
        holder: (NodeIx, &NodeId),
        leaver: NodeIx,
        handed: bool,
        ask: bool,
        now_ms: u64,
    ) {
        let check = LeaveCheck {
            handed,
            leaver,
            holder: holder.1.clone(),
            asked: None,
            intact: false,
            began_ms: now_ms,
        };
        self.leave_checks.insert((cx, holder.0), check);
        if ask {
            self.verifies
                .entry(holder.1.clone())
                .or_default()
                .insert(cx);
        }
    }

    /// `leaver`'s checks unanswered for `timeout_ms`: asked again.
    pub(crate) fn ask_leave_checks_again(&mut self, leaver: NodeIx, now_ms: u64, timeout_ms: u64) {
        for (&(cx, _), h) in &mut self.leave_checks {
            if h.leaver == leaver && !h.intact && now_ms.saturating_sub(h.began_ms) > timeout_ms {
                h.asked = None;
                h.began_ms = now_ms;
                self.verifies
                    .entry(h.holder.clone())
                    .or_default()
                    .insert(cx);
            }
        }
    }

    /// Whether `holder`'s copy of `cx` may count for a leave: it was read
    /// back intact since the leave counted on it.
    pub(crate) fn read_back_intact(&self, cx: ChunkIx, holder: NodeIx) -> bool {
        match self.leave_checks.get(&(cx, holder)) {
            Some(h) if h.intact => true,
            Some(h) if h.handed => mutants::on(Mutant::CountUnverifiedHandoff),
            _ => mutants::on(Mutant::LeaveTrustsSilentHolders),
        }
    }

    /// Hand-over copies not yet read back intact: (chunk, leaver, target).
    pub(crate) fn unverified_handoffs(&self) -> impl Iterator<Item = (ChunkIx, NodeIx, &NodeId)> {
        self.leave_checks
            .iter()
            .filter(|(_, h)| h.handed && !h.intact)
            .map(|(&(cx, _), h)| (cx, h.leaver, &h.holder))
    }

    /// A new round of `leaver`'s leave: its earlier hand-overs are
    /// reported again, or not counted.
    pub(crate) fn forget_leave_of(&mut self, leaver: NodeIx) {
        self.leave_checks.retain(|_, h| h.leaver != leaver);
    }

    /// `nx` left: the checks of its hand-overs, and of copies handed to
    /// it, go.
    pub(crate) fn forget_leave_checks(&mut self, nx: NodeIx) {
        self.leave_checks
            .retain(|&(_, target), h| h.leaver != nx && target != nx);
    }

    /// `node` reported `chunk` gone in heartbeat `at`: a deletion not sent
    /// yet is moot, and an acknowledgement from before no longer counts.
    pub(crate) fn gone(&mut self, node: &NodeId, chunk: &ChunkId, at: Stamp, now_ms: u64) {
        self.cancel_delete(node, chunk);
        // A deletion the tracker sent, confirmed: its tombstone already
        // decides which acknowledgements count. Only losses the node found
        // itself (rare) are remembered here, so `rm` of a large file does
        // not keep a record per copy for an hour twice over.
        if self
            .unconfirmed
            .get(node)
            .is_some_and(|d| d.contains(chunk))
        {
            return;
        }
        self.reported_gone
            .insert((*chunk, node.clone()), (now_ms, at));
        self.gone_queue.push_back((now_ms, *chunk, node.clone()));
    }

    /// The heartbeat in which `node` last reported `chunk` gone, if recent.
    pub(crate) fn reported_gone(&self, chunk: &ChunkId, node: &NodeId) -> Option<Stamp> {
        self.reported_gone
            .get(&(*chunk, node.clone()))
            .map(|&(_, at)| at)
    }

    /// `node` reported after its last commands: every deletion they carried
    /// has been carried out (and reported gone) or was lost with the reply.
    pub(crate) fn settle(&mut self, node: &NodeId) -> BTreeSet<ChunkId> {
        self.unconfirmed.remove(node).unwrap_or_default()
    }

    /// `cx` (`id`) is no longer under its factor: planned repairs are moot.
    pub(crate) fn left_under(&mut self, cx: ChunkIx, id: &ChunkId) {
        self.under_since.remove(&cx);
        self.repairs.remove(id);
    }

    /// `cx` is no longer an orphan.
    pub(crate) fn left_orphans(&mut self, cx: ChunkIx) {
        self.orphan_since.remove(&cx);
    }

    /// `cx` is no longer above its factor.
    pub(crate) fn left_over(&mut self, cx: ChunkIx) {
        self.over_since.remove(&cx);
        self.trim_checks.remove(&cx);
    }

    /// `node` left the cluster: repairs to or from it, and deletions it
    /// was to carry out, are gone with it.
    pub(crate) fn forget_node(&mut self, node: &NodeId) {
        for targets in self.repairs.values_mut() {
            targets.retain(|target, r| target != node && r.source != *node);
        }
        self.repairs.retain(|_, t| !t.is_empty());
        self.deletes.remove(node);
        self.unconfirmed.remove(node);
        self.verifies.remove(node);
    }

    /// The last file that referenced orphan `cx` was removed: its copies
    /// go without the grace a copy of unknown origin gets, once no put that
    /// began before the removal is in flight (it may have stored a copy to
    /// count, of a file that shares the chunk).
    pub(crate) fn removed(&mut self, cx: ChunkIx) {
        self.orphan_since
            .insert(cx, OrphanSince::Removed(self.leases_begun));
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.repairs.values().map(BTreeMap::len).sum()
    }

    pub(crate) fn deletes_pending(&self) -> usize {
        self.deletes.values().map(BTreeSet::len).sum()
    }

    /// Repairs each node sends, and receives.
    fn busy(&self) -> (BTreeMap<NodeId, usize>, BTreeMap<NodeId, usize>) {
        let mut sending: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut receiving: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (target, r) in self.repairs.values().flatten() {
            *receiving.entry(target.clone()).or_default() += 1;
            *sending.entry(r.source.clone()).or_default() += 1;
        }
        (sending, receiving)
    }
}

/// When an orphan is due for deletion.
#[derive(Debug, Clone, Copy)]
enum OrphanSince {
    /// Its last file was removed (`rm`) when this many put leases had
    /// begun: delete as soon as every put in flight began after.
    Removed(u64),
    /// First seen by the planner then: delete after the grace, unless a
    /// put in flight began before it.
    Seen(u64),
}

/// Forget the entries of `map` older than [`TOMBSTONE_MS`]; `queue` holds
/// them oldest first, so this costs what expires (an entry renewed since it
/// was queued stays).
fn expire(
    queue: &mut VecDeque<(u64, ChunkId, NodeId)>,
    map: &mut BTreeMap<(ChunkId, NodeId), (u64, Stamp)>,
    now_ms: u64,
) {
    while let Some(&(at, _, _)) = queue.front() {
        if now_ms.saturating_sub(at) < TOMBSTONE_MS {
            break;
        }
        let (at, chunk, node) = queue.pop_front().expect("front exists");
        let key = (chunk, node);
        if map.get(&key).map(|t| t.0) == Some(at) {
            map.remove(&key);
        }
    }
}

/// At most `PLAN_SCAN_MAX` members of `set`, from `cursor` on and then
/// from the start; `cursor` moves past the last one taken.
fn scan(set: &RoaringBitmap, cursor: &mut ChunkIx) -> Vec<ChunkIx> {
    let taken: Vec<ChunkIx> = set
        .range(*cursor..)
        .chain(set.range(..*cursor))
        .take(PLAN_SCAN_MAX)
        .collect();
    *cursor = taken.last().map_or(0, |&last| last.wrapping_add(1));
    taken
}

/// Repair slots during one planning pass: copies each node sends and
/// receives, at most `limit` each, and how many nodes can still receive.
struct Slots {
    sending: BTreeMap<NodeId, usize>,
    receiving: BTreeMap<NodeId, usize>,
    open_targets: usize,
    limit: usize,
}

impl Slots {
    fn sends(&self, n: &NodeId) -> usize {
        self.sending.get(n).copied().unwrap_or(0)
    }

    fn takes(&self, n: &NodeId) -> usize {
        self.receiving.get(n).copied().unwrap_or(0)
    }
}

/// A repair as the tracker sees it, for tests and traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRepair {
    pub chunk: ChunkId,
    pub source: NodeId,
    pub target: NodeId,
    pub sent: bool,
}

impl Tracker {
    /// Schedule deletion of `chunk` on `node`, which stops counting as a
    /// holder at once.
    fn schedule_delete(&mut self, node: &NodeId, chunk: ChunkId) {
        self.unlink_id(node, &chunk);
        self.heal
            .deletes
            .entry(node.clone())
            .or_default()
            .insert(chunk);
    }

    /// Schedule the deletion of every live copy of `cx`; dead holders are
    /// told when they come back.
    fn delete_live_copies(&mut self, cx: ChunkIx) {
        let chunk = self.chunks.get(cx).id;
        for n in self.live_holder_ids(cx) {
            self.schedule_delete(&n, chunk);
        }
    }

    /// Whether surplus copies of `chunk` are chosen to go and wait for
    /// the copies that stay to be verified (see the module docs).
    pub fn trimming(&self, chunk: &ChunkId) -> bool {
        self.chunks
            .find(chunk)
            .is_some_and(|cx| self.heal.trimming(cx))
    }

    /// Whether a node has been or will be told to delete its copy of
    /// `chunk` and has not confirmed it yet: the copies that stay were
    /// checked before, so the simulator does not rot one now.
    pub fn deletion_pending(&self, chunk: &ChunkId) -> bool {
        self.heal.any_deleting(chunk)
    }

    /// Nodes with a deletion of `chunk` pending or unconfirmed.
    pub(crate) fn deleting_nodes(&self, chunk: &ChunkId) -> Vec<NodeId> {
        self.node_ix
            .keys()
            .filter(|n| self.heal.deleting(chunk, n))
            .cloned()
            .collect()
    }

    /// Plan repairs, trims and deletions. `tick` calls it; a driver may
    /// call it early (when repairs finished) so the next copies start sooner.
    /// Its cost is the repairs in flight and at most [`PLAN_SCAN_MAX`]
    /// chunks of each health set: an idle
    /// cluster costs next to nothing here, whatever it stores.
    pub fn plan(&mut self, now_ms: u64) {
        let timeout = self.config.repair_timeout_ms;
        expire(
            &mut self.heal.tombstone_queue,
            &mut self.heal.tombstones,
            now_ms,
        );
        expire(
            &mut self.heal.gone_queue,
            &mut self.heal.reported_gone,
            now_ms,
        );

        if self.recovering(now_ms) {
            return;
        }

        // Forget repairs that finished, failed or timed out.
        let mut finished = Vec::new();
        for (chunk, targets) in &self.heal.repairs {
            for (target, r) in targets {
                let done = self.chunks.find(chunk).is_some_and(|cx| {
                    self.node_ix
                        .get(target)
                        .is_some_and(|nx| self.chunks.get(cx).holders.contains(nx))
                });
                let expired = r
                    .sent_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) > timeout)
                    || now_ms.saturating_sub(r.planned_ms) > timeout.saturating_mul(2);
                let expired = expired && !mutants::on(Mutant::ForgetFailedRepair);
                if done || expired || !self.is_alive(target) || !self.is_alive(&r.source) {
                    finished.push((*chunk, target.clone()));
                }
            }
        }
        for (chunk, target) in finished {
            if let Some(targets) = self.heal.repairs.get_mut(&chunk) {
                targets.remove(&target);
                if targets.is_empty() {
                    self.heal.repairs.remove(&chunk);
                }
            }
        }

        // Orphans: delete every live copy (dead holders are told when they
        // come back) of a chunk whose last file was removed, or that no
        // file has referenced for the grace period and no put in flight
        // began before (the copy may be that put's). A commit racing the
        // deletion does not count a holder told to delete (see `deleted`).
        let grace = self.config.orphan_grace_ms;
        self.heal
            .leases
            .retain(|_, (_, last, _)| now_ms.saturating_sub(*last) < grace);
        let oldest_put = self.heal.leases.values().map(|l| l.0).min();
        let oldest_lease = self.heal.leases.values().map(|l| l.2).min();
        for cx in scan(&self.health.orphans, &mut self.heal.orphan_cursor) {
            let since = *self
                .heal
                .orphan_since
                .entry(cx)
                .or_insert(OrphanSince::Seen(now_ms));
            let due = match since {
                OrphanSince::Removed(begun) => oldest_lease.is_none_or(|l| l > begun),
                OrphanSince::Seen(at) => {
                    now_ms.saturating_sub(at) >= grace && oldest_put.is_none_or(|p| p > at)
                }
            };
            if due {
                let copies = self.live_holder_ids(cx).len() as u64;
                let c = &mut self.heal.counters;
                match since {
                    OrphanSince::Removed(_) => c.removed_deletions += copies,
                    OrphanSince::Seen(_) => c.orphan_deletions += copies,
                }
                self.delete_live_copies(cx);
            }
        }

        // Copies above the factor: trim the most loaded holders' copies,
        // but not while a full report is under way: a copy counted on the
        // reporting node may be one it no longer has.
        let reporting = self.nodes.iter().flatten().any(|n| n.report.is_some());
        let over = if reporting {
            Vec::new()
        } else {
            scan(&self.health.over, &mut self.heal.over_cursor)
        };
        let mut trims: Vec<(NodeId, ChunkId)> = Vec::new();
        for cx in over {
            let rec = self.chunks.get(cx);
            let want = rec.factor as usize;
            let live: Vec<NodeIx> = rec
                .holders
                .iter()
                .copied()
                .filter(|&nx| self.alive(nx))
                .collect();
            // Trim only a surplus that has lasted the dead-after time, and
            // only while every holder that keeps its copy was heard from
            // within two heartbeats: a holder that has just died still
            // counts as live until it is declared dead, and trimming
            // against it could delete the last real copy.
            let since = *self.heal.over_since.entry(cx).or_insert(now_ms);
            if now_ms.saturating_sub(since) < self.config.dead_after_ms {
                continue;
            }
            // One at a time: a copy in the zone with the most copies, then
            // on the most loaded holder.
            let mut remaining: Vec<(u64, u64, NodeIx)> = live
                .iter()
                .map(|&nx| (self.zone_key(nx), self.node(nx).chunks.len(), nx))
                .collect();
            let mut victims: Vec<(NodeId, NodeIx)> = Vec::new();
            for _ in want..live.len() {
                let pick = remaining
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, _, nx))| !self.node(*nx).leaving)
                    .max_by_key(|(_, (zone, load, nx))| {
                        let same = remaining.iter().filter(|r| r.0 == *zone).count();
                        (same, *load, &self.node(*nx).id)
                    })
                    .map(|(i, _)| i);
                let Some(i) = pick else { break };
                let (_, _, nx) = remaining.swap_remove(i);
                victims.push((self.node(nx).id.clone(), nx));
            }
            let chunk_id = rec.id;
            let keepers: Vec<NodeIx> = live
                .iter()
                .copied()
                .filter(|nx| !victims.iter().any(|v| v.1 == *nx))
                .collect();
            let keepers_fresh = keepers.iter().all(|&nx| self.heard_lately(nx, now_ms));
            // A keeper's copy may have rotted unnoticed, or been found
            // rotten and removed since its last heartbeat: trim only once
            // every keeper has read its copy back intact, asked after this
            // decision.
            let timeout = self.config.repair_timeout_ms;
            let confirmed = match self.heal.trim_checks.get(&cx) {
                Some(check)
                    if check.keepers.len() == keepers.len()
                        && check.keepers.iter().all(|k| keepers.contains(&k.0))
                        && now_ms.saturating_sub(check.began_ms) <= timeout =>
                {
                    check.keepers.iter().all(|k| k.2)
                }
                _ => {
                    let check = TrimCheck {
                        keepers: keepers.iter().map(|&nx| (nx, None, false)).collect(),
                        began_ms: now_ms,
                    };
                    self.heal.trim_checks.insert(cx, check);
                    for &nx in &keepers {
                        let id = self.node(nx).id.clone();
                        self.heal.verifies.entry(id).or_default().insert(cx);
                    }
                    false
                }
            };
            let confirmed = confirmed || mutants::on(Mutant::TrimWithoutFreshness);
            if (keepers_fresh && confirmed) || mutants::on(Mutant::TrimWithoutFreshness) {
                self.heal.trim_checks.remove(&cx);
                trims.extend(victims.into_iter().map(|(n, _)| (n, chunk_id)));
            }
        }
        self.heal.counters.trims += trims.len() as u64;
        for (n, chunk) in trims {
            self.schedule_delete(&n, chunk);
        }

        // Copies below the factor: plan the most urgent first, within every
        // node's repair budget, while some node can still receive one.
        let limit = self.config.repairs_per_node.max(1);
        let (sending, receiving) = self.heal.busy();
        let open_targets = self
            .eligible(&BTreeSet::new())
            .iter()
            .filter(|(_, n)| receiving.get(n).copied().unwrap_or(0) < limit)
            .count();
        let mut slots = Slots {
            sending,
            receiving,
            open_targets,
            limit,
        };
        let mut candidates: Vec<ChunkIx> = Vec::new();
        for level in self.health.under.iter().skip(1) {
            let room = PLAN_SCAN_MAX - candidates.len();
            candidates.extend(level.iter().take(room));
        }
        let mut counted_early: Vec<(NodeId, ChunkId)> = Vec::new();
        for cx in candidates {
            if slots.open_targets == 0 {
                break;
            }
            let rec = self.chunks.get(cx);
            let (chunk, replicas, live) = (rec.id, rec.factor as usize, rec.live as usize);
            let planned: Vec<NodeId> = self
                .heal
                .repairs
                .get(&chunk)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            if live + planned.len() >= replicas {
                continue;
            }
            let since = *self.heal.under_since.entry(cx).or_insert(now_ms);
            let waited = now_ms.saturating_sub(since) >= self.config.repair_grace_ms;
            if live != 1 && !waited {
                continue;
            }
            let holders = self.holder_ids(cx);
            let mut missing = replicas - live - planned.len();
            let size = u64::from(rec.size_bytes);
            // Zones that have a copy, or will: a new copy goes to another
            // one if it can.
            let mut zones = self.live_zones(cx);
            zones.extend(planned.iter().map(|n| self.zone_key(self.node_ix[n])));
            // Neither a holder, nor an already planned target, nor a node
            // deleting its copy may be chosen.
            let mut exclude = holders.clone();
            exclude.extend(planned);
            exclude.extend(self.deleting_nodes(&chunk));
            while missing > 0 {
                let source = self.repair_source(&holders, &slots);
                let target = self.repair_target(&exclude, &zones, size, &|n| slots.takes(n));
                let (Some(source), Some(target)) = (source, target) else {
                    break;
                };
                zones.push(self.zone_key(self.node_ix[&target]));
                exclude.insert(target.clone());
                self.plan_copy(&mut slots, chunk, size, source, target.clone(), now_ms);
                self.heal.counters.repairs_planned += 1;
                missing -= 1;
                if mutants::on(Mutant::CountBeforeConfirm) {
                    counted_early.push((target, chunk));
                }
            }
        }
        for (target, chunk) in counted_early {
            self.link_id(&target, chunk);
        }

        // Copies at their factor but sharing a zone while a zone without
        // one has room (a zone came back, or was added): one more copy
        // there; the surplus is then trimmed from the crowded zone.
        let open_zones: BTreeSet<u64> = self
            .eligible(&BTreeSet::new())
            .iter()
            .filter(|(_, n)| slots.takes(n) < limit)
            .map(|(_, n)| self.zone_key(self.node_ix[n]))
            .collect();
        let crowded = if open_zones.is_empty() || reporting {
            Vec::new()
        } else {
            scan(&self.health.crowded, &mut self.heal.crowded_cursor)
        };
        for cx in crowded {
            if slots.open_targets == 0 {
                break;
            }
            let rec = self.chunks.get(cx);
            let (chunk, size) = (rec.id, u64::from(rec.size_bytes));
            if rec.live != rec.factor || self.heal.repairs.contains_key(&chunk) {
                continue;
            }
            let zones = self.live_zones(cx);
            if open_zones.iter().all(|z| zones.contains(z)) {
                continue;
            }
            let holders = self.holder_ids(cx);
            let mut exclude = holders.clone();
            exclude.extend(self.deleting_nodes(&chunk));
            let Some(target) = self.repair_target(&exclude, &zones, size, &|n| slots.takes(n))
            else {
                continue;
            };
            if zones.contains(&self.zone_key(self.node_ix[&target])) {
                continue;
            }
            let Some(source) = self.repair_source(&holders, &slots) else {
                continue;
            };
            self.plan_copy(&mut slots, chunk, size, source, target, now_ms);
            self.heal.counters.spread_moves += 1;
        }
    }

    /// Where a repair copies from: a live holder with a free sending slot,
    /// the least busy, a node that stays before one that is leaving, ties
    /// by id.
    fn repair_source(&self, holders: &BTreeSet<NodeId>, slots: &Slots) -> Option<NodeId> {
        holders
            .iter()
            .filter(|n| self.is_alive(n) && slots.sends(n) < slots.limit)
            .min_by_key(|n| {
                let leaving = self.node(self.node_ix[*n]).leaving;
                (slots.sends(n), leaving, (*n).clone())
            })
            .cloned()
    }

    /// Plan a copy of `chunk` (`size` bytes) from `source` to `target`,
    /// taking a slot on each.
    fn plan_copy(
        &mut self,
        slots: &mut Slots,
        chunk: ChunkId,
        size: u64,
        source: NodeId,
        target: NodeId,
        now_ms: u64,
    ) {
        *slots.sending.entry(source.clone()).or_default() += 1;
        let taken = slots.receiving.entry(target.clone()).or_default();
        *taken += 1;
        if *taken >= slots.limit {
            slots.open_targets -= 1;
        }
        self.expect_bytes(self.node_ix[&target], size);
        self.heal.repairs.entry(chunk).or_default().insert(
            target,
            Repair {
                source,
                sent_ms: None,
                planned_ms: now_ms,
            },
        );
    }

    /// Where a new copy of a chunk of `size` bytes goes: a live node not in
    /// `exclude`, with room for it and a repair slot free (`takes` counts
    /// what each receives already), in a zone not in `zones` if there is
    /// one, then the least loaded, ties by id.
    fn repair_target(
        &self,
        exclude: &BTreeSet<NodeId>,
        zones: &[u64],
        size: u64,
        takes: &dyn Fn(&NodeId) -> usize,
    ) -> Option<NodeId> {
        let limit = self.config.repairs_per_node.max(1);
        self.eligible(exclude)
            .into_iter()
            .filter(|(_, n)| takes(n) < limit && self.fits(self.node_ix[n], size))
            .map(|(chunks, n)| {
                let zone_taken = zones.contains(&self.zone_key(self.node_ix[&n]));
                ((zone_taken, chunks + takes(&n) as u64), n)
            })
            .min()
            .map(|(_, n)| n)
    }

    /// Whether planning still waits after a restart (see `Recovery`).
    fn recovering(&mut self, now_ms: u64) -> bool {
        let Some(r) = &mut self.recovery else {
            return false;
        };
        let first = *r.first_tick_ms.get_or_insert(now_ms);
        let pending = self.nodes.iter().flatten().any(|n| n.needs_full_report);
        if pending && now_ms.saturating_sub(first) < self.config.dead_after_ms {
            return true;
        }
        self.recovery = None;
        false
    }

    /// Under-replicated chunks with a live copy and no repair planned yet
    /// (in their grace period, or waiting for a free source or target), and
    /// repairs planned or under way. Constant time.
    pub fn repair_backlog(&self) -> (usize, usize) {
        let waiting = self.under_replicated() - self.health.under[0].len();
        (
            (waiting as usize).saturating_sub(self.heal.repairs.len()),
            self.heal.in_flight(),
        )
    }

    /// Whether deleting a copy of `chunk` now (a copy no longer counted)
    /// would leave fewer copies than its factor on live nodes that stay,
    /// heard from lately and not told to delete theirs. Always false for
    /// a chunk no file references.
    fn keepers_short(&self, chunk: &ChunkId, now_ms: u64) -> bool {
        if mutants::on(Mutant::TrimWithoutFreshness) {
            return false;
        }
        let Some(cx) = self.chunks.find(chunk) else {
            return false;
        };
        let rec = self.chunks.get(cx);
        let staying = rec
            .holders
            .iter()
            .filter(|&&nx| {
                let n = self.node(nx);
                self.alive(nx)
                    && !n.leaving
                    && self.heard_lately(nx, now_ms)
                    && !self.heal.deleting(chunk, &n.id)
            })
            .count();
        staying < usize::from(rec.factor)
    }

    /// The commands for `node`, taken at its heartbeat.
    pub(crate) fn take_commands(&mut self, node: &NodeId, now_ms: u64) -> Vec<NodeCommand> {
        let mut out = Vec::new();
        // The heartbeat this reply answers (see `Tracker::sequence`).
        let stamp = self.node_ix.get(node).map_or_else(Stamp::default, |&nx| {
            let n = self.node(nx);
            Stamp {
                session: n.session,
                seq: n.last_seq,
            }
        });
        if let Some(mut chunks) = self.heal.deletes.remove(node) {
            while out.len() < COMMANDS_PER_REPLY {
                let Some(chunk) = chunks.pop_first() else {
                    break;
                };
                if self.keepers_short(&chunk, now_ms) {
                    // A keeper left, died or fell silent since this copy
                    // was chosen to go (seed 6286624963: one left with
                    // --force first): it stays and counts again; a later
                    // pass trims afresh if the surplus is still there.
                    self.heal.counters.deletes_cancelled += 1;
                    self.link_id(node, chunk);
                    continue;
                }
                self.heal
                    .tombstones
                    .insert((chunk, node.clone()), (now_ms, stamp));
                self.heal.counters.deletes_sent += 1;
                self.heal
                    .tombstone_queue
                    .push_back((now_ms, chunk, node.clone()));
                self.heal
                    .unconfirmed
                    .entry(node.clone())
                    .or_default()
                    .insert(chunk);
                out.push(NodeCommand::Delete { chunk });
            }
            if !chunks.is_empty() {
                self.heal.deletes.insert(node.clone(), chunks);
            }
        }
        if let Some(&nx) = self.node_ix.get(node)
            && let Some(asked) = self.heal.verifies.get_mut(node)
        {
            let mut sent = 0;
            while sent < VERIFIES_PER_REPLY {
                let Some(cx) = asked.pop_first() else {
                    break;
                };
                // Only for a trim still waiting on this keeper, or a leave
                // on this target's hand-over copy.
                let mut waiting = false;
                if let Some(h) = self.heal.leave_checks.get_mut(&(cx, nx))
                    && !h.intact
                {
                    h.asked = Some(stamp);
                    waiting = true;
                }
                if let Some(check) = self.heal.trim_checks.get_mut(&cx) {
                    for k in check.keepers.iter_mut().filter(|k| k.0 == nx) {
                        k.1 = Some(stamp);
                        k.2 = false;
                    }
                    waiting = true;
                }
                if !waiting {
                    continue;
                }
                out.push(NodeCommand::Verify {
                    chunk: self.chunks.get(cx).id,
                });
                sent += 1;
            }
            if asked.is_empty() {
                self.heal.verifies.remove(node);
            }
        }
        let mut sends = Vec::new();
        for (chunk, targets) in &mut self.heal.repairs {
            for (target, r) in targets.iter_mut() {
                if r.source == *node && r.sent_ms.is_none() && sends.len() < COMMANDS_PER_REPLY {
                    r.sent_ms = Some(now_ms);
                    sends.push((*chunk, target.clone()));
                }
            }
        }
        for (chunk, target) in sends {
            let size_bytes = self
                .chunks
                .find(&chunk)
                .map_or(0, |cx| u64::from(self.chunks.get(cx).size_bytes));
            out.push(NodeCommand::Replicate {
                chunk,
                size_bytes,
                target: self.node_ref(&target),
            });
        }
        out
    }

    /// `source` copied `chunk` to `target`, which acknowledged it stored,
    /// verified and synced: count the copy now rather than at the target's
    /// next heartbeat. Returns whether it was a planned repair.
    pub fn repair_done(&mut self, source: &NodeId, chunk: &ChunkId, target: &NodeId) -> bool {
        let planned = self
            .heal
            .repairs
            .get(chunk)
            .and_then(|t| t.get(target))
            .is_some_and(|r| r.source == *source);
        if planned {
            if !self.heal.deleting(chunk, target) {
                self.link_id(target, *chunk);
            }
            self.repair_failed(source, chunk, target);
        }
        planned
    }

    /// `source` could not copy `chunk` to `target`: forget that repair so the
    /// next tick plans it again (with another target if one is free).
    pub fn repair_failed(&mut self, source: &NodeId, chunk: &ChunkId, target: &NodeId) {
        if mutants::on(Mutant::ForgetFailedRepair) {
            return;
        }
        if let Some(targets) = self.heal.repairs.get_mut(chunk) {
            if targets.get(target).is_some_and(|r| r.source == *source) {
                targets.remove(target);
            }
            if targets.is_empty() {
                self.heal.repairs.remove(chunk);
            }
        }
    }

    /// How much self-healing work this tracker decided since it started.
    pub fn heal_counters(&self) -> HealCounters {
        self.heal.counters
    }

    /// Repairs planned or under way, in chunk then target order.
    pub fn repairs(&self) -> Vec<PlannedRepair> {
        self.heal
            .repairs
            .iter()
            .flat_map(|(chunk, targets)| {
                targets.iter().map(|(target, r)| PlannedRepair {
                    chunk: *chunk,
                    source: r.source.clone(),
                    target: target.clone(),
                    sent: r.sent_ms.is_some(),
                })
            })
            .collect()
    }
}
