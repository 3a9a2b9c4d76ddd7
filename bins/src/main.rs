//! `p2p`: parses flags and calls the library; see `p2p --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use p2p_cli::daemon::{self, NodeOptions, TrackerOptions};
use p2p_cli::{demo, output, shell};
use p2p_core::limits::{CHUNK_SIZE_DEFAULT_BYTES, REPLICAS_DEFAULT};
use p2p_net::client::{Client, ClientConfig};
use p2p_net::transport::{TcpDialer, Timeouts};

#[derive(Parser)]
#[command(
    name = "p2p",
    version,
    about = "Peer-to-peer file sharing: a tracker, nodes that store replicated chunks, and a client"
)]
struct Cli {
    /// Tracker URL.
    #[arg(
        long,
        global = true,
        env = "P2P_TRACKER",
        default_value = "http://127.0.0.1:50051"
    )]
    tracker: String,
    /// Give up on a peer that does not answer within this time.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Chunks a put or get transfers at once [default: 4 for put (each is
    /// held in memory), 8 for get].
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: Option<u16>,
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
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
        /// Run as a daemon, without the shell.
        #[arg(long)]
        no_shell: bool,
    },
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dialer = TcpDialer {
        timeouts: Timeouts {
            request: cli.timeout,
            piece: cli.timeout,
            ..Timeouts::default()
        },
    };
    let defaults = ClientConfig::default();
    let client = |chunk_size: u64| {
        Client::new(
            dialer.clone(),
            &cli.tracker,
            ClientConfig {
                chunk_size_bytes: chunk_size,
                chunks_in_flight: cli.parallel.map_or(defaults.chunks_in_flight, usize::from),
                fetches_in_flight: cli.parallel.map_or(defaults.fetches_in_flight, usize::from),
                lease_renew: defaults.lease_renew,
            },
        )
    };
    match cli.cmd {
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
        } => {
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
            let server = daemon::run_tracker(l, opts, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            eprintln!("tracker listening on {addr}, data in {}", data.display());
            server.await.context("tracker task failed")??;
        }
        Cmd::Node {
            ref listen,
            ref data,
            ref advertise,
            heartbeat,
            scrub_rate,
            scrub_interval,
            no_shell,
        } => {
            let (l, addr) = daemon::bind(listen).await?;
            let data = data
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("p2p-data/node-{}", addr.port())));
            let opts = NodeOptions {
                data: data.clone(),
                tracker: cli.tracker.clone(),
                advertise: advertise.clone(),
                heartbeat,
                scrub_bytes_per_sec: scrub_rate.saturating_mul(1 << 20),
                scrub_every: scrub_interval,
            };
            let node = daemon::run_node(l, opts).await?;
            eprintln!(
                "node {} listening on {addr}, data in {}, tracker {}",
                node.service.id(),
                data.display(),
                cli.tracker
            );
            if !no_shell {
                eprintln!("type 'help' for commands");
                let c = client(CHUNK_SIZE_DEFAULT_BYTES);
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
        Cmd::Status { json } => {
            let s = client(CHUNK_SIZE_DEFAULT_BYTES).status().await?;
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
