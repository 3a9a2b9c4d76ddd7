//! Every bound the protocol enforces. Values that arrive from the wire or a
//! user are checked against these before anything is allocated.

/// Default size of a chunk: 4 MiB.
pub const CHUNK_SIZE_DEFAULT_BYTES: u64 = 4 * 1024 * 1024;
/// Largest chunk size a file may declare.
pub const CHUNK_SIZE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest chunk size a file may declare (small values only make sense in tests).
pub const CHUNK_SIZE_MIN_BYTES: u64 = 1024;
/// Size of one data message in a chunk a node serves. Large: a get copies
/// each piece out at once, and fewer messages cost less CPU on both ends.
pub const PIECE_SIZE_BYTES: usize = 1024 * 1024;
/// Size of one data message in a chunk upload (put, repair, hand-off).
/// Smaller: a put streams `--parallel` chunks to R nodes each, and every
/// stream holds an encoded piece (measured: 1 MiB pieces raised a 1 GiB
/// put's peak from 41 to 55 MiB, and were no faster).
pub const UPLOAD_PIECE_SIZE_BYTES: usize = 256 * 1024;
/// Largest message any peer decodes: a piece plus framing headroom.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Default replication factor.
pub const REPLICAS_DEFAULT: u32 = 3;
/// Highest replication factor a file may ask for.
pub const REPLICAS_MAX: u32 = 16;
/// Most chunks one file may have (with 4 MiB chunks: 64 TiB).
pub const FILE_CHUNKS_MAX: u64 = 1 << 24;
/// Longest file name, in bytes.
pub const NAME_MAX_BYTES: usize = 255;
/// Longest node id, in bytes.
pub const NODE_ID_MAX_BYTES: usize = 64;
/// Longest node address, in bytes.
pub const ADDR_MAX_BYTES: usize = 256;
/// Bytes of a zone's name (`p2p node --zone`).
pub const ZONE_MAX_BYTES: usize = 64;
/// Distinct zone names a tracker remembers; a node naming one more is
/// refused.
pub const ZONES_MAX: usize = 4096;
/// Most chunk ids in one inventory message.
pub const INVENTORY_MAX_CHUNKS: usize = 1 << 20;
/// Chunk ids a node sends in one part of a full report.
pub const REPORT_PART_CHUNKS: usize = 1 << 16;
/// Files in one page of a listing, at most.
pub const LIST_PAGE_MAX_FILES: usize = 1000;
/// Full reports the tracker takes at once; the others wait their turn (a
/// restarted tracker is not flooded by every node's inventory at once).
pub const REPORTS_AT_ONCE_MAX: usize = 4;
/// Puts in flight the tracker keeps a lease for, at most (the lease
/// renewed longest ago goes first).
pub const PUT_LEASES_MAX: usize = 1 << 16;
/// Largest message the tracker decodes (a full inventory report).
pub const TRACKER_MESSAGE_SIZE_MAX_BYTES: usize = 48 * 1024 * 1024;
/// Largest message between members of a tracker group (a batch of log
/// entries: up to the library's 300 entries a message, each the records of
/// one request; a snapshot travels in pieces of 1 MiB).
pub const GROUP_MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Largest snapshot of a tracker group's state a member takes from
/// another (held in memory while it is installed).
pub const GROUP_SNAPSHOT_MAX_BYTES: usize = 4 * 1024 * 1024 * 1024;
/// An enrollment token's text.
pub const TOKEN_LEN_MAX_BYTES: usize = 4096;
/// A certificate, key or certificate signing request in PEM, as enrollment
/// carries them.
pub const PEM_MAX_BYTES: usize = 16 * 1024;
/// Used enrollment tokens the trackers remember (each until it expires).
pub const USED_TOKENS_MAX: usize = 1 << 16;
/// How long an enrollment token works at most.
pub const TOKEN_TTL_MAX_S: u64 = 7 * 24 * 3600;
/// Revoked certificates' identities the trackers and nodes hold.
pub const REVOKED_MAX: usize = 4096;
/// Bytes of one revoked identity (a node id, a tracker's address, a
/// person's 32-hex-digit name).
pub const REVOKED_ID_MAX_BYTES: usize = 256;

// Limits against abuse by a peer that can reach a port (see ARCHITECTURE.md,
// "Trust model"). Without TLS, a "peer" is an IP address; with TLS, uploads
// count by the certificate's identity.

/// Connections a tracker or node serves at once; more wait in the listen
/// backlog. Also kept below the process's open-file limit (raised to its
/// hard limit at start) less [`FILES_RESERVED`].
pub const CONNECTIONS_MAX: usize = 4096;
/// File descriptors kept for everything but connections (chunk files,
/// the database, logs).
pub const FILES_RESERVED: usize = 256;
/// Connections one IP address may hold open to a tracker or node at once;
/// a connection past it is closed as soon as it is accepted.
pub const CONNECTIONS_PER_PEER_MAX: usize = 256;
/// HTTP/2 streams (calls) one connection may have open at once.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Chunk uploads a node takes from one peer at once (a client's `put`
/// sends at most 64, the CLI's `--parallel` bound; a repair source 4);
/// more are refused with `RESOURCE_EXHAUSTED`.
pub const UPLOADS_PER_PEER_MAX: usize = 64;
/// Seconds a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_MAX_S: u64 = 10;
/// Seconds of silence within an upload (between its pieces, or before its
/// header) after which the node drops it: the default of `--timeout`,
/// which sets it.
pub const PIECE_GAP_DEFAULT_S: u64 = 30;
