//! The HTTP side of a tracker or node (`--http ADDR`): `/metrics` in
//! Prometheus' text format, `/healthz`, and on a tracker the cluster page
//! at `/`. Plain HTTP/1.1 on its own port, for operators' tools.

pub use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::meta::MetaStore;
use crate::metrics::{CONTENT_TYPE, RpcMetrics};
use crate::node::NodeService;
use crate::store::ChunkStore;
use crate::tracker::TrackerService;
use crate::transport::Dialer;

struct Tracked<M: MetaStore> {
    service: TrackerService<M>,
    rpc: RpcMetrics,
}

impl<M: MetaStore> Clone for Tracked<M> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            rpc: self.rpc.clone(),
        }
    }
}

fn metrics_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// `/metrics`, `/healthz` and the cluster page of a tracker; `rpc` are the
/// timings its gRPC server's layer records.
pub fn tracker_routes<M: MetaStore>(service: TrackerService<M>, rpc: RpcMetrics) -> Router {
    async fn metrics<M: MetaStore>(State(s): State<Tracked<M>>) -> Response {
        metrics_response(s.service.metrics_text(&s.rpc).await)
    }
    async fn healthz<M: MetaStore>(State(s): State<Tracked<M>>) -> Response {
        if s.service.healthy() {
            (StatusCode::OK, "ok\n").into_response()
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the tracker's database failed; restart it\n",
            )
                .into_response()
        }
    }
    async fn page<M: MetaStore>(State(s): State<Tracked<M>>) -> Response {
        match s.service.snapshot().await {
            Some((status, _, now)) => Html(crate::page::cluster_page(
                &status,
                &s.service.journal(),
                now,
            ))
            .into_response(),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                Html(
                    "<!doctype html><meta http-equiv=refresh content=2><title>p2p cluster</title>\
                     <p>This tracker does not lead its group: open the leader's page.</p>",
                ),
            )
                .into_response(),
        }
    }
    Router::new()
        .route("/", get(page::<M>))
        .route("/metrics", get(metrics::<M>))
        .route("/healthz", get(healthz::<M>))
        .with_state(Tracked { service, rpc })
}

struct Served<S: ChunkStore, D: Dialer> {
    service: NodeService<S, D>,
    rpc: RpcMetrics,
}

impl<S: ChunkStore, D: Dialer> Clone for Served<S, D> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            rpc: self.rpc.clone(),
        }
    }
}

/// `/metrics` and `/healthz` of a node.
pub fn node_routes<S: ChunkStore, D: Dialer>(
    service: NodeService<S, D>,
    rpc: RpcMetrics,
) -> Router {
    async fn metrics<S: ChunkStore, D: Dialer>(State(s): State<Served<S, D>>) -> Response {
        metrics_response(s.service.metrics_text(&s.rpc))
    }
    async fn healthz() -> &'static str {
        "ok\n"
    }
    Router::new()
        .route("/metrics", get(metrics::<S, D>))
        .route("/healthz", get(healthz))
        .with_state(Served { service, rpc })
}

/// Serve `routes` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown)
        .await
}
