//! Benchmark on the multi-host test bed (root needed): a tracker, 5 nodes
//! and a client, each in its own network namespace, links shaped to a
//! rate. `p2p put` (R=3) and `p2p get` of one file from the client's host,
//! next to the floor measured in the same run: a plain TCP copy of the same
//! bytes between two of the bed's hosts.
//!
//! Run: `sudo cargo bench -p p2p-tests --bench netbed`. `BENCH_SIZE_MIB`
//! (default 256), `NETBED_RATES` (default `1gbit,500mbit`: at 1 Gbit/s the
//! bed's shared disk, which takes every host's three copies, is near its
//! own floor; at 500 Mbit/s the network alone binds), `NETBED_DELAY` (a
//! one-way delay per link such as `1ms`; needs netem), `BENCH_RUNS`
//! (default 3, medians reported).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p_tests::netbed::{Links, NetCluster};
use p2p_tests::{build_p2p, random_file, same_bytes};

const MIB: u64 = 1024 * 1024;
const NODES: usize = 5;

fn mbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed(f: impl FnOnce() -> anyhow::Result<String>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn main() -> anyhow::Result<()> {
    if !p2p_tests::netbed::available() {
        bail!("the test bed needs root: sudo cargo bench -p p2p-tests --bench netbed");
    }
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let size_mib: u64 = env("BENCH_SIZE_MIB", "256")
        .parse()
        .context("BENCH_SIZE_MIB")?;
    let runs: usize = env("BENCH_RUNS", "3").parse().context("BENCH_RUNS")?;
    let delay = std::env::var("NETBED_DELAY").ok();
    build_p2p()?;
    let bytes = size_mib * MIB;
    println!(
        "test bed: tracker, {NODES} nodes, client, each in its own namespace; {size_mib} MiB, R=3, {runs} runs (medians); delay {}",
        delay.as_deref().unwrap_or("none")
    );
    println!(
        "{:<10} {:>14} {:>14} {:>14} {:>9} {:>9}",
        "link", "tcp MB/s", "put MB/s", "get MB/s", "put/tcp", "get/tcp"
    );
    for rate in env("NETBED_RATES", "1gbit,500mbit").split(',') {
        let links = Links {
            rate: rate.to_string(),
            delay: delay.clone(),
        };
        let c = NetCluster::start(NODES, &links)?;
        let input = c.path("input.bin");
        let out = c.path("out.bin");
        random_file(&input, bytes as usize, 7)?;
        let arg = |p: &std::path::Path| p.to_str().context("utf-8").map(str::to_string);
        let (mut tcp, mut puts, mut gets) = (vec![], vec![], vec![]);
        for run in 0..runs {
            // Between two node hosts, as a chunk travels.
            tcp.push(c.bed.tcp_copy(1, 2, bytes)?);
            let name = format!("bench{run}");
            puts.push(timed(|| {
                c.p2p_ok(&["put", &arg(&input)?, "--name", &name, "--replicas", "3"])
            })?);
            gets.push(timed(|| c.p2p_ok(&["get", &name, "-o", &arg(&out)?]))?);
            if !same_bytes(&input, &out)? {
                bail!("get returned different bytes");
            }
            std::fs::remove_file(&out)?;
        }
        let (tcp, put, get) = (median(&mut tcp), median(&mut puts), median(&mut gets));
        println!(
            "{:<10} {:>14.1} {:>14.1} {:>14.1} {:>8.2}x {:>8.2}x",
            rate,
            mbps(bytes, tcp),
            mbps(bytes, put),
            mbps(bytes, get),
            tcp.as_secs_f64() / put.as_secs_f64(),
            tcp.as_secs_f64() / get.as_secs_f64()
        );
    }
    println!("(x = tcp copy time / operation time: 1.00x matches a plain copy between two hosts)");
    Ok(())
}
