//! What a peer sends cannot corrupt, overflow or escape a node's store:
//! an in-process node on loopback, fed malformed and malicious uploads, and
//! a chunk corrupted on its disk. And chains (chain replication) of such
//! nodes: every node stores the chunk, a broken link is reported for the
//! node past it, and what the head refuses goes no further.

use bytes::Bytes;
use p2p_core::{ChunkId, NodeId};
use p2p_net::node::{NodeConfig, NodeService};
use p2p_net::store::{ChunkStore, DiskStore};
use p2p_net::transport::{Peers, TcpDialer, Timeouts, server_builder};
use p2p_proto as pb;
use pb::put_chunk_request::Msg;
use tokio_stream::wrappers::TcpListenerStream;

struct TestNode {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    addr: String,
    peers: Peers<TcpDialer>,
}

async fn start() -> TestNode {
    start_with(NodeConfig::default()).await
}

async fn start_with(config: NodeConfig) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let store = DiskStore::open(&data).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let node = NodeService::open(
        NodeId::new("guard").unwrap(),
        addr.clone(),
        "127.0.0.1:1".into(),
        store,
        TcpDialer::default(),
        config,
    )
    .await
    .unwrap();
    tokio::spawn(
        server_builder(&Timeouts::default())
            .add_service(node.into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    TestNode {
        _dir: dir,
        data,
        addr,
        peers: Peers::new(TcpDialer::default()),
    }
}

fn header(chunk: &[u8], size: u64) -> pb::PutChunkRequest {
    pb::PutChunkRequest {
        msg: Some(Msg::Header(pb::PutChunkHeader {
            chunk: Bytes::copy_from_slice(chunk),
            size,
            put: 0,
            forward: vec![],
        })),
    }
}

fn data(b: &'static [u8]) -> pb::PutChunkRequest {
    pb::PutChunkRequest {
        msg: Some(Msg::Data(Bytes::from_static(b))),
    }
}

async fn put(n: &TestNode, msgs: Vec<pb::PutChunkRequest>) -> Result<bool, tonic::Status> {
    let mut c = n.peers.node(&n.addr).unwrap();
    c.put_chunk(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner().stored)
}

/// Every file under the data directory, relative.
fn files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

// Malformed uploads are refused and leave no file behind.
#[tokio::test]
async fn malformed_uploads_are_refused() {
    let n = start().await;
    let good = ChunkId::of(b"hello");
    let cases: Vec<(&str, Vec<pb::PutChunkRequest>, tonic::Code)> = vec![
        (
            "no header",
            vec![data(b"hello")],
            tonic::Code::InvalidArgument,
        ),
        (
            "short id",
            vec![header(b"../../etc", 5), data(b"hello")],
            tonic::Code::InvalidArgument,
        ),
        (
            "zero size",
            vec![header(good.as_bytes(), 0)],
            tonic::Code::InvalidArgument,
        ),
        (
            "huge size",
            vec![header(good.as_bytes(), 1 << 40), data(b"hello")],
            tonic::Code::InvalidArgument,
        ),
        (
            "too much data",
            vec![header(good.as_bytes(), 5), data(b"hello"), data(b"!")],
            tonic::Code::InvalidArgument,
        ),
        (
            "too little data",
            vec![header(good.as_bytes(), 5), data(b"hell")],
            tonic::Code::InvalidArgument,
        ),
        (
            "wrong hash",
            vec![header(good.as_bytes(), 5), data(b"jello")],
            tonic::Code::DataLoss,
        ),
        (
            "two headers",
            vec![header(good.as_bytes(), 5), header(good.as_bytes(), 5)],
            tonic::Code::InvalidArgument,
        ),
    ];
    for (what, msgs, code) in cases {
        let r = put(&n, msgs).await;
        assert_eq!(r.as_ref().map_err(|s| s.code()), Err(code), "{what}: {r:?}");
    }
    assert_eq!(
        files(&n.data),
        Vec::<String>::new(),
        "a refused upload left a file"
    );
    // The well-formed upload is stored under its hash, inside chunks/.
    assert!(
        put(&n, vec![header(good.as_bytes(), 5), data(b"hello")])
            .await
            .unwrap()
    );
    let hex = good.to_hex();
    assert_eq!(files(&n.data), vec![format!("chunks/{}/{hex}", &hex[..2])]);
}

// A chunk corrupted on disk is never served: the read fails with DataLoss
// and the bad copy is removed.
#[tokio::test]
async fn corrupt_chunk_is_not_served_and_is_removed() {
    let n = start().await;
    let payload: &'static [u8] = b"some chunk bytes";
    let id = ChunkId::of(payload);
    assert!(
        put(
            &n,
            vec![header(id.as_bytes(), payload.len() as u64), data(payload)]
        )
        .await
        .unwrap()
    );
    let mut c = n.peers.node(&n.addr).unwrap();
    let get = |c: &mut pb::node_client::NodeClient<_>| {
        let mut c = c.clone();
        async move {
            let mut s = c
                .get_chunk(pb::GetChunkRequest {
                    chunk: Bytes::copy_from_slice(id.as_bytes()),
                })
                .await?
                .into_inner();
            let mut got = Vec::new();
            while let Some(p) = s.message().await? {
                got.extend_from_slice(&p.data);
            }
            Ok::<_, tonic::Status>(got)
        }
    };
    assert_eq!(get(&mut c).await.unwrap(), payload);

    let store = DiskStore::open(&n.data).await.unwrap();
    let path = store.path_of(&id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(get(&mut c).await.unwrap_err().code(), tonic::Code::DataLoss);
    assert!(!path.exists(), "corrupt copy still on disk");
    assert_eq!(get(&mut c).await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(store.list().await.unwrap().is_empty());
}

/// The chunk file `id` in `n`'s store, if any.
fn holds(n: &TestNode, id: &ChunkId) -> bool {
    let hex = id.to_hex();
    files(&n.data).contains(&format!("chunks/{}/{hex}", &hex[..2]))
}

// A chunk sent down a chain of three nodes is stored, synced and
// acknowledged by each; a chain with a dead second node stores it on the
// head, reports the dead one, and leaves the third untried.
#[tokio::test]
async fn chains_store_on_every_node_and_report_a_broken_link() {
    use p2p_net::client::upload_chain;
    let nodes = [start().await, start().await, start().await];
    let peers = Peers::new(TcpDialer::default());
    let payload = Bytes::from(vec![7u8; 1_000_000]);
    let id = ChunkId::of(&payload);
    let chain: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let r = upload_chain(&peers, &chain, id, payload.clone(), 0).await;
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|a| a.is_ok()), "{r:?}");
    assert!(nodes.iter().all(|n| holds(n, &id)));

    let other = Bytes::from(vec![9u8; 300_000]);
    let id2 = ChunkId::of(&other);
    let dead = "127.0.0.1:1".to_string();
    let chain = vec![nodes[0].addr.clone(), dead, nodes[2].addr.clone()];
    let r = upload_chain(&peers, &chain, id2, other, 0).await;
    assert_eq!(
        r.len(),
        2,
        "the node past the broken link is untried: {r:?}"
    );
    assert!(r[0].is_ok() && r[1].is_err(), "{r:?}");
    assert!(holds(&nodes[0], &id2));
    assert!(!holds(&nodes[2], &id2));
}

// The head refuses a chunk whose bytes do not match its hash, and the next
// node, which got the same bytes, refuses it too: nothing is stored. A
// chain longer than the replication limit is refused before any byte.
#[tokio::test]
async fn a_bad_chunk_goes_nowhere_down_a_chain() {
    let nodes = [start().await, start().await];
    let good = ChunkId::of(b"hello");
    let chained = |forward: Vec<String>| pb::PutChunkRequest {
        msg: Some(Msg::Header(pb::PutChunkHeader {
            chunk: Bytes::copy_from_slice(good.as_bytes()),
            size: 5,
            put: 0,
            forward,
        })),
    };
    let r = put(
        &nodes[0],
        vec![chained(vec![nodes[1].addr.clone()]), data(b"jello")],
    )
    .await;
    assert_eq!(r.map_err(|s| s.code()), Err(tonic::Code::DataLoss));
    let too_long = vec![nodes[1].addr.clone(); 16];
    let r = put(&nodes[0], vec![chained(too_long), data(b"hello")]).await;
    assert_eq!(r.map_err(|s| s.code()), Err(tonic::Code::InvalidArgument));
    // Give the second node time to see its stream end, then look.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(files(&nodes[0].data), Vec::<String>::new());
    assert_eq!(files(&nodes[1].data), Vec::<String>::new());
}

// Two chains through the same two nodes in opposite orders, for chunks
// that share a node's gate (the lock under which a copy is put in place):
// both are stored at once. A node that held the gate while it waited for
// the next node's answer deadlocked here until the request timeout.
#[tokio::test]
async fn opposite_chains_do_not_deadlock() {
    use p2p_net::client::upload_chain;
    let nodes = [start().await, start().await];
    let peers = Peers::new(TcpDialer::default());
    let (a, b) = (nodes[0].addr.clone(), nodes[1].addr.clone());
    let (ab, ba) = ([a.clone(), b.clone()], [b, a]);
    // Chunk pairs whose ids share a gate (the first byte, modulo 64).
    let payload = |fill: u8| Bytes::from(vec![fill; 2_000_000]);
    let mut pairs = Vec::new();
    for x in 0u8..=255 {
        for y in x + 1..=255 {
            let (ix, iy) = (ChunkId::of(&payload(x)), ChunkId::of(&payload(y)));
            if ix.as_bytes()[0] % 64 == iy.as_bytes()[0] % 64 {
                pairs.push((x, y));
                break;
            }
        }
        if pairs.len() == 5 {
            break;
        }
    }
    for (x, y) in pairs {
        let (px, py) = (payload(x), payload(y));
        let both = async {
            tokio::join!(
                upload_chain(&peers, &ab, ChunkId::of(&px), px.clone(), 0),
                upload_chain(&peers, &ba, ChunkId::of(&py), py.clone(), 0),
            )
        };
        let (rx, ry) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
            .await
            .expect("two opposite chains stalled");
        assert!(rx.iter().chain(&ry).all(|r| r.is_ok()), "{rx:?} {ry:?}");
        assert_eq!((rx.len(), ry.len()), (2, 2));
    }
}

// A node past its capacity refuses an upload with RESOURCE_EXHAUSTED (the
// client then places the chunk elsewhere), before it writes anything; what
// it stored counts against the capacity, and a chunk that fits goes in.
#[tokio::test]
async fn a_node_refuses_chunks_past_its_capacity() {
    let n = start_with(NodeConfig {
        capacity_bytes: Some(10),
        ..NodeConfig::default()
    })
    .await;
    let big: &'static [u8] = b"eleven byte";
    let id = ChunkId::of(big);
    let e = put(&n, vec![header(id.as_bytes(), 11), data(big)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("node full"), "{e}");
    assert!(files(&n.data.join("chunks")).is_empty());
    let small: &'static [u8] = b"seven b";
    let id = ChunkId::of(small);
    assert!(
        put(&n, vec![header(id.as_bytes(), 7), data(small)])
            .await
            .unwrap()
    );
    // 7 of 10 bytes used: 4 more do not fit.
    let four: &'static [u8] = b"four";
    let id = ChunkId::of(four);
    let e = put(&n, vec![header(id.as_bytes(), 4), data(four)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
}
