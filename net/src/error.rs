//! Errors a user of the client library can see. Each renders as one
//! readable line with its context.

use std::path::PathBuf;

use p2p_core::{ManifestError, NameError};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A local file could not be read.
    #[error("cannot read {path}: {err}")]
    ReadInput { path: PathBuf, err: std::io::Error },
    /// The output could not be written.
    #[error("cannot write {path}: {err}")]
    WriteOutput { path: PathBuf, err: std::io::Error },
    /// The input changed size while it was being stored.
    #[error("{0} changed while it was being read")]
    InputChanged(PathBuf),
    /// The file name is not a plain name.
    #[error("invalid file name: {0}")]
    Name(#[from] NameError),
    /// The replication factor or chunk size is out of range.
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// An address could not be parsed.
    #[error("invalid address {addr:?}: {msg}")]
    Addr { addr: String, msg: String },
    /// The tracker could not be reached or timed out.
    #[error("tracker at {addr} is unreachable: {msg}")]
    TrackerDown { addr: String, msg: String },
    /// The tracker refused the request.
    #[error("tracker: {0}")]
    Tracker(String),
    /// No file by that name.
    #[error("no such file: {0:?}")]
    UnknownFile(String),
    /// A put of a name that exists, without `--replace`.
    #[error("a file named {0:?} already exists (put --replace replaces it)")]
    FileExists(String),
    /// A node has no room for a chunk.
    #[error("node at {addr} is full: {msg}")]
    NodeFull { addr: String, msg: String },
    /// A node refused or failed a request.
    #[error("node at {addr}: {msg}")]
    Node { addr: String, msg: String },
    /// A chunk could not be stored on enough nodes.
    #[error("chunk {index} could not be stored on {replicas} nodes: {detail}")]
    PutFailed {
        index: usize,
        replicas: u32,
        detail: String,
    },
    /// A chunk could not be obtained intact from any holder.
    #[error("chunk {index} of {name:?} could not be obtained intact from any holder ({detail})")]
    GetFailed {
        name: String,
        index: usize,
        detail: String,
    },
    /// A peer sent something that breaks the protocol.
    #[error("protocol violation by {peer}: {msg}")]
    Protocol { peer: String, msg: String },
    /// A leave could not complete.
    #[error("leave incomplete: {0}")]
    Leave(String),
    /// Enrollment (joining the cluster with a token) failed.
    #[error("enrollment failed: {0}")]
    Enroll(String),
    /// A node named in a request is not known to the tracker.
    #[error(
        "no node {0:?} is known to the tracker (give an id or an address as `p2p status` shows them)"
    )]
    UnknownNode(String),
}

/// An error and its causes on one line.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = s.source();
    }
    msg
}

/// Whether a gRPC status means "could not talk to the peer" rather than
/// "the peer said no".
pub fn is_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || (status.code() == tonic::Code::Unknown && status.message().contains("transport"))
}

/// A readable one-line form of a status, with its transport cause if any.
pub fn status_line(status: &tonic::Status) -> String {
    let mut msg = status.message().to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(status);
    while let Some(e) = src {
        let s = e.to_string();
        if !msg.contains(&s) {
            msg = format!("{msg}: {s}");
        }
        src = e.source();
    }
    if msg.is_empty() {
        return format!("{:?}", status.code());
    }
    // What plaintext HTTP/2 makes of a TLS server's first bytes.
    if msg.contains("frame with invalid size") {
        msg.push_str(" (the peer may speak TLS: use https:// and enroll with p2p login TOKEN)");
    }
    msg
}

impl ClientError {
    /// Map a status from the tracker.
    pub fn from_tracker(addr: &str, status: tonic::Status) -> Self {
        if is_unreachable(&status) {
            return Self::TrackerDown {
                addr: addr.to_string(),
                msg: status_line(&status),
            };
        }
        Self::Tracker(status_line(&status))
    }

    /// Map a status from a node.
    pub fn from_node(addr: &str, status: tonic::Status) -> Self {
        if status.code() == tonic::Code::ResourceExhausted {
            return Self::NodeFull {
                addr: addr.to_string(),
                msg: status_line(&status),
            };
        }
        Self::Node {
            addr: addr.to_string(),
            msg: status_line(&status),
        }
    }
}
