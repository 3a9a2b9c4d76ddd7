//! The members' RPCs over gRPC: `TrackerGroup.Append`, `Vote` and
//! `Snapshot` carry the library's requests and replies encoded by it
//! (postcard), opaque to the proto. A reply's body is `Ok(response)` or
//! `Err(message)`; a member that cannot be dialled is unreachable (the
//! library backs off), any other failure a network error (it retries).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::vote::RaftLeaderId;
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use p2p_core::limits::{GROUP_MESSAGE_SIZE_MAX_BYTES, GROUP_SNAPSHOT_MAX_BYTES};
use p2p_proto as pb;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::LogStore;
use super::abstain::Abstain;
use super::{AppliedStore, GroupConfig, GroupRaft, decode, encode};
use crate::transport::Dialer;

type C = GroupConfig;

/// A snapshot travels in pieces of this size.
const SNAPSHOT_PIECE_BYTES: usize = 1 << 20;

/// A reply: the library's response, or its error as text.
type Reply<T> = Result<T, String>;

/// Dials the other members.
#[derive(Clone)]
pub struct GroupNetwork<D> {
    dialer: D,
}

impl<D: Dialer> GroupNetwork<D> {
    pub fn new(dialer: D) -> Self {
        Self { dialer }
    }
}

impl<D: Dialer> RaftNetworkFactory<C> for GroupNetwork<D> {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let client = self.dialer.channel(&node.addr).map(|ch| {
            pb::tracker_group_client::TrackerGroupClient::new(ch)
                .max_decoding_message_size(GROUP_MESSAGE_SIZE_MAX_BYTES)
                .max_encoding_message_size(GROUP_MESSAGE_SIZE_MAX_BYTES)
        });
        Peer {
            target,
            addr: node.addr.clone(),
            client: client.map_err(|e| e.to_string()),
        }
    }
}

/// One other member, as the library talks to it.
pub struct Peer {
    target: u64,
    addr: String,
    client: Result<pb::tracker_group_client::TrackerGroupClient<Channel>, String>,
}

type Call<'a> =
    Pin<Box<dyn Future<Output = Result<Response<pb::RaftMessage>, Status>> + Send + 'a>>;

impl Peer {
    /// Send `req` with `call`, within `ttl`; decode the reply.
    async fn call<Req: Serialize, Resp: for<'a> Deserialize<'a>>(
        &mut self,
        req: &Req,
        ttl: Duration,
        call: impl for<'a> FnOnce(
            &'a mut pb::tracker_group_client::TrackerGroupClient<Channel>,
            pb::RaftMessage,
        ) -> Call<'a>,
    ) -> Result<Resp, RPCError<C>> {
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self.client.as_mut().map_err(|e| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "tracker {}: {e}",
                self.addr
            )))
        })?;
        let msg = pb::RaftMessage { body: body.into() };
        let reply = match tokio::time::timeout(ttl, call(client, msg)).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "tracker {}: no reply within {ttl:?}",
                    self.addr
                ))));
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "tracker {}: {}",
                    self.addr,
                    s.message()
                ))));
            }
            Ok(Err(s)) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "tracker {}: {}",
                    self.addr,
                    s.message()
                ))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let reply: Reply<Resp> =
            decode(&reply.body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!(
                "tracker {} (member {}): {e}",
                self.addr, self.target
            )))
        })
    }
}

impl RaftNetworkV2<C> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call(&rpc, option.soft_ttl(), |c, m| Box::pin(c.append(m)))
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(&rpc, option.soft_ttl(), |c, m| Box::pin(c.vote(m)))
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(&rpc, option.soft_ttl(), |c, m| Box::pin(c.pre_vote(m)))
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let head = encode(&(vote, snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut parts = vec![pb::RaftMessage { body: head.into() }];
        parts.extend(
            snapshot
                .snapshot
                .chunks(SNAPSHOT_PIECE_BYTES)
                .map(|p| pb::RaftMessage {
                    body: p.to_vec().into(),
                }),
        );
        let addr = self.addr.clone();
        let client = self.client.as_mut().map_err(|e| {
            StreamingError::Unreachable(Unreachable::from_string(format!("tracker {addr}: {e}")))
        })?;
        // A snapshot may be large: it gets the snapshot timeout per piece.
        let ttl = option.hard_ttl() * (parts.len() as u32).max(1);
        let send = client.snapshot(tokio_stream::iter(parts));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(ttl, send) => r,
        };
        let reply = match reply {
            Err(_) => {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "tracker {addr}: snapshot not taken within {ttl:?}"
                ))));
            }
            Ok(Err(s)) => {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "tracker {addr}: {}",
                    s.message()
                ))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let reply: Reply<SnapshotResponse<C>> =
            decode(&reply.body).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| {
            StreamingError::Network(NetworkError::from_string(format!("tracker {addr}: {e}")))
        })
    }
}

/// The members' RPCs, served by each member for the others.
pub struct GroupService<M: AppliedStore> {
    raft: GroupRaft<M>,
    /// A member that started on an empty disk may have forgotten votes and
    /// entries: it casts no vote until [`Abstain`] allows.
    abstain: Option<Arc<Abstain>>,
    /// This member's log, to tell a member on an empty disk how far it
    /// goes.
    log: Option<LogStore>,
}

impl<M: AppliedStore> GroupService<M> {
    pub fn new(raft: GroupRaft<M>) -> Self {
        Self {
            log: None,
            raft,
            abstain: None,
        }
    }

    /// Cast no vote while `abstain` says so.
    pub fn abstaining(mut self, abstain: Arc<Abstain>) -> Self {
        self.abstain = Some(abstain);
        self
    }

    /// Answer members on an empty disk with how far `log` goes.
    pub fn with_log(mut self, log: LogStore) -> Self {
        self.log = Some(log);
        self
    }

    /// [`GroupService::abstains`], unless this member may vouch for a
    /// candidate whose last log id is `candidate` (see [`Abstain::vouches`]).
    fn abstains_from(&self, candidate: Option<&LogIdOf<C>>) -> Result<(), Status> {
        match self.abstains() {
            Err(_) if self.abstain.as_ref().is_some_and(|a| a.vouches(candidate)) => Ok(()),
            r => r,
        }
    }

    /// Entries from `leader` are refused until this member knows where it
    /// stands, and while it catches up, from any leader but the one that
    /// took it back (see [`Abstain::takes_from`]).
    fn unsettled(&self, leader: u64) -> Result<(), Status> {
        match &self.abstain {
            Some(a) if !a.takes_from(leader) => Err(Status::unavailable(
                "this member started on an empty disk and is rejoining the group",
            )),
            _ => Ok(()),
        }
    }

    fn abstains(&self) -> Result<(), Status> {
        let Some(a) = &self.abstain else {
            return Ok(());
        };
        let applied = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|l| l.index);
        match a.reason(applied) {
            Some(why) => Err(Status::unavailable(why)),
            None => Ok(()),
        }
    }

    /// The gRPC server wrapper, with message sizes bounded.
    pub fn into_server(self) -> pb::tracker_group_server::TrackerGroupServer<Self> {
        pb::tracker_group_server::TrackerGroupServer::new(self)
            .max_decoding_message_size(GROUP_MESSAGE_SIZE_MAX_BYTES)
            .max_encoding_message_size(GROUP_MESSAGE_SIZE_MAX_BYTES)
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<pb::RaftMessage>, Status> {
    let r: Reply<T> = r.map_err(|e| e.to_string());
    let body = encode(&r).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftMessage { body: body.into() }))
}

fn request<T: for<'a> Deserialize<'a>>(m: &pb::RaftMessage) -> Result<T, Status> {
    decode(&m.body).map_err(|e| Status::invalid_argument(format!("group message: {e}")))
}

#[tonic::async_trait]
impl<M: AppliedStore> pb::tracker_group_server::TrackerGroup for GroupService<M> {
    async fn append(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<C> = request(req.get_ref())?;
        self.unsettled(*rpc.vote.leader_id().node_id())?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<C> = request(req.get_ref())?;
        self.abstains_from(rpc.last_log_id.as_ref())?;
        reply(self.raft.vote(rpc).await)
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<C> = request(req.get_ref())?;
        self.abstains_from(rpc.last_log_id.as_ref())?;
        reply(self.raft.pre_vote(rpc).await)
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let mut parts = req.into_inner();
        let head = parts
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("a snapshot without its metadata"))??;
        let (vote, meta): (VoteOf<C>, SnapshotMetaOf<C>) = request(&head)?;
        self.unsettled(*vote.leader_id().node_id())?;
        let mut data = Vec::new();
        while let Some(part) = parts.next().await {
            let part = part?;
            if data.len() + part.body.len() > GROUP_SNAPSHOT_MAX_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "a snapshot larger than {GROUP_SNAPSHOT_MAX_BYTES} bytes"
                )));
            }
            data.extend_from_slice(&part.body);
        }
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: data,
        };
        reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn join(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let id: u64 = request(req.get_ref())?;
        let (leading, has_log, committed) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (
                m.state == openraft::ServerState::Leader,
                // Index 0 is the first membership; a leader's first entry
                // is index 1.
                m.last_log_index.is_some_and(|i| i >= 1),
                m.local_committed.as_ref().map_or(0, |l| l.index),
            )
        };
        let mut taken = None;
        if leading {
            // The member lost its disk: its log starts again from nothing,
            // which the leader would otherwise take for a bug.
            if matches!(
                self.raft.trigger().allow_next_revert(&id, true).await,
                Ok(Ok(()))
            ) {
                tracing::info!(member = id, "a member rejoins from an empty disk");
                taken = Some(committed);
            }
        }
        let leader = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.current_leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            })
        };
        let last_log = match &self.log {
            Some(log) => {
                let mut log = log.clone();
                log.get_log_state()
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .last_log_id
            }
            None => None,
        };
        reply::<JoinAnswer, String>(Ok(JoinAnswer {
            has_log,
            leader,
            taken,
            last_log,
            abstaining: self.abstains().is_err(),
        }))
    }
}

/// A member's answer to one that starts on an empty disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The group has a log: a leader has been elected (the asking member
    /// must rejoin it, not form a group).
    pub has_log: bool,
    /// The leader, if known.
    pub leader: Option<String>,
    /// This member leads and takes the asking one back from an empty log;
    /// the asking one votes once it has applied up to this index (what the
    /// leader had committed).
    pub taken: Option<u64>,
    /// This member's last log id.
    #[serde(default)]
    pub last_log: Option<LogIdOf<C>>,
    /// This member casts no vote now (it lost its disk, or may have).
    #[serde(default)]
    pub abstaining: bool,
}

/// Ask the member at `addr` about the group, for member `id` on an empty
/// disk.
pub async fn ask_join<D: Dialer>(dialer: &D, addr: &str, id: u64) -> Result<JoinAnswer, String> {
    let ch = dialer.channel(addr).map_err(|e| e.to_string())?;
    let mut client = pb::tracker_group_client::TrackerGroupClient::new(ch);
    let body = encode(&id).map_err(|e| e.to_string())?;
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        client.join(pb::RaftMessage { body: body.into() }),
    )
    .await
    .map_err(|_| format!("tracker {addr}: no answer"))?
    .map_err(|s| format!("tracker {addr}: {}", s.message()))?;
    let answer: Reply<JoinAnswer> = decode(&r.into_inner().body).map_err(|e| e.to_string())?;
    answer
}
