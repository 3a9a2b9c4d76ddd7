//! Planted bugs, for measuring how good the simulator is at catching bugs
//! (its mutation score: `p2p-sim --features mutants -- --mutants`).
//!
//! Each [`Mutant`] is one deliberate bug in the shipped code, switched on at
//! run time with [`set`] and tested where it lives with [`on`]. Without the
//! `mutants` cargo feature (every shipped build) [`on`] is a constant
//! `false` and the planted code is dead.

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutant {
    /// A node acknowledges an upload before the chunk is synced (it syncs
    /// it a moment later): a crash in between loses an acknowledged copy.
    AckBeforeSync = 1,
    /// The tracker counts a repair's target as a holder when it plans the
    /// copy, before the target confirms it.
    CountBeforeConfirm,
    /// The tracker trims surplus copies without checking that the holders
    /// that keep theirs were heard from lately.
    TrimWithoutFreshness,
    /// A node serves a chunk without verifying it against its hash.
    ServeUnverified,
    /// The tracker forgets a repair that failed instead of planning it
    /// again, and never retries one that timed out.
    ForgetFailedRepair,
    /// The tracker ignores the removals a heartbeat reports.
    DropHeartbeatRemovals,
    /// The tracker lets a leave finish while chunks still depend on the
    /// leaving node.
    LeaveWhileDependent,
    /// The tracker applies a heartbeat overtaken by a newer one.
    ApplyOvertakenHeartbeat,
    /// A node told to delete a copy still counts as its holder.
    DeletingCountsAsHolder,
    /// The tracker answers before its records are durable (it writes them
    /// a moment later): a tracker crash in between forgets what it
    /// acknowledged.
    TrackerAckBeforePersist,
    /// A tracker that becomes the group's leader serves at once, from the
    /// state it had, without waiting for the group's log to be applied
    /// and its tracker rebuilt from it.
    LeaderSkipsCatchUp,
    /// A group member back on an empty disk votes and takes entries at
    /// once, as if it had lost nothing.
    RejoinVotesAtOnce,
    /// The tracker counts every holder a client's commit names, without
    /// checking the holders' receipts.
    CommitWithoutReceipt,
    /// The tracker takes every node for a zone of its own: copies of a
    /// chunk may share a zone while others have room.
    IgnoreZones,
    /// Group members keep a connection to another member until the
    /// keepalive every other connection uses gives up on it, not within
    /// an election: after a partition heals, members stay apart.
    GroupWaitsForKeepalive,
    /// The tracker lets a node leave counting other holders it has not
    /// heard from since the leave began (one may have crashed just before).
    LeaveTrustsSilentHolders,
    /// The tracker counts a copy handed over by a leaving node before its
    /// target has read it back intact.
    CountUnverifiedHandoff,
}

impl Mutant {
    /// Every planted bug, in order.
    pub const ALL: &[Mutant] = &[
        Mutant::AckBeforeSync,
        Mutant::CountBeforeConfirm,
        Mutant::TrimWithoutFreshness,
        Mutant::ServeUnverified,
        Mutant::ForgetFailedRepair,
        Mutant::DropHeartbeatRemovals,
        Mutant::LeaveWhileDependent,
        Mutant::ApplyOvertakenHeartbeat,
        Mutant::DeletingCountsAsHolder,
        Mutant::TrackerAckBeforePersist,
        Mutant::LeaderSkipsCatchUp,
        Mutant::RejoinVotesAtOnce,
        Mutant::CommitWithoutReceipt,
        Mutant::IgnoreZones,
        Mutant::GroupWaitsForKeepalive,
        Mutant::LeaveTrustsSilentHolders,
        Mutant::CountUnverifiedHandoff,
    ];

    /// Its name on the command line, kebab-case.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::AckBeforeSync => "ack-before-sync",
            Mutant::CountBeforeConfirm => "count-before-confirm",
            Mutant::TrimWithoutFreshness => "trim-without-freshness",
            Mutant::ServeUnverified => "serve-unverified",
            Mutant::ForgetFailedRepair => "forget-failed-repair",
            Mutant::DropHeartbeatRemovals => "drop-heartbeat-removals",
            Mutant::LeaveWhileDependent => "leave-while-dependent",
            Mutant::ApplyOvertakenHeartbeat => "apply-overtaken-heartbeat",
            Mutant::DeletingCountsAsHolder => "deleting-counts-as-holder",
            Mutant::TrackerAckBeforePersist => "tracker-ack-before-persist",
            Mutant::LeaderSkipsCatchUp => "leader-skips-catch-up",
            Mutant::RejoinVotesAtOnce => "rejoin-votes-at-once",
            Mutant::CommitWithoutReceipt => "commit-without-receipt",
            Mutant::IgnoreZones => "ignore-zones",
            Mutant::GroupWaitsForKeepalive => "group-waits-for-keepalive",
            Mutant::LeaveTrustsSilentHolders => "leave-trusts-silent-holders",
            Mutant::CountUnverifiedHandoff => "count-unverified-handoff",
        }
    }

    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.iter().copied().find(|m| m.name() == name)
    }
}

#[cfg(feature = "mutants")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Switch planted bug `m` on (`None`: all off). Process-wide.
#[cfg(feature = "mutants")]
pub fn set(m: Option<Mutant>) {
    ACTIVE.store(
        m.map_or(0, |m| m as u8),
        std::sync::atomic::Ordering::SeqCst,
    );
}

/// The planted bug switched on, if any.
#[cfg(feature = "mutants")]
pub fn active() -> Option<Mutant> {
    let v = ACTIVE.load(std::sync::atomic::Ordering::SeqCst);
    Mutant::ALL.iter().copied().find(|m| *m as u8 == v)
}

/// Whether planted bug `m` is on. Always `false` without the feature.
#[inline]
pub fn on(m: Mutant) -> bool {
    #[cfg(feature = "mutants")]
    {
        ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == m as u8
    }
    #[cfg(not(feature = "mutants"))]
    {
        let _ = m;
        false
    }
}
