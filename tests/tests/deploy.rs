//! `docs/deploy.md`, run: its commands, as the guide writes them (the test
//! checks each one is in the guide), on three hosts of the multi-host test
//! bed (network namespaces, root). A group of three trackers over mutual
//! TLS (the CA made on host 1 and copied), three nodes enrolled with
//! tokens in one zone per host then restarted as their systemd units run
//! them, a person logged in; a put and a get; metrics and the cluster page
//! from inside the hosts' network; then host 3 dies (its tracker and node
//! SIGKILLed) and the file still reads back, byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p_tests::netbed::{Links, NetBed, available};
use p2p_tests::{http_get, p2p_bin, random_file, same_bytes};

const MIB: usize = 1024 * 1024;

/// The guide's commands for host 1, as written there.
const INIT: &str = "p2p init --data /var/lib/p2p/tracker";
const TRACKER: &str = "p2p tracker --listen 10.0.0.1:50051 --data /var/lib/p2p/tracker --peers 10.0.0.1:50051,10.0.0.2:50051,10.0.0.3:50051 --http 10.0.0.1:9100";
const NODE_TOKEN: &str = "p2p token --data /var/lib/p2p/tracker --role node";
const NODE_JOIN: &str = "p2p node --listen 10.0.0.1:7000 --data /var/lib/p2p/node --zone host-1 --http 10.0.0.1:9101 --no-shell --join TOKEN";
const NODE_UNIT: &str = "p2p node --listen 10.0.0.1:7000 --data /var/lib/p2p/node --zone host-1 --http 10.0.0.1:9101 --no-shell\n";
const CLIENT_TOKEN: &str = "p2p token --data /var/lib/p2p/tracker --role client";
const LOGIN: &str = "p2p login TOKEN";
const PUT: &str = "p2p put backup.tar";
const GET: &str = "p2p get backup.tar -o /tmp/backup.tar";
const WHAT_IF: &str = "p2p status --what-if 10.0.0.3:7000";
/// The CA files the guide copies from host 1 to the other trackers.
const CA_FILES: &str = "{ca.pem,ca-key.pem,token-key}";

/// Three hosts, their processes, and where each keeps its `/var/lib/p2p`.
struct Hosts {
    dir: tempfile::TempDir,
    procs: Vec<(usize, Child)>,
    // Dropped last: the processes go before their network.
    bed: NetBed,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Hosts {
    /// Host `h`'s (0-based) copy of `/var/lib/p2p`, `/tmp` and the person's
    /// config.
    fn root(&self, h: usize) -> PathBuf {
        self.dir.path().join(format!("host{}", h + 1))
    }

    /// The guide's command `cmd` (written for host 1) as host `h` runs it:
    /// its own address in `--listen` and `--http`, its own zone, the test
    /// bed's addresses, its own directories; as argv, without `p2p`.
    fn args(&self, h: usize, cmd: &str) -> Vec<String> {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        assert_eq!(words[0], "p2p");
        let root = self.root(h);
        let root = root.to_str().expect("utf-8 path");
        let mut out = Vec::new();
        for (i, w) in words.iter().enumerate().skip(1) {
            let mut w = w.to_string();
            match words[i - 1] {
                "--listen" | "--http" => {
                    w = w.replacen("10.0.0.1:", &format!("10.0.0.{}:", h + 1), 1);
                }
                "--zone" => w = format!("host-{}", h + 1),
                _ => {}
            }
            if let Some(rest) = w.strip_prefix("/tmp/") {
                w = format!("{root}/tmp/{rest}");
            }
            w = w
                .replace("10.0.0.", "10.77.0.")
                .replace("/var/lib/p2p", &format!("{root}/var/lib/p2p"));
            out.push(w);
        }
        out
    }

    fn command(&self, h: usize, args: &[String]) -> std::process::Command {
        let mut c = self.bed.command(h, p2p_bin());
        c.args(args)
            .current_dir(self.root(h))
            .env("P2P_CONFIG", self.root(h).join("config"))
            .env_remove("P2P_TRACKER")
            .stdin(Stdio::null());
        c
    }

    /// Run the guide's `cmd` on host `h`, `TOKEN` replaced, to the end.
    fn run(&self, h: usize, cmd: &str, token: Option<&str>) -> anyhow::Result<Output> {
        let mut args = self.args(h, cmd);
        for a in &mut args {
            if a == "TOKEN" {
                *a = token.context("the command needs a token")?.to_string();
            }
        }
        Ok(self.command(h, &args).output()?)
    }

    fn ok(&self, h: usize, cmd: &str, token: Option<&str>) -> anyhow::Result<String> {
        let out = self.run(h, cmd, token)?;
        if !out.status.success() {
            bail!(
                "host {}: {cmd}: {}",
                h + 1,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start the guide's daemon `cmd` on host `h`, logging to a file.
    fn start(&mut self, h: usize, cmd: &str, token: Option<&str>, log: &str) -> anyhow::Result<()> {
        let mut args = self.args(h, cmd);
        for a in &mut args {
            if a == "TOKEN" {
                *a = token.context("the command needs a token")?.to_string();
            }
        }
        let log = std::fs::File::create(self.root(h).join(log))?;
        let child = self
            .command(h, &args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.procs.push((h, child));
        Ok(())
    }

    /// SIGKILL every process of host `h`.
    fn kill_host(&mut self, h: usize) {
        for (host, c) in &mut self.procs {
            if *host == h {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.procs.retain(|(host, _)| *host != h);
    }

    fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        mut ok: impl FnMut(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            match ok(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("timed out waiting for {what} ({last})")
    }

    /// `GET path` from `addr`, from inside host `h`'s network.
    fn http(&self, h: usize, addr: String, path: &'static str) -> anyhow::Result<(u16, String)> {
        let got = self
            .bed
            .on_host(h, move || http_get(&addr, path))
            .join()
            .map_err(|_| anyhow::anyhow!("the HTTP thread panicked"))??;
        Ok((got.0, got.2))
    }
}

fn status(hosts: &Hosts, h: usize) -> anyhow::Result<serde_json::Value> {
    let out = hosts.ok(h, "p2p status --json", None)?;
    Ok(serde_json::from_str(&out)?)
}

#[test]
fn the_deployment_guide_works() {
    if !available() {
        eprintln!("not run: the deployment guide's test needs root (CI runs it as root)");
        return;
    }
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy.md"))
            .unwrap();
    for cmd in [
        INIT,
        TRACKER,
        NODE_TOKEN,
        NODE_JOIN,
        NODE_UNIT,
        CLIENT_TOKEN,
        LOGIN,
        PUT,
        GET,
        WHAT_IF,
        CA_FILES,
    ] {
        assert!(guide.contains(cmd), "docs/deploy.md no longer says {cmd:?}");
    }
    let bed = NetBed::up(3, &Links::rate("1gbit")).unwrap();
    let mut hosts = Hosts {
        dir: tempfile::tempdir().unwrap(),
        procs: Vec::new(),
        bed,
    };
    for h in 0..3 {
        for d in ["var/lib/p2p/tracker", "var/lib/p2p/node", "tmp"] {
            std::fs::create_dir_all(hosts.root(h).join(d)).unwrap();
        }
    }

    // 2. The CA, on host 1, copied to the other trackers.
    hosts.ok(0, INIT, None).unwrap();
    let tls = |h: usize| hosts.root(h).join("var/lib/p2p/tracker/tls");
    for h in 1..3 {
        std::fs::create_dir_all(tls(h)).unwrap();
        for f in ["ca.pem", "ca-key.pem", "token-key"] {
            std::fs::copy(tls(0).join(f), tls(h).join(f)).unwrap();
        }
    }

    // 3. The trackers.
    for h in 0..3 {
        hosts.start(h, TRACKER, None, "tracker.log").unwrap();
    }
    hosts
        .wait_until(
            "the trackers to note their addresses",
            Duration::from_secs(30),
            |s| Ok(s.root(0).join("var/lib/p2p/tracker/tls/trackers").exists()),
        )
        .unwrap();

    // 4. The nodes: enrolled with a token each, then run as their unit.
    for h in 0..3 {
        let token = hosts.ok(0, NODE_TOKEN, None).unwrap();
        hosts
            .start(h, NODE_JOIN, Some(token.trim()), "node-join.log")
            .unwrap();
    }
    // 5. A person, on host 1.
    let token = hosts.ok(0, CLIENT_TOKEN, None).unwrap();
    hosts.ok(0, LOGIN, Some(token.trim())).unwrap();
    hosts
        .wait_until("three live nodes", Duration::from_secs(60), |s| {
            let st = status(s, 0)?;
            Ok(st["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().filter(|n| n["alive"] == true).count() == 3))
        })
        .unwrap();
    // The nodes as systemd runs them: no token, the credentials kept.
    for (_, mut c) in hosts.procs.drain(3..).collect::<Vec<_>>() {
        let _ = c.kill();
        let _ = c.wait();
    }
    for h in 0..3 {
        hosts
            .start(h, NODE_UNIT.trim_end(), None, "node.log")
            .unwrap();
    }
    // Registered again: until then the tracker still counts the enrolling
    // processes alive (for its dead-after), and a put's copies on the new
    // ones would carry receipts it cannot check yet.
    hosts
        .wait_until(
            "the nodes to register again",
            Duration::from_secs(60),
            |s| {
                Ok((0..3).all(|h| {
                    std::fs::read_to_string(s.root(h).join("node.log"))
                        .is_ok_and(|l| l.contains("registered with the tracker"))
                }))
            },
        )
        .unwrap();
    hosts
        .wait_until("three live nodes again", Duration::from_secs(60), |s| {
            let st = status(s, 0)?;
            Ok(st["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["alive"] == true)))
        })
        .unwrap();
    let st = status(&hosts, 0).unwrap();
    assert_eq!(st["trackers"].as_array().unwrap().len(), 3, "{st}");
    let mut zones: Vec<String> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["zone"].as_str().unwrap().to_string())
        .collect();
    zones.sort();
    assert_eq!(zones, ["host-1", "host-2", "host-3"]);

    // A put and a get, as the person does them.
    let input = hosts.root(0).join("backup.tar");
    random_file(&input, 10 * MIB + 77, 3).unwrap();
    hosts.ok(0, PUT, None).unwrap();
    hosts.ok(0, GET, None).unwrap();
    assert!(same_bytes(&input, &hosts.root(0).join("tmp/backup.tar")).unwrap());
    let w: serde_json::Value =
        serde_json::from_str(&hosts.ok(0, &format!("{WHAT_IF} --json"), None).unwrap()).unwrap();
    assert_eq!(w["at_risk"], serde_json::json!(["backup.tar"]), "{w}");

    // 6. Metrics and the page, from inside the hosts' network: one of the
    // trackers leads and serves the page.
    let mut pages = 0;
    for h in 0..3 {
        let (code, body) = hosts
            .http(h, format!("10.77.0.{}:9100", h + 1), "/metrics")
            .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("p2p_rpc_duration_seconds"), "{body}");
        let (code, page) = hosts
            .http(h, format!("10.77.0.{}:9100", h + 1), "/")
            .unwrap();
        if code == 200 && page.contains("zone host-1") {
            pages += 1;
        }
        let (code, body) = hosts
            .http(h, format!("10.77.0.{}:9101", h + 1), "/metrics")
            .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("p2p_chunks 3\n"),
            "each node holds the 3 chunks: {body}"
        );
    }
    assert_eq!(pages, 1, "the leader serves the cluster page");

    // Host 3 dies: the file reads back from the other two.
    hosts.kill_host(2);
    std::fs::remove_file(hosts.root(0).join("tmp/backup.tar")).unwrap();
    hosts
        .wait_until("a get without host 3", Duration::from_secs(60), |s| {
            Ok(s.run(0, GET, None)?.status.success())
        })
        .unwrap();
    assert!(same_bytes(&input, &hosts.root(0).join("tmp/backup.tar")).unwrap());
}
