//! Prometheus metrics: how long each RPC takes (a tower layer on the gRPC
//! server), what a node moved and found, and the text a scrape of
//! `/metrics` gets (see `crate::http`).
//!
//! Names and units follow Prometheus' conventions: a `p2p_` prefix, base
//! units (`_bytes`, `_seconds`), `_total` for counters. Every metric is
//! listed in ARCHITECTURE.md ("Metrics").

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A metric's labels.
pub type Labels = Vec<(String, String)>;

/// gRPC methods a label may name; any other path counts as `other`, so a
/// peer cannot grow the label set without bound.
const METHODS: &[&str] = &[
    "Register",
    "Report",
    "Heartbeat",
    "Allocate",
    "Commit",
    "Locate",
    "List",
    "Remove",
    "Status",
    "WhatIf",
    "BeginLeave",
    "FinishLeave",
    "Revoke",
    "Enroll",
    "Append",
    "Vote",
    "PreVote",
    "Snapshot",
    "Join",
    "PutChunk",
    "GetChunk",
    "Leave",
    "Ping",
];

fn method_of(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or("");
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

fn rpc_histogram() -> Histogram {
    // 100 µs to about 100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Time each gRPC call takes, by method, until its response starts (a
/// streaming call's whole stream for uploads, which answer at the end).
#[derive(Clone)]
pub struct RpcMetrics {
    durations: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self {
            durations: Family::new_with_constructor(rpc_histogram),
        }
    }
}

impl RpcMetrics {
    fn observe(&self, method: &'static str, seconds: f64) {
        self.durations
            .get_or_create(&vec![("method".to_string(), method.to_string())])
            .observe(seconds);
    }

    /// Add these metrics to a registry being rendered.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "p2p_rpc_duration_seconds",
            "Time a gRPC call took to answer, by method",
            self.durations.clone(),
        );
    }

    /// The tower layer that feeds these metrics.
    pub fn layer(&self) -> RpcTiming {
        RpcTiming {
            metrics: Arc::new(self.clone()),
        }
    }
}

/// A tower layer timing every call through the server it wraps.
#[derive(Clone)]
pub struct RpcTiming {
    metrics: Arc<RpcMetrics>,
}

impl<S> tower::Layer<S> for RpcTiming {
    type Service = Timed<S>;
    fn layer(&self, inner: S) -> Timed<S> {
        Timed {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls are timed (see [`RpcTiming`]).
#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path());
        let metrics = self.metrics.clone();
        // tokio's clock: the simulator controls it.
        let start = tokio::time::Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let out = call.await;
            metrics.observe(method, start.elapsed().as_secs_f64());
            out
        })
    }
}

/// What a node counts as it works.
#[derive(Clone, Default)]
pub struct NodeCounters {
    /// Chunk bytes received in uploads (clients, chains, repairs).
    pub received_bytes: Counter,
    /// Chunk bytes sent to readers and repair targets.
    pub sent_bytes: Counter,
    /// Chunks stored (uploads acknowledged).
    pub stored_chunks: Counter,
    /// Uploads refused because the node is full.
    pub refused_full: Counter,
    /// Stored copies found corrupt (by the scrubber or a read) and removed.
    pub corrupt_found: Counter,
}

impl NodeCounters {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "p2p_received_bytes",
            "Chunk bytes received in uploads",
            self.received_bytes.clone(),
        );
        r.register(
            "p2p_sent_bytes",
            "Chunk bytes sent to readers and repair targets",
            self.sent_bytes.clone(),
        );
        r.register(
            "p2p_stored_chunks",
            "Chunk uploads stored and acknowledged",
            self.stored_chunks.clone(),
        );
        r.register(
            "p2p_uploads_refused_full",
            "Uploads refused because this node is full",
            self.refused_full.clone(),
        );
        r.register(
            "p2p_corrupt_copies_found",
            "Stored copies found corrupt (scrubber or read) and removed",
            self.corrupt_found.clone(),
        );
    }
}

/// A gauge of `value` for a registry being rendered.
pub fn gauge(r: &mut Registry, name: &str, help: &str, value: i64) {
    r.register(
        name,
        help,
        prometheus_client::metrics::gauge::ConstGauge::new(value),
    );
}

/// A counter at `value` (kept by someone else) for a registry being
/// rendered; `name` without its `_total`, which the encoder adds.
pub fn counter(r: &mut Registry, name: &str, help: &str, value: u64) {
    r.register(
        name,
        help,
        prometheus_client::metrics::counter::ConstCounter::new(value),
    );
}

/// A family of gauges, one per label set, for a registry being rendered.
pub fn gauges(r: &mut Registry, name: &str, help: &str, values: Vec<(Labels, i64)>) {
    let family = Family::<Labels, prometheus_client::metrics::gauge::Gauge>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).set(v);
    }
    r.register(name, help, family);
}

/// The Prometheus text of everything `fill` registers.
pub fn render(fill: impl FnOnce(&mut Registry)) -> String {
    let mut r = Registry::default();
    fill(&mut r);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &r);
    out
}

/// The cluster as the tracker sees it: nodes, files, chunks, the repair
/// queue, each node's load, and the tracker's decisions so far.
pub fn cluster(
    r: &mut Registry,
    s: &p2p_core::tracker::Status,
    heal: &p2p_core::tracker::repair::HealCounters,
) {
    let count = |f: &dyn Fn(&p2p_core::tracker::NodeSummary) -> bool| {
        s.nodes.iter().filter(|n| f(n)).count() as i64
    };
    let state = |name: &str| vec![("state".to_string(), name.to_string())];
    gauges(
        r,
        "p2p_nodes",
        "Registered nodes, by state",
        vec![
            (state("alive"), count(&|n| n.alive && !n.leaving)),
            (state("leaving"), count(&|n| n.leaving)),
            (state("dead"), count(&|n| !n.alive)),
        ],
    );
    gauge(r, "p2p_files", "Files stored", i64_of(s.files));
    gauge(
        r,
        "p2p_files_at_risk",
        "Files with a chunk below its factor",
        i64_of(s.at_risk_total),
    );
    gauge(r, "p2p_chunks", "Chunks files reference", i64_of(s.chunks));
    gauge(
        r,
        "p2p_chunks_under_replicated",
        "Chunks with fewer live copies than their factor",
        i64_of(s.under_replicated),
    );
    gauge(
        r,
        "p2p_chunks_lost",
        "Chunks with no live copy",
        i64_of(s.lost),
    );
    gauge(
        r,
        "p2p_repair_queue_chunks",
        "Under-replicated chunks waiting for a repair to be planned",
        i64_of(s.repair_queue),
    );
    gauge(
        r,
        "p2p_repairs_in_flight",
        "Repair copies planned or under way",
        i64_of(s.repairs_in_flight),
    );
    gauge(
        r,
        "p2p_deletes_pending",
        "Surplus or removed copies still to delete",
        i64_of(s.deletes_pending),
    );
    let per_node = |v: &dyn Fn(&p2p_core::tracker::NodeSummary) -> Option<u64>| {
        s.nodes
            .iter()
            .filter_map(|n| {
                let labels = vec![
                    ("node".to_string(), n.id.to_string()),
                    ("zone".to_string(), n.zone.clone()),
                ];
                v(n).map(|x| (labels, i64_of(x)))
            })
            .collect()
    };
    gauges(
        r,
        "p2p_node_up",
        "1 if the node is alive, 0 if not",
        per_node(&|n| Some(u64::from(n.alive))),
    );
    gauges(
        r,
        "p2p_node_chunks",
        "Chunks the node holds",
        per_node(&|n| Some(n.chunks)),
    );
    gauges(
        r,
        "p2p_node_used_bytes",
        "Bytes the node's chunks take, as it last reported",
        per_node(&|n| n.space.map(|s| s.used_bytes)),
    );
    gauges(
        r,
        "p2p_node_capacity_bytes",
        "The most the node stores, as it last reported",
        per_node(&|n| n.space.map(|s| s.capacity_bytes)),
    );
    counter(
        r,
        "p2p_repairs_planned",
        "Repair copies planned",
        heal.repairs_planned,
    );
    counter(r, "p2p_trims", "Surplus copies told to go", heal.trims);
    counter(
        r,
        "p2p_handoffs",
        "Copies leaving nodes were told to hand over",
        heal.handoffs,
    );
    counter(
        r,
        "p2p_spread_moves",
        "Extra copies planned to spread a chunk over more zones",
        heal.spread_moves,
    );
    counter(
        r,
        "p2p_deletes_sent",
        "Deletions sent to nodes",
        heal.deletes_sent,
    );
}

/// Saturating conversion for gauges.
pub fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_protocol_share_one_label() {
        assert_eq!(method_of("/p2p.v1.Tracker/Allocate"), "Allocate");
        assert_eq!(method_of("/p2p.v1.Node/PutChunk"), "PutChunk");
        assert_eq!(method_of("/p2p.v1.Tracker/AAAAAAAA"), "other");
        assert_eq!(method_of(""), "other");
    }

    #[test]
    fn renders_prometheus_text() {
        let rpc = RpcMetrics::default();
        rpc.observe("Allocate", 0.002);
        let counters = NodeCounters::default();
        counters.received_bytes.inc_by(4096);
        let text = render(|r| {
            rpc.register(r);
            counters.register(r);
            gauge(r, "p2p_files", "Files", 3);
            gauges(
                r,
                "p2p_node_up",
                "Nodes",
                vec![(vec![("zone".into(), "a".into())], 1)],
            );
        });
        assert!(text.contains("p2p_received_bytes_total 4096\n"), "{text}");
        assert!(text.contains("p2p_files 3\n"), "{text}");
        assert!(text.contains("p2p_node_up{zone=\"a\"} 1\n"), "{text}");
        assert!(
            text.contains("p2p_rpc_duration_seconds_count{method=\"Allocate\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }
}
