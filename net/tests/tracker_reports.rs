//! A node's whole inventory reaches the tracker however large it is: an
//! in-process tracker on loopback takes a full report of more chunk ids
//! than one message may carry, in parts, and a report that mixes nodes or
//! starts without naming one is refused.

use bytes::Bytes;
use p2p_core::ChunkId;
use p2p_core::limits::{INVENTORY_MAX_CHUNKS, REPORT_PART_CHUNKS};
use p2p_core::tracker::TrackerConfig;
use p2p_net::meta::MemoryMeta;
use p2p_net::tracker::TrackerService;
use p2p_net::transport::{Peers, TcpDialer, server_builder, tcp_incoming};
use p2p_proto as pb;

async fn start() -> (String, Peers<TcpDialer>) {
    let service = TrackerService::open(TrackerConfig::default(), MemoryMeta::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        server_builder(&Default::default())
            .add_service(service.into_server())
            .serve_with_incoming(tcp_incoming(listener)),
    );
    (addr, Peers::new(TcpDialer::default()))
}

fn part(node: &str, ids: &[Bytes]) -> pb::RegisterRequest {
    pb::RegisterRequest {
        node_id: node.into(),
        addr: "127.0.0.1:9".into(),
        chunks: ids.to_vec(),
    }
}

// More ids than one message may carry register in parts, and a commit that
// names the node as a holder of the last of them is accepted.
#[tokio::test]
async fn an_inventory_larger_than_a_message_registers_in_parts() {
    let (addr, peers) = start().await;
    let n = INVENTORY_MAX_CHUNKS + 10;
    let ids: Vec<Bytes> = (0..n as u64)
        .map(|i| Bytes::copy_from_slice(ChunkId::of(&i.to_le_bytes()).as_bytes()))
        .collect();
    let parts: Vec<_> = ids
        .chunks(REPORT_PART_CHUNKS)
        .map(|c| part("big", c))
        .collect();
    assert!(parts.len() > INVENTORY_MAX_CHUNKS / REPORT_PART_CHUNKS);
    let mut t = peers.tracker(&addr).unwrap();
    let session = t
        .report(tokio_stream::iter(parts))
        .await
        .unwrap()
        .into_inner()
        .session;
    assert_ne!(session, 0);
    let status = t.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].chunks, n as u64);
    assert!(status.nodes[0].alive);
    // The node's copy of the last chunk counts for a commit.
    let last = ids[n - 1].clone();
    let commit = pb::CommitRequest {
        manifest: Some(pb::Manifest {
            name: "f".into(),
            size: 1024,
            chunk_size: 1024,
            replicas: 1,
            chunks: vec![last],
        }),
        holders: vec![pb::Holders {
            node_ids: vec![],
            stamps: vec![],
        }],
        put: 0,
        replace: false,
    };
    t.commit(commit).await.unwrap();
}

// Every part of a report must name the same node; an empty stream is no
// report at all.
#[tokio::test]
async fn a_report_must_name_one_node() {
    let (addr, peers) = start().await;
    let mut t = peers.tracker(&addr).unwrap();
    let id = Bytes::copy_from_slice(ChunkId::of(b"x").as_bytes());
    let mixed = vec![part("a", std::slice::from_ref(&id)), part("b", &[id])];
    let e = t.report(tokio_stream::iter(mixed)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = t
        .report(tokio_stream::iter(Vec::<pb::RegisterRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}
