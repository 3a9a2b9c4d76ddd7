//! One member of a tracker group: its Raft instance over its log and
//! record store, how it forms the group, and how the tracker writes
//! through it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::type_config::alias::LogIdOf;
use openraft::{BasicNode, Raft, ServerState};
use p2p_core::tracker::Record;

use super::abstain::Abstain;
use super::network::ask_join;
use super::{
    AppliedStore, Batch, GroupConfig, GroupNetwork, GroupRaft, LogStore, Runtime, StateMachine,
    member_id,
};
use crate::transport::Dialer;

/// Why a write through the group did not take effect, or might not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// This member does not lead; `leader` is the one it knows of.
    #[error("not the leader of the tracker group{}", leader.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    /// The entry was appended, then discarded by a change of leader: it
    /// may or may not be committed.
    #[error("the tracker group changed leader during the write; its outcome is unknown")]
    Unknown,
    /// No majority confirmed the write in time: it may or may not be
    /// committed later.
    #[error(
        "the tracker group did not commit the write within {0:?}; is a majority of its trackers up?"
    )]
    NoQuorum(Duration),
    /// The group cannot go on here (storage failed, or it was shut down).
    #[error("tracker group: {0}")]
    Fatal(String),
    /// The group's configuration is invalid.
    #[error("tracker group configuration: {0}")]
    Config(String),
}

/// Where a write landed in the group's log: the term of the leader that
/// committed it, and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub term: u64,
    pub index: u64,
}

/// Election and heartbeat timing.
#[derive(Debug, Clone)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl Default for Timing {
    /// For a LAN: a leader that stops is replaced within about a second,
    /// and a slow disk or a loaded host (a heartbeat late by half a second)
    /// does not cause elections.
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
        }
    }
}

/// A member, running.
pub struct Member<M: AppliedStore> {
    pub raft: GroupRaft<M>,
    pub id: u64,
    pub addr: String,
    /// Every member, by number.
    pub members: BTreeMap<u64, String>,
    pub timing: Timing,
    /// When this member started on an empty disk: until when it casts no
    /// vote.
    abstain: Arc<Abstain>,
    store: M,
    log: LogStore,
}

impl<M: AppliedStore> Member<M> {
    /// Start the member at `addr` of the group `peers` (its own address
    /// included), over `log` and `store`. On an empty disk it forms the
    /// group with the others, if none of them has a log yet (every member
    /// proposes the same membership and the library keeps one), or else
    /// rejoins it (see [`Abstain`]), in the background: the members'
    /// service must be served meanwhile. The library's
    /// random choices (election timeouts) are drawn from `seed`: a random
    /// one in a real process, one per simulated host and start in the
    /// simulator.
    pub async fn start<D: Dialer>(
        addr: &str,
        peers: &[String],
        log: LogStore,
        store: M,
        dialer: D,
        timing: &Timing,
        seed: u64,
    ) -> Result<Self, GroupError> {
        let members: BTreeMap<u64, String> =
            peers.iter().map(|p| (member_id(p), p.clone())).collect();
        if members.len() != peers.len() {
            return Err(GroupError::Config(
                "the same address twice in --peers".into(),
            ));
        }
        let id = member_id(addr);
        if !members.contains_key(&id) {
            return Err(GroupError::Config(format!(
                "{addr} is not one of the group's addresses ({})",
                peers.join(",")
            )));
        }
        let ms = |d: Duration| d.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "p2p-trackers".into(),
            heartbeat_interval: ms(timing.heartbeat),
            election_timeout_min: ms(timing.election_min),
            election_timeout_max: ms(timing.election_max),
            install_snapshot_timeout: 10_000,
            // Snapshots are the whole state: not too often.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| GroupError::Config(e.to_string()))?;
        let disk = log.clone();
        // A member's connection to another whose segments are being lost
        // (a partition, a dead host) must be given up within about an
        // election, not after the keepalive everyone else uses (10 s by
        // default): the library calls again on the same connection, and
        // until it breaks the two members stay apart after the network
        // has healed. A ping every election timeout costs nothing.
        let mut group_dialer = dialer.clone();
        let keepalive = &mut group_dialer.timeouts_mut().keepalive;
        if !p2p_core::mutants::on(p2p_core::mutants::Mutant::GroupWaitsForKeepalive) {
            *keepalive = (*keepalive).min(timing.election_max);
        }
        // Every task of the library is spawned by `Raft::new` or by those
        // tasks, so all of them draw from this seed.
        let raft = Runtime::scope(
            seed,
            Raft::new(
                id,
                Arc::new(config),
                GroupNetwork::new(group_dialer),
                log,
                StateMachine::new(store.clone()),
            ),
        )
        .await
        .map_err(|e| GroupError::Fatal(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| GroupError::Fatal(e.to_string()))?;
        // A member on an empty disk casts no vote for a while, and, if the
        // group has a log, none until it has caught up (see [`Abstain`]).
        let abstain = Arc::new(Abstain::new(if initialized {
            None
        } else {
            Some(tokio::time::Instant::now() + timing.election_max * 2)
        }));
        if !initialized {
            let (raft, dialer, members, abstain) = (
                raft.clone(),
                dialer.clone(),
                members.clone(),
                abstain.clone(),
            );
            tokio::spawn(async move { form_or_rejoin(raft, dialer, members, id, abstain).await });
        }
        Ok(Self {
            raft,
            id,
            addr: addr.to_string(),
            members,
            timing: timing.clone(),
            abstain,
            store,
            log: disk,
        })
    }

    /// The members' service this member serves to the others.
    pub fn service(&self) -> super::GroupService<M> {
        super::GroupService::new(self.raft.clone())
            .abstaining(self.abstain.clone())
            .with_log(self.log.clone())
    }

    /// The record store this member applies to.
    pub fn store(&self) -> &M {
        &self.store
    }

    /// The leader this member knows of: its number and address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .or_else(|| self.members.get(&id).cloned())?;
        Some((id, addr))
    }

    /// Whether this member leads now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The last log index applied here.
    pub fn applied(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map_or(0, |l| l.index)
    }

    /// Replicate `records` and return once a majority has them durably and
    /// they are applied here: where in the log they are.
    pub async fn write(&self, records: &[Record]) -> Result<Written, GroupError> {
        // A leader cut off from the majority would wait for ever.
        let limit = self.timing.election_max * 4;
        let write = self.raft.client_write(Batch::of(records));
        let Ok(r) = tokio::time::timeout(limit, write).await else {
            return Err(GroupError::NoQuorum(limit));
        };
        match r {
            Ok(w) => Ok(Written {
                term: w.log_id.leader_id.term,
                index: w.log_id.index,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(GroupError::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(GroupError::Unknown)
            }
            Err(e) => Err(GroupError::Fatal(e.to_string())),
        }
    }

    /// Stop this member's Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "tracker group member did not stop cleanly");
        }
    }
}

/// After a leader took this member back: until it has caught up, it takes
/// entries from that leader only, and if a second goes by without its log
/// growing, it asks the others again: whichever leads takes it back. The
/// leader that took it may have led for a moment only (a restarted member
/// that had not yet heard of a newer term), and the one that leads instead
/// does not know this member's log went back: answered a conflict, it
/// would retry the same entries for ever. The simulator found it (seed 249
/// of the chain-replication workload).
async fn until_caught_up<M: AppliedStore, D: Dialer>(
    raft: &GroupRaft<M>,
    dialer: &D,
    members: &BTreeMap<u64, String>,
    id: u64,
    abstain: &Abstain,
) {
    let applied = || {
        raft.metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
    };
    let mut before = applied();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = applied();
        let need = abstain.needed();
        if need == 0 || now.is_some_and(|a| a >= need) {
            abstain.caught_up();
            return;
        }
        if now > before {
            before = now;
            continue;
        }
        for (leader, addr) in members.iter().filter(|(i, _)| **i != id) {
            if let Ok(a) = ask_join(dialer, addr, id).await
                && let Some(at) = a.taken
            {
                abstain.taken(*leader, at.max(need));
                tracing::info!(leader = %addr, catch_up_to = at, "taken back again: not caught up yet");
                break;
            }
        }
    }
}

/// On an empty disk: form the group, or, if it has a log already (this
/// member lost its disk), ask its leader to take this member back, and
/// learn up to where it must catch up before it votes. Forms the group
/// only once enough of the others answered to prove nobody has a log (all
/// others in a group of 3, three of four in a group of 5: a member that
/// cannot tell must not form a group of its own), and rejoins until a
/// leader takes it back.
async fn form_or_rejoin<M: AppliedStore, D: Dialer>(
    raft: GroupRaft<M>,
    dialer: D,
    members: BTreeMap<u64, String>,
    id: u64,
    abstain: Arc<Abstain>,
) {
    let mut announced = false;
    loop {
        let mut answered = false;
        let mut has_log = false;
        let mut heard = 0;
        let mut most: Option<LogIdOf<GroupConfig>> = None;
        for (leader, addr) in members.iter().filter(|(i, _)| **i != id) {
            let Ok(a) = ask_join(&dialer, addr, id).await else {
                continue;
            };
            answered = true;
            heard += 1;
            if !a.abstaining && a.last_log > most {
                most = a.last_log;
            }
            has_log |= a.has_log;
            if let Some(at) = a.taken {
                abstain.taken(*leader, at);
                tracing::info!(leader = %addr, catch_up_to = at, "taken back into the tracker group");
                until_caught_up(&raft, &dialer, &members, id, &abstain).await;
                return;
            }
        }
        // Form the group only if enough of the others answered that none
        // has a log: an entry committed on a majority is on at least
        // `majority - 1` of the others (this member may have lost its
        // disk), so `others - (majority - 1) + 1` answers without a log
        // prove there is none. With fewer, a member that did not answer
        // may hold the group's log (the simulator found a wiped member
        // that formed a new group with one that had crashed early, while
        // the one with the log was down: seed 1729).
        let others = members.len().saturating_sub(1);
        let majority = members.len() / 2 + 1;
        let proof = (others + 2)
            .saturating_sub(majority)
            .clamp(1, others.max(1));
        if answered && !has_log && heard >= proof {
            let nodes: BTreeMap<u64, BasicNode> = members
                .iter()
                .map(|(&i, a)| (i, BasicNode::new(a.clone())))
                .collect();
            // Refused if another member's proposal got here first.
            if let Err(e) = raft.initialize(nodes).await {
                tracing::debug!(error = %e, "the group is formed already");
            }
            abstain.formed();
            return;
        }
        // Heard from every other member: how far those with their disks go.
        abstain.surveyed((heard + 1 == members.len()).then_some(most));
        if has_log && !announced {
            announced = true;
            tracing::info!("the tracker group has a log: rejoining it from an empty disk");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
