//! Harness for end-to-end tests and benchmarks: real `p2p` processes on
//! 127.0.0.1, each with its own data directory, killed with SIGKILL,
//! restarted and corrupted on disk.

pub mod floor;
pub mod netbed;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The `p2p` binary: next to the test executable when `cargo test
/// --workspace` built it, otherwise built now. `P2P_BIN` overrides.
pub fn p2p_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("P2P_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>/p2p
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            let candidate = profile_dir.join("p2p");
            if candidate.exists() {
                return candidate;
            }
        }
        cargo_build_p2p().expect("cargo build of the p2p binary")
    })
}

fn cargo_build_p2p() -> anyhow::Result<PathBuf> {
    let built = escargot::CargoBuild::new()
        .package("p2p")
        .bin("p2p")
        .current_release()
        .run()
        .context("cargo build of the p2p binary")?;
    Ok(built.path().to_path_buf())
}

/// Build the `p2p` binary in this profile now (a no-op when it is fresh)
/// and use it from then on: benchmarks must not measure a stale binary.
/// `P2P_BIN`, if set, names the binary to use instead (to compare two
/// builds with the same benchmark), and nothing is built.
pub fn build_p2p() -> anyhow::Result<&'static Path> {
    if std::env::var_os("P2P_BIN").is_some() {
        return Ok(p2p_bin());
    }
    let built = cargo_build_p2p()?;
    // SAFETY: called before any other thread of this process starts.
    unsafe { std::env::set_var("P2P_BIN", built) };
    Ok(p2p_bin())
}

/// An HTTP/1.1 GET of `path` from `addr`: the status code, the
/// `Content-Type` and the body. For the `--http` endpoints, whose bodies
/// have a length.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the response's headers")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// A free port on 127.0.0.1 (bound then released).
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").to_string()
}

/// Heartbeat and failure-detection timing used by test clusters.
pub const HEARTBEAT: &str = "200ms";
pub const DEAD_AFTER: &str = "2s";
/// Nodes scrub every chunk this often in tests, so bit rot is found quickly.
pub const SCRUB_INTERVAL: &str = "1s";

/// `p2p tracker` with the test clusters' timing, on `listen` and `data`.
pub fn tracker_args<'a>(listen: &'a str, data: &'a Path) -> anyhow::Result<Vec<&'a str>> {
    Ok(vec![
        "tracker",
        "--listen",
        listen,
        "--data",
        data.to_str().context("utf-8 path")?,
        "--dead-after",
        DEAD_AFTER,
        "--heartbeat",
        HEARTBEAT,
    ])
}

/// A node process.
pub struct NodeProc {
    pub addr: String,
    pub data: PathBuf,
    /// Flags it was started with beyond the usual ones (`--zone`...).
    extra: Vec<String>,
    child: Option<Child>,
}

impl NodeProc {
    /// Chunk files on this node's disk.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.data.join("chunks");
        for fan in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(fan.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(f.path());
            }
        }
        out.sort();
        out
    }

    /// Whether this node's disk holds `hex` (a chunk's BLAKE3 hash) with
    /// bytes that hash to it.
    pub fn holds_intact(&self, hex: &str) -> bool {
        self.chunk_files().iter().any(|f| {
            f.file_name().is_some_and(|n| n == hex)
                && std::fs::read(f).is_ok_and(|b| blake3::hash(&b).to_hex().as_str() == hex)
        })
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut().context("node not running")?;
        while start.elapsed() < limit {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("node at {} did not exit within {limit:?}", self.addr)
    }
}

/// A tracker and nodes, all real processes, torn down on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub tracker_addr: String,
    tracker: Option<Child>,
    /// A tracker group's members (empty: one tracker at `tracker_addr`).
    pub members: Vec<(String, Option<Child>)>,
    pub nodes: Vec<NodeProc>,
    /// Mutual TLS: the tracker has a CA, nodes joined with tokens, and
    /// `p2p` runs as a person logged in with a client token.
    pub tls: bool,
    /// Where the (single) tracker serves HTTP (`--http`), if it does.
    pub tracker_http: Option<String>,
}

/// Wait until the node whose output goes to `log` says it listens (its
/// process back), or exits (what it said instead).
fn listening(mut child: Child, log: &Path) -> anyhow::Result<Result<Child, String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        if said.contains("listening on") {
            return Ok(Ok(child));
        }
        if child.try_wait()?.is_some() {
            return Ok(Err(said));
        }
        if std::time::Instant::now() > deadline {
            return Ok(Ok(child));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn(args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let log_file = std::fs::File::create(log)?;
    Command::new(p2p_bin())
        .args(args)
        // No person's credentials from the machine running the tests.
        .env("P2P_CONFIG", log.with_extension("no-config"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start p2p {args:?}"))
}

impl Cluster {
    /// A cluster with nothing started yet: one tracker to come at a free
    /// address, serving HTTP at another if `http`.
    fn empty(tls: bool, http: bool) -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            tracker_addr: free_addr(),
            tracker: None,
            members: Vec::new(),
            nodes: Vec::new(),
            tls,
            tracker_http: http.then(free_addr),
        })
    }

    /// [`Cluster::start`], the tracker also serving HTTP (`--http`: its
    /// metrics, health and cluster page) at [`Cluster::tracker_http`].
    pub fn start_with_http(n: usize) -> anyhow::Result<Self> {
        Self::empty(false, true)?.started(n)
    }

    /// Start a tracker and `n` nodes and wait until every node is alive.
    pub fn start(n: usize) -> anyhow::Result<Self> {
        Self::empty(false, false)?.started(n)
    }

    fn started(mut self, n: usize) -> anyhow::Result<Self> {
        self.start_tracker()?;
        for _ in 0..n {
            self.add_node()?;
        }
        self.wait_alive(n)?;
        Ok(self)
    }

    /// Start a tracker with the cluster's CA (`p2p init`), log a person in
    /// with a client token, start `n` nodes that join with node tokens,
    /// and wait until every node is alive: everything over mutual TLS.
    pub fn start_tls(n: usize) -> anyhow::Result<Self> {
        let mut c = Self::empty(true, false)?;
        let data = c.dir.path().join("tracker");
        c.p2p_ok(&["init", "--data", data.to_str().context("utf-8 path")?])?;
        c.spawn_tracker()?;
        c.wait_until("the tracker to start", Duration::from_secs(20), |c| {
            Ok(c.dir.path().join("tracker/tls/trackers").exists())
        })?;
        let token = c.token("client")?;
        c.p2p_ok(&["login", &token])?;
        for _ in 0..n {
            c.add_node()?;
        }
        c.wait_alive(n)?;
        Ok(c)
    }

    /// A one-time enrollment token for `role` (a TLS cluster).
    pub fn token(&self, role: &str) -> anyhow::Result<String> {
        let data = if self.members.is_empty() {
            self.dir.path().join("tracker")
        } else {
            self.member_data(0)
        };
        Ok(self
            .p2p_ok(&[
                "token",
                "--data",
                data.to_str().context("utf-8 path")?,
                "--role",
                role,
            ])?
            .trim()
            .to_string())
    }

    /// Start a group of `trackers` trackers and `n` nodes, and wait until
    /// every node is alive.
    pub fn start_group(trackers: usize, n: usize) -> anyhow::Result<Self> {
        Self::group(trackers, n, false)
    }

    /// [`Cluster::start_group`] over mutual TLS: the CA made in member 0's
    /// data directory and copied to the others' (as an operator copies
    /// `tls/`), a person logged in, nodes enrolled with tokens.
    pub fn start_group_tls(trackers: usize, n: usize) -> anyhow::Result<Self> {
        Self::group(trackers, n, true)
    }

    fn group(trackers: usize, n: usize, tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addrs: Vec<String> = (0..trackers).map(|_| free_addr()).collect();
        let mut c = Self {
            dir,
            tracker_addr: addrs.join(","),
            tracker: None,
            members: addrs.into_iter().map(|a| (a, None)).collect(),
            nodes: Vec::new(),
            tls,
            tracker_http: None,
        };
        if tls {
            let first = c.member_data(0);
            c.p2p_ok(&["init", "--data", first.to_str().context("utf-8 path")?])?;
            for i in 1..trackers {
                let to = c.member_data(i).join("tls");
                std::fs::create_dir_all(&to)?;
                for f in ["ca.pem", "ca-key.pem", "token-key"] {
                    std::fs::copy(first.join("tls").join(f), to.join(f))?;
                }
            }
        }
        for i in 0..trackers {
            c.start_member(i)?;
        }
        if tls {
            c.wait_until("the trackers to start", Duration::from_secs(20), |c| {
                Ok(c.member_data(0).join("tls/trackers").exists())
            })?;
            let token = c.token("client")?;
            c.p2p_ok(&["login", &token])?;
        }
        c.wait_until(
            "the tracker group to answer",
            Duration::from_secs(30),
            |c| Ok(c.p2p(&["status", "--json"])?.status.success()),
        )?;
        for _ in 0..n {
            c.add_node()?;
        }
        c.wait_alive(n)?;
        Ok(c)
    }

    /// Member `i`'s data directory.
    pub fn member_data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("tracker{i}"))
    }

    /// Start member `i` of the tracker group (again).
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let data = self.member_data(i);
        let log = self.dir.path().join(format!(
            "tracker{i}.{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
        ));
        let addr = self.members[i].0.clone();
        let child = spawn(
            &[
                "tracker",
                "--listen",
                &addr,
                "--data",
                data.to_str().context("utf-8 path")?,
                "--peers",
                &self.tracker_addr,
                "--dead-after",
                DEAD_AFTER,
                "--heartbeat",
                HEARTBEAT,
            ],
            &log,
        )?;
        self.members[i].1 = Some(child);
        Ok(())
    }

    /// SIGKILL member `i` of the tracker group.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut t) = self.members[i].1.take() {
            let _ = t.kill();
            let _ = t.wait();
        }
    }

    /// The member that leads the group now: the one that answers alone.
    pub fn leader(&self) -> Option<usize> {
        let scheme = if self.tls { "https" } else { "http" };
        (0..self.members.len()).find(|&i| {
            self.members[i].1.is_some()
                && Command::new(p2p_bin())
                    .args(["status", "--json"])
                    .env("P2P_TRACKER", format!("{scheme}://{}", self.members[i].0))
                    .env("P2P_CONFIG", self.dir.path().join("user"))
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|o| o.status.success())
        })
    }

    pub fn tracker_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        self.tracker_addr
            .split(',')
            .map(|a| format!("{scheme}://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start the single tracker on its address and data directory.
    fn spawn_tracker(&mut self) -> anyhow::Result<()> {
        let data = self.dir.path().join("tracker");
        let log = self.dir.path().join("tracker.log");
        let mut args = tracker_args(&self.tracker_addr, &data)?;
        if let Some(h) = &self.tracker_http {
            args.extend(["--http", h.as_str()]);
        }
        let child = spawn(&args, &log)?;
        self.tracker = Some(child);
        Ok(())
    }

    pub fn start_tracker(&mut self) -> anyhow::Result<()> {
        self.spawn_tracker()?;
        self.wait_until("the tracker to answer", Duration::from_secs(20), |c| {
            Ok(c.p2p(&["status", "--json"])?.status.success())
        })
    }

    /// SIGKILL the tracker.
    pub fn kill_tracker(&mut self) {
        if let Some(mut t) = self.tracker.take() {
            let _ = t.kill();
            let _ = t.wait();
        }
    }

    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let data = self.dir.path().join(format!("node{}", self.nodes.len()));
        self.add_node_at(data)
    }

    /// Start a node whose data directory is `data` (which may be a mount
    /// of its own).
    pub fn add_node_at(&mut self, data: PathBuf) -> anyhow::Result<usize> {
        self.add_node_with(data, &[])
    }

    /// Start a node with more flags (`--zone`, `--capacity`), kept for
    /// its restarts.
    pub fn add_node_with(&mut self, data: PathBuf, extra: &[&str]) -> anyhow::Result<usize> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let i = self.nodes.len();
        let log = self.dir.path().join(format!("node{i}.log"));
        // A node of a TLS cluster enrolls on its first start.
        let token = if self.tls {
            Some(self.token("node")?)
        } else {
            None
        };
        // A port found free may be taken by another test before the node
        // binds it (CI saw "Address already in use"): try another.
        let mut tries = 0;
        let (addr, child) = loop {
            tries += 1;
            let addr = free_addr();
            let child = self.spawn_node(&addr, &data, &log, token.as_deref(), &extra)?;
            match listening(child, &log)? {
                Ok(child) => break (addr, child),
                Err(said) if said.contains("Address already in use") && tries < 5 => continue,
                Err(said) => anyhow::bail!("node {i} did not start: {said}"),
            }
        };
        self.nodes.push(NodeProc {
            addr,
            data,
            extra,
            child: Some(child),
        });
        Ok(i)
    }

    /// Start node `i` again on its address and data directory.
    pub fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart_node_with(i, &[])
    }

    /// Start node `i` again with more flags this time only (`--rejoin`);
    /// its log is `node{i}.restart.log` in [`Cluster::path`].
    pub fn restart_node_with(&mut self, i: usize, more: &[&str]) -> anyhow::Result<()> {
        let (addr, data) = (self.nodes[i].addr.clone(), self.nodes[i].data.clone());
        let log = self.dir.path().join(format!("node{i}.restart.log"));
        let mut extra = self.nodes[i].extra.clone();
        extra.extend(more.iter().map(|s| s.to_string()));
        let child = self.spawn_node(&addr, &data, &log, None, &extra)?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// A node process at `addr` on `data`, joining with `token` if given.
    fn spawn_node(
        &self,
        addr: &str,
        data: &Path,
        log: &Path,
        token: Option<&str>,
        extra: &[String],
    ) -> anyhow::Result<Child> {
        let url = self.tracker_url();
        let mut args = vec![
            "node",
            "--listen",
            addr,
            "--data",
            data.to_str().context("utf-8 path")?,
            "--tracker",
            &url,
            "--heartbeat",
            HEARTBEAT,
            "--scrub-interval",
            SCRUB_INTERVAL,
            "--no-shell",
        ];
        if let Some(t) = token {
            args.extend(["--join", t]);
        }
        args.extend(extra.iter().map(String::as_str));
        spawn(&args, log)
    }

    /// SIGKILL node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run `p2p ARGS` against this cluster's tracker.
    pub fn p2p(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new(p2p_bin())
            .args(args)
            .env("P2P_TRACKER", self.tracker_url())
            .env(
                "P2P_CONFIG",
                self.dir
                    .path()
                    .join(if self.tls { "user" } else { "no-config" }),
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run p2p {args:?}"))?;
        Ok(out)
    }

    /// Run `p2p ARGS` and require success.
    pub fn p2p_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        succeeded(args, self.p2p(args)?)
    }

    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.p2p_ok(&["status", "--json"])?)?)
    }

    pub fn alive_count(&self) -> anyhow::Result<usize> {
        alive_in(&self.status()?)
    }

    pub fn wait_alive(&self, n: usize) -> anyhow::Result<()> {
        self.wait_until(&format!("{n} live nodes"), Duration::from_secs(30), |c| {
            Ok(c.alive_count().unwrap_or(0) == n)
        })
    }

    pub fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        poll_until(what, limit, self.dir.path(), || f(self))
    }

    /// A path inside the cluster's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        self.kill_tracker();
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        keep_logs_if_failed(&mut self.dir);
    }
}

/// The standard output of a finished `p2p ARGS`, or its failure with its
/// standard error.
pub(crate) fn succeeded(args: &[&str], out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "p2p {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Live nodes in a `status --json` answer.
pub(crate) fn alive_in(status: &serde_json::Value) -> anyhow::Result<usize> {
    Ok(status["nodes"]
        .as_array()
        .context("nodes array")?
        .iter()
        .filter(|n| n["alive"] == serde_json::Value::Bool(true))
        .count())
}

/// Poll `f` every 100 ms until it holds or `limit` passes.
pub(crate) fn poll_until(
    what: &str,
    limit: Duration,
    logs: &Path,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "timed out after {limit:?} waiting for {what}; logs in {}",
        logs.display()
    )
}

/// A cluster's directory, going away with it: for a failed test (or when
/// `P2P_KEEP_LOGS` asks, as for a failed benchmark) its logs are kept, and
/// only them: its data (up to a few GiB of chunks and inputs) would fill
/// the disk over many failed runs.
pub(crate) fn keep_logs_if_failed(dir: &mut tempfile::TempDir) {
    if !std::thread::panicking() && std::env::var_os("P2P_KEEP_LOGS").is_none() {
        return;
    }
    let kept = dir.path().to_path_buf();
    for entry in std::fs::read_dir(&kept).into_iter().flatten().flatten() {
        let path = entry.path();
        let is_log = path.extension().is_some_and(|e| e == "log");
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else if !is_log {
            let _ = std::fs::remove_file(&path);
        }
    }
    eprintln!("logs kept in {}", kept.display());
    std::mem::forget(std::mem::replace(
        dir,
        tempfile::tempdir().expect("tempdir"),
    ));
}

/// Write `size` seeded random bytes to `path`, 1 MiB at a time (so a
/// benchmark's own memory stays small: children inherit its peak RSS).
pub fn random_file(path: &Path, size: usize, seed: u64) -> anyhow::Result<()> {
    use rand::{RngCore, SeedableRng};
    use std::io::Write;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        rng.fill_bytes(&mut block[..n]);
        out.write_all(&block[..n])?;
        left -= n;
    }
    out.flush()?;
    Ok(())
}

/// Whether two files have identical bytes.
pub fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}
