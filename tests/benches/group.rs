//! Benchmark: a tracker group next to a single tracker, in the same run
//! (real processes, release build, loopback, 4 nodes).
//!
//! - small puts (64 KiB, one chunk: the tracker's share of the work is
//!   largest) per second, and one large put's throughput, with one tracker
//!   and with a group of three;
//! - failover: the group's leader SIGKILLed, then puts until one succeeds:
//!   the time from the kill to that put's success, over several trials.
//!
//! Run: `cargo bench -p p2p-tests --bench group` (`BENCH_SIZE_MIB` sets the
//! large put, 256 by default here; `BENCH_TRIALS` the failovers, 5).

use std::time::{Duration, Instant};

use anyhow::Context;
use p2p_tests::floor::mbps;
use p2p_tests::{Cluster, random_file};

const MIB: u64 = 1024 * 1024;
const SMALL_PUTS: usize = 60;

/// Small puts per second and the large put's MB/s on `c`.
fn measure(c: &Cluster, tag: &str, large_mib: u64) -> anyhow::Result<(f64, f64)> {
    let small = c.path("small.bin");
    let t = Instant::now();
    for i in 0..SMALL_PUTS {
        random_file(&small, 64 * 1024, 1000 + i as u64)?;
        c.p2p_ok(&[
            "put",
            small.to_str().context("utf-8")?,
            "--name",
            &format!("{tag}-small-{i}"),
        ])?;
    }
    let ops = SMALL_PUTS as f64 / t.elapsed().as_secs_f64();
    let large = c.path("large.bin");
    random_file(&large, (large_mib * MIB) as usize, 7)?;
    let t = Instant::now();
    c.p2p_ok(&[
        "put",
        large.to_str().context("utf-8")?,
        "--name",
        &format!("{tag}-large"),
    ])?;
    let rate = mbps(large_mib * MIB, t.elapsed());
    std::fs::remove_file(&large)?;
    Ok((ops, rate))
}

fn main() -> anyhow::Result<()> {
    let large_mib: u64 = std::env::var("BENCH_SIZE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let bin = p2p_tests::build_p2p()?;
    eprintln!("p2p binary: {}", bin.display());

    let single = Cluster::start(4)?;
    let (single_ops, single_rate) = measure(&single, "single", large_mib)?;
    drop(single);
    let mut group = Cluster::start_group(3, 4)?;
    let (group_ops, group_rate) = measure(&group, "group", large_mib)?;

    let mut failovers = Vec::new();
    let probe = group.path("probe.bin");
    for trial in 0..trials {
        let leader = group.leader().context("no leader")?;
        let killed = Instant::now();
        group.kill_member(leader);
        let mut attempt = 0;
        loop {
            attempt += 1;
            random_file(&probe, 4096, 5000 + (trial * 100 + attempt) as u64)?;
            let out = group.p2p(&[
                "put",
                probe.to_str().context("utf-8")?,
                "--name",
                &format!("probe-{trial}-{attempt}"),
            ])?;
            if out.status.success() {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "no put succeeded within 60 s of the kill"
            );
        }
        failovers.push(killed.elapsed());
        group.start_member(leader)?;
        // Let it rejoin before the next trial.
        group.wait_until("three members", Duration::from_secs(30), |c| {
            Ok(c.status()?["trackers"]
                .as_array()
                .is_some_and(|t| t.iter().all(|m| m["role"] != "unreachable")))
        })?;
    }
    failovers.sort();

    println!("tracker group benchmark (loopback, 4 nodes, R=3, release build)");
    println!(
        "  64 KiB puts/s:   single {single_ops:.1}, group {group_ops:.1}  -> {:.2}x",
        group_ops / single_ops
    );
    println!(
        "  {large_mib} MiB put MB/s: single {single_rate:.0}, group {group_rate:.0}  -> {:.2}x",
        group_rate / single_rate
    );
    println!(
        "  failover (leader SIGKILL to the first successful put), {} trials: median {:?}, max {:?}",
        failovers.len(),
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1]
    );
    Ok(())
}
