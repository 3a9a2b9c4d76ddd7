//! The tracker's chunk table: one dense record per chunk, found by id
//! through a hash table of 4-byte indices.
//!
//! A chunk id (32 bytes) is stored once, in its record; manifests, node
//! inventories and health queues name chunks by their [`ChunkIx`], 4 bytes.
//! Holders are interned node indices kept inline (up to four without a heap
//! allocation). A record costs [`CHUNK_RECORD_BYTES`] plus about 8 bytes of
//! hash table; see `Tracker::heap_bytes` for the whole account.
//!
//! The hash is keyed with two secret words (seeded by the caller): chunk
//! ids are chosen by whoever writes the content, and an unkeyed hash would
//! let a writer grind ids into one bucket. An id is already a uniform
//! BLAKE3 digest, so one folded multiply of its first 16 bytes with the
//! keys is enough (a general-purpose hasher over all 32 bytes was a tenth
//! of a restart's time). The table is never iterated, so its order cannot
//! reach an output.

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::id::ChunkId;

/// A registered node, by its place in the tracker's node table.
pub(crate) type NodeIx = u32;
/// A chunk, by its place in the [`ChunkTable`].
pub type ChunkIx = u32;
/// A file, by its place in the tracker's file table.
pub(crate) type FileIx = u32;

/// `ChunkRec::file` of a chunk no file references.
pub(crate) const NO_FILE: FileIx = u32::MAX;
/// `ChunkRec::file` of a chunk more than one file references (the files are
/// listed in `Tracker::shared`).
pub(crate) const MANY_FILES: FileIx = u32::MAX - 1;

/// What the tracker knows of one chunk.
#[derive(Debug, Clone)]
pub(crate) struct ChunkRec {
    pub(crate) id: ChunkId,
    /// Length in bytes (at most `CHUNK_SIZE_MAX_BYTES`); 0 until a file
    /// references the chunk.
    pub(crate) size_bytes: u32,
    /// The largest replication factor of the files that reference it; 0
    /// when none does (a copy a node reported that no file names).
    pub(crate) factor: u8,
    /// Live holders when last classified (see `Tracker::reclassify`).
    pub(crate) live: u8,
    /// Classified as an orphan: held, but referenced by no file.
    pub(crate) orphan: bool,
    /// The one file that references it, [`NO_FILE`] or [`MANY_FILES`].
    pub(crate) file: FileIx,
    /// How many times `file` lists it (a file of zeros lists one chunk many
    /// times).
    pub(crate) file_refs: u32,
    /// Nodes that hold a copy, in node id order.
    pub(crate) holders: SmallVec<[NodeIx; 4]>,
}

/// Bytes of one chunk record.
pub const CHUNK_RECORD_BYTES: usize = std::mem::size_of::<ChunkRec>();
// Most of the tracker's memory is chunk records: keep them small.
const _: () = assert!(CHUNK_RECORD_BYTES <= 72);

/// 128-bit product of `a` and `b`, its halves folded together.
fn mix(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

fn hash_with(keys: &[u64; 2], id: &ChunkId) -> u64 {
    let b = id.as_bytes();
    let w0 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let w1 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    mix(w0 ^ keys[0], w1 ^ keys[1])
}

/// Chunk records, found by id. Indices of freed records are reused.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkTable {
    keys: [u64; 2],
    index: HashTable<ChunkIx>,
    recs: Vec<ChunkRec>,
    free: Vec<ChunkIx>,
}

impl ChunkTable {
    pub(crate) fn new(seed: u64) -> Self {
        // Two words from the seed, so neither is the seed itself.
        let k0 = mix(seed ^ 0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344);
        let k1 = mix(seed ^ 0xa409_3822_299f_31d0, 0x082e_fa98_ec4e_6c89);
        Self {
            keys: [k0, k1],
            ..Default::default()
        }
    }

    fn hash(&self, id: &ChunkId) -> u64 {
        hash_with(&self.keys, id)
    }

    pub(crate) fn find(&self, id: &ChunkId) -> Option<ChunkIx> {
        let recs = &self.recs;
        self.index
            .find(self.hash(id), |&ix| recs[ix as usize].id == *id)
            .copied()
    }

    /// The record of `id`, created empty if there is none.
    pub(crate) fn find_or_insert(&mut self, id: ChunkId) -> ChunkIx {
        let hash = self.hash(&id);
        let (recs, keys) = (&self.recs, &self.keys);
        let vacant = match self.index.entry(
            hash,
            |&ix| recs[ix as usize].id == id,
            |&ix| hash_with(keys, &recs[ix as usize].id),
        ) {
            hashbrown::hash_table::Entry::Occupied(found) => return *found.get(),
            hashbrown::hash_table::Entry::Vacant(vacant) => vacant,
        };
        let rec = ChunkRec {
            id,
            size_bytes: 0,
            factor: 0,
            live: 0,
            orphan: false,
            file: NO_FILE,
            file_refs: 0,
            holders: SmallVec::new(),
        };
        let ix = match self.free.pop() {
            Some(ix) => {
                self.recs[ix as usize] = rec;
                ix
            }
            None => {
                assert!(self.recs.len() < MANY_FILES as usize, "chunk table full");
                self.recs.push(rec);
                (self.recs.len() - 1) as ChunkIx
            }
        };
        vacant.insert(ix);
        ix
    }

    /// Room for `more` records without growing (a restart knows roughly
    /// how many it will read: growing the table rehashes everything).
    pub(crate) fn reserve(&mut self, more: usize) {
        self.recs.reserve(more);
        let (recs, keys) = (&self.recs, &self.keys);
        self.index
            .reserve(more, |&i| hash_with(keys, &recs[i as usize].id));
    }

    /// Forget a record that no file references and no node holds.
    pub(crate) fn remove(&mut self, ix: ChunkIx) {
        let rec = &self.recs[ix as usize];
        assert!(
            rec.file == NO_FILE && rec.holders.is_empty(),
            "chunk still in use"
        );
        let hash = self.hash(&rec.id);
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == ix) {
            entry.remove();
        }
        self.recs[ix as usize].holders = SmallVec::new();
        self.free.push(ix);
    }

    pub(crate) fn get(&self, ix: ChunkIx) -> &ChunkRec {
        &self.recs[ix as usize]
    }

    pub(crate) fn get_mut(&mut self, ix: ChunkIx) -> &mut ChunkRec {
        &mut self.recs[ix as usize]
    }

    /// Records in use.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Every record in use, by index (free slots skipped). For checks and
    /// accounting, never for planning.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ChunkIx, &ChunkRec)> {
        let free: std::collections::BTreeSet<ChunkIx> = self.free.iter().copied().collect();
        self.recs
            .iter()
            .enumerate()
            .map(|(i, r)| (i as ChunkIx, r))
            .filter(move |(i, _)| !free.contains(i))
    }

    /// Heap bytes held: records, free list and hash table.
    pub(crate) fn heap_bytes(&self) -> usize {
        let spilled: usize = self
            .recs
            .iter()
            .filter(|r| r.holders.spilled())
            .map(|r| r.holders.capacity() * std::mem::size_of::<NodeIx>())
            .sum();
        self.recs.capacity() * CHUNK_RECORD_BYTES
            + spilled
            + self.free.capacity() * std::mem::size_of::<ChunkIx>()
            + self.index.allocation_size()
    }
}
