//! Why a member of a tracker group that started on an empty disk does not
//! vote yet, and when it may: the state its start-up (see `member`) sets and
//! its network (see `network`) consults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::type_config::alias::LogIdOf;

use super::GroupConfig;

/// How long what a member on an empty disk learnt from the others is good
/// for (it asks again every half second).
pub const SURVEY_FRESH: Duration = Duration::from_secs(1);

/// Why a member that started on an empty disk does not vote yet.
///
/// It may have lost its data: the votes it cast (it could vote twice in one
/// term, and two leaders could be elected in it) and log entries that
/// counted toward a commit (with its vote, a member that lacks them could
/// be elected and overwrite them). So it casts no vote for two election
/// timeouts after it starts (any election it took part in before is over),
/// and, if the group has a log, none until a leader has taken it back and
/// it has applied everything that leader had committed then. If no member
/// has a log (the group's first start), it votes at once.
#[derive(Debug)]
pub struct Abstain {
    until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Applied index to reach; `u64::MAX` until known, 0 when none.
    until_applied: AtomicU64,
    /// While catching up: the leader that took this member back, the only
    /// one whose entries it takes (0: any leader's).
    taker: AtomicU64,
    /// The most any member that still has its disk holds, learnt from
    /// every other member lately (see [`Abstain::vouches`]), and when.
    survey: std::sync::Mutex<Option<(Option<LogIdOf<GroupConfig>>, tokio::time::Instant)>>,
}

impl Abstain {
    pub(super) fn new(until: Option<tokio::time::Instant>) -> Self {
        Self {
            until_applied: AtomicU64::new(if until.is_some() { u64::MAX } else { 0 }),
            taker: AtomicU64::new(0),
            until: std::sync::Mutex::new(until),
            survey: std::sync::Mutex::new(None),
        }
    }

    /// Whether this member, though it abstains, may vote for a candidate
    /// whose last log id is `candidate`: its start window is over, it has
    /// heard from every other member within [`SURVEY_FRESH`], and the
    /// candidate's log is at least as up to date as that of every member
    /// that still has its disk (those that abstain too are left out).
    ///
    /// Why this is safe: an entry was committed on a majority. If one of
    /// those still has its disk, the candidate's log is at least as up to
    /// date as that member's, so (as in Raft's own election rule) it holds
    /// the entry. If all of them lost their disks, the entry is gone
    /// whatever this member does. Why it is needed: when two of three
    /// members are on empty disks (one wiped, one that crashed before the
    /// group gave it anything, which cannot tell itself from a wiped one),
    /// both wait to be taken back by a leader the third cannot become
    /// alone. The simulator found it (seed 1300).
    pub fn vouches(&self, candidate: Option<&LogIdOf<GroupConfig>>) -> bool {
        if p2p_core::mutants::on(p2p_core::mutants::Mutant::RejoinVotesAtOnce) {
            return true;
        }
        let until = *self.until.lock().expect("abstain lock");
        if until.is_some_and(|t| tokio::time::Instant::now() < t) {
            return false;
        }
        let survey = *self.survey.lock().expect("abstain lock");
        match survey {
            Some((most, at)) if at.elapsed() <= SURVEY_FRESH => candidate >= most.as_ref(),
            _ => false,
        }
    }

    /// Whether this member knows where it stands: it formed the group, or
    /// a leader took it back. Until then it takes no entries either: the
    /// leader must allow its log to go back first (a conflict answered
    /// before that leaves the leader retrying the same entries for ever).
    pub fn settled(&self) -> bool {
        self.until_applied.load(Ordering::SeqCst) != u64::MAX
            || p2p_core::mutants::on(p2p_core::mutants::Mutant::RejoinVotesAtOnce)
    }

    /// Whether this member takes entries from `leader` now: it is settled
    /// and, while it catches up, `leader` is the one that took it back (any
    /// other has not allowed its log to go back: its first conflict would
    /// leave it retrying the same entries for ever).
    pub fn takes_from(&self, leader: u64) -> bool {
        let taker = self.taker.load(Ordering::SeqCst);
        self.settled() && (taker == 0 || taker == leader)
    }

    /// The applied index to reach before voting: `u64::MAX` until known,
    /// 0 when none.
    pub(super) fn needed(&self) -> u64 {
        self.until_applied.load(Ordering::SeqCst)
    }

    /// Caught up: entries from whichever leader, from now on.
    pub(super) fn caught_up(&self) {
        self.taker.store(0, Ordering::SeqCst);
    }

    /// This member formed the group: nobody has a log, so no leader was
    /// ever elected, and no vote it may have forgotten counted for one.
    pub(super) fn formed(&self) {
        *self.until.lock().expect("abstain lock") = None;
        self.until_applied.store(0, Ordering::SeqCst);
    }

    /// What a survey of the others found: the most any member with its
    /// disk holds, if every other member answered.
    pub(super) fn surveyed(&self, most: Option<Option<LogIdOf<GroupConfig>>>) {
        *self.survey.lock().expect("abstain lock") = most.map(|m| (m, tokio::time::Instant::now()));
    }

    /// A leader took this member back: catch up to `at`, from `leader`.
    pub(super) fn taken(&self, leader: u64, at: u64) {
        self.taker.store(leader, Ordering::SeqCst);
        self.until_applied.store(at, Ordering::SeqCst);
    }

    /// Why this member casts no vote now, if it does not, having applied
    /// the log up to `applied`.
    pub fn reason(&self, applied: Option<u64>) -> Option<&'static str> {
        if p2p_core::mutants::on(p2p_core::mutants::Mutant::RejoinVotesAtOnce) {
            return None;
        }
        let until = *self.until.lock().expect("abstain lock");
        if until.is_some_and(|t| tokio::time::Instant::now() < t) {
            return Some("this member started on an empty disk and casts no vote yet");
        }
        let need = self.until_applied.load(Ordering::SeqCst);
        let caught_up = match applied {
            Some(a) => a >= need,
            None => need == 0,
        };
        (!caught_up).then_some("this member lost its disk and casts no vote until it has caught up")
    }
}
