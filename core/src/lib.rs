//! Sans-IO protocol logic of the p2p file-sharing system.
//!
//! Nothing in this crate performs IO, reads a clock or draws from a global
//! random source: time arrives as a `now_ms` argument, and every collection
//! whose order can reach an output is a `BTreeMap`/`BTreeSet`. The same
//! sequence of inputs gives the same outputs, byte for byte.
//!
//! # Layout
//! - [`limits`]: every bound the protocol enforces (sizes, counts).
//! - [`id`]: chunk ids (BLAKE3), node ids, manifest hashes.
//! - [`name`]: validation of user-chosen file names.
//! - [`chunking`]: cutting a byte stream into fixed-size chunks.
//! - [`manifest`]: the description of one file version, and its hash.
//! - [`tracker`]: the tracker state machine (membership, placement, commit,
//!   locate, leave).
//! - [`get_plan`]: which holder to ask for which chunk, retries, completion.
//! - [`put_plan`]: fan-out replication of one chunk to `R` holders.
//! - [`inventory`]: what a node holds and what it has yet to report.
//! - [`ack`]: when a stored copy may be deleted without losing a put's
//!   acknowledged copy (shared by nodes and the tracker).

pub mod ack;
pub mod chunking;
pub mod enroll;
pub mod get_plan;
pub mod id;
pub mod inventory;
pub mod limits;
pub mod manifest;
pub mod mutants;
pub mod name;
pub mod put_plan;
pub mod tracker;

pub use id::{ChunkId, IdError, ManifestHash, NodeId};
pub use manifest::{Manifest, ManifestError};
pub use name::{NameError, validate_name};
