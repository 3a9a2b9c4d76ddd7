//! One member of a tracker group: its Raft instance over its log and
//! record store, how it forms the group, and how the tracker writes
//! through it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use p2p_core::tracker::Record;

use super::network::ask_join;
use super::{AppliedStore, Batch, GroupNetwork, GroupRaft, LogStore, StateMachine, member_id};
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
    /// Set when this member came back on an empty disk to a formed group:
    /// it casts no vote until then.
    pub abstain_until: Option<tokio::time::Instant>,
    store: M,
}

impl<M: AppliedStore> Member<M> {
    /// Start the member at `addr` of the group `peers` (its own address
    /// included), over `log` and `store`. A group that has never formed is
    /// formed: every member proposes the same membership, and the library
    /// keeps one (the others are told it is formed already).
    pub async fn start<D: Dialer>(
        addr: &str,
        peers: &[String],
        log: LogStore,
        store: M,
        dialer: D,
        timing: &Timing,
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
        let raft = Raft::new(
            id,
            Arc::new(config),
            GroupNetwork::new(dialer.clone()),
            log,
            StateMachine::new(store.clone()),
        )
        .await
        .map_err(|e| GroupError::Fatal(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| GroupError::Fatal(e.to_string()))?;
        let mut abstain_until = None;
        if !initialized {
            // An empty disk: the group's first start, or this member lost
            // its data. If any other member says the group has formed, it
            // must not form one of its own: it asks the leader to take it
            // back from an empty log, and follows.
            let mut formed = false;
            let started = tokio::time::Instant::now();
            for (_, other) in members.iter().filter(|(i, _)| **i != id) {
                if let Ok(a) = ask_join(&dialer, other, id).await {
                    formed |= a.formed;
                }
            }
            if formed {
                abstain_until = Some(started + timing.election_max * 2);
                tracing::info!(member = %addr, "the group has formed: rejoining it from an empty disk");
                let (dialer, others) = (dialer.clone(), members.clone());
                tokio::spawn(async move { rejoin(dialer, others, id).await });
            } else {
                let nodes: BTreeMap<u64, BasicNode> = members
                    .iter()
                    .map(|(&i, a)| (i, BasicNode::new(a.clone())))
                    .collect();
                // Refused if another member's proposal got here first.
                if let Err(e) = raft.initialize(nodes).await {
                    tracing::debug!(error = %e, "the group is formed already");
                }
            }
        }
        Ok(Self {
            raft,
            id,
            addr: addr.to_string(),
            members,
            timing: timing.clone(),
            abstain_until,
            store,
        })
    }

    /// The members' service this member serves to the others.
    pub fn service(&self) -> super::GroupService<M> {
        super::GroupService::new(self.raft.clone()).abstaining_until(self.abstain_until)
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
    /// they are applied here.
    pub async fn write(&self, records: &[Record]) -> Result<(), GroupError> {
        // A leader cut off from the majority would wait for ever.
        let limit = self.timing.election_max * 4;
        let write = self.raft.client_write(Batch::of(records));
        let Ok(r) = tokio::time::timeout(limit, write).await else {
            return Err(GroupError::NoQuorum(limit));
        };
        match r {
            Ok(_) => Ok(()),
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

/// Ask the leader, until it agrees (about a minute at most), to take
/// member `id` back from an empty log.
async fn rejoin<D: Dialer>(dialer: D, members: BTreeMap<u64, String>, id: u64) {
    for _ in 0..120 {
        for (_, addr) in members.iter().filter(|(i, _)| **i != id) {
            if let Ok(a) = ask_join(&dialer, addr, id).await
                && a.taken
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::warn!("no leader took this member back; it waits for the leader's log");
}
