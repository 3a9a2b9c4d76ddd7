//! Wire messages to and from core types. Everything that arrives is
//! validated here, on entry, before the core sees it.

use p2p_core::tracker::{Handoff, NodeRef};
use p2p_core::{ChunkId, Manifest, NodeId};
use p2p_proto as pb;
use tonic::Status;

pub fn chunk_id(bytes: &[u8]) -> Result<ChunkId, Status> {
    ChunkId::from_slice(bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn chunk_ids(list: &[bytes::Bytes]) -> Result<Vec<ChunkId>, Status> {
    list.iter().map(|b| chunk_id(b)).collect()
}

pub fn node_id(s: &str) -> Result<NodeId, Status> {
    NodeId::new(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn chunk_bytes(ids: &[ChunkId]) -> Vec<bytes::Bytes> {
    ids.iter()
        .map(|c| bytes::Bytes::copy_from_slice(c.as_bytes()))
        .collect()
}

pub fn node_ref_to_pb(r: &NodeRef) -> pb::NodeRef {
    pb::NodeRef {
        id: r.id.to_string(),
        addr: r.addr.clone(),
    }
}

pub fn node_ref_from_pb(r: &pb::NodeRef) -> Result<NodeRef, Status> {
    if r.addr.is_empty() || r.addr.len() > p2p_core::limits::ADDR_MAX_BYTES {
        return Err(Status::invalid_argument("invalid node address"));
    }
    Ok(NodeRef {
        id: node_id(&r.id)?,
        addr: r.addr.clone(),
    })
}

pub fn manifest_to_pb(m: &Manifest) -> pb::Manifest {
    pb::Manifest {
        name: m.name.clone(),
        size: m.size_bytes,
        chunk_size: m.chunk_size_bytes,
        replicas: m.replicas,
        chunks: chunk_bytes(&m.chunks),
    }
}

pub fn manifest_from_pb(m: &pb::Manifest) -> Result<Manifest, Status> {
    Manifest::new(
        m.name.clone(),
        m.size,
        m.chunk_size,
        m.replicas,
        chunk_ids(&m.chunks)?,
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn handoff_to_pb(h: &Handoff) -> pb::Replicate {
    pb::Replicate {
        chunk: bytes::Bytes::copy_from_slice(h.chunk.as_bytes()),
        size: h.size_bytes,
        target: Some(node_ref_to_pb(&h.target)),
    }
}

pub fn handoff_from_pb(r: &pb::Replicate) -> Result<Handoff, Status> {
    let target = r
        .target
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("handoff without a target"))?;
    if r.size > p2p_core::limits::CHUNK_SIZE_MAX_BYTES {
        return Err(Status::invalid_argument("handoff chunk too large"));
    }
    Ok(Handoff {
        chunk: chunk_id(&r.chunk)?,
        size_bytes: r.size,
        target: node_ref_from_pb(target)?,
    })
}

/// One file's summary on the wire.
pub fn file_info_to_pb(f: &p2p_core::tracker::FileSummary) -> pb::FileInfo {
    pb::FileInfo {
        name: f.name.clone(),
        size: f.size_bytes,
        replicas: f.replicas,
        chunks: f.chunks,
        manifest_hash: f.hash.0.to_vec().into(),
        under_replicated: f.under_replicated,
        min_copies: f.min_copies,
        lost: f.lost,
    }
}

/// A (chunk, target node) pair on the wire: a hand-over or a repair copy.
pub fn handed_to_pb(chunk: &ChunkId, target: &NodeId) -> pb::Handed {
    pb::Handed {
        chunk: bytes::Bytes::copy_from_slice(chunk.as_bytes()),
        target_id: target.to_string(),
    }
}

/// Decode (chunk, target node) pairs, at most an inventory's worth.
pub fn handed_from_pb(v: &[pb::Handed]) -> Result<Vec<(ChunkId, NodeId)>, Status> {
    if v.len() > p2p_core::limits::INVENTORY_MAX_CHUNKS {
        return Err(Status::invalid_argument(format!(
            "{} chunk reports is too many",
            v.len()
        )));
    }
    v.iter()
        .map(|h| Ok((chunk_id(&h.chunk)?, node_id(&h.target_id)?)))
        .collect()
}

/// An acknowledgement as the wire carries it: a stamp and a receipt.
pub fn ack_to_pb(a: &p2p_core::ack::Ack) -> (pb::Stamp, bytes::Bytes) {
    (
        pb::Stamp {
            session: a.stamp.session,
            seq: a.stamp.seq,
        },
        bytes::Bytes::copy_from_slice(&a.receipt.0),
    )
}

/// An acknowledgement from the wire. A missing stamp is none; a missing or
/// malformed receipt is one that does not hold.
pub fn ack_from_pb(stamp: Option<&pb::Stamp>, receipt: Option<&[u8]>) -> p2p_core::ack::Ack {
    use p2p_core::ack::{Ack, Receipt, Stamp};
    Ack {
        stamp: stamp.map_or_else(Stamp::default, |s| Stamp {
            session: s.session,
            seq: s.seq,
        }),
        receipt: receipt
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .map(Receipt)
            .unwrap_or_default(),
    }
}

/// A node's disk as it reported it (`None`: not said).
pub fn space_from_pb(s: Option<&pb::DiskSpace>) -> Option<p2p_core::tracker::Space> {
    s.filter(|s| s.capacity > 0)
        .map(|s| p2p_core::tracker::Space {
            used_bytes: s.used,
            capacity_bytes: s.capacity,
        })
}
