//! `p2p demo`: a whole cluster in one process on loopback. A group of three
//! trackers and several nodes start on free ports, a generated file is
//! stored with 3 replicas, two nodes are stopped without warning, the file
//! still comes back byte-identical, and the trackers have every chunk
//! copied back to 3 live nodes (counted on the nodes themselves). Then the
//! leading tracker is stopped: another takes over, and the cluster stores
//! and serves files as before. Everything runs over mutual TLS under a CA
//! made for the demo; nodes and the client enroll with tokens.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p_core::enroll::Role;
use p2p_net::client::{Client, ClientConfig, NoProgress};
use p2p_net::transport::TcpDialer;
use rand::{RngCore, SeedableRng};

use crate::daemon::{NodeOptions, RunningNode, TrackerOptions, bind, run_node, run_tracker};
use crate::output::human_bytes;

/// Trackers in the demo's group.
const TRACKERS: usize = 3;

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    pub size_bytes: u64,
    pub replicas: u32,
    pub seed: u64,
}

fn file_hash(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    )?;
    Ok(h.finalize())
}

async fn wait_for<F: AsyncFn() -> anyhow::Result<bool>>(
    what: &str,
    limit: Duration,
    f: F,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out waiting for {what}")
}

pub async fn run(opts: DemoOptions, dir: &Path) -> anyhow::Result<()> {
    if opts.nodes < opts.replicas as usize + 1 {
        bail!(
            "the demo needs at least {} nodes for {} replicas",
            opts.replicas + 1,
            opts.replicas
        );
    }
    let t0 = Instant::now();
    let heartbeat = Duration::from_millis(250);
    // Three trackers, replicated: any one can stop.
    let mut listeners = Vec::new();
    for _ in 0..TRACKERS {
        listeners.push(bind("127.0.0.1:0").await?);
    }
    let peers: Vec<String> = listeners.iter().map(|(_, a)| a.to_string()).collect();
    // Mutual TLS, made up on the fly: the cluster's CA, copied to every
    // tracker (as an operator copies `tls/`); nodes and the client enroll
    // with one-time tokens.
    let ca = p2p_net::tls::Ca::init(&dir.join("tracker0")).context("cannot make the demo's CA")?;
    for i in 1..TRACKERS {
        let to = dir.join(format!("tracker{i}")).join("tls");
        std::fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
        for f in ["ca.pem", "ca-key.pem", "token-key"] {
            std::fs::copy(dir.join("tracker0").join("tls").join(f), to.join(f))
                .with_context(|| format!("cannot copy the CA to {}", to.display()))?;
        }
    }
    println!(
        "ca           cluster CA made (pin {}); every connection below is mutual TLS",
        hex::encode(ca.pin())
    );
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = |role| ca.token(role, Duration::from_secs(600), now_s, &peers.join(","));
    let mut trackers = Vec::new();
    for (i, (tl, taddr)) in listeners.into_iter().enumerate() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (http, http_addr) = bind("127.0.0.1:0").await?;
        let task = run_tracker(
            tl,
            Some(http),
            TrackerOptions {
                data: dir.join(format!("tracker{i}")),
                dead_after: Duration::from_secs(2),
                heartbeat,
                repair_grace: Duration::ZERO,
                full_report: Duration::from_secs(3600),
                orphan_grace: Duration::from_secs(3600),
                peers: peers.clone(),
                advertise: taddr.to_string(),
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await?;
        println!(
            "tracker {i}    listening on {taddr}; cluster page http://{http_addr}/ (while it leads), metrics http://{http_addr}/metrics"
        );
        trackers.push((taddr.to_string(), stop, task));
    }
    let tracker_url = peers
        .iter()
        .map(|a| format!("https://{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<RunningNode> = Vec::new();
    for i in 0..opts.nodes {
        let (l, addr) = bind("127.0.0.1:0").await?;
        let node = run_node(
            l,
            None,
            NodeOptions {
                data: dir.join(format!("node{i}")),
                tracker: tracker_url.clone(),
                advertise: None,
                heartbeat,
                scrub_bytes_per_sec: 16 << 20,
                scrub_every: Duration::from_secs(60),
                join: Some(token(Role::Node)),
                zone: None,
                capacity_bytes: None,
                rejoin: false,
            },
        )
        .await?;
        println!(
            "node {i}       listening on {addr} (id {})",
            node.service.id()
        );
        nodes.push(node);
    }
    let creds = p2p_net::tls::enroll(&token(Role::Client), None, &Default::default()).await?;
    let client = Client::new(
        TcpDialer::default().with_tls(&creds),
        &tracker_url,
        ClientConfig::default(),
    );
    let n = opts.nodes;
    wait_for("nodes to register", Duration::from_secs(20), async || {
        Ok(client
            .status()
            .await?
            .nodes
            .iter()
            .filter(|x| x.alive)
            .count()
            == n)
    })
    .await?;

    let input = dir.join("demo-input.bin");
    {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
        let mut data = vec![0u8; opts.size_bytes as usize];
        rng.fill_bytes(&mut data);
        std::fs::write(&input, &data)
            .with_context(|| format!("cannot write {}", input.display()))?;
    }
    let want = file_hash(&input)?;
    let t_put = Instant::now();
    let put = client
        .put_file(&input, Some("demo.bin"), opts.replicas, false, &NoProgress)
        .await?;
    let put_s = t_put.elapsed().as_secs_f64();
    println!(
        "put          demo.bin: {} in {} chunks, {} replicas each, in {:.2} s",
        human_bytes(opts.size_bytes),
        put.manifest.chunks.len(),
        opts.replicas,
        put_s
    );

    // Stop R-1 nodes without a hand-over: to the cluster, a crash.
    let killed = opts.replicas as usize - 1;
    // Repair starts as soon as the tracker declares the nodes dead, while
    // the get below runs: time it from the kill.
    let t_kill = Instant::now();
    for node in nodes.drain(..killed) {
        let id = node.service.id().clone();
        node.stop().await;
        println!("killed       node {id} (no hand-over)");
    }
    wait_for(
        "the tracker to notice the dead nodes",
        Duration::from_secs(10),
        async || {
            Ok(client
                .status()
                .await?
                .nodes
                .iter()
                .filter(|x| !x.alive)
                .count()
                == killed)
        },
    )
    .await?;
    let status = client.status().await?;
    println!(
        "tracker      sees {} of {} nodes alive; {} chunks under-replicated, {} lost",
        status.nodes.iter().filter(|x| x.alive).count(),
        status.nodes.len(),
        status.under_replicated,
        status.lost
    );

    let output = dir.join("demo-output.bin");
    let t_get = Instant::now();
    let got = client.get_file("demo.bin", &output, &NoProgress).await?;
    let get_s = t_get.elapsed().as_secs_f64();
    let have = file_hash(&output)?;
    println!(
        "get          demo.bin in {:.2} s ({} fetches retried elsewhere)",
        get_s, got.retries
    );
    if have != want {
        bail!("the file came back different: {have} != {want}");
    }
    println!(
        "verified     BLAKE3 {} identical before and after",
        &want.to_hex()[..16]
    );

    // Self-healing: the tracker has the lost copies made again.
    let chunks = put.manifest.chunks.clone();
    let r = opts.replicas as usize;
    let live = &nodes;
    wait_for(
        "repair to restore every chunk's copies",
        Duration::from_secs(60),
        async || {
            let s = client.status().await?;
            let on_disk = chunks
                .iter()
                .all(|c| live.iter().filter(|n| n.service.holds(c)).count() >= r);
            Ok(s.under_replicated == 0 && on_disk)
        },
    )
    .await?;
    let repair_s = t_kill.elapsed().as_secs_f64();
    let copies: usize = chunks
        .iter()
        .map(|c| live.iter().filter(|n| n.service.holds(c)).count())
        .sum();
    println!(
        "repaired     every chunk back at {r} copies on the {} live nodes ({copies} copies of {} chunks), {repair_s:.2} s after the kill (dead after 2 s)",
        live.len(),
        chunks.len()
    );

    // The leading tracker stops without warning: another member, which
    // has every record, takes over; nodes and the client follow it.
    let status = client.status().await?;
    let leader = status
        .trackers
        .iter()
        .find(|t| t.role == "leader")
        .map(|t| t.addr.clone())
        .context("no tracker leads")?;
    let i = trackers
        .iter()
        .position(|(a, _, _)| *a == leader)
        .context("the leader is not one of the demo's trackers")?;
    let (_, stop, task) = trackers.remove(i);
    let t_fail = Instant::now();
    let _ = stop.send(());
    let _ = task.await;
    println!("killed       tracker {i} at {leader}, the leader");
    let small = dir.join("after-failover.bin");
    std::fs::write(&small, b"stored after the leading tracker stopped\n")
        .with_context(|| format!("cannot write {}", small.display()))?;
    client
        .put_file(
            &small,
            Some("after-failover.txt"),
            opts.replicas,
            false,
            &NoProgress,
        )
        .await?;
    let failover_s = t_fail.elapsed().as_secs_f64();
    let status = client.status().await?;
    let new_leader = status
        .trackers
        .iter()
        .find(|t| t.role == "leader")
        .map_or("?".to_string(), |t| t.addr.clone());
    println!(
        "failover     tracker at {new_leader} leads; a put succeeded {failover_s:.2} s after the leader stopped"
    );
    client.get_file("demo.bin", &output, &NoProgress).await?;
    if file_hash(&output)? != want {
        bail!("after the failover the file came back different");
    }
    println!(
        "verified     demo.bin read back identical through the new leader ({} files listed)",
        client.list().await?.len()
    );
    println!(
        "report       {} stored with R={}, {} of {} nodes killed, file intact, factor restored; leading tracker killed, failover in {failover_s:.2} s; whole demo {:.1} s",
        human_bytes(opts.size_bytes),
        opts.replicas,
        killed,
        opts.nodes,
        t0.elapsed().as_secs_f64()
    );
    for node in nodes {
        node.stop().await;
    }
    for (_, stop, task) in trackers {
        let _ = stop.send(());
        let _ = task.await;
    }
    Ok(())
}
