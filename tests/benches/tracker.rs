//! Benchmark: the tracker at scale. A real `p2p tracker` process (release
//! build), driven over gRPC by simulated nodes that hold no bytes:
//! BENCH_CHUNKS chunks (default 10^7, 4 MiB each on paper: 40 TiB) with 3
//! holders each, committed as BENCH_FILES files (10^4), on BENCH_NODES
//! nodes (100) that heartbeat every second throughout.
//!
//! It reports the tracker's resident memory per chunk, the commit rate,
//! its CPU while nothing but heartbeats happens, `Locate` latency of a
//! whole file under that load next to a `Locate` of a missing name (the
//! same round trip doing no work, measured in the same run), `Status` and
//! a full paged `List`, and after a SIGKILL: time to serve every file
//! again, and time until every node has re-sent its whole inventory and
//! every chunk counts 3 live copies again (with `Locate` latency while
//! that happens).
//!
//! Run: `cargo bench -p p2p-tests --bench tracker` (BENCH_CHUNKS=1000000
//! for a quicker run).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use p2p_proto as pb;
use p2p_proto::tracker_client::TrackerClient;
use tonic::transport::Channel;

type Client = TrackerClient<Channel>;

const CHUNK_SIZE: u64 = 4 * 1024 * 1024;
const REPLICAS: usize = 3;
const PART: usize = 1 << 16;

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The cluster on paper: chunk `g` is held by nodes g, g+1 and g+2 (mod
/// the node count); file `f` is chunks f*per_file .. (f+1)*per_file.
struct Layout {
    ids: Vec<Bytes>,
    /// Per node, the chunks it holds.
    held: Vec<Vec<u32>>,
    nodes: usize,
    files: usize,
    per_file: usize,
}

impl Layout {
    fn new(chunks: usize, files: usize, nodes: usize) -> Self {
        let ids = (0..chunks as u64)
            .map(|g| Bytes::copy_from_slice(blake3::hash(&g.to_le_bytes()).as_bytes()))
            .collect();
        let mut held = vec![Vec::new(); nodes];
        for g in 0..chunks {
            for k in 0..REPLICAS {
                held[(g + k) % nodes].push(g as u32);
            }
        }
        Self {
            ids,
            held,
            nodes,
            files,
            per_file: chunks / files,
        }
    }

    fn node_id(&self, i: usize) -> String {
        format!("sim-{i:03}")
    }

    fn file_name(f: usize) -> String {
        format!("file-{f:05}")
    }

    /// The commit of file `f`, each holder's acknowledgement signed as a
    /// node signs it: with its session's receipt key (`sessions[i]`).
    fn commit(&self, f: usize, sessions: &[(u64, [u8; 32])]) -> pb::CommitRequest {
        let range = f * self.per_file..(f + 1) * self.per_file;
        let ack = |g: usize, i: usize| {
            let (session, key) = sessions[i];
            let stamp = p2p_core::ack::Stamp { session, seq: 0 };
            let chunk = p2p_core::ChunkId::from_slice(&self.ids[g]).expect("32 bytes");
            let receipt = p2p_core::ack::receipt(&key, &chunk, stamp);
            (
                pb::Stamp { session, seq: 0 },
                Bytes::copy_from_slice(&receipt.0),
            )
        };
        pb::CommitRequest {
            manifest: Some(pb::Manifest {
                name: Self::file_name(f),
                size: self.per_file as u64 * CHUNK_SIZE,
                chunk_size: CHUNK_SIZE,
                replicas: REPLICAS as u32,
                chunks: self.ids[range.clone()].to_vec(),
            }),
            holders: range
                .map(|g| {
                    let nodes: Vec<usize> = (0..REPLICAS).map(|k| (g + k) % self.nodes).collect();
                    let (stamps, receipts) = nodes.iter().map(|&i| ack(g, i)).unzip();
                    pb::Holders {
                        node_ids: nodes.iter().map(|&i| self.node_id(i)).collect(),
                        stamps,
                        receipts,
                    }
                })
                .collect(),
            put: 0,
            replace: false,
        }
    }

    /// Node `i`'s whole inventory, in parts.
    fn report(&self, i: usize) -> Vec<pb::RegisterRequest> {
        let held: Vec<Bytes> = self.held[i]
            .iter()
            .map(|&g| self.ids[g as usize].clone())
            .collect();
        let part = |chunks: &[Bytes]| pb::RegisterRequest {
            node_id: self.node_id(i),
            addr: format!("127.0.0.1:{}", 20_000 + i),
            chunks: chunks.to_vec(),
            ..Default::default()
        };
        let mut parts: Vec<_> = held.chunks(PART).map(part).collect();
        if parts.is_empty() {
            parts.push(part(&[]));
        }
        parts
    }
}

fn start_tracker(data: &Path, addr: &str) -> anyhow::Result<Child> {
    Command::new(p2p_tests::p2p_bin())
        .args(["tracker", "--listen", addr, "--data"])
        .arg(data)
        .args(["--dead-after", "30s", "--heartbeat", "1s"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the tracker")
}

async fn connect(addr: &str) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            Ok(ch) => {
                return Ok(TrackerClient::new(ch)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20));
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("tracker at {addr} never came up: {e}"),
        }
    }
}

/// Resident memory of `pid`, in bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

/// CPU seconds `pid` has used (user + system).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("odd stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `n` Locates of random files (or of a missing name), sorted latencies.
async fn locates(c: &Client, layout: &Layout, n: usize, missing: bool) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let name = if missing {
            "no-such-file".to_string()
        } else {
            Layout::file_name((k * 7919) % layout.files)
        };
        let t = Instant::now();
        let r = c.clone().locate(pb::LocateRequest { name }).await;
        out.push(t.elapsed());
        assert_eq!(r.is_ok(), !missing, "locate answered {r:?}");
    }
    out.sort();
    out
}

/// Every node heartbeats once a second, and sends its whole inventory
/// when the tracker asks (after a restart). Each has a connection of its
/// own, as real nodes do.
async fn heartbeats(
    addr: &str,
    layout: Arc<Layout>,
    sessions: Vec<u64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    for (i, session) in sessions.into_iter().enumerate() {
        let c = connect(addr).await?;
        let (layout, stop) = (layout.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut session, mut seq) = (session, 0);
            // Spread over the second, as real nodes are.
            tokio::time::sleep(Duration::from_millis((i * 10) as u64 % 1000)).await;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let req = pb::HeartbeatRequest {
                    node_id: layout.node_id(i),
                    session,
                    seq,
                    ..Default::default()
                };
                match c.clone().heartbeat(req).await {
                    Ok(r) if r.get_ref().reregister => {
                        let parts = layout.report(i);
                        if let Ok(r) = c.clone().report(tokio_stream::iter(parts)).await {
                            (session, seq) = (r.into_inner().session, 0);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("heartbeat of node {i}: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    Ok(())
}

async fn status(c: &Client) -> anyhow::Result<pb::StatusResponse> {
    Ok(c.clone()
        .status(pb::StatusRequest::default())
        .await?
        .into_inner())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chunks = env_usize("BENCH_CHUNKS", 10_000_000)?;
    let files = env_usize("BENCH_FILES", 10_000)?.min(chunks);
    let nodes = env_usize("BENCH_NODES", 100)?;
    let bin = p2p_tests::build_p2p()?;
    eprintln!("p2p binary: {}", bin.display());
    eprintln!("laying out {chunks} chunks in {files} files on {nodes} nodes...");
    let layout = Arc::new(Layout::new(chunks, files, nodes));
    let chunks = layout.per_file * files;

    let dir = tempfile::tempdir()?;
    // BENCH_KEEP=DIR keeps the tracker's database there, to profile a
    // restart by hand.
    let data = match std::env::var_os("BENCH_KEEP") {
        Some(d) => std::path::PathBuf::from(d),
        None => dir.path().join("tracker"),
    };
    let addr = p2p_tests::free_addr();
    let mut tracker = start_tracker(&data, &addr)?;
    let c = connect(&addr).await?;
    let mut sessions = Vec::new();
    for i in 0..nodes {
        let r = c
            .clone()
            .register(pb::RegisterRequest {
                node_id: layout.node_id(i),
                addr: format!("127.0.0.1:{}", 20_000 + i),
                chunks: vec![],
                ..Default::default()
            })
            .await?;
        let r = r.into_inner();
        let key: [u8; 32] = r.receipt_key[..]
            .try_into()
            .context("a receipt key of 32 bytes")?;
        sessions.push((r.session, key));
    }
    let stop = Arc::new(AtomicBool::new(false));
    heartbeats(
        &addr,
        layout.clone(),
        sessions.iter().map(|s| s.0).collect(),
        stop.clone(),
    )
    .await?;
    let sessions = Arc::new(sessions);

    eprintln!("committing...");
    let t = Instant::now();
    let mut next = 0;
    let mut inflight = tokio::task::JoinSet::new();
    while next < files || !inflight.is_empty() {
        while next < files && inflight.len() < 4 {
            let (c, req) = (c.clone(), layout.commit(next, &sessions));
            inflight.spawn(async move { c.clone().commit(req).await });
            next += 1;
        }
        if let Some(r) = inflight.join_next().await {
            r??;
        }
    }
    let commit_s = t.elapsed().as_secs_f64();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = tracker.id();
    let rss = rss_bytes(pid)?;
    let s = status(&c).await?;
    if s.chunks != chunks as u64 || s.under_replicated != 0 {
        bail!(
            "tracker counts {} chunks, {} under-replicated",
            s.chunks,
            s.under_replicated
        );
    }
    let cpu0 = cpu_seconds(pid)?;
    let idle = Duration::from_secs(10);
    tokio::time::sleep(idle).await;
    let idle_cpu = (cpu_seconds(pid)? - cpu0) / idle.as_secs_f64();

    // What one call costs the tracker, whatever it does: no-op calls as
    // fast as they go, less the heartbeats' share of that time.
    let (cpu0, t) = (cpu_seconds(pid)?, Instant::now());
    let calls = 3000;
    locates(&c, &layout, calls, true).await;
    let per_call = (cpu_seconds(pid)? - cpu0 - idle_cpu * t.elapsed().as_secs_f64()) / calls as f64;
    let baseline = locates(&c, &layout, 300, true).await;
    let located = locates(&c, &layout, 300, false).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        status(&c).await?;
        statuses.push(t.elapsed());
    }
    statuses.sort();
    let mut lists = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (mut after, mut listed) = (String::new(), 0);
        loop {
            let page = c
                .clone()
                .list(pb::ListRequest {
                    after: after.clone(),
                    limit: 0,
                })
                .await?
                .into_inner();
            listed += page.files.len();
            match page.files.last() {
                Some(last) if page.more => after = last.name.clone(),
                _ => break,
            }
        }
        assert_eq!(listed, files);
        lists.push(t.elapsed());
    }
    lists.sort();

    // Restart: SIGKILL, start again on the same disk.
    let db_bytes = std::fs::metadata(data.join("tracker.redb"))?.len();
    let t = Instant::now();
    std::fs::read(data.join("tracker.redb"))?;
    let read_db = t.elapsed();
    tracker.kill()?;
    tracker.wait()?;
    let t = Instant::now();
    let mut tracker = start_tracker(&data, &addr)?;
    let c = connect(&addr).await?;
    loop {
        if let Ok(s) = status(&c).await
            && s.files == files as u64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let serving = t.elapsed();
    // The nodes' next heartbeats are told to report everything; meanwhile,
    // gets go on.
    let mut during = Vec::new();
    let reported = loop {
        let s = status(&c).await?;
        let alive = s.nodes.iter().filter(|n| n.alive).count();
        if alive == nodes && s.under_replicated == 0 && s.chunks == chunks as u64 {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("nodes did not all report within 30 minutes");
        }
        during.extend(locates(&c, &layout, 20, false).await);
    };
    during.sort();
    let rss_after = rss_bytes(tracker.id())?;
    stop.store(true, Ordering::Relaxed);
    tracker.kill()?;
    tracker.wait()?;

    let per_chunk = |b: u64| b as f64 / chunks as f64;
    println!();
    println!(
        "tracker at scale: {chunks} chunks x {REPLICAS} holders, {files} files of {} chunks, {nodes} nodes heartbeating every 1 s",
        layout.per_file
    );
    println!("| | measured | target |");
    println!("| --- | --- | --- |");
    println!(
        "| RSS after commits | {:.0} MiB = {:.0} B/chunk | <= 200 B/chunk |",
        rss as f64 / (1 << 20) as f64,
        per_chunk(rss)
    );
    println!(
        "| RSS after restart and full reports | {:.0} MiB = {:.0} B/chunk | |",
        rss_after as f64 / (1 << 20) as f64,
        per_chunk(rss_after)
    );
    println!(
        "| commits | {:.0} chunks/s ({:.0} files/s, 4 in flight) | |",
        chunks as f64 / commit_s,
        files as f64 / commit_s
    );
    println!(
        "| CPU with only heartbeats | {:.2} % of a core | < 2 % |",
        idle_cpu * 100.0
    );
    println!(
        "| CPU of one no-op call (baseline) | {:.0} us: {nodes} calls/s would cost {:.2} % | |",
        per_call * 1e6,
        per_call * nodes as f64 * 100.0
    );
    println!(
        "| Locate of a missing name (baseline) | p50 {} p99 {} | |",
        ms(percentile(&baseline, 0.5)),
        ms(percentile(&baseline, 0.99))
    );
    println!(
        "| Locate of a {}-chunk file | p50 {} p99 {} ({:.1}x the baseline's p99) | p99 < 10 ms |",
        layout.per_file,
        ms(percentile(&located, 0.5)),
        ms(percentile(&located, 0.99)),
        percentile(&located, 0.99).as_secs_f64() / percentile(&baseline, 0.99).as_secs_f64()
    );
    println!(
        "| Status | median {} max {} | < 50 ms |",
        ms(percentile(&statuses, 0.5)),
        ms(*statuses.last().expect("statuses"))
    );
    println!(
        "| List of {files} files, paged | median {} | |",
        ms(percentile(&lists, 0.5))
    );
    println!(
        "| restart to serving every file | {:.2} s (reading the {:.0} MiB database alone: {:.2} s) | < 5 s per 10^7 chunks |",
        serving.as_secs_f64(),
        db_bytes as f64 / (1 << 20) as f64,
        read_db.as_secs_f64()
    );
    println!(
        "| restart to every node re-reported, all chunks at 3 | {:.2} s | |",
        reported.as_secs_f64()
    );
    if !during.is_empty() {
        println!(
            "| Locate while nodes re-report | p50 {} p99 {} | |",
            ms(percentile(&during, 0.5)),
            ms(percentile(&during, 0.99))
        );
    }
    Ok(())
}
