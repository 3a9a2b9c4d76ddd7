//! Benchmark: time to restore R copies after a node is lost. A 5-node
//! cluster (real processes, release build) stores a large file with R=3;
//! the node holding the most chunks is SIGKILLed; the clock runs until the
//! tracker reports nothing under-replicated and the live nodes' disks hold
//! 3 copies of every chunk again. Next to it, in the same run: a plain TCP
//! copy over loopback of as many bytes as the lost node held, and writing
//! them once with fsync (what a repair must at least do).
//!
//! Run: `cargo bench -p p2p-tests --bench repair` (1 GiB by default;
//! `BENCH_SIZE_MIB=256` for a quicker run).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p_tests::floor::{bench_size_mib, disk_floor, mbps, tcp_floor, warm_memory};
use p2p_tests::{Cluster, random_file};

const MIB: u64 = 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let size_mib = bench_size_mib()?;
    let bin = p2p_tests::build_p2p()?;
    eprintln!("p2p binary: {}", bin.display());
    let mut c = Cluster::start(5)?;
    let input = c.path("bench.bin");
    eprintln!("writing {size_mib} MiB of random input...");
    random_file(&input, (size_mib * MIB) as usize, 7)?;
    eprintln!("warming memory...");
    warm_memory(c.dir.path())?;
    c.p2p_ok(&["put", input.to_str().context("utf-8")?, "--replicas", "3"])?;

    // The node with the most chunks is the one to lose.
    let victim = (0..c.nodes.len())
        .max_by_key(|&i| c.nodes[i].chunk_files().len())
        .context("no nodes")?;
    let lost: Vec<_> = c.nodes[victim].chunk_files();
    let lost_bytes: u64 = lost
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();

    // Floors for the same number of bytes, measured now.
    let sample = c.path("lost.bin");
    random_file(&sample, lost_bytes as usize, 8)?;
    unsafe { libc::sync() };
    let tcp = tcp_floor(&sample)?;
    unsafe { libc::sync() };
    let disk = disk_floor(&sample, c.dir.path(), 1)?;
    std::fs::remove_file(&sample)?;
    unsafe { libc::sync() };

    let victim_addr = c.nodes[victim].addr.clone();
    let killed = Instant::now();
    c.kill_node(victim);
    let live: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != victim).collect();
    let mut declared_dead = None;
    let limit = Duration::from_secs(600);
    loop {
        if killed.elapsed() > limit {
            bail!("repair did not finish within {limit:?}");
        }
        let s = c.status()?;
        let dead = s["nodes"]
            .as_array()
            .context("nodes")?
            .iter()
            .any(|n| n["addr"] == victim_addr.as_str() && n["alive"] == false);
        if dead && declared_dead.is_none() {
            declared_dead = Some(killed.elapsed());
        }
        if dead && s["under_replicated"] == 0 && s["repairs_in_flight"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = killed.elapsed();
    let detect = declared_dead.unwrap_or_default();
    let repair = total - detect;

    // Count on the disks: every chunk is on 3 live nodes again.
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &live {
        for f in c.nodes[i].chunk_files() {
            *copies
                .entry(f.file_name().unwrap_or_default().to_string_lossy().into())
                .or_default() += 1;
        }
    }
    let short = copies.values().filter(|&&n| n < 3).count();
    if short > 0 || copies.len() as u64 != size_mib.div_ceil(4) {
        bail!(
            "after repair {short} of {} chunks have fewer than 3 copies on disk",
            copies.len()
        );
    }

    println!(
        "repair benchmark: {size_mib} MiB file, 5 nodes, R=3; the lost node held {:.0} MiB in {} chunks",
        lost_bytes as f64 / MIB as f64,
        lost.len()
    );
    println!("{:<40} {:>10} {:>10}", "", "seconds", "MiB/s");
    let row = |name: &str, t: Duration| {
        println!(
            "{name:<40} {:>10.2} {:>10.1}",
            t.as_secs_f64(),
            mbps(lost_bytes, t)
        );
    };
    row("floor: tcp copy over loopback", tcp);
    row("floor: write once + fsync", disk);
    row("detection (kill -> declared dead)", detect);
    row("repair (declared dead -> R restored)", repair);
    row("total (kill -> R restored)", total);
    let floor = tcp.max(disk);
    println!(
        "repair vs floor: {:.2}x (floor time / repair time; the floor is the slower of tcp and disk)",
        floor.as_secs_f64() / repair.as_secs_f64()
    );
    Ok(())
}
