//! A tracker that is a member of a group: its writes go through the group,
//! and it answers only while it leads.
//!
//! When this member becomes leader it first waits until every entry the
//! group committed is applied here (a read-index round), then rebuilds its
//! tracker from the records, as a restarted single tracker does: nodes are
//! asked to register again (their sessions are new), repair waits for their
//! reports. Until then, and whenever it does not lead, every request gets
//! `UNAVAILABLE` naming the leader, which clients follow. A write whose
//! replication fails makes it stop answering until it has rebuilt again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use p2p_core::tracker::{Record, Tracker, TrackerConfig};
use tonic::Status;

use super::{AppliedStore, Member};
use crate::meta::{MetaError, MetaStore};
use crate::signals::redirect;
use crate::tracker::{Gate, TrackerService};

/// The records of a group member: restored from what it applied, written
/// through the group.
pub struct GroupMeta<M: AppliedStore> {
    member: Arc<Member<M>>,
}

impl<M: AppliedStore> GroupMeta<M> {
    pub fn new(member: Arc<Member<M>>) -> Self {
        Self { member }
    }
}

#[async_trait]
impl<M: AppliedStore> MetaStore for GroupMeta<M> {
    async fn restore(&self, config: TrackerConfig) -> Result<Tracker, MetaError> {
        self.member.store().restore(config).await
    }

    async fn persist(&self, records: Vec<Record>) -> Result<(), MetaError> {
        self.member
            .write(&records)
            .await
            .map(|_| ())
            .map_err(|e| MetaError::Db {
                path: "tracker group".into(),
                msg: e.to_string(),
            })
    }
}

/// Serve while leading (see the module docs).
pub struct Leading<M: AppliedStore> {
    member: Arc<Member<M>>,
    /// The term this member serves in, once rebuilt for it; 0: not serving.
    serving: AtomicU64,
    rebuild: tokio::sync::Notify,
}

impl<M: AppliedStore> Leading<M> {
    pub fn new(member: Arc<Member<M>>) -> Arc<Self> {
        Arc::new(Self {
            member,
            serving: AtomicU64::new(0),
            rebuild: tokio::sync::Notify::new(),
        })
    }

    /// The term this member answers requests in, if it does now: it
    /// leads, and has rebuilt its tracker for that term.
    pub fn serving(&self) -> Option<u64> {
        let term = self.serving.load(Ordering::SeqCst);
        (term != 0 && self.check().is_ok()).then_some(term)
    }

    fn leader_addr(&self) -> Option<String> {
        self.member.leader().map(|(_, a)| a)
    }

    /// Follow this member's role, forever: rebuild `service` when it
    /// becomes leader (or after a failed write), stop serving when it is
    /// not. Spawn this.
    pub async fn run<N: MetaStore>(self: Arc<Self>, service: TrackerService<N>) {
        let mut metrics = self.member.raft.metrics();
        loop {
            let (state, term) = {
                let m = metrics.borrow_watched();
                (m.state, m.current_term)
            };
            if state != ServerState::Leader {
                if self.serving.swap(0, Ordering::SeqCst) != 0 {
                    tracing::info!("no longer leading the tracker group");
                }
            } else if self.serving.load(Ordering::SeqCst) != term {
                self.serving.store(0, Ordering::SeqCst);
                if p2p_core::mutants::on(p2p_core::mutants::Mutant::LeaderSkipsCatchUp) {
                    self.serving.store(term, Ordering::SeqCst);
                    continue;
                }
                // Everything committed before this term, applied here.
                match self
                    .member
                    .raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                {
                    Ok(_) => match service.reload(term).await {
                        Ok(()) => {
                            self.serving.store(term, Ordering::SeqCst);
                            tracing::info!(term, "leading the tracker group");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot rebuild the tracker from the group's records");
                        }
                    },
                    Err(e) => tracing::info!(error = %e, "not confirmed as leader yet"),
                }
                if self.serving.load(Ordering::SeqCst) != term {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = self.rebuild.notified() => {}
            }
        }
    }
}

#[async_trait]
impl<M: AppliedStore> Gate for Leading<M> {
    fn check(&self) -> Result<(), Status> {
        use openraft::Instant as _;
        let serving = self.serving.load(Ordering::SeqCst);
        let m = self.member.raft.metrics();
        let m = m.borrow_watched();
        // A leader that a majority has not acknowledged within an election
        // timeout may have been replaced (or cannot commit): it does not
        // answer, and a client tries the others.
        let lease = self.member.timing.election_max;
        let acked = m
            .last_quorum_acked
            .as_ref()
            .is_none_or(|at| at.elapsed() <= lease);
        if serving != 0 && m.state == ServerState::Leader && m.current_term == serving {
            if acked {
                return Ok(());
            }
            return Err(redirect(None));
        }
        drop(m);
        let leader = self.leader_addr().filter(|a| *a != self.member.addr);
        Err(redirect(leader.as_deref()))
    }

    async fn confirm(&self) -> Result<(), Status> {
        match self
            .member
            .raft
            .ensure_linearizable(ReadPolicy::LeaseRead)
            .await
        {
            Ok(_) => Ok(()),
            Err(_) => Err(redirect(self.leader_addr().as_deref())),
        }
    }

    fn lost(&self) {
        self.serving.store(0, Ordering::SeqCst);
        self.rebuild.notify_one();
    }

    fn members(&self) -> Vec<p2p_proto::TrackerMember> {
        use openraft::Instant as _;
        let m = self.member.raft.metrics();
        let m = m.borrow_watched();
        // A member that has not answered a heartbeat for this long is
        // reported unreachable.
        let stale = Duration::from_millis(3 * self.member.timing.election_max.as_millis() as u64);
        self.member
            .members
            .iter()
            .map(|(id, addr)| {
                let (role, applied) = if *id == self.member.id {
                    ("leader", m.last_applied.as_ref().map_or(0, |l| l.index))
                } else {
                    let acked = m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(id).cloned().flatten())
                        .is_some_and(|at| at.elapsed() < stale);
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map_or(0, |l| l.index);
                    (if acked { "follower" } else { "unreachable" }, matched)
                };
                p2p_proto::TrackerMember {
                    addr: addr.clone(),
                    role: role.into(),
                    applied,
                }
            })
            .collect()
    }
}
