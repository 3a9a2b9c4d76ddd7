//! End-to-end: real `p2p` processes on 127.0.0.1, killed with SIGKILL,
//! restarted, and corrupted on disk. Every test checks the bytes that come
//! back, not only exit codes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p2p_tests::{Cluster, free_addr, p2p_bin, random_file, same_bytes};

/// The BLAKE3 hex of each 4 MiB chunk of `path`: the ground truth for
/// counting copies on the nodes' disks.
fn chunk_hexes(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    data.chunks(4 * MIB)
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect()
}

/// Intact copies of each chunk on the given nodes' disks.
fn intact(cluster: &Cluster, nodes: &[usize], chunks: &[String]) -> Vec<usize> {
    chunks
        .iter()
        .map(|h| {
            nodes
                .iter()
                .filter(|&&i| cluster.nodes[i].holds_intact(h))
                .count()
        })
        .collect()
}

/// The node holding the most chunk files among `nodes`.
fn busiest(cluster: &Cluster, nodes: &[usize]) -> usize {
    *nodes
        .iter()
        .max_by_key(|&&i| cluster.nodes[i].chunk_files().len())
        .unwrap()
}

const MIB: usize = 1024 * 1024;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Chunk file name -> number of nodes holding it, over the given nodes.
fn copies(cluster: &Cluster, nodes: &[usize]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for &i in nodes {
        for f in cluster.nodes[i].chunk_files() {
            *out.entry(f.file_name().unwrap().to_string_lossy().into_owned())
                .or_insert(0) += 1;
        }
    }
    out
}

// A 40 MiB file (not a multiple of the chunk size) and a 0-byte file
// round-trip byte for byte, with 3 copies of every chunk on distinct nodes.
#[test]
fn put_get_round_trip() {
    let c = Cluster::start(4).unwrap();
    let input = c.path("big.bin");
    random_file(&input, 40 * MIB + 12_345, 1).unwrap();
    let put = json(
        &c.p2p_ok(&["put", input.to_str().unwrap(), "--replicas", "3", "--json"])
            .unwrap(),
    );
    assert_eq!(put["chunks"], 11);
    assert_eq!(put["replicas"], 3);
    let out = c.path("big.out");
    c.p2p_ok(&["get", "big.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());

    // Count on disk: 11 distinct chunks, each on exactly 3 nodes.
    let on_disk = copies(&c, &[0, 1, 2, 3]);
    assert_eq!(on_disk.len(), 11);
    assert!(on_disk.values().all(|&n| n == 3), "{on_disk:?}");

    let empty = c.path("empty");
    std::fs::write(&empty, b"").unwrap();
    c.p2p_ok(&["put", empty.to_str().unwrap()]).unwrap();
    let empty_out = c.path("empty.out");
    c.p2p_ok(&["get", "empty", "-o", empty_out.to_str().unwrap()])
        .unwrap();
    assert_eq!(std::fs::read(&empty_out).unwrap(), b"");

    let ls = json(&c.p2p_ok(&["ls", "--json"]).unwrap());
    let names: Vec<_> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["big.bin", "empty"]);
    assert_eq!(ls[1]["size"], 0);
    assert_eq!(ls[1]["chunks"], 0);
    assert_eq!(ls[0]["size"], 40 * MIB + 12_345);
}

// One byte flipped in every chunk file of one node: get still returns the
// exact bytes, served by the other holders.
#[test]
fn corrupt_chunks_on_one_node_are_not_served() {
    let c = Cluster::start(4).unwrap();
    let input = c.path("f.bin");
    random_file(&input, 12 * MIB + 7, 2).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap()]).unwrap();
    let victim = (0..4)
        .max_by_key(|&i| c.nodes[i].chunk_files().len())
        .unwrap();
    let files = c.nodes[victim].chunk_files();
    assert!(!files.is_empty());
    for f in &files {
        let mut data = std::fs::read(f).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        std::fs::write(f, data).unwrap();
    }
    for round in 0..2 {
        let out = c.path(&format!("f.out{round}"));
        c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
            .unwrap();
        assert!(same_bytes(&input, &out).unwrap(), "round {round}");
    }
}

// SIGKILL two of four nodes (at most R-1 holders of any chunk): the file
// still comes back, both before and after the tracker notices.
#[test]
fn survives_two_killed_nodes() {
    let mut c = Cluster::start(4).unwrap();
    let input = c.path("f.bin");
    random_file(&input, 20 * MIB + 3, 3).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap(), "--replicas", "3"])
        .unwrap();
    c.kill_node(0);
    c.kill_node(1);
    let out = c.path("f.out");
    c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
    c.wait_alive(2).unwrap();
    let status = c.status().unwrap();
    assert!(status["under_replicated"].as_u64().unwrap() > 0);
    std::fs::remove_file(&out).unwrap();
    c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
    // A killed node restarted on its data directory reports its chunks again.
    c.restart_node(0).unwrap();
    c.wait_alive(3).unwrap();
    assert!(!c.nodes[0].chunk_files().is_empty());
    // Repair may be copying chunks to it meanwhile: wait for the tracker's
    // count and the disk to agree.
    c.wait_until(
        "node0's report to match its disk",
        Duration::from_secs(20),
        |c| {
            let status = c.status()?;
            let reported = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["addr"] == c.nodes[0].addr.as_str())
                .map(|n| n["chunks"].clone());
            Ok(reported == Some(serde_json::json!(c.nodes[0].chunk_files().len())))
        },
    )
    .unwrap();
}

// SIGKILL a node in the middle of a put: its uploads fail and go to
// replacement nodes, and the put still ends with 3 synced copies of every
// chunk (2 live ones for the chunks the dead node had already stored).
// Fanned out from the client, and down chains (where the dead node may be
// the head, the middle or the tail of a chunk's chain).
#[test]
fn put_survives_a_node_killed_mid_transfer() {
    put_survives_a_node_killed_mid_transfer_with("fanout");
}

#[test]
fn chained_put_survives_a_node_killed_mid_transfer() {
    put_survives_a_node_killed_mid_transfer_with("chain");
}

fn put_survives_a_node_killed_mid_transfer_with(replication: &str) {
    let mut c = Cluster::start(4).unwrap();
    let input = c.path("f.bin");
    random_file(&input, 64 * MIB + 9, 8).unwrap();
    let put = Command::new(p2p_bin())
        .args(["put", input.to_str().unwrap(), "--json", "--parallel", "1"])
        .args(["--replication", replication])
        .env("P2P_TRACKER", c.tracker_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill node 0 as soon as it has stored its first chunk.
    let start = Instant::now();
    while c.nodes[0].chunk_files().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node 0 never got a chunk"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    c.kill_node(0);
    let out = put.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        report["retries"].as_u64().unwrap() > 0,
        "no upload was replaced: {report}"
    );
    // Every chunk has 3 synced copies; only chunks node 0 acknowledged
    // before it died have one of them on the dead node.
    let on_live = copies(&c, &[1, 2, 3]);
    let on_dead = copies(&c, &[0]);
    assert_eq!(on_live.len(), 17);
    for (chunk, &live) in &on_live {
        let dead = on_dead.get(chunk).copied().unwrap_or(0);
        assert!(
            live == 3 || (live == 2 && dead == 1),
            "{chunk}: {live} live, {dead} dead"
        );
    }
    let got = c.path("f.out");
    c.p2p_ok(&["get", "f.bin", "-o", got.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &got).unwrap());
}

// SIGKILL the tracker and restart it on the same data directory: the file
// is still listed and still readable.
#[test]
fn tracker_restart_keeps_files() {
    let mut c = Cluster::start(3).unwrap();
    let input = c.path("keep.bin");
    random_file(&input, 9 * MIB + 1, 4).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap()]).unwrap();
    c.kill_tracker();
    c.start_tracker().unwrap();
    let ls = json(&c.p2p_ok(&["ls", "--json"]).unwrap());
    assert_eq!(ls[0]["name"], "keep.bin");
    assert_eq!(ls[0]["size"], 9 * MIB + 1);
    // Readable at once, before the nodes have re-registered...
    let out = c.path("keep.out");
    c.p2p_ok(&["get", "keep.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
    // ...and the nodes come back with their inventories.
    c.wait_alive(3).unwrap();
    let status = c.status().unwrap();
    assert_eq!(status["under_replicated"], 0);
    let out2 = c.path("keep.out2");
    c.p2p_ok(&["get", "keep.bin", "-o", out2.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out2).unwrap());
}

// A graceful leave hands every chunk over first: afterwards the remaining
// nodes hold 3 copies of every chunk on their disks.
#[test]
fn leave_hands_chunks_over() {
    let mut c = Cluster::start(4).unwrap();
    let input = c.path("f.bin");
    random_file(&input, 16 * MIB + 5, 5).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap()]).unwrap();
    let addr = c.nodes[0].addr.clone();
    c.p2p_ok(&["leave", "--node", &addr]).unwrap();
    c.nodes[0].wait_exit(Duration::from_secs(10)).unwrap();
    let on_disk = copies(&c, &[1, 2, 3]);
    assert_eq!(on_disk.len(), 5);
    assert!(on_disk.values().all(|&n| n == 3), "{on_disk:?}");
    let status = c.status().unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(status["under_replicated"], 0);
    let out = c.path("f.out");
    c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());

    // Started again (a service manager restarting it), the node that left
    // refuses to run, in one line; with its mark gone (a data directory
    // restored from a backup), the tracker refuses it; with --rejoin it
    // joins again and its chunks count.
    let log_path = c.path("node0.restart.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(c.nodes[0].data.join("left").exists());
    c.restart_node(0).unwrap();
    let exit = c.nodes[0].wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!exit.success());
    let said = log();
    assert!(
        said.contains("left the network") && said.contains("--rejoin"),
        "{said}"
    );
    std::fs::remove_file(c.nodes[0].data.join("left")).unwrap();
    c.restart_node(0).unwrap();
    let exit = c.nodes[0].wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!exit.success());
    let said = log();
    assert!(said.contains("the tracker refused this node"), "{said}");
    assert_eq!(c.status().unwrap()["nodes"].as_array().unwrap().len(), 3);
    c.restart_node_with(0, &["--rejoin"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.status().unwrap()["nodes"].as_array().unwrap().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not rejoin: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.nodes[0].is_running());
}

fn assert_one_line_error(out: &std::process::Output, contains: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(contains),
        "expected {contains:?} in: {stderr}"
    );
}

// Every bad input gets one readable line on stderr and a non-zero exit.
#[test]
fn bad_input_gets_one_line_errors() {
    let c = Cluster::start(3).unwrap();
    let ok = c.path("ok.bin");
    random_file(&ok, 1000, 6).unwrap();
    let okp = ok.to_str().unwrap();
    let nobody = free_addr();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["put", "/nonexistent/file"],
            "cannot read /nonexistent/file",
        ),
        (
            vec!["put", c.dir.path().to_str().unwrap()],
            "not a regular file",
        ),
        (vec!["get", "no-such-file"], "no such file"),
        (vec!["put", okp, "--replicas", "0"], "replication factor 0"),
        (
            vec!["put", okp, "--replicas", "4"],
            "need 4 distinct live nodes, only 3 available",
        ),
        (vec!["put", okp, "--name", "a/b"], "path separator"),
        (vec!["put", okp, "--name", "a\\b"], "path separator"),
        (vec!["put", okp, "--name", ".."], "'..'"),
        (vec!["put", okp, "--name", ""], "empty"),
        (vec!["get", "../etc/passwd"], "path separator"),
        (vec!["get", "..", "-o", "/tmp/x"], "'..'"),
        (vec!["leave", "--node", &nobody], "node at"),
    ];
    for (args, expect) in cases {
        let out = c.p2p(&args).unwrap();
        assert_one_line_error(&out, expect);
    }
    // Nothing was stored by the refused puts, and a duplicate name is refused.
    c.p2p_ok(&["put", okp]).unwrap();
    let mut other = std::fs::read(&ok).unwrap();
    other[0] ^= 1;
    let other_path = c.path("other");
    std::fs::write(&other_path, other).unwrap();
    let out = c
        .p2p(&["put", other_path.to_str().unwrap(), "--name", "ok.bin"])
        .unwrap();
    assert_one_line_error(&out, "already exists");
    let ls = json(&c.p2p_ok(&["ls", "--json"]).unwrap());
    assert_eq!(ls.as_array().unwrap().len(), 1);

    // Three nodes, a file with 3 replicas: no node may leave, and it stays.
    let out = c.p2p(&["leave", "--node", &c.nodes[0].addr]).unwrap();
    assert_one_line_error(&out, "cannot take this node's chunks");
    let mut c = c;
    assert!(c.nodes[0].is_running());
    c.wait_alive(3).unwrap();
}

// A tracker that is down, or that accepts connections but never answers,
// is a prompt error, never a hang.
#[test]
fn tracker_down_is_a_timely_error() {
    let start = Instant::now();
    let out = Command::new(p2p_bin())
        .args(["ls", "--tracker", &format!("http://{}", free_addr())])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unreachable");
    assert!(start.elapsed() < Duration::from_secs(10));

    // A listener that never accepts: TCP connects, nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let start = Instant::now();
    let out = Command::new(p2p_bin())
        .args([
            "status",
            "--timeout",
            "2s",
            "--tracker",
            &format!("http://{addr}"),
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, "unreachable");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
}

// A person at a node works at its prompt: put, ls, get, status, leave.
#[test]
fn node_shell_commands() {
    let c = Cluster::start(3).unwrap();
    let input = c.path("shell.bin");
    random_file(&input, 5 * MIB + 11, 7).unwrap();
    let out = c.path("shell.out");
    let data = c.path("shellnode");
    let mut node = Command::new(p2p_bin())
        .args([
            "node",
            "--listen",
            &free_addr(),
            "--data",
            data.to_str().unwrap(),
            "--tracker",
            &c.tracker_url(),
            "--heartbeat",
            "200ms",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.wait_alive(4).unwrap();
    let script = format!(
        "help\nput {} 2\nls\nget shell.bin {}\nstatus\nbogus\nleave\n",
        input.display(),
        out.display()
    );
    node.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = node.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("stored shell.bin"), "{stdout}");
    assert!(stdout.contains("2 replicas each"), "{stdout}");
    assert!(stdout.contains("wrote shell.bin"), "{stdout}");
    assert!(stdout.contains("unknown command"), "{stdout}");
    assert!(stdout.contains("left the network"), "{stdout}");
    assert!(same_bytes(&input, &out).unwrap());
    assert!(Path::new(&out).exists());
    // The node left: the tracker no longer lists it, and the file is still whole.
    assert_eq!(c.status().unwrap()["nodes"].as_array().unwrap().len(), 3);
    let again = c.path("shell.again");
    c.p2p_ok(&["get", "shell.bin", "-o", again.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &again).unwrap());
}

// Self-healing on real processes, counted on the nodes' disks: a graceful
// leave returns only when every chunk has 3 intact copies on the others; a
// SIGKILLed node's chunks are copied back to 3 within the dead-after time
// plus a few seconds; a corrupted replica is found by the scrubber, removed
// and replaced; `rm` deletes the chunks from every node.
#[test]
fn self_healing_leave_kill_bit_rot_and_rm() {
    let mut c = Cluster::start(6).unwrap();
    let input = c.path("f.bin");
    random_file(&input, 24 * MIB + 5, 11).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap(), "--replicas", "3"])
        .unwrap();
    let chunks = chunk_hexes(&input);
    assert_eq!(chunks.len(), 7);
    let mut live: Vec<usize> = (0..6).collect();
    assert!(intact(&c, &live, &chunks).iter().all(|&n| n == 3));

    // Graceful leave: when it returns, the others already hold 3 copies.
    let leaver = busiest(&c, &live);
    assert!(!c.nodes[leaver].chunk_files().is_empty());
    let addr = c.nodes[leaver].addr.clone();
    c.p2p_ok(&["leave", "--node", &addr]).unwrap();
    live.retain(|&i| i != leaver);
    let after_leave = intact(&c, &live, &chunks);
    assert!(after_leave.iter().all(|&n| n >= 3), "{after_leave:?}");
    c.nodes[leaver].wait_exit(Duration::from_secs(10)).unwrap();

    // SIGKILL: repair restores 3 copies on live nodes by itself.
    let victim = busiest(&c, &live);
    assert!(!c.nodes[victim].chunk_files().is_empty());
    c.kill_node(victim);
    live.retain(|&i| i != victim);
    let killed_at = Instant::now();
    let limit = Duration::from_secs(2 + 8); // dead-after plus a few seconds
    c.wait_until("repair after the kill", limit, |c| {
        let s = c.status()?;
        Ok(s["under_replicated"] == 0
            && s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["addr"] == c.nodes[victim].addr.as_str() && n["alive"] == false)
            && intact(c, &live, &chunks).iter().all(|&n| n >= 3))
    })
    .unwrap();
    eprintln!("factor restored {:?} after the kill", killed_at.elapsed());

    // Bit rot: flip one byte of one replica; the scrubber finds it and
    // repair makes a good copy again.
    let rotten = c.nodes[live[0]]
        .chunk_files()
        .into_iter()
        .next()
        .expect("a live node holds a chunk");
    let hex = rotten.file_name().unwrap().to_string_lossy().into_owned();
    let mut bytes = std::fs::read(&rotten).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(&rotten, &bytes).unwrap();
    let idx = chunks.iter().position(|h| *h == hex).unwrap();
    assert_eq!(intact(&c, &live, &chunks)[idx], 2);
    c.wait_until(
        "the corrupt replica to be replaced",
        Duration::from_secs(30),
        |c| {
            let copies = intact(c, &live, &chunks);
            let no_rot = live.iter().all(|&i| {
                c.nodes[i].chunk_files().iter().all(|f| {
                    f.file_name().unwrap().to_string_lossy() != hex || c.nodes[i].holds_intact(&hex)
                })
            });
            Ok(no_rot && copies[idx] >= 3 && c.status()?["under_replicated"] == 0)
        },
    )
    .unwrap();
    let out = c.path("f.out");
    c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());

    // rm: the file is gone and so are its chunks, on every live node.
    c.p2p_ok(&["rm", "f.bin"]).unwrap();
    c.wait_until("the chunks to be deleted", Duration::from_secs(10), |c| {
        Ok(intact(c, &live, &chunks).iter().all(|&n| n == 0))
    })
    .unwrap();
    assert_eq!(
        json(&c.p2p_ok(&["ls", "--json"]).unwrap()),
        serde_json::json!([])
    );
    let err = c.p2p(&["rm", "f.bin"]).unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no such file"));
}
