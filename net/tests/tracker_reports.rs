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
        ..Default::default()
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
    let status = t
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
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
            receipts: vec![],
        }],
        put: 0,
        replace: false,
    };
    t.commit(commit).await.unwrap();
}

// A commit names a holder on the client's word only with the receipt the
// node made: without it (or with a forged one) the commit is refused and no
// file appears; with the node's real receipt it is accepted.
#[tokio::test]
async fn a_commit_naming_a_holder_counts_it_only_with_its_receipt() {
    use p2p_core::ack::{Receipt, Stamp, receipt};
    let (addr, peers) = start().await;
    let mut t = peers.tracker(&addr).unwrap();
    let reg = t
        .report(tokio_stream::iter(vec![part("n1", &[])]))
        .await
        .unwrap()
        .into_inner();
    let key: [u8; 32] = reg.receipt_key[..].try_into().expect("a 32-byte key");
    let chunk = ChunkId::of(b"never uploaded");
    let stamp = Stamp {
        session: reg.session,
        seq: 1,
    };
    let commit = |r: Receipt| pb::CommitRequest {
        manifest: Some(pb::Manifest {
            name: "f".into(),
            size: 14,
            chunk_size: 1024,
            replicas: 1,
            chunks: vec![Bytes::copy_from_slice(chunk.as_bytes())],
        }),
        holders: vec![pb::Holders {
            node_ids: vec!["n1".into()],
            stamps: vec![pb::Stamp {
                session: stamp.session,
                seq: stamp.seq,
            }],
            receipts: vec![Bytes::copy_from_slice(&r.0)],
        }],
        put: 0,
        replace: false,
    };
    let forged = [
        Receipt::default(),
        receipt(&[7; 32], &chunk, stamp),
        receipt(&key, &ChunkId::of(b"another"), stamp),
    ];
    for r in forged {
        let e = t.commit(commit(r)).await.unwrap_err();
        assert!(e.message().contains("acknowledged holders"), "{e:?}");
    }
    let ls = t
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(ls.files.is_empty(), "{ls:?}");
    t.commit(commit(receipt(&key, &chunk, stamp)))
        .await
        .unwrap();
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
