//! The tracker group's replication on its own: openraft's storage suite
//! against the group's log and state machine, and three members over real
//! gRPC on loopback that elect a leader, replicate records, lose the leader
//! and go on, and bring a member back that was down (from its log) or lost
//! its disk (from a snapshot).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::testing::log::{StoreBuilder, Suite};
use p2p_core::tracker::Record;
use p2p_core::{ChunkId, Manifest, NodeId};
use p2p_net::group::{GroupError, LogStore, Member, StateMachine, Timing};
use p2p_net::meta::{MemoryMeta, RedbMeta};
use p2p_net::transport::{TcpDialer, tcp_incoming};

struct Stores;

impl StoreBuilder<p2p_net::group::GroupConfig, LogStore, StateMachine<MemoryMeta>, ()> for Stores {
    async fn build(
        &self,
    ) -> Result<
        ((), LogStore, StateMachine<MemoryMeta>),
        openraft::StorageError<p2p_net::group::GroupConfig>,
    > {
        let log = LogStore::in_memory().expect("in-memory log");
        Ok(((), log, StateMachine::new(MemoryMeta::default())))
    }
}

// The library's own checks of a log store and state machine: what is
// appended reads back, truncation and purge keep no holes, the vote and
// the membership survive, snapshots carry the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_passes_the_library_suite() {
    // The suite spawns through the group's runtime, which draws its
    // randomness from a seed in scope.
    p2p_net::group::Runtime::scope(1, Suite::test_all(Stores))
        .await
        .expect("storage suite");
}

fn timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
    }
}

struct Running {
    member: Member<RedbMeta>,
    server: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(addr: &str, peers: &[String], dir: &Path) -> Running {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let log = LogStore::open(dir).expect("log");
    let store = RedbMeta::open(dir).expect("store");
    let seed = p2p_net::group::member_id(addr);
    let member = Member::start(
        addr,
        peers,
        log,
        store,
        TcpDialer::default(),
        &timing(),
        seed,
    )
    .await
    .expect("member starts");
    let svc = member.service().into_server();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(tcp_incoming(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        member,
        server,
        stop,
    }
}

/// Stop a member as its process would stop: no more answers, connections
/// closed.
async fn stop(r: Running) {
    r.member.shutdown().await;
    let _ = r.stop.send(());
    let _ = r.server.await;
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The index of the member that leads, once one does.
async fn leader(members: &BTreeMap<usize, Running>) -> usize {
    for _ in 0..200 {
        for (i, r) in members {
            if r.member.is_leader() {
                return *i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader within 10 s");
}

fn file(n: usize, holder: &NodeId) -> Record {
    let chunk = ChunkId::of(format!("chunk {n}").as_bytes());
    Record::FileCommitted {
        manifest: Manifest::new(format!("f{n}"), 10, 1024, 1, vec![chunk]).unwrap(),
        holders: vec![vec![holder.clone()]],
    }
}

/// Write through whichever member leads, retrying while leadership moves.
async fn write(members: &BTreeMap<usize, Running>, records: &[Record]) {
    for _ in 0..100 {
        let l = leader(members).await;
        match members[&l].member.write(records).await {
            Ok(_) => return,
            Err(GroupError::NotLeader { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    panic!("no write within the retries");
}

/// Wait (10 s at most) until the index `at` reads from the metrics reaches
/// `index`.
async fn reaches(
    raft: &p2p_net::group::GroupRaft<RedbMeta>,
    index: u64,
    at: impl Fn(&openraft::RaftMetrics<p2p_net::group::GroupConfig>) -> Option<u64>,
) {
    for _ in 0..200 {
        if at(&raft.metrics().borrow_watched()) >= Some(index) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("index {index} not reached within 10 s");
}

/// Records in a canonical order (a store lists nodes, then files by name).
fn sorted(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| format!("{r:?}")).collect();
    v.sort();
    v
}

/// Wait until every member in `members` holds exactly `want`.
async fn converged(members: &BTreeMap<usize, Running>, want: &[Record]) {
    let mut last = BTreeMap::new();
    let want = sorted(want);
    for _ in 0..200 {
        last.clear();
        for (i, r) in members {
            last.insert(*i, sorted(&r.member.store().load_records().unwrap()));
        }
        if last.values().all(|got| *got == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("members did not converge: {last:?}\nwant {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_fail_over_and_catch_up() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let mut members = BTreeMap::new();
    for i in 0..3 {
        members.insert(i, start(&addrs[i], &addrs, dirs[i].path()).await);
    }
    let node = NodeId::new("n1").unwrap();
    let mut want = vec![Record::NodeJoined {
        id: node.clone(),
        addr: "n1:7000".into(),
    }];
    write(&members, &want).await;
    for n in 0..5 {
        want.push(file(n, &node));
        write(&members, &want[want.len() - 1..]).await;
    }
    converged(&members, &want).await;

    // A follower's write is refused with the leader's address.
    let l = leader(&members).await;
    let f = (l + 1) % 3;
    match members[&f].member.write(&[file(99, &node)]).await {
        Err(GroupError::NotLeader { leader: Some(a) }) => assert_eq!(a, addrs[l]),
        other => panic!("a follower accepted a write or gave no leader: {other:?}"),
    }

    // The leader stops; the two others elect one and go on.
    stop(members.remove(&l).unwrap()).await;
    for n in 5..10 {
        want.push(file(n, &node));
        write(&members, &want[want.len() - 1..]).await;
    }
    converged(&members, &want).await;

    // It comes back with its disk and catches up from the log.
    members.insert(l, start(&addrs[l], &addrs, dirs[l].path()).await);
    converged(&members, &want).await;

    // Another member loses its disk: it comes back empty and is brought
    // up to date (by snapshot once the log has been purged, else by log).
    let gone = (leader(&members).await + 1) % 3;
    stop(members.remove(&gone).unwrap()).await;
    for n in 10..15 {
        want.push(file(n, &node));
        write(&members, &want[want.len() - 1..]).await;
    }
    // The leader snapshots and purges its log: the member that comes back
    // empty can only be brought up to date by the snapshot.
    let l = leader(&members).await;
    let raft = &members[&l].member.raft;
    raft.trigger().snapshot().await.unwrap();
    let applied = members[&l].member.applied();
    reaches(raft, applied, |m| m.snapshot.as_ref().map(|l| l.index)).await;
    raft.trigger().purge_log(applied).await.unwrap();
    reaches(raft, applied, |m| m.purged.as_ref().map(|l| l.index)).await;
    let fresh = tempfile::tempdir().unwrap();
    members.insert(gone, start(&addrs[gone], &addrs, fresh.path()).await);
    converged(&members, &want).await;
    for (_, r) in members {
        stop(r).await;
    }
}
