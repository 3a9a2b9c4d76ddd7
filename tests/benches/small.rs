//! Benchmark: small files, as people use the CLI: one `p2p` process per
//! operation, 64 KiB files with R=3 on a local 4-node cluster, one at a
//! time and 16 at once, next to the floor measured in the same run on the
//! same disk: one durable small-file write (write, fsync, rename), one at
//! a time and 16 at once.
//!
//! Run: `cargo bench -p p2p-tests --bench small` (`BENCH_OPS`, default 96).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p_tests::{Cluster, build_p2p, p2p_bin, random_file};

const SIZE: usize = 64 * 1024;
const AT_ONCE: usize = 16;

/// One durable small-file write: a temporary file written and synced,
/// renamed into place, its directory synced.
fn durable_write(dir: &Path, i: usize, data: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".floor-{i}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(format!("floor-{i}")))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Operations per second of `op(i)` for `i` in `0..n`, `at_once` at a time.
fn rate(
    n: usize,
    at_once: usize,
    op: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..at_once)
            .map(|w| {
                let op = &op;
                s.spawn(move || -> anyhow::Result<()> {
                    for i in (w..n).step_by(at_once) {
                        op(i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn run(c: &Cluster, args: &[&str]) -> anyhow::Result<()> {
    let child: Child = Command::new(p2p_bin())
        .args(args)
        .env("P2P_TRACKER", c.tracker_url())
        .env("P2P_CONFIG", c.path("no-config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "p2p {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_OPS")
        .unwrap_or_else(|_| "96".into())
        .parse()
        .context("BENCH_OPS")?;
    build_p2p()?;
    let c = Cluster::start(4)?;
    let input = c.path("small.bin");
    random_file(&input, SIZE, 5)?;
    let data = std::fs::read(&input)?;
    let floor_dir = c.path("floor");
    std::fs::create_dir_all(&floor_dir)?;
    let input = input.to_str().context("utf-8")?;
    let out_dir = c.path("out");
    std::fs::create_dir_all(&out_dir)?;
    let out = |i: usize| out_dir.join(format!("o{i}")).display().to_string();

    // Warm up: connections, page cache, the binary.
    run(&c, &["put", input, "--name", "warm"])?;
    run(&c, &["get", "warm", "-o", &out(0)])?;

    let mut rows = Vec::new();
    for (label, at_once) in [("one at a time", 1), ("16 at once", AT_ONCE)] {
        let floor = rate(n, at_once, |i| durable_write(&floor_dir, i, &data))?;
        let put = rate(n, at_once, |i| {
            run(&c, &["put", input, "--name", &format!("s{at_once}-{i}")])
        })?;
        let get = rate(n, at_once, |i| {
            run(&c, &["get", &format!("s{at_once}-{i}"), "-o", &out(i)])
        })?;
        for i in 0..n {
            if std::fs::read(out(i))? != data {
                bail!("get {i} returned different bytes");
            }
            std::fs::remove_file(out(i))?;
        }
        rows.push((label, floor, put, get));
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{n} operations each, 64 KiB files, R=3, one p2p process per operation");
    println!(
        "{:<15} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "", "floor op/s", "put op/s", "get op/s", "put/floor", "get/floor"
    );
    for (label, floor, put, get) in rows {
        println!(
            "{label:<15} {floor:>12.1} {put:>10.1} {get:>10.1} {:>8.2}x {:>8.2}x",
            put / floor,
            get / floor
        );
    }
    println!(
        "(floor: one durable write of the same bytes: write, fsync, rename, fsync of the directory)"
    );
    Ok(())
}
