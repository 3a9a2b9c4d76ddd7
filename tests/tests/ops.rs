//! What operators see (`--http`): Prometheus metrics scraped and parsed by
//! a Prometheus text parser, `/healthz`, and the tracker's cluster page
//! rendered in a real headless browser (Chromium), with a screenshot kept
//! under `target/test-artifacts/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p2p_tests::{Cluster, free_addr, http_get, random_file, same_bytes};
use prometheus_parse::{Scrape, Value};

const MIB: usize = 1024 * 1024;

/// Scrape `addr`'s `/metrics` and parse it as Prometheus text.
fn scrape(addr: &str) -> Scrape {
    let (status, content_type, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `metric` whose labels include `labels`.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

// A tracker and three nodes serving --http: the tracker's metrics follow
// the cluster (files, chunks, nodes by state, a dead node's chunks under
// their factor) and time every RPC by method; a node's count what it
// received and holds; /healthz answers.
#[test]
fn metrics_follow_the_cluster() {
    let mut c = Cluster::start_with_http(0).unwrap();
    let node_http: Vec<String> = (0..3).map(|_| free_addr()).collect();
    for (i, h) in node_http.iter().enumerate() {
        let data = c.dir.path().join(format!("node{i}"));
        c.add_node_with(data, &["--http", h]).unwrap();
    }
    c.wait_alive(3).unwrap();
    let tracker = c.tracker_http.clone().unwrap();
    assert_eq!(http_get(&tracker, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&node_http[0], "/healthz").unwrap().0, 200);

    let input = c.path("f.bin");
    random_file(&input, 8 * MIB, 5).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap()]).unwrap();
    let out = c.path("f.out");
    c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());

    // Heartbeats run on their own clock: the put and get can finish before
    // the first one after registration.
    c.wait_until(
        "the tracker to time a heartbeat",
        Duration::from_secs(20),
        |_| {
            let t = scrape(&tracker);
            let calls = value(&t, "p2p_rpc_duration_seconds", &[("method", "Heartbeat")]);
            Ok(calls.is_some_and(|n| n >= 1.0))
        },
    )
    .unwrap();
    let t = scrape(&tracker);
    assert_eq!(value(&t, "p2p_files", &[]), Some(1.0));
    assert_eq!(value(&t, "p2p_chunks", &[]), Some(2.0));
    assert_eq!(value(&t, "p2p_nodes", &[("state", "alive")]), Some(3.0));
    assert_eq!(value(&t, "p2p_chunks_under_replicated", &[]), Some(0.0));
    for method in ["Allocate", "Commit", "Locate", "Heartbeat"] {
        let calls = value(&t, "p2p_rpc_duration_seconds", &[("method", method)]);
        assert!(calls.is_some_and(|n| n >= 1.0), "{method}: {calls:?}");
    }
    assert!(t.docs.contains_key("p2p_repair_queue_chunks"));

    // Every node holds both chunks (R=3 on three nodes).
    for h in &node_http {
        let n = scrape(h);
        assert_eq!(value(&n, "p2p_chunks", &[]), Some(2.0));
        assert_eq!(
            value(&n, "p2p_received_bytes_total", &[]),
            Some((8 * MIB) as f64)
        );
        assert_eq!(value(&n, "p2p_used_bytes", &[]), Some((8 * MIB) as f64));
        let calls = value(&n, "p2p_rpc_duration_seconds", &[("method", "PutChunk")]);
        assert!(calls.is_some_and(|n| n >= 2.0), "{calls:?}");
    }
    let sent: f64 = node_http
        .iter()
        .map(|h| value(&scrape(h), "p2p_sent_bytes_total", &[]).unwrap_or(0.0))
        .sum();
    assert!(
        sent >= (8 * MIB) as f64,
        "the get read 8 MiB from the nodes: {sent}"
    );

    c.kill_node(2);
    c.wait_until(
        "the tracker to count node 2 dead",
        Duration::from_secs(20),
        |_| {
            let t = scrape(&tracker);
            Ok(value(&t, "p2p_nodes", &[("state", "dead")]) == Some(1.0))
        },
    )
    .unwrap();
    let t = scrape(&tracker);
    assert_eq!(value(&t, "p2p_chunks_under_replicated", &[]), Some(2.0));
    assert_eq!(value(&t, "p2p_files_at_risk", &[]), Some(1.0));
    let up: HashMap<String, f64> = t
        .samples
        .iter()
        .filter(|s| s.metric == "p2p_node_up")
        .map(|s| {
            let v = match s.value {
                Value::Gauge(v) => v,
                _ => f64::NAN,
            };
            (s.labels.get("node").unwrap_or("").to_string(), v)
        })
        .collect();
    assert_eq!(up.len(), 3);
    assert_eq!(up.values().filter(|v| **v == 0.0).count(), 1);
}

/// Chromium, if this machine has it.
fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Chromium, headless, as root and off the network, on `url`, with `args`.
fn headless(browser: &Path, profile: &Path, args: &[&str], url: &str) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

// The cluster page in a real browser: four nodes in two zones, one killed,
// a copy rotted on another's disk, a file of factor 4 left at risk. The
// rendered page shows the zones, the dead node, the file at risk and the
// events (a node declared dead, a corrupt copy found); a screenshot is
// kept in target/test-artifacts/cluster-page.png.
#[test]
fn cluster_page_in_a_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("P2P_REQUIRE_BROWSER").is_none(),
            "P2P_REQUIRE_BROWSER is set but there is no Chromium: apt-get install chromium"
        );
        eprintln!("SKIPPED: the cluster page test needs Chromium (apt-get install chromium)");
        return;
    };
    let mut c = Cluster::start_with_http(0).unwrap();
    for (i, zone) in ["rack-1", "rack-1", "rack-2", "rack-2"].iter().enumerate() {
        let data = c.dir.path().join(format!("node{i}"));
        c.add_node_with(data, &["--zone", zone, "--capacity", "256MiB"])
            .unwrap();
    }
    c.wait_alive(4).unwrap();
    let photos = c.path("photos.tar");
    random_file(&photos, 12 * MIB, 7).unwrap();
    c.p2p_ok(&["put", photos.to_str().unwrap()]).unwrap();
    let ledger = c.path("ledger.db");
    random_file(&ledger, 3 * MIB, 8).unwrap();
    c.p2p_ok(&["put", ledger.to_str().unwrap(), "--replicas", "4"])
        .unwrap();
    // Rot one copy on node 1: its scrubber finds it (and says so).
    let rotten = c.nodes[1].chunk_files()[0].clone();
    let mut bytes = std::fs::read(&rotten).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&rotten, bytes).unwrap();
    c.kill_node(3);
    let tracker = c.tracker_http.clone().unwrap();
    c.wait_until(
        "the page to show the events",
        Duration::from_secs(30),
        |_| {
            let (_, _, page) = http_get(&tracker, "/")?;
            Ok(page.contains("declared dead") && page.contains("corrupt cop"))
        },
    )
    .unwrap();

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{tracker}/");
    let dom = headless(&browser, profile.path(), &["--dump-dom"], &url);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for want in [
        "<title>p2p cluster</title>",
        "zone rack-1",
        "zone rack-2",
        "class=\"node dead\"",
        "ledger.db",
        "declared dead",
        "corrupt cop",
        "<polyline",
    ] {
        assert!(
            dom.contains(want),
            "the rendered page lacks {want:?}:\n{dom}"
        );
    }
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("cluster-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = headless(
        &browser,
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a near-empty screenshot: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
