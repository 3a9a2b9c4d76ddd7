//! A client waiting on a node's leave gives up on a stream that goes quiet
//! (a node frozen, a path that black-holes) within a stream's gap, and says
//! what it knew; a real node keeps its stream talking while it waits.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use p2p_core::NodeId;
use p2p_net::client::{Client, ClientConfig};
use p2p_net::node::{NodeConfig, NodeService};
use p2p_net::store::DiskStore;
use p2p_net::transport::{TcpDialer, Timeouts, server_builder};
use p2p_proto as pb;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// A node whose leave says it handed over 1 of 4 chunks, then nothing.
struct Stalling;

type Pieces = Pin<Box<dyn Stream<Item = Result<pb::ChunkPiece, Status>> + Send>>;
type Progress = Pin<Box<dyn Stream<Item = Result<pb::LeaveProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::node_server::Node for Stalling {
    async fn put_chunk(
        &self,
        _: Request<Streaming<pb::PutChunkRequest>>,
    ) -> Result<Response<pb::PutChunkResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type GetChunkStream = Pieces;

    async fn get_chunk(
        &self,
        _: Request<pb::GetChunkRequest>,
    ) -> Result<Response<Self::GetChunkStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type LeaveStream = Progress;

    async fn leave(
        &self,
        _: Request<pb::LeaveRequest>,
    ) -> Result<Response<Self::LeaveStream>, Status> {
        let first = futures::stream::once(async {
            Ok(pb::LeaveProgress {
                done: 1,
                total: 4,
                finished: false,
            })
        });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            first,
            futures::stream::pending(),
        ))))
    }

    async fn ping(
        &self,
        _: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        Ok(Response::new(pb::PingResponse {
            node_id: "stalling".into(),
        }))
    }
}

fn client(gap: Duration) -> Client<TcpDialer> {
    let dialer = TcpDialer {
        timeouts: Timeouts {
            piece: gap,
            request: Duration::from_secs(2),
            ..Timeouts::default()
        },
        tls: None,
    };
    // No tracker: the leave's stream is between the client and the node.
    Client::new(dialer, "127.0.0.1:1", ClientConfig::default())
}

#[tokio::test]
async fn a_quiet_leave_stream_is_given_up_on_with_what_was_known() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        server_builder(&Timeouts::default())
            .add_service(pb::node_server::NodeServer::new(Stalling))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let seen = std::sync::Mutex::new(Vec::new());
    let began = Instant::now();
    let r = client(Duration::from_millis(500))
        .leave_node(&addr, false, &|done, total| {
            seen.lock().unwrap().push((done, total))
        })
        .await;
    let waited = began.elapsed();
    let e = r.expect_err("a stream that stalls is not a leave that went through");
    let msg = e.to_string();
    assert!(msg.contains("said nothing about its leave"), "{msg}");
    assert!(msg.contains("handed over 1 of 4 chunks"), "{msg}");
    assert!(msg.contains(&addr), "{msg}");
    assert_eq!(*seen.lock().unwrap(), vec![(1, 4)]);
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

// A real node whose leave waits on a tracker that never answers keeps its
// stream talking: the client's gap does not end a leave that is alive.
#[tokio::test]
async fn a_node_waiting_on_the_tracker_keeps_its_leave_stream_talking() {
    // A tracker that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tracker = silent.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dialer = TcpDialer {
        timeouts: Timeouts {
            request: Duration::from_secs(3),
            ..Timeouts::default()
        },
        tls: None,
    };
    let node = NodeService::open(
        NodeId::new("waiting").unwrap(),
        addr.clone(),
        tracker,
        store,
        dialer,
        NodeConfig {
            heartbeat_interval: Duration::from_millis(200),
            ..NodeConfig::default()
        },
    )
    .await
    .unwrap();
    tokio::spawn(
        server_builder(&Timeouts::default())
            .add_service(node.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // The gap is shorter than the node's wait for the tracker (3 s), longer
    // than its progress interval (200 ms): the client hears the node's
    // refusal when the tracker call times out, not a quiet stream.
    let r = client(Duration::from_secs(1))
        .leave_node(&addr, false, &|_, _| {})
        .await;
    let msg = r.expect_err("the tracker never answered").to_string();
    assert!(!msg.contains("said nothing"), "{msg}");
}
