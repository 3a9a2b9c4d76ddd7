//! Running a tracker or a node on real TCP.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use p2p_core::NodeId;
use p2p_core::tracker::TrackerConfig;
use std::sync::Arc;

use p2p_net::access::checking;
use p2p_net::client::{Client, ClientConfig};
use p2p_net::enrollment::EnrollmentService;
use p2p_net::group::{GroupMeta, Leading, LogStore, Member, Timing};
use p2p_net::http::{node_routes, tracker_routes};
use p2p_net::meta::{MetaStore, RedbMeta};
use p2p_net::metrics::RpcMetrics;
use p2p_net::node::{Ended, NodeConfig, NodeService};
use p2p_net::store::DiskStore;
use p2p_net::tls::{Ca, Credentials};
use p2p_net::tracker::TrackerService;
use p2p_net::transport::{TcpDialer, Timeouts, server_builder, tcp_incoming};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

/// Bind `listen` (`host:port`, port 0 for any).
pub async fn bind(listen: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = l.local_addr().context("listener has no address")?;
    Ok((l, addr))
}

/// Settings of a tracker process.
#[derive(Debug, Clone)]
pub struct TrackerOptions {
    pub data: PathBuf,
    pub dead_after: Duration,
    pub heartbeat: Duration,
    pub repair_grace: Duration,
    pub full_report: Duration,
    pub orphan_grace: Duration,
    /// A tracker group's addresses, this tracker's included; empty: alone.
    pub peers: Vec<String>,
    /// This tracker's address in `peers`.
    pub advertise: String,
}

/// Serve `routes` (`--http`) on `listener` until the task is aborted.
fn spawn_http(
    listener: Option<TcpListener>,
    routes: impl FnOnce() -> p2p_net::http::Router,
) -> Option<JoinHandle<()>> {
    let listener = listener?;
    let routes = routes();
    Some(tokio::spawn(async move {
        if let Err(e) = p2p_net::http::serve(listener, routes, std::future::pending()).await {
            tracing::error!(error = %e, "the HTTP server (--http) failed");
        }
    }))
}

/// Serve a tracker on `listener` until `shutdown` completes, and its
/// metrics, health and cluster page on `http` if given.
pub async fn run_tracker(
    listener: TcpListener,
    http: Option<TcpListener>,
    opts: TrackerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let opened = std::time::Instant::now();
    let meta = RedbMeta::open(&opts.data)?;
    tracing::info!(
        elapsed_ms = opened.elapsed().as_millis() as u64,
        "database opened"
    );
    let config = TrackerConfig {
        dead_after_ms: opts.dead_after.as_millis() as u64,
        heartbeat_interval_ms: opts.heartbeat.as_millis() as u64,
        repair_grace_ms: opts.repair_grace.as_millis() as u64,
        full_report_interval_ms: opts.full_report.as_millis() as u64,
        orphan_grace_ms: opts.orphan_grace.as_millis() as u64,
        // Every tracker process hands out sessions of its own.
        session_base: rand::random::<u64>() >> 1,
        // And receipts only it can check (see `p2p_core::ack`).
        receipt_secret: rand::random(),
        ..TrackerConfig::default()
    };
    let tls = tracker_tls(&opts)?;
    if !opts.peers.is_empty() {
        drop(meta);
        return run_group_tracker(listener, http, opts, config, tls, shutdown).await;
    }
    let restored = std::time::Instant::now();
    let service = TrackerService::open(config, meta).await?;
    if let Some((files, chunks)) = service.try_inspect(|t| (t.files_count(), t.chunk_records())) {
        tracing::info!(
            files,
            chunks,
            elapsed_ms = restored.elapsed().as_millis() as u64,
            "state restored"
        );
    }
    let rpc = RpcMetrics::default();
    let http = spawn_http(http, || tracker_routes(service.clone(), rpc.clone()));
    let ticker = tokio::spawn(
        service
            .clone()
            .run_ticker((opts.heartbeat / 2).max(Duration::from_millis(10))),
    );
    let trimmer = tokio::spawn(async {
        let mut every = tokio::time::interval(HEAP_TRIM_INTERVAL);
        loop {
            every.tick().await;
            trim_heap();
        }
    });
    let (builder, enrollment, watcher) = tracker_server(&service, &tls, &opts)?;
    let check = checking(service.revoked(), false);
    Ok(tokio::spawn(async move {
        let r = builder
            .layer(rpc.layer())
            .add_service(InterceptedService::new(service.into_server(), check))
            .add_optional_service(enrollment)
            .serve_with_incoming_shutdown(tcp_incoming(listener), shutdown)
            .await;
        ticker.abort();
        trimmer.abort();
        if let Some(h) = http {
            h.abort();
        }
        if let Some(w) = watcher {
            w.abort();
        }
        r.context("tracker server failed")
    }))
}

/// The server a tracker serves on, and with TLS its enrollment service and
/// the task that follows revocations.
type TrackerServer<M> = (
    tonic::transport::Server,
    Option<p2p_proto::enrollment_server::EnrollmentServer<EnrollmentService<M>>>,
    Option<JoinHandle<()>>,
);

fn tracker_server<M: MetaStore>(
    service: &TrackerService<M>,
    tls: &Option<(Arc<Ca>, Credentials)>,
    opts: &TrackerOptions,
) -> anyhow::Result<TrackerServer<M>> {
    let mut builder = server_builder(&Timeouts::default());
    let Some((ca, creds)) = tls else {
        return Ok((builder, None, None));
    };
    builder = builder
        .tls_config(creds.server())
        .context("tracker TLS settings")?;
    let enrollment = EnrollmentService::new(service.clone(), ca.clone()).into_server();
    let trackers = if opts.peers.is_empty() {
        // Its own address, reachable (a wildcard listen is dialled on
        // loopback).
        opts.advertise.replacen("0.0.0.0:", "127.0.0.1:", 1)
    } else {
        opts.peers.join(",")
    };
    let watcher = tokio::spawn(watch_revoked(
        opts.data.clone(),
        service.revoked(),
        trackers,
        creds.clone(),
    ));
    Ok((builder, Some(enrollment), Some(watcher)))
}

/// Follow `<data>/tls/revoked` (what `p2p revoke` appends to): each
/// identity in it not yet revoked is passed to the tracker (the group's
/// leader, which replicates it), with this tracker's own certificate. It
/// is refused within a second, and nodes are told on heartbeats.
async fn watch_revoked(
    data: PathBuf,
    revoked: p2p_net::access::Revoked,
    trackers: String,
    creds: Credentials,
) {
    let path = data.join("tls").join(REVOKED_FILE);
    let client = Client::new(
        TcpDialer::default().with_tls(&creds),
        &trackers,
        ClientConfig::default(),
    );
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for id in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if revoked.contains(id) {
                continue;
            }
            match client.revoke(id).await {
                Ok(_) => revoked.insert(id),
                // Tried again in a second.
                Err(e) => tracing::warn!(id, error = %e, "cannot pass the revocation on yet"),
            }
        }
    }
}

/// The file in a tracker's `tls/` directory that lists revoked identities.
pub const REVOKED_FILE: &str = "revoked";

/// A tracker's TLS, if `p2p init` made the cluster's CA in its data
/// directory: the CA, and a certificate for this tracker's address made
/// now. It also notes where the trackers are, for `p2p token`.
fn tracker_tls(opts: &TrackerOptions) -> anyhow::Result<Option<(Arc<Ca>, Credentials)>> {
    let Some(ca) = Ca::load(&opts.data).context("cannot read the cluster's CA")? else {
        return Ok(None);
    };
    let mut addrs = vec![opts.advertise.clone()];
    let list = if opts.peers.is_empty() {
        opts.advertise.clone()
    } else {
        opts.peers.join(",")
    };
    if addrs[0].starts_with("0.0.0.0:") || addrs[0].starts_with("[::]:") {
        addrs.push(addrs[0].replacen("0.0.0.0", "127.0.0.1", 1));
    }
    ca.set_trackers(&list)
        .context("cannot note the trackers' addresses")?;
    let creds = ca
        .tracker_credentials(&addrs)
        .context("cannot issue the tracker's certificate")?;
    Ok(Some((Arc::new(ca), creds)))
}

/// Serve a member of a tracker group on `listener`: the tracker's service
/// (answered while this member leads) and the members' own service.
async fn run_group_tracker(
    listener: TcpListener,
    http: Option<TcpListener>,
    opts: TrackerOptions,
    config: TrackerConfig,
    tls: Option<(Arc<Ca>, Credentials)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let log = LogStore::open(&opts.data)
        .with_context(|| format!("cannot open the group log in {}", opts.data.display()))?;
    let store = RedbMeta::open(&opts.data)?;
    let member = Member::start(
        &opts.advertise,
        &opts.peers,
        log,
        store,
        match &tls {
            // Members talk to each other with the tracker's certificate.
            Some((_, creds)) => TcpDialer::default().with_tls(creds),
            None => TcpDialer::default(),
        },
        &Timing::default(),
        rand::random(),
    )
    .await?;
    let member = Arc::new(member);
    let leading = Leading::new(member.clone());
    let service = TrackerService::open(config, GroupMeta::new(member.clone()))
        .await?
        .with_gate(leading.clone());
    let follow = tokio::spawn(leading.run(service.clone()));
    let rpc = RpcMetrics::default();
    let http = spawn_http(http, || tracker_routes(service.clone(), rpc.clone()));
    let ticker = tokio::spawn(
        service
            .clone()
            .run_ticker((opts.heartbeat / 2).max(Duration::from_millis(10))),
    );
    let group = member.service().into_server();
    let (builder, enrollment, watcher) = tracker_server(&service, &tls, &opts)?;
    let (check, check_group) = (
        checking(service.revoked(), false),
        checking(service.revoked(), true),
    );
    Ok(tokio::spawn(async move {
        let r = builder
            .layer(rpc.layer())
            .add_service(InterceptedService::new(service.into_server(), check))
            .add_service(InterceptedService::new(group, check_group))
            .add_optional_service(enrollment)
            .serve_with_incoming_shutdown(tcp_incoming(listener), shutdown)
            .await;
        follow.abort();
        ticker.abort();
        if let Some(h) = http {
            h.abort();
        }
        if let Some(w) = watcher {
            w.abort();
        }
        member.shutdown().await;
        r.context("tracker server failed")
    }))
}

/// How often the tracker hands freed heap back to the system.
const HEAP_TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// Give freed heap memory back to the system. A restart and the nodes'
/// full reports allocate and free as much again as the tracker keeps;
/// glibc holds on to it (measured with 10^6 chunks: 302 MiB resident after
/// a restart, 137 MiB after a trim).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Settings of a node process.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub data: PathBuf,
    pub tracker: String,
    /// Address peers use to reach this node (default: the bound address).
    pub advertise: Option<String>,
    pub heartbeat: Duration,
    /// Bytes per second the scrubber reads (0: no scrubbing).
    pub scrub_bytes_per_sec: u64,
    /// A scrub pass starts at most this often.
    pub scrub_every: Duration,
    /// An enrollment token, used on first start if the node has no
    /// credentials in `<data>/tls/` yet.
    pub join: Option<String>,
    /// The node's zone (`None`: its own).
    pub zone: Option<String>,
    /// The most it stores (`None`: what its disk has free, less a reserve).
    pub capacity_bytes: Option<u64>,
    /// It left the network before and joins again (`--rejoin`).
    pub rejoin: bool,
}

/// The mark a node that left keeps in its data directory: it does not
/// start again unless told to rejoin.
pub const LEFT_MARK: &str = "left";

/// Refuse to start a node that left, unless it rejoins (then forget the
/// mark: the tracker is asked to take it back at registration).
fn check_left_mark(data: &Path, id: &NodeId, rejoin: bool) -> anyhow::Result<()> {
    let mark = data.join(LEFT_MARK);
    match std::fs::read_to_string(&mark) {
        Ok(said) if !rejoin => anyhow::bail!(
            "node {id} left the network ({}); it stays out: start it with --rejoin to join again (its chunks then count again, and surplus copies are trimmed)",
            said.trim()
        ),
        Ok(_) => {
            std::fs::remove_file(&mark).with_context(|| format!("cannot remove {}", mark.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", mark.display())),
    }
}

/// Keep the mark of a node that left (see [`LEFT_MARK`]).
fn write_left_mark(data: &Path) -> anyhow::Result<()> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mark = data.join(LEFT_MARK);
    std::fs::write(&mark, format!("left at unix time {since}\n"))
        .with_context(|| format!("cannot write {}", mark.display()))
}

/// The node's stable id, created on first start in `<data>/node-id`.
pub fn node_id(data: &Path) -> anyhow::Result<NodeId> {
    let path = data.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            NodeId::new(s.trim()).with_context(|| format!("bad node id in {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id =
                NodeId::new(format!("{:016x}", rand::random::<u64>())).expect("hex is a valid id");
            std::fs::create_dir_all(data)
                .with_context(|| format!("cannot create {}", data.display()))?;
            let tmp = data.join("node-id.tmp");
            std::fs::write(&tmp, id.as_str())
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A running node: its service, its server task and its heartbeat task.
pub struct RunningNode {
    pub service: NodeService<DiskStore, TcpDialer>,
    pub server: JoinHandle<anyhow::Result<()>>,
    pub heartbeats: JoinHandle<()>,
    pub scrubber: JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RunningNode {
    /// Stop serving and heartbeating at once, handing nothing over: to the
    /// cluster this looks like a crash.
    pub async fn stop(mut self) {
        self.heartbeats.abort();
        self.scrubber.abort();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.server.await;
    }
}

/// Start a node serving on `listener`. It stops when it has left the
/// network or [`RunningNode::stop`] is called.
pub async fn run_node(
    listener: TcpListener,
    http: Option<TcpListener>,
    opts: NodeOptions,
) -> anyhow::Result<RunningNode> {
    let bound = listener.local_addr().context("listener has no address")?;
    let addr = opts.advertise.clone().unwrap_or_else(|| bound.to_string());
    let id = node_id(&opts.data)?;
    check_left_mark(&opts.data, &id, opts.rejoin)?;
    let tls_dir = opts.data.join("tls");
    let mut creds = Credentials::load(&tls_dir).with_context(|| {
        format!(
            "cannot read the node's credentials in {}",
            tls_dir.display()
        )
    })?;
    if creds.is_none()
        && let Some(token) = &opts.join
    {
        let c =
            p2p_net::tls::enroll(token, Some((id.as_str(), &addr)), &Timeouts::default()).await?;
        c.save(&tls_dir).with_context(|| {
            format!(
                "cannot keep the node's credentials in {}",
                tls_dir.display()
            )
        })?;
        tracing::info!(node = %id, "enrolled");
        creds = Some(c);
    }
    let dialer = match &creds {
        Some(c) => TcpDialer::default().with_tls(c),
        None => TcpDialer::default(),
    };
    let store = DiskStore::open(&opts.data)
        .await
        .with_context(|| format!("cannot open chunk store in {}", opts.data.display()))?;
    let config = NodeConfig {
        heartbeat_interval: opts.heartbeat,
        scrub_bytes_per_sec: opts.scrub_bytes_per_sec,
        scrub_every: opts.scrub_every,
        zone: opts.zone.clone(),
        capacity_bytes: opts.capacity_bytes,
        rejoin: opts.rejoin,
        ..NodeConfig::default()
    };
    let service = NodeService::open(id, addr, opts.tracker.clone(), store, dialer, config).await?;
    let heartbeats = tokio::spawn(service.clone().run_heartbeats());
    let scrubber = tokio::spawn(service.clone().run_scrubber());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut left = service.shutdown_signal();
    let shutdown = async move {
        tokio::select! {
            biased;
            _ = stop_rx => {}
            _ = left.wait_for(|v| *v) => {}
        }
    };
    let svc = service.clone();
    let mut builder = server_builder(&Timeouts::default());
    if let Some(c) = &creds {
        builder = builder
            .tls_config(c.server())
            .context("node TLS settings")?;
    }
    let check = checking(service.revoked(), false);
    let rpc = RpcMetrics::default();
    let http = spawn_http(http, || node_routes(service.clone(), rpc.clone()));
    let how = service.clone();
    let data = opts.data.clone();
    let server = tokio::spawn(async move {
        let r = builder
            .layer(rpc.layer())
            .add_service(InterceptedService::new(svc.into_server(), check))
            .serve_with_incoming_shutdown(tcp_incoming(listener), shutdown)
            .await
            .context("node server failed");
        if let Some(h) = http {
            h.abort();
        }
        r?;
        match how.ended() {
            Some(Ended::Left) => write_left_mark(&data),
            Some(Ended::Refused(why)) => Err(anyhow::anyhow!(
                "the tracker refused this node: {why} (or remove {} to start afresh)",
                data.display()
            )),
            None => Ok(()),
        }
    });
    Ok(RunningNode {
        service,
        server,
        heartbeats,
        scrubber,
        stop: Some(stop_tx),
    })
}
