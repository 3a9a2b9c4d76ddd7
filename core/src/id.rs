//! Identifiers: content-addressed chunk ids, node ids and manifest hashes.

use std::fmt;

use crate::limits::NODE_ID_MAX_BYTES;

/// Why an identifier from the wire or a user was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A hash was not exactly 32 bytes.
    #[error("a hash must be 32 bytes, got {0}")]
    HashLength(usize),
    /// A hex hash was not 64 lowercase hex digits.
    #[error("a hash must be 64 hex digits")]
    HashHex,
    /// A node id was empty, too long or had characters other than `[A-Za-z0-9_-]`.
    #[error("invalid node id {0:?}: 1 to 64 characters of [A-Za-z0-9_-]")]
    NodeId(String),
}

/// The BLAKE3 hash of a chunk's bytes; also its name on disk.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hash `data` into its chunk id.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Parse the 32 raw bytes carried on the wire.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdError::HashLength(bytes.len()))?;
        Ok(Self(arr))
    }

    /// Parse 64 lowercase hex digits (the on-disk file name). Anything else,
    /// including path separators, is refused, so a parsed id is always a safe
    /// file name.
    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(IdError::HashHex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdError::HashHex)?;
        Ok(Self(out))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..12])
    }
}

/// The BLAKE3 hash of a manifest's canonical encoding: identifies a file version.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestHash(pub [u8; 32]);

impl ManifestHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ManifestHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManifestHash({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for ManifestHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A node's stable identity, chosen by the node once and kept in its data
/// directory. Shared, not copied, when cloned: the tracker's records name
/// the same few nodes millions of times.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(std::sync::Arc<str>);

impl NodeId {
    /// Validate a node id from the wire: 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= NODE_ID_MAX_BYTES
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(IdError::NodeId(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A parsed chunk id can never name anything but a plain file.
    #[test]
    fn hex_ids_refuse_paths() {
        assert!(ChunkId::from_hex("../etc/passwd").is_err());
        assert!(ChunkId::from_hex(&"A".repeat(64)).is_err());
        assert!(ChunkId::from_hex(&format!("{}/", "a".repeat(63))).is_err());
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Ok(id));
    }

    // Node ids are bounded and cannot carry separators.
    #[test]
    fn node_ids_are_validated() {
        assert!(NodeId::new("node-1_a").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a/b").is_err());
        assert!(NodeId::new("x".repeat(65)).is_err());
    }
}
