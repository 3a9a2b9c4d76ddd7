//! `p2p`: parses flags and calls the library; see `p2p --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use p2p_cli::daemon::{self, NodeOptions, TrackerOptions};
use p2p_cli::{demo, output, shell};
use p2p_core::limits::{CHUNK_SIZE_DEFAULT_BYTES, REPLICAS_DEFAULT};
use p2p_net::client::{Client, ClientConfig, Replication};
use p2p_net::tls::{note_trackers, noted_trackers};
use p2p_net::transport::{TcpDialer, Timeouts, host_of, strip_scheme};

#[derive(Parser)]
#[command(
    name = "p2p",
    version,
    about = "Peer-to-peer file sharing: a tracker, nodes that store replicated chunks, and a client"
)]
struct Cli {
    /// Tracker URL, or a tracker group's, comma-separated [default: what
    /// enrollment noted (`p2p login`, `node --join`), else
    /// http://127.0.0.1:50051].
    #[arg(long, global = true, env = "P2P_TRACKER")]
    tracker: Option<String>,
    /// Give up on a peer that does not answer within this time.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Chunks a put or get transfers at once [default: 4 for put (each is
    /// held in memory), 8 for get].
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: Option<u16>,
    /// How a put sends each chunk to its R nodes: `chain` (the client sends
    /// it once; each node forwards it to the next as it arrives) or
    /// `fanout` (the client sends it to each: its uplink carries the file R
    /// times).
    #[arg(long, global = true, value_enum, default_value = "chain")]
    replication: ReplicationArg,
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReplicationArg {
    Chain,
    Fanout,
}

impl From<ReplicationArg> for Replication {
    fn from(r: ReplicationArg) -> Self {
        match r {
            ReplicationArg::Chain => Replication::Chain,
            ReplicationArg::Fanout => Replication::FanOut,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the tracker.
    Tracker {
        /// Address to serve on (host:port).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// Data directory (the tracker's redb database).
        #[arg(long, default_value = "p2p-data/tracker")]
        data: PathBuf,
        /// A node silent this long is dead.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        dead_after: Duration,
        /// Heartbeat interval the tracker asks nodes for.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
        /// How long a chunk that still has two or more live copies waits
        /// before it is re-replicated (one copy left: repaired at once).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        repair_grace: Duration,
        /// How often each node is asked for its whole inventory, to catch
        /// what heartbeats missed ("0s": never); spread over the nodes.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        full_report: Duration,
        /// How long a copy no file references (a failed put's) is kept
        /// before it is deleted; puts in flight renew leases well within it.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        orphan_grace: Duration,
        /// The addresses of a tracker group, this tracker's own included
        /// (comma-separated; 3 or 5): the trackers replicate their records
        /// and elect a leader. Without it, a single tracker.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        /// This tracker's address as it appears in --peers, if not the
        /// listen address.
        #[arg(long)]
        advertise: Option<String>,
        /// Also serve HTTP on this address (host:port): Prometheus metrics
        /// at /metrics, /healthz, and the cluster page at /.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Serve plaintext on a non-loopback address (without `p2p init`,
        /// anyone who reaches the port can do anything).
        #[arg(long)]
        insecure: bool,
    },
    /// Run a node: serve chunks and read shell commands on standard input.
    Node {
        /// Address to serve chunks on (host:port).
        #[arg(long)]
        listen: String,
        /// Data directory (default: p2p-data/node-PORT).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address peers use to reach this node, if not the listen address.
        #[arg(long)]
        advertise: Option<String>,
        /// How often to report to the tracker.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
        /// MiB per second the scrubber reads to find bit rot (0: off).
        #[arg(long, default_value_t = 16)]
        scrub_rate: u64,
        /// A scrub pass over every chunk starts at most this often.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        scrub_interval: Duration,
        /// The failure domain this node is in (a rack, a room, a machine
        /// with several disks): the tracker puts a chunk's copies in
        /// distinct zones whenever that many are live [default: the node's
        /// own id, a zone of its own].
        #[arg(long, value_parser = output::parse_zone)]
        zone: Option<String>,
        /// The most this node stores, as bytes or with a unit (500MiB, 2G,
        /// 1TB: K, M, G, T and KiB... are powers of 1024, KB... of 1000)
        /// [default: what its disk has free, less 512 MiB or a twentieth of the disk].
        #[arg(long, value_parser = output::parse_size)]
        capacity: Option<u64>,
        /// Also serve HTTP on this address (host:port): Prometheus metrics
        /// at /metrics and /healthz.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Run as a daemon, without the shell.
        #[arg(long)]
        no_shell: bool,
        /// Enrollment token (from `p2p token --role node`): on first start,
        /// get this node a certificate of the cluster; its credentials are
        /// kept in DATA/tls/, so later starts need no token.
        #[arg(long)]
        join: Option<String>,
        /// Serve plaintext on a non-loopback address (without enrollment,
        /// anyone who reaches the port can read and write its chunks).
        #[arg(long)]
        insecure: bool,
        /// Join again after this node left the network (a node that left
        /// refuses to start, and the tracker refuses it, without this). Its
        /// chunks on disk count again; copies above their factor are
        /// trimmed.
        #[arg(long)]
        rejoin: bool,
    },
    /// Make the cluster's certificate authority in the tracker's data
    /// directory: the tracker then serves only mutual TLS.
    Init {
        #[arg(long, default_value = "p2p-data/tracker")]
        data: PathBuf,
    },
    /// Print a one-time enrollment token (run on the tracker's host).
    Token {
        /// The tracker's data directory (where `p2p init` made the CA).
        #[arg(long, default_value = "p2p-data/tracker")]
        data: PathBuf,
        /// What the token lets its holder be: node, client or admin.
        #[arg(long)]
        role: String,
        /// How long the token works.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Revoke a certificate (run on the tracker's host): the tracker refuses
    /// it within a second, nodes after their next heartbeat.
    Revoke {
        /// The tracker's data directory.
        #[arg(long, default_value = "p2p-data/tracker")]
        data: PathBuf,
        /// The identity the certificate names: a node's id, or the id
        /// `p2p login` printed.
        id: String,
    },
    /// Enroll this user with a token (from `p2p token --role client`):
    /// credentials go to $P2P_CONFIG (default ~/.config/p2p), and every
    /// command then uses them.
    Login { token: String },
    /// Store a file; exits 0 only when every chunk is durably on its R holders.
    Put {
        path: PathBuf,
        /// Name in the network (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = REPLICAS_DEFAULT)]
        replicas: u32,
        /// Chunk size in bytes.
        #[arg(long, default_value_t = CHUNK_SIZE_DEFAULT_BYTES, hide = true)]
        chunk_size: u64,
        /// Replace a file of the same name atomically: readers get the old
        /// version or the new one, whole.
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        json: bool,
    },
    /// Fetch a file, verified, written atomically.
    Get {
        name: String,
        /// Output path (default: ./NAME).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List files.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a file; chunks no other file uses are deleted from the nodes.
    Rm { name: String },
    /// Nodes, durability, the repair queue and files at risk.
    Status {
        #[arg(long)]
        json: bool,
        /// List at most this many files at risk, fewest copies first (the
        /// total is always given; the tracker lists 10000 at most).
        #[arg(long, value_name = "N", default_value_t = 20)]
        at_risk: u32,
        /// Answer instead which files would be lost, and which would drop
        /// below their factor, if these nodes (ids or addresses,
        /// comma-separated) died now.
        #[arg(long, value_name = "ID_OR_ADDR,...", value_delimiter = ',')]
        what_if: Option<Vec<String>>,
    },
    /// Ask a node to hand its chunks over and leave.
    Leave {
        /// The node's address (host:port).
        #[arg(long)]
        node: String,
        /// Leave even if the others cannot take every chunk (they drop
        /// below their factor).
        #[arg(long)]
        force: bool,
    },
    /// Run a whole cluster in this process and show it survive node loss.
    Demo {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Size of the generated file, in bytes.
        #[arg(long, default_value_t = 24 * 1024 * 1024 + 12345)]
        size: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the cluster's files here instead of a temporary directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn init_logs(verbose: u8, daemon: bool) {
    let default = match (verbose, daemon) {
        (0, false) => "error",
        (0, true) | (1, false) => "info",
        (1, true) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Print `v` on standard output. A reader that went away (`| head`) is not
/// an error worth a panic; SIGPIPE stays ignored, as Rust sets it, because
/// a peer closing a socket must not kill the process.
fn print_json(v: &serde_json::Value) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v).expect("json values serialize");
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// Where a person's credentials are: `$P2P_CONFIG`, else `~/.config/p2p`.
fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("P2P_CONFIG") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config").join("p2p")
}

/// A token's tracker list as URLs (`https://`: a cluster that enrolls
/// speaks only TLS).
fn token_trackers(token: &str) -> anyhow::Result<String> {
    let (t, _) = p2p_core::enroll::Token::parse(token)?;
    Ok(p2p_net::transport::tracker_members(&t.trackers)
        .iter()
        .map(|a| format!("https://{}", strip_scheme(a)))
        .collect::<Vec<_>>()
        .join(","))
}

const DEFAULT_TRACKER: &str = "http://127.0.0.1:50051";

/// Whether `listen` (`host:port`) is reachable from this machine only.
fn loopback(listen: &str) -> bool {
    let host = host_of(listen);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The secure default: no plaintext server where others can reach it,
/// unless asked for with `--insecure` (as Redis's protected mode).
/// The listener for `--http ADDR`, if given, and its address.
async fn bind_http(
    addr: Option<&str>,
) -> anyhow::Result<(
    Option<tokio::net::TcpListener>,
    Option<std::net::SocketAddr>,
)> {
    match addr {
        None => Ok((None, None)),
        Some(a) => {
            let (l, bound) = daemon::bind(a)
                .await
                .context("--http: cannot serve there")?;
            Ok((Some(l), Some(bound)))
        }
    }
}

fn refuse_open_plaintext(listen: &str, tls: bool, insecure: bool, how: &str) -> anyhow::Result<()> {
    if tls || insecure || loopback(listen) {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve plaintext on {listen}, where anyone who reaches it could do anything: set up mutual TLS ({how}) or pass --insecure"
    )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let user_dir = config_dir();
    let user = p2p_net::tls::Credentials::load(&user_dir)
        .with_context(|| format!("cannot read credentials in {}", user_dir.display()))?;
    let tracker = cli
        .tracker
        .clone()
        .or_else(|| noted_trackers(&user_dir))
        .unwrap_or_else(|| DEFAULT_TRACKER.to_string());
    let mut dialer = TcpDialer {
        timeouts: Timeouts {
            request: cli.timeout,
            piece: cli.timeout,
            ..Timeouts::default()
        },
        tls: None,
    };
    if let Some(c) = &user {
        dialer = dialer.with_tls(c);
    }
    let defaults = ClientConfig::default();
    let client_with = |dialer: TcpDialer, tracker: &str, chunk_size: u64| {
        Client::new(
            dialer,
            tracker,
            ClientConfig {
                chunk_size_bytes: chunk_size,
                chunks_in_flight: cli.parallel.map_or(defaults.chunks_in_flight, usize::from),
                fetches_in_flight: cli.parallel.map_or(defaults.fetches_in_flight, usize::from),
                lease_renew: defaults.lease_renew,
                replication: cli.replication.into(),
            },
        )
    };
    let client = |chunk_size: u64| client_with(dialer.clone(), &tracker, chunk_size);
    let client_cmd = matches!(
        cli.cmd,
        Cmd::Put { .. }
            | Cmd::Get { .. }
            | Cmd::Ls { .. }
            | Cmd::Rm { .. }
            | Cmd::Status { .. }
            | Cmd::Leave { .. }
    );
    if client_cmd && user.is_none() && tracker.contains("https://") {
        anyhow::bail!(
            "the tracker at {tracker} speaks mutual TLS: enroll first (p2p login TOKEN, with a token from p2p token --role client)"
        );
    }
    match cli.cmd {
        Cmd::Init { ref data } => {
            let ca = p2p_net::tls::Ca::init(data)?;
            println!(
                "made the cluster's certificate authority in {} (pin {}); the tracker serves only mutual TLS from now on. Give nodes and users tokens: p2p token --data {} --role node|client|admin",
                data.join("tls").display(),
                hex::encode(ca.pin()),
                data.display()
            );
        }
        Cmd::Token {
            ref data,
            ref role,
            ttl,
        } => {
            let role = p2p_core::enroll::Role::from_name(role)
                .filter(|r| *r != p2p_core::enroll::Role::Tracker)
                .with_context(|| format!("unknown role {role:?}: node, client or admin"))?;
            if ttl > Duration::from_secs(p2p_core::limits::TOKEN_TTL_MAX_S) || ttl.is_zero() {
                anyhow::bail!("--ttl must be more than 0 and at most 7 days");
            }
            let ca = p2p_net::tls::Ca::load(data)?.with_context(|| {
                format!(
                    "no certificate authority in {} (run p2p init --data {} first)",
                    data.join("tls").display(),
                    data.display()
                )
            })?;
            let trackers = match cli.tracker.clone() {
                Some(t) => t,
                None => ca.trackers().context(
                    "where are the trackers? start the tracker once (it notes its address) or give --tracker",
                )?,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            println!("{}", ca.token(role, ttl, now, &trackers));
        }
        Cmd::Revoke { ref data, ref id } => {
            if id.is_empty()
                || id.len() > 255
                || id.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                anyhow::bail!("{id:?} is not an identity (a node id or a person's id)");
            }
            p2p_net::tls::Ca::load(data)?.with_context(|| {
                format!(
                    "no certificate authority in {}: nothing to revoke",
                    data.join("tls").display()
                )
            })?;
            let path = data.join("tls").join(daemon::REVOKED_FILE);
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            writeln!(f, "{id}").with_context(|| format!("cannot write {}", path.display()))?;
            f.sync_all()
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!(
                "revoked {id}: the trackers refuse it within a second or two (a tracker group replicates it), nodes after their next heartbeat"
            );
        }
        Cmd::Login { ref token } => {
            let creds = p2p_net::tls::enroll(token, None, &dialer.timeouts).await?;
            creds
                .save(&user_dir)
                .with_context(|| format!("cannot keep credentials in {}", user_dir.display()))?;
            let trackers = token_trackers(token)?;
            note_trackers(&user_dir, &trackers)?;
            let who = creds
                .identity()
                .map_or("?".to_string(), |(r, id)| format!("{r} {id}"));
            println!(
                "enrolled as {who}; credentials in {}, trackers {trackers}",
                user_dir.display()
            );
        }
        Cmd::Tracker {
            ref listen,
            ref data,
            dead_after,
            heartbeat,
            repair_grace,
            full_report,
            orphan_grace,
            ref peers,
            ref advertise,
            ref http,
            insecure,
        } => {
            let tls = p2p_net::tls::Ca::exists(data);
            refuse_open_plaintext(
                listen,
                tls,
                insecure,
                &format!("p2p init --data {}", data.display()),
            )?;
            let (l, addr) = daemon::bind(listen).await?;
            let opts = TrackerOptions {
                data: data.clone(),
                dead_after,
                heartbeat,
                repair_grace,
                full_report,
                orphan_grace,
                peers: peers.clone(),
                advertise: advertise.clone().unwrap_or_else(|| listen.clone()),
            };
            let (http_l, http_addr) = bind_http(http.as_deref()).await?;
            let server = daemon::run_tracker(l, http_l, opts, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            eprintln!("tracker listening on {addr}, data in {}", data.display());
            if let Some(h) = http_addr {
                eprintln!("cluster page on http://{h}/, metrics on http://{h}/metrics");
            }
            server.await.context("tracker task failed")??;
        }
        Cmd::Node {
            ref listen,
            ref data,
            ref advertise,
            heartbeat,
            scrub_rate,
            scrub_interval,
            ref zone,
            capacity,
            ref http,
            no_shell,
            ref join,
            insecure,
            rejoin,
        } => {
            let (l, addr) = daemon::bind(listen).await?;
            let data = data
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("p2p-data/node-{}", addr.port())));
            let tls_dir = data.join("tls");
            let tls = join.is_some() || tls_dir.join("cert.pem").exists();
            refuse_open_plaintext(
                listen,
                tls,
                insecure,
                "--join TOKEN (from p2p token --role node)",
            )?;
            // The trackers: as given, else where the token says (noted
            // for later starts), else where enrollment noted them.
            let node_tracker = match (&cli.tracker, join) {
                (Some(t), _) => t.clone(),
                (None, Some(token)) => {
                    let t = token_trackers(token)?;
                    note_trackers(&tls_dir, &t)?;
                    t
                }
                (None, None) => {
                    noted_trackers(&tls_dir).unwrap_or_else(|| DEFAULT_TRACKER.to_string())
                }
            };
            let opts = NodeOptions {
                data: data.clone(),
                tracker: node_tracker.clone(),
                join: join.clone(),
                advertise: advertise.clone(),
                heartbeat,
                scrub_bytes_per_sec: scrub_rate.saturating_mul(1 << 20),
                scrub_every: scrub_interval,
                zone: zone.clone(),
                capacity_bytes: capacity,
                rejoin,
            };
            let (http_l, http_addr) = bind_http(http.as_deref()).await?;
            let node = daemon::run_node(l, http_l, opts).await?;
            if let Some(h) = http_addr {
                eprintln!("metrics on http://{h}/metrics");
            }
            eprintln!(
                "node {} listening on {addr}, data in {}, tracker {node_tracker}",
                node.service.id(),
                data.display(),
            );
            if !no_shell {
                eprintln!("type 'help' for commands");
                // The shell acts for the person at the prompt: their
                // credentials, or else the node's.
                let mut d = dialer.clone();
                if user.is_none()
                    && let Some(c) = p2p_net::tls::Credentials::load(&tls_dir)?
                {
                    d = d.with_tls(&c);
                }
                let shell_tracker = cli.tracker.clone().unwrap_or(node_tracker.clone());
                let c = client_with(d, &shell_tracker, CHUNK_SIZE_DEFAULT_BYTES);
                if let shell::ShellEnd::Left = shell::run(&node, &c).await {
                    node.server.await.context("node task failed")??;
                    return Ok(());
                }
            }
            let mut left = node.service.shutdown_signal();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => node.stop().await,
                _ = left.wait_for(|v| *v) => { node.server.await.context("node task failed")??; }
            }
        }
        Cmd::Put {
            ref path,
            ref name,
            replicas,
            chunk_size,
            replace,
            json,
        } => {
            let bar = output::Bar::new("put");
            let r = client(chunk_size)
                .put_file(path, name.as_deref(), replicas, replace, &bar)
                .await?;
            if json {
                print_json(&output::put_json(&r));
            } else {
                println!("{}", output::put_text(&r));
            }
        }
        Cmd::Get {
            ref name,
            ref output,
            json,
        } => {
            let out = output.clone().unwrap_or_else(|| PathBuf::from(name));
            let bar = output::Bar::new("get");
            let r = client(CHUNK_SIZE_DEFAULT_BYTES)
                .get_file(name, &out, &bar)
                .await?;
            if json {
                print_json(&serde_json::json!({
                    "name": r.manifest.name,
                    "size": r.manifest.size_bytes,
                    "chunks": r.manifest.chunks.len(),
                    "output": out,
                    "retries": r.retries,
                    "reused": r.reused_bytes,
                    "fetched": r.fetched_bytes,
                }));
            } else {
                println!("{}", output::get_text(&r, &out));
            }
        }
        Cmd::Ls { json } => {
            // Page by page: a listing of any length streams.
            let mut w = output::LsWriter::new(std::io::stdout().lock(), json);
            let mut written = Ok(());
            client(CHUNK_SIZE_DEFAULT_BYTES)
                .list_each(|page| {
                    if written.is_ok() {
                        written = w.page(page);
                    }
                })
                .await?;
            written.context("writing the listing")?;
            drop(w.finish().context("writing the listing")?);
        }
        Cmd::Rm { ref name } => {
            client(CHUNK_SIZE_DEFAULT_BYTES).remove(name).await?;
            println!("removed {name}");
        }
        Cmd::Status {
            json,
            what_if: Some(ref nodes),
            ..
        } => {
            let w = client(CHUNK_SIZE_DEFAULT_BYTES).what_if(nodes).await?;
            if json {
                print_json(&output::what_if_json(&w));
            } else {
                println!("{}", output::what_if_text(nodes, &w));
            }
        }
        Cmd::Status {
            json,
            at_risk,
            what_if: None,
        } => {
            let s = client(CHUNK_SIZE_DEFAULT_BYTES)
                .status_listing(at_risk.max(1))
                .await?;
            if json {
                print_json(&output::status_json(&s));
            } else {
                println!("{}", output::status_text(&s));
            }
        }
        Cmd::Leave { ref node, force } => {
            let progress = |done: u64, total: u64| {
                if total > 0 {
                    eprintln!("handed over {done}/{total} chunks");
                }
            };
            client(CHUNK_SIZE_DEFAULT_BYTES)
                .leave_node(node, force, &progress)
                .await?;
            println!("node {node} left the network");
        }
        Cmd::Demo {
            nodes,
            size,
            seed,
            ref data,
        } => {
            let opts = demo::DemoOptions {
                nodes,
                size_bytes: size,
                replicas: REPLICAS_DEFAULT,
                seed,
            };
            match data {
                Some(d) => demo::run(opts, d).await?,
                None => {
                    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
                    demo::run(opts, tmp.path()).await?;
                }
            }
        }
    }
    Ok(())
}

/// A put or get moves a file through a few reused buffers from several
/// threads. glibc gives each thread its own malloc arena and keeps what each
/// freed: measured on a 1 GiB get, 10 to 20 MiB above the data in flight.
/// One arena keeps the peak near what is live, at no measured cost in time.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called before the runtime starts any thread; only tunes malloc.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.cmd, Cmd::Tracker { .. } | Cmd::Node { .. });
    if !daemon {
        one_malloc_arena();
    }
    init_logs(cli.verbose, daemon);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
