//! The IO shell of the p2p system: tonic services and clients that drive
//! `p2p-core`, the node's chunk store on disk, and the tracker's metadata in
//! redb.
//!
//! # Layout
//! - [`transport`]: the seam between the services and the network. Servers
//!   take any stream of accepted connections; clients dial through a
//!   [`transport::Dialer`]. The binary passes tokio's TCP, the simulator
//!   passes turmoil's.
//! - [`store`]: the node's chunk store seam ([`store::ChunkStore`]) and its
//!   disk implementation (temp file, fsync, rename).
//! - [`meta`]: the tracker's durable records ([`meta::MetaStore`]) in redb.
//! - [`tracker`]: the tracker gRPC service around `p2p_core::tracker::Tracker`.
//! - [`node`]: the node gRPC service, heartbeats and graceful leave.
//! - [`client`]: put, get, ls, status and leave as a library.
//! - [`sink`]: where a get writes; the output file's single writer.
//! - [`convert`]: wire messages to and from core types, validated on entry.
//! - [`signals`]: what a tracker's refusals tell a caller (redirect to the
//!   leader, retry soon, departed), read by clients and the transport.
//! - [`tls`]: the cluster's CA, certificates with a role, enrollment, and
//!   the TLS settings of servers and clients; [`enrollment`]: the
//!   trackers' enrollment service; [`access`]: the check that a caller
//!   presented a certificate of the cluster, not revoked, and may make the
//!   call.
//!
//! Time is read only through `tokio::time`, which the simulator controls.

pub mod access;
pub mod client;
pub mod convert;
pub mod enrollment;
pub mod error;
pub mod group;
pub mod http;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod page;
pub mod signals;
pub mod sink;
pub mod store;
pub mod tls;
pub mod tracker;
pub mod transport;

pub use error::ClientError;
