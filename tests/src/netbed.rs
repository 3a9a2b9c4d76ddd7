//! A multi-host test bed on one machine: every host in its own Linux
//! network namespace with its own address, all on one private bridge (in a
//! namespace of its own, so the machine's own network is never touched),
//! every link shaped to a rate with `tbf` in both directions (a full-duplex
//! NIC), and optionally delayed with `netem` where the kernel has it.
//! Loopback hides what a network costs (an uploader's uplink, round trips);
//! this shows it. Needs root (`ip netns`); everything is removed on drop.
//!
//! `NetCluster` runs a tracker on host 0, nodes on hosts 1..=n and the
//! client's commands on the last host.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{HEARTBEAT, NodeProc, SCRUB_INTERVAL, p2p_bin};

/// How the bed's links behave.
#[derive(Debug, Clone)]
pub struct Links {
    /// A `tc` rate, as `1gbit` or `500mbit`.
    pub rate: String,
    /// A one-way delay per link, as `1ms` (needs `netem`).
    pub delay: Option<String>,
}

impl Links {
    pub fn rate(rate: &str) -> Self {
        Self {
            rate: rate.to_string(),
            delay: None,
        }
    }
}

/// Namespaced hosts on one bridge, torn down on drop.
pub struct NetBed {
    prefix: String,
    hosts: usize,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (the test bed needs iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process may create network namespaces (it runs as root).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl NetBed {
    /// `hosts` namespaced hosts at 10.77.0.1, .2, ... on a bridge.
    pub fn up(hosts: usize, links: &Links) -> anyhow::Result<Self> {
        if !available() {
            bail!("the network test bed needs root (ip netns)");
        }
        let bed = Self {
            prefix: format!("p2pbed{}", std::process::id()),
            hosts,
        };
        let sw = bed.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for h in 0..hosts {
            let ns = bed.ns(h);
            let port = format!("v{h}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", bed.addr(h)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Both directions: what the host sends and what it receives.
            shape(&ns, "eth0", links)?;
            shape(&sw, &port, links)?;
        }
        Ok(bed)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// The namespace of host `h`.
    pub fn ns(&self, h: usize) -> String {
        format!("{}-h{h}", self.prefix)
    }

    /// Host `h`'s address.
    pub fn addr(&self, h: usize) -> String {
        format!("10.77.0.{}", h + 1)
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// `program` to be run on host `h`.
    pub fn command(&self, h: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(h)]).arg(program);
        c
    }

    /// Run `f` on a thread inside host `h`'s network: sockets it opens
    /// belong to that host.
    pub fn on_host<T: Send + 'static>(
        &self,
        h: usize,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<anyhow::Result<T>> {
        let path = format!("/run/netns/{}", self.ns(h));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: `ns` is an open namespace file; setns only changes
            // this thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
    }

    /// Cut host `h` off the network (its port on the bridge down): its
    /// processes live on, unreachable, as behind a failed switch port.
    pub fn cut(&self, h: usize) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            &format!("v{h}"),
            "down",
        ])
    }

    /// Put host `h` back on the network.
    pub fn heal(&self, h: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.switch(), "link", "set", &format!("v{h}"), "up"])
    }

    /// The floor of a transfer between hosts: `bytes` over one plain TCP
    /// connection from host `from` to host `to`, read and discarded.
    pub fn tcp_copy(&self, from: usize, to: usize, bytes: u64) -> anyhow::Result<Duration> {
        let to_addr = format!("{}:9999", self.addr(to));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let bind = to_addr.clone();
        let reader = self.on_host(to, move || {
            let l = TcpListener::bind(&bind)?;
            ready_tx.send(()).ok();
            let (mut s, _) = l.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    return Ok(n);
                }
                n += k as u64;
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the reader did not start")?;
        let writer = self.on_host(from, move || {
            let block = vec![0x5au8; 1 << 20];
            let start = Instant::now();
            let mut s = TcpStream::connect(&to_addr)?;
            let mut left = bytes;
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                s.write_all(&block[..k])?;
                left -= k as u64;
            }
            Ok(start)
        });
        let start = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        let n = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        let t = start.elapsed();
        if n != bytes {
            bail!("the TCP copy moved {n} of {bytes} bytes");
        }
        Ok(t)
    }
}

/// Shape `dev` in namespace `ns`: `tbf` at the rate, under `netem` if a
/// delay is asked for.
fn shape(ns: &str, dev: &str, links: &Links) -> anyhow::Result<()> {
    // A burst of at least rate/HZ keeps tbf accurate at gigabit rates.
    let tbf = [
        "tbf",
        "rate",
        &links.rate,
        "burst",
        "256kb",
        "latency",
        "100ms",
    ];
    let base = ["-n", ns, "qdisc", "add", "dev", dev];
    let mut args: Vec<&str> = base.to_vec();
    match &links.delay {
        None => {
            args.push("root");
            args.extend(tbf);
            run("tc", &args)
        }
        Some(d) => {
            args.extend(["root", "handle", "1:", "netem", "delay", d]);
            run("tc", &args).context("delay needs the kernel's netem module")?;
            let mut child: Vec<&str> = base.to_vec();
            child.extend(["parent", "1:", "handle", "2:"]);
            child.extend(tbf);
            run("tc", &child)
        }
    }
}

impl Drop for NetBed {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of every veth pair.
        for h in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.ns(h)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

/// A tracker (host 0), nodes (hosts 1..=n) and a client host (the last),
/// real `p2p` processes in a [`NetBed`], plaintext (`--insecure`: the bed's
/// network is private to this machine).
pub struct NetCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    tracker: Option<Child>,
    // Dropped last: the processes above go before their network.
    pub bed: NetBed,
}

const PORT: u16 = 7000;

impl NetCluster {
    /// Start the bed with `n` nodes and wait until every node is alive.
    pub fn start(n: usize, links: &Links) -> anyhow::Result<Self> {
        let bed = NetBed::up(n + 2, links)?;
        let dir = tempfile::tempdir()?;
        let mut c = Self {
            dir,
            nodes: Vec::new(),
            tracker: None,
            bed,
        };
        let data = c.dir.path().join("tracker");
        let listen = format!("{}:{PORT}", c.bed.addr(0));
        let log = c.dir.path().join("tracker.log");
        let mut args = crate::tracker_args(&listen, &data)?;
        args.push("--insecure");
        c.tracker = Some(c.spawn(0, &args, &log)?);
        for i in 0..n {
            let addr = format!("{}:{PORT}", c.bed.addr(i + 1));
            let data = c.dir.path().join(format!("node{i}"));
            let log = c.dir.path().join(format!("node{i}.log"));
            let url = c.tracker_url();
            let args = [
                "node",
                "--listen",
                &addr,
                "--data",
                data.to_str().context("utf-8 path")?,
                "--tracker",
                &url,
                "--heartbeat",
                HEARTBEAT,
                "--scrub-interval",
                SCRUB_INTERVAL,
                "--no-shell",
                "--insecure",
            ];
            let child = c.spawn(i + 1, &args, &log)?;
            c.nodes.push(NodeProc {
                addr,
                data,
                extra: Vec::new(),
                child: Some(child),
            });
        }
        c.wait_until(&format!("{n} live nodes"), Duration::from_secs(30), |c| {
            Ok(c.alive_count().unwrap_or(0) == n)
        })?;
        Ok(c)
    }

    fn spawn(&self, host: usize, args: &[&str], log: &Path) -> anyhow::Result<Child> {
        let log_file = std::fs::File::create(log)?;
        self.bed
            .command(host, p2p_bin())
            .args(args)
            .env("P2P_CONFIG", log.with_extension("no-config"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start p2p {args:?} in the test bed"))
    }

    pub fn tracker_url(&self) -> String {
        format!("http://{}:{PORT}", self.bed.addr(0))
    }

    /// The host client commands run on.
    pub fn client_host(&self) -> usize {
        self.bed.hosts() - 1
    }

    /// Run `p2p ARGS` on the client host.
    pub fn p2p(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.bed
            .command(self.client_host(), p2p_bin())
            .args(args)
            .env("P2P_TRACKER", self.tracker_url())
            .env("P2P_CONFIG", self.dir.path().join("no-config"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run p2p {args:?} in the test bed"))
    }

    /// Run `p2p ARGS` on the client host and require success.
    pub fn p2p_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::succeeded(args, self.p2p(args)?)
    }

    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.p2p_ok(&["status", "--json"])?)?)
    }

    pub fn alive_count(&self) -> anyhow::Result<usize> {
        crate::alive_in(&self.status()?)
    }

    /// SIGKILL node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        crate::poll_until(what, limit, self.dir.path(), || f(self))
    }

    /// A path inside the cluster's directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if let Some(mut t) = self.tracker.take() {
            let _ = t.kill();
            let _ = t.wait();
        }
        crate::keep_logs_if_failed(&mut self.dir);
    }
}
