//! How often each operation, fault and protocol event happened in a run,
//! so a summary shows what the simulator exercised and a test can require
//! that nothing was left out.
//!
//! Three sources: the checker counts the operations and faults it drives;
//! [`CountingLayer`] counts the services' own log events (a repair copy
//! made, a deletion carried out or skipped, a node asked to report again,
//! ...), per thread, so runs on different threads do not mix; and the
//! tracker's [`HealCounters`] count what it decided (trims, deletions,
//! hand-offs). Install the layer with [`install`] (the `p2p-sim` binary and
//! the coverage test do).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use p2p_core::tracker::repair::HealCounters;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Counts by event name.
pub type Counts = BTreeMap<&'static str, u64>;

/// Log messages of the services worth counting, and their names.
const EVENTS: &[(&str, &str)] = &[
    ("repair copy made", "repairs_made"),
    ("repair copy failed", "repairs_failed"),
    ("kept: an upload since may count on it", "deletions_skipped"),
    ("tracker asked for a full inventory", "reregistrations"),
    ("node reported its inventory", "full_reports"),
    ("ignored an overtaken heartbeat", "heartbeats_overtaken"),
    ("node declared dead", "nodes_declared_dead"),
    ("left the network", "nodes_left"),
    ("fetch failed; trying another holder", "fetch_retries"),
    ("upload failed; replacing target", "upload_retries"),
    (
        "the next node of a chain did not store the chunk",
        "chain_links_failed",
    ),
    ("file removed", "files_removed"),
    (
        "commit waits for a restarted node to report",
        "commits_unconfirmed",
    ),
    (
        "a tracker write was lost: the disk had not synced it",
        "tracker_writes_lost",
    ),
    ("upload refused: no room", "uploads_refused_room"),
    ("allocation refused: no room", "allocations_refused_room"),
    ("leading the tracker group", "group_leaderships"),
    ("a member rejoins from an empty disk", "group_rejoins"),
    (
        "stored chunk failed verification; removing it",
        "corrupt_found",
    ),
    // Must never happen: nodes verify before they serve.
    (
        "a holder served bytes that do not match the chunk hash",
        "corrupt_served",
    ),
];

/// Every name the coverage line has, in the order it prints them: client
/// operations, faults, then protocol events.
pub const NAMES: &[&str] = &[
    "put_ok",
    "put_replace_ok",
    "put_fanout_ok",
    "put_failed",
    "put_refused_exists",
    "get_verified",
    "get_no_such_file",
    "get_failed",
    "rm_ok",
    "rm_no_such_file",
    "ls_ok",
    "forge_refused",
    "leave_ok",
    "leave_forced_ok",
    "leave_refused",
    "leave_aimed_crash",
    "leave_aimed_rot",
    "crash",
    "crash_tracker",
    "wipe_tracker",
    "crash_mid_write",
    "partition",
    "loss",
    "latency",
    "stall",
    "lag",
    "lose_holder",
    "disk_rot",
    "disk_full",
    "disk_eio",
    "disk_slow",
    "corrupt_found",
    "writes_refused_full",
    "reads_failed_eio",
    "repairs_planned",
    "repairs_made",
    "trims",
    "keepers_verified",
    "removed_deletions",
    "orphan_deletions",
    "deletes_sent",
    "chunks_removed",
    "deletions_skipped",
    "deletes_cancelled",
    "handoffs",
    "leave_copies_verified",
    "spread_moves",
    "uploads_refused_room",
    "allocations_refused_room",
    "reregistrations",
    "full_reports",
    "heartbeats_overtaken",
    "nodes_declared_dead",
    "nodes_left",
    "fetch_retries",
    "upload_retries",
    "chain_links_failed",
    "files_removed",
    "commits_unconfirmed",
    "tracker_writes_lost",
    "group_leaderships",
    "group_rejoins",
];

thread_local! {
    static LOGGED: RefCell<Counts> = const { RefCell::new(Counts::new()) };
    static MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Count one `what` on this thread (for events the simulator's own seams
/// see, such as a chunk removed from a disk).
pub fn count(what: &'static str) {
    LOGGED.with(|c| *c.borrow_mut().entry(what).or_default() += 1);
}

/// Take (and reset) the log events counted on this thread.
pub fn take_logged() -> Counts {
    LOGGED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Add the tracker's decisions to `counts`.
pub fn add_heal(counts: &mut Counts, h: &HealCounters) {
    for (name, n) in [
        ("repairs_planned", h.repairs_planned),
        ("trims", h.trims),
        ("keepers_verified", h.keepers_verified),
        ("leave_copies_verified", h.leave_copies_verified),
        ("removed_deletions", h.removed_deletions),
        ("orphan_deletions", h.orphan_deletions),
        ("deletes_sent", h.deletes_sent),
        ("deletes_cancelled", h.deletes_cancelled),
        ("handoffs", h.handoffs),
        ("spread_moves", h.spread_moves),
    ] {
        *counts.entry(name).or_default() += n;
    }
}

/// The coverage line: every name, in order, with its count.
pub fn line(counts: &Counts) -> String {
    let mut out = String::new();
    for name in NAMES {
        let _ = write!(out, "{name}={} ", counts.get(name).copied().unwrap_or(0));
    }
    out.trim_end().to_string()
}

struct MessageVisitor<'a>(&'a mut String);

impl Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// Counts the services' events named in `EVENTS`.
pub struct CountingLayer;

impl<S: tracing::Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        MESSAGE.with(|m| {
            let mut m = m.borrow_mut();
            m.clear();
            event.record(&mut MessageVisitor(&mut m));
            if let Some((_, name)) = EVENTS.iter().find(|(msg, _)| *msg == m.as_str()) {
                LOGGED.with(|c| *c.borrow_mut().entry(name).or_default() += 1);
            }
        });
    }
}

/// Install the counting layer (and, if `RUST_LOG` is set, a log printer
/// with `timer`) as the global subscriber. Later calls do nothing.
pub fn install<T>(timer: T)
where
    T: tracing_subscriber::fmt::time::FormatTime + Send + Sync + 'static,
{
    use tracing_subscriber::filter::{EnvFilter, Targets};
    // A static filter at INFO: callsites of other crates, and debug ones,
    // are never enabled for it and their interest is cached (a dynamic
    // filter cost a third of a run, debug events a fifth).
    let counting = CountingLayer.with_filter(
        Targets::new()
            .with_target("p2p_net", tracing::Level::INFO)
            .with_target("p2p_core", tracing::Level::INFO),
    );
    // Without a printer, the counting layer alone: an absent (`None`)
    // layer would take an interest in every callsite at its level, and so
    // make every INFO span (turmoil enters one per host per step) and
    // event of every crate be built and dispatched.
    if std::env::var_os("RUST_LOG").is_none() {
        let _ = tracing_subscriber::registry().with(counting).try_init();
        return;
    }
    let printing = tracing_subscriber::fmt::layer()
        .with_timer(timer)
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::from_default_env());
    let _ = tracing_subscriber::registry()
        .with(counting)
        .with(printing)
        .try_init();
}
