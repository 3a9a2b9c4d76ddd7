//! End-to-end on the multi-host test bed: a tracker, 5 nodes and a client,
//! each in its own network namespace with its own address, links shaped to
//! 1 Gbit/s (see `p2p_tests::netbed`). Put, get, a SIGKILLed node, a node
//! cut off the network, repair: the bytes come back each time. Needs root
//! (CI runs as root); elsewhere it says so and does nothing.

use std::time::Duration;

use p2p_tests::netbed::{Links, NetCluster, available};
use p2p_tests::{random_file, same_bytes};

const MIB: usize = 1024 * 1024;

fn chunk_hexes(path: &std::path::Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    data.chunks(4 * MIB)
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect()
}

/// Intact copies of each chunk on the given nodes' disks.
fn intact(c: &NetCluster, nodes: &[usize], chunks: &[String]) -> Vec<usize> {
    chunks
        .iter()
        .map(|h| {
            nodes
                .iter()
                .filter(|&&i| c.nodes[i].holds_intact(h))
                .count()
        })
        .collect()
}

#[test]
fn put_get_kill_cut_and_repair_across_hosts() {
    if !available() {
        eprintln!("not run: the network test bed needs root (CI runs it as root)");
        return;
    }
    let mut c = NetCluster::start(5, &Links::rate("1gbit")).unwrap();
    let input = c.path("input.bin");
    let out = c.path("out.bin");
    random_file(&input, 24 * MIB + 1234, 11).unwrap();
    let chunks = chunk_hexes(&input);
    c.p2p_ok(&["put", input.to_str().unwrap(), "--name", "f"])
        .unwrap();
    // Acknowledged means 3 synced copies on 3 distinct hosts.
    assert!(
        intact(&c, &[0, 1, 2, 3, 4], &chunks)
            .iter()
            .all(|&n| n == 3)
    );
    c.p2p_ok(&["get", "f", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());

    // Cut node 0 off the network (its link down, the process alive): reads
    // go to the other hosts.
    c.bed.cut(1).unwrap();
    std::fs::remove_file(&out).unwrap();
    c.p2p_ok(&["get", "f", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
    c.bed.heal(1).unwrap();

    // SIGKILL node 1: still readable, and the tracker restores 3 copies on
    // the live hosts by itself.
    c.kill_node(1);
    std::fs::remove_file(&out).unwrap();
    c.p2p_ok(&["get", "f", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
    c.wait_until("3 copies on live hosts", Duration::from_secs(60), |c| {
        let s = c.status()?;
        Ok(s["under_replicated"] == 0 && intact(c, &[0, 2, 3, 4], &chunks).iter().all(|&n| n >= 3))
    })
    .unwrap();
    std::fs::remove_file(&out).unwrap();
    c.p2p_ok(&["get", "f", "-o", out.to_str().unwrap()])
        .unwrap();
    assert!(same_bytes(&input, &out).unwrap());
}
