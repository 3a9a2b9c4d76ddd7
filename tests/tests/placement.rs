//! Placement on real processes: failure domains (`--zone`), capacity
//! (`--capacity`) and what-if questions (`status --what-if`). Every test
//! checks copies on the nodes' disks and the bytes that come back.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use p2p_tests::{Cluster, random_file, same_bytes};

const MIB: usize = 1024 * 1024;

/// The BLAKE3 hex of each 4 MiB chunk of `path`.
fn chunk_hexes(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    data.chunks(4 * MIB)
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// For each chunk, the zones of the nodes in `live` holding it intact (a
/// zone once per copy, sorted).
fn zones_of(c: &Cluster, zone: &[&str], live: &[usize], chunks: &[String]) -> Vec<Vec<String>> {
    chunks
        .iter()
        .map(|h| {
            let mut z: Vec<String> = live
                .iter()
                .filter(|&&i| c.nodes[i].holds_intact(h))
                .map(|&i| zone[i].to_string())
                .collect();
            z.sort();
            z
        })
        .collect()
}

// Three zones of two nodes: every chunk has one copy in each zone. What-if
// answers what losing a zone, or everything, would do. A whole zone is
// SIGKILLed: the file reads back, and every chunk is back at three copies
// on the other two zones. The zone returns (one node wiped, one with its
// disk): copies move back until each chunk has one copy per zone again.
#[test]
fn a_zone_dies_and_returns() {
    let mut c = Cluster::start(0).unwrap();
    let zone = ["a", "a", "b", "b", "c", "c"];
    for (i, z) in zone.iter().enumerate() {
        let data = c.dir.path().join(format!("node{i}"));
        c.add_node_with(data, &["--zone", z]).unwrap();
    }
    c.wait_alive(6).unwrap();
    let status = c.status().unwrap();
    let zones: BTreeSet<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, BTreeSet::from(["a", "b", "c"]));

    let input = c.path("f.bin");
    random_file(&input, 24 * MIB + 5, 11).unwrap();
    c.p2p_ok(&["put", input.to_str().unwrap()]).unwrap();
    let chunks = chunk_hexes(&input);
    let all: Vec<usize> = (0..6).collect();
    let one_each = vec![vec!["a".to_string(), "b".into(), "c".into()]; chunks.len()];
    assert_eq!(zones_of(&c, &zone, &all, &chunks), one_each);

    // What-if, by address and by id.
    let a0 = c.nodes[0].addr.clone();
    let a1_id = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"] == c.nodes[1].addr.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let w = json(
        &c.p2p_ok(&["status", "--what-if", &format!("{a0},{a1_id}"), "--json"])
            .unwrap(),
    );
    assert_eq!(w["lost"], serde_json::json!([]));
    assert_eq!(w["at_risk"], serde_json::json!(["f.bin"]));
    let everyone: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let w = json(
        &c.p2p_ok(&["status", "--what-if", &everyone.join(","), "--json"])
            .unwrap(),
    );
    assert_eq!(w["lost"], serde_json::json!(["f.bin"]));
    let out = c.p2p(&["status", "--what-if", "10.9.9.9:1"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no node"), "{err}");

    // Zone a dies.
    c.kill_node(0);
    c.kill_node(1);
    let out = c.path("f.out");
    c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
    let rest = [2, 3, 4, 5];
    c.wait_until(
        "three copies of every chunk on zones b and c",
        Duration::from_secs(60),
        |c| {
            Ok(zones_of(c, &zone, &rest, &chunks)
                .iter()
                .all(|z| z.len() == 3))
        },
    )
    .unwrap();

    // Zone a comes back: node 0 on an empty disk, node 1 with its copies.
    std::fs::remove_dir_all(c.nodes[0].data.join("chunks")).unwrap();
    c.restart_node(0).unwrap();
    c.restart_node(1).unwrap();
    c.wait_alive(6).unwrap();
    c.wait_until(
        "one copy of every chunk in each zone again",
        Duration::from_secs(90),
        |c| Ok(zones_of(c, &zone, &all, &chunks) == one_each),
    )
    .unwrap();
    std::fs::remove_file(&out).unwrap();
    c.p2p_ok(&["get", "f.bin", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
}

// Three nodes that each offer 9 MiB: an 8 MiB file (two chunks) fits; then
// nobody has room for another 4 MiB chunk, and a put of one fails with one
// clear line while a small file still goes in; `status` shows each node's
// use and warns that the cluster could not absorb a node's loss.
#[test]
fn nodes_are_never_filled_past_their_capacity() {
    let mut c = Cluster::start(0).unwrap();
    for i in 0..3 {
        let data = c.dir.path().join(format!("node{i}"));
        c.add_node_with(data, &["--capacity", "9MiB"]).unwrap();
    }
    c.wait_alive(3).unwrap();
    let big = c.path("big.bin");
    random_file(&big, 8 * MIB, 21).unwrap();
    c.p2p_ok(&["put", big.to_str().unwrap()]).unwrap();
    // Every node reports what it holds with its next heartbeat.
    c.wait_until(
        "every node to report 8 MiB used",
        Duration::from_secs(20),
        |c| {
            let s = c.status()?;
            Ok(s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["used"] == serde_json::json!(8 * MIB)))
        },
    )
    .unwrap();
    let s = c.status().unwrap();
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(n["capacity"], serde_json::json!(9 * MIB), "{n}");
    }
    let warnings = s["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("free to restore")),
        "{s}"
    );
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("3 live nodes for files of factor 3")),
        "{s}"
    );

    let more = c.path("more.bin");
    random_file(&more, 4 * MIB, 22).unwrap();
    let out = c.p2p(&["put", more.to_str().unwrap()]).unwrap();
    assert!(!out.status.success(), "a put past every node's capacity");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no room"), "{err}");

    let small = c.path("small.bin");
    random_file(&small, 100 * 1024, 23).unwrap();
    c.p2p_ok(&["put", small.to_str().unwrap()]).unwrap();
    for name in ["big.bin", "small.bin"] {
        let out = c.path(&format!("{name}.out"));
        c.p2p_ok(&["get", name, "-o", out.to_str().unwrap()])
            .unwrap();
        assert!(same_bytes(&c.path(name), &out).unwrap());
    }
    for n in &c.nodes {
        let bytes: u64 = n
            .chunk_files()
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert!(bytes <= 9 * MIB as u64, "{bytes} bytes on {}", n.addr);
    }
}
