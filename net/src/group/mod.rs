//! A tracker group: three (or five) trackers that replicate the tracker's
//! durable records with Raft (`openraft`), so that the loss of a minority
//! of them, process or disk, loses nothing and stops nothing for long.
//!
//! What is replicated is exactly what a single tracker makes durable: the
//! [`Record`]s the core emits (nodes joined and left, files committed and
//! removed). One log entry carries the records of one request, encoded as
//! a protobuf `RecordBatch`. Every member applies committed entries, in
//! order, to its own record store ([`AppliedStore`]: redb on disk), together
//! with a note of how far it has applied; a snapshot of a member is those
//! records. Soft state (liveness, heartbeat sessions, repairs, leases)
//! lives in the leader's in-memory tracker only and is rebuilt from nodes'
//! reports after a failover, as after a restart of a single tracker.
//!
//! - [`log_store`]: the replicated log and the vote, in redb, every write
//!   synced before it is acknowledged;
//! - [`state_machine`]: the records, applied;
//! - [`network`]: the members' RPCs over gRPC (`TrackerGroup`), the
//!   library's messages carried opaque;
//! - [`abstain`]: why a member started on an empty disk casts no vote yet.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

use p2p_core::tracker::Record;

use crate::meta::{AppliedStore, decode_records, encode_records};

pub mod abstain;
pub mod log_store;
pub mod member;
pub mod network;
pub mod serve;
pub mod state_machine;

pub use log_store::LogStore;
pub use member::{GroupError, Member, Timing, Written};
pub use network::{GroupNetwork, GroupService};
pub use serve::{GroupMeta, Leading};
pub use state_machine::StateMachine;

/// One log entry's payload: the records of one request, as a protobuf
/// `RecordBatch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<u8>);

impl Batch {
    pub fn of(records: &[Record]) -> Self {
        Self(encode_records(records))
    }

    pub fn records(&self) -> Result<Vec<Record>, String> {
        decode_records(&self.0)
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "records ({} bytes)", self.0.len())
    }
}

/// The runtime the group runs on: tokio, with the library's randomness
/// (election timeouts) drawn from a seed per member, so that a simulated
/// run replays exactly. A member's Raft must start inside
/// [`Runtime::scope`] (see [`Member::start`]).
pub type Runtime =
    openraft::rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

openraft::declare_raft_types!(
    /// The group's types for openraft: members are numbered by a hash of
    /// their address ([`member_id`]) and known by that address. Standard
    /// Raft leadership: at most one leader per term (the simulator checks
    /// that no two members commit writes in the same term).
    pub GroupConfig:
        D = Batch,
        R = (),
        NodeId = u64,
        Node = openraft::BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = Runtime,
);

/// A member's Raft handle.
pub type GroupRaft<M> = openraft::Raft<GroupConfig, StateMachine<M>>;

/// A member's number: the first 8 bytes of the BLAKE3 hash of its address,
/// the same on every member whatever the order of `--peers`.
pub fn member_id(addr: &str) -> u64 {
    let h = blake3::hash(addr.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Encode one of the library's values for the log, the state machine's
/// note or the wire.
pub(crate) fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(io::Error::other)
}

/// Decode what [`encode`] wrote; a failure is damaged data.
pub(crate) fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
