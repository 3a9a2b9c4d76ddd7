//! Cutting a byte stream into fixed-size chunks.
//!
//! A file of `size` bytes with chunk size `c` has `ceil(size / c)` chunks;
//! every chunk but the last is exactly `c` bytes, and a 0-byte file has no
//! chunks at all. [`Chunker`] does the cutting incrementally, so a driver can
//! feed it whatever its reads return and never hold more than one chunk.

use crate::id::ChunkId;

/// Number of chunks of a file of `size_bytes` cut in chunks of `chunk_size_bytes`.
pub fn chunk_count(size_bytes: u64, chunk_size_bytes: u64) -> u64 {
    assert!(chunk_size_bytes > 0, "chunk size must be positive");
    size_bytes.div_ceil(chunk_size_bytes)
}

/// Length of chunk `index` of a file of `size_bytes`.
pub fn chunk_len(size_bytes: u64, chunk_size_bytes: u64, index: u64) -> u64 {
    let start = index * chunk_size_bytes;
    assert!(
        start < size_bytes,
        "chunk {index} is past the end of the file"
    );
    chunk_size_bytes.min(size_bytes - start)
}

/// Byte offset of chunk `index`.
pub fn chunk_offset(chunk_size_bytes: u64, index: u64) -> u64 {
    index * chunk_size_bytes
}

/// One complete chunk cut from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: u64,
    pub id: ChunkId,
    pub data: Vec<u8>,
}

/// Incremental chunker: [`Chunker::push`] bytes as they are read, take full
/// chunks out with [`Chunker::poll_chunk`], and call [`Chunker::finish`] at the
/// end of the stream for the last, shorter one.
///
/// Drive contract: after every `push`, drain `poll_chunk` until it returns
/// `None`; the chunker then holds less than one chunk.
#[derive(Debug)]
pub struct Chunker {
    chunk_size_bytes: usize,
    buf: Vec<u8>,
    ready: std::collections::VecDeque<Vec<u8>>,
    next_index: u64,
}

impl Chunker {
    pub fn new(chunk_size_bytes: usize) -> Self {
        assert!(chunk_size_bytes > 0, "chunk size must be positive");
        Self {
            chunk_size_bytes,
            buf: Vec::new(),
            ready: Default::default(),
            next_index: 0,
        }
    }

    /// Room left in the current chunk: a driver reads at most this much next.
    pub fn room(&self) -> usize {
        self.chunk_size_bytes - self.buf.len()
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = self.room().min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == self.chunk_size_bytes {
                let full = std::mem::replace(&mut self.buf, Vec::with_capacity(0));
                self.ready.push_back(full);
            }
        }
    }

    pub fn poll_chunk(&mut self) -> Option<Chunk> {
        let data = self.ready.pop_front()?;
        Some(self.emit(data))
    }

    /// End of stream: the remaining bytes, if any, form the last chunk.
    pub fn finish(mut self) -> Option<Chunk> {
        assert!(self.ready.is_empty(), "drain poll_chunk before finish");
        if self.buf.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.buf);
        Some(self.emit(data))
    }

    fn emit(&mut self, data: Vec<u8>) -> Chunk {
        let index = self.next_index;
        self.next_index += 1;
        Chunk {
            index,
            id: ChunkId::of(&data),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cut(data: &[u8], chunk_size: usize, read_sizes: &[usize]) -> Vec<Chunk> {
        let mut chunker = Chunker::new(chunk_size);
        let mut out = Vec::new();
        let mut rest = data;
        let mut reads = read_sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*reads.next().unwrap_or(&1)).clamp(1, rest.len());
            chunker.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(c) = chunker.poll_chunk() {
                out.push(c);
            }
        }
        out.extend(chunker.finish());
        out
    }

    // A 0-byte file has no chunks and reassembles to 0 bytes.
    #[test]
    fn empty_stream_has_no_chunks() {
        assert!(cut(&[], 4, &[1]).is_empty());
        assert_eq!(chunk_count(0, 4), 0);
    }

    proptest! {
        // Chunk then reassemble is the identity, whatever the reads look like,
        // and the chunk shapes match chunk_count/chunk_len.
        #[test]
        fn chunk_reassemble_identity(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            chunk_size in 1usize..700,
            reads in proptest::collection::vec(1usize..900, 1..8),
        ) {
            let chunks = cut(&data, chunk_size, &reads);
            let size = data.len() as u64;
            prop_assert_eq!(chunks.len() as u64, chunk_count(size, chunk_size as u64));
            let mut joined = Vec::new();
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.index, i as u64);
                prop_assert_eq!(c.data.len() as u64, chunk_len(size, chunk_size as u64, i as u64));
                prop_assert_eq!(c.id, ChunkId::of(&c.data));
                joined.extend_from_slice(&c.data);
            }
            prop_assert_eq!(joined, data);
        }
    }
}
