//! Deterministic simulation of a whole p2p cluster.
//!
//! The same `p2p-net` services that ship run on turmoil hosts: the tracker
//! (or a group of three replicated with Raft, see [`trackers`]), N nodes
//! and three clients, talking gRPC over turmoil's simulated TCP, with
//! in-memory disks that survive a crash. A [`plan::Scenario`] (generated and
//! shrunk by proptest) interleaves puts and gets with crashes, restarts,
//! partitions, message loss and latency; [`run::run`] executes it and checks
//! the invariants:
//! - a get never returns wrong bytes;
//! - after every fault heals, every acknowledged file reads back
//!   byte-identical, unless the scenario destroyed every holder of one of its
//!   chunks (then it is reported as an expected loss, not a violation);
//! - with R-1 nodes down, every acknowledged file still reads back;
//! - no panic, no host failure, no hang (the run ends within a simulated bound);
//! - after faults heal, every chunk is back at R, and the tracker counts no
//!   copy that is on no disk;
//! - no node removes an intact copy of an acknowledged file's chunk if that
//!   leaves it below its factor (outside 3 s of a destroyed disk), and the
//!   tracker never counts among a chunk's live copies one a node deleted
//!   as told (see [`lag`] for a fault aimed at the tracker's sequencing);
//! - in a tracker group: no two members commit writes in the same term, and
//!   after the run every member has applied the same log to the same
//!   records (a digest of each compared), a wiped member included.
//!
//! Every run is a function of its scenario, and `Scenario::from_seed` makes
//! the scenario a function of one number: `cargo run -p p2p-sim --release --
//! --seed S` replays it and prints its trace.

/// Whether runs are a function of their scenario alone. Each host's tokio
/// runtime draws its RNG (`tokio::select!` uses it) from the scenario's
/// seed only when built with `--cfg tokio_unstable`, which
/// `.cargo/config.toml` sets; a `RUSTFLAGS` in the environment replaces it.
pub fn deterministic() -> bool {
    cfg!(tokio_unstable)
}

pub mod coverage;
pub mod lag;
pub mod plan;
pub mod run;
pub mod store;
pub mod sweep;
pub mod trackers;
pub mod transport;
