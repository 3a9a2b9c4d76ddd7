//! A manifest describes one file version: its name, size, chunk size,
//! replication factor and ordered chunk ids. Its hash identifies the version.

use crate::chunking::{chunk_count, chunk_len};
use crate::id::{ChunkId, ManifestHash};
use crate::limits::{CHUNK_SIZE_MAX_BYTES, CHUNK_SIZE_MIN_BYTES, FILE_CHUNKS_MAX, REPLICAS_MAX};
use crate::name::{NameError, validate_name};

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The file name is not a plain name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The chunk size is outside the allowed range.
    #[error("chunk size {0} is outside {CHUNK_SIZE_MIN_BYTES}..={CHUNK_SIZE_MAX_BYTES} bytes")]
    ChunkSize(u64),
    /// The replication factor is 0 or above the maximum.
    #[error("replication factor {0} is outside 1..={REPLICAS_MAX}")]
    Replicas(u32),
    /// The number of chunk ids does not match the size.
    #[error(
        "a file of {size} bytes in {chunk_size}-byte chunks has {expected} chunks, manifest lists {got}"
    )]
    ChunkCount {
        size: u64,
        chunk_size: u64,
        expected: u64,
        got: u64,
    },
    /// The file is larger than the protocol allows.
    #[error("file has more than {FILE_CHUNKS_MAX} chunks")]
    TooLarge,
}

/// Check a replication factor requested by a user or a peer.
pub fn validate_replicas(replicas: u32) -> Result<(), ManifestError> {
    if replicas == 0 || replicas > REPLICAS_MAX {
        return Err(ManifestError::Replicas(replicas));
    }
    Ok(())
}

/// Check a chunk size requested by a user or a peer.
pub fn validate_chunk_size(chunk_size_bytes: u64) -> Result<(), ManifestError> {
    if !(CHUNK_SIZE_MIN_BYTES..=CHUNK_SIZE_MAX_BYTES).contains(&chunk_size_bytes) {
        return Err(ManifestError::ChunkSize(chunk_size_bytes));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    pub replicas: u32,
    pub chunks: Vec<ChunkId>,
}

impl Manifest {
    /// Build and validate a manifest.
    pub fn new(
        name: String,
        size_bytes: u64,
        chunk_size_bytes: u64,
        replicas: u32,
        chunks: Vec<ChunkId>,
    ) -> Result<Self, ManifestError> {
        let m = Self {
            name,
            size_bytes,
            chunk_size_bytes,
            replicas,
            chunks,
        };
        m.validate()?;
        Ok(m)
    }

    /// Every field within bounds and consistent with the others.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_name(&self.name)?;
        validate_chunk_size(self.chunk_size_bytes)?;
        validate_replicas(self.replicas)?;
        let expected = chunk_count(self.size_bytes, self.chunk_size_bytes);
        if expected > FILE_CHUNKS_MAX {
            return Err(ManifestError::TooLarge);
        }
        if expected != self.chunks.len() as u64 {
            return Err(ManifestError::ChunkCount {
                size: self.size_bytes,
                chunk_size: self.chunk_size_bytes,
                expected,
                got: self.chunks.len() as u64,
            });
        }
        Ok(())
    }

    /// Length in bytes of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> u64 {
        chunk_len(self.size_bytes, self.chunk_size_bytes, index as u64)
    }

    /// BLAKE3 of a canonical, length-prefixed encoding of every field.
    pub fn hash(&self) -> ManifestHash {
        let mut h = blake3::Hasher::new();
        h.update(b"p2p-manifest-v1");
        h.update(&(self.name.len() as u64).to_le_bytes());
        h.update(self.name.as_bytes());
        h.update(&self.size_bytes.to_le_bytes());
        h.update(&self.chunk_size_bytes.to_le_bytes());
        h.update(&self.replicas.to_le_bytes());
        h.update(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            h.update(c.as_bytes());
        }
        ManifestHash(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(size: u64, n: usize) -> Result<Manifest, ManifestError> {
        Manifest::new("f".into(), size, 1024, 3, vec![ChunkId::of(b"x"); n])
    }

    // The chunk list must match the declared size exactly.
    #[test]
    fn chunk_count_must_match_size() {
        assert!(m(0, 0).is_ok());
        assert!(m(1, 1).is_ok());
        assert!(m(1024, 1).is_ok());
        assert!(m(1025, 2).is_ok());
        assert!(matches!(m(1025, 1), Err(ManifestError::ChunkCount { .. })));
        assert!(matches!(m(0, 1), Err(ManifestError::ChunkCount { .. })));
    }

    // Any field change changes the hash.
    #[test]
    fn hash_covers_every_field() {
        let base = m(2000, 2).unwrap();
        let mut variants = vec![base.clone(); 5];
        variants[0].name = "g".into();
        variants[1].size_bytes = 1999;
        variants[2].replicas = 2;
        variants[3].chunks[1] = ChunkId::of(b"y");
        variants[4].chunk_size_bytes = 2048;
        for v in variants {
            assert_ne!(v.hash(), base.hash());
        }
    }

    // Replication factors of 0 or above the maximum are refused.
    #[test]
    fn replicas_are_bounded() {
        assert!(validate_replicas(0).is_err());
        assert!(validate_replicas(1).is_ok());
        assert!(validate_replicas(REPLICAS_MAX + 1).is_err());
    }
}
