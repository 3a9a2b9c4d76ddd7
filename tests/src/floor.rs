//! Physical floors for benchmarks, measured in the same run as the thing
//! they are compared with (these machines are noisy).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const MIB: u64 = 1024 * 1024;

/// Write `src` to `copies` new files in `dir`, each fsynced.
pub fn disk_floor(src: &Path, dir: &Path, copies: u32) -> anyhow::Result<Duration> {
    let mut buf = vec![0u8; 4 * MIB as usize];
    let start = Instant::now();
    for i in 0..copies {
        let mut input = std::fs::File::open(src)?;
        let dst = dir.join(format!("floor-{i}"));
        let mut out = std::fs::File::create(&dst)?;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        out.sync_all()?;
    }
    let t = start.elapsed();
    for i in 0..copies {
        std::fs::remove_file(dir.join(format!("floor-{i}")))?;
    }
    Ok(t)
}

/// Send `src` over a loopback TCP connection to a reader that discards it.
pub fn tcp_floor(src: &Path) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        std::io::copy(&mut s, &mut std::io::sink())
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let mut f = std::fs::File::open(src)?;
    std::io::copy(&mut f, &mut s)?;
    drop(s);
    let n = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let t = start.elapsed();
    if n != std::fs::metadata(src)?.len() {
        bail!("tcp floor moved {n} bytes");
    }
    Ok(t)
}

/// On a VM, the first write into never-touched guest memory is several
/// times slower than into memory used before, whichever step does it. Touch
/// most of the free memory once, through the page cache, before measuring.
pub fn warm_memory(dir: &Path) -> anyhow::Result<()> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let avail_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let bytes = (avail_kib * 1024)
        .saturating_sub(4 * 1024 * MIB)
        .min(16 * 1024 * MIB);
    let path = dir.join("warm");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0u8; 4 * MIB as usize];
    for _ in 0..bytes / block.len() as u64 {
        f.write_all(&block)?;
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(())
}

/// Throughput in MiB/s.
pub fn mbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / MIB as f64 / t.as_secs_f64()
}

/// The benchmark's file size in MiB: `BENCH_SIZE_MIB`, 1024 by default.
pub fn bench_size_mib() -> anyhow::Result<u64> {
    Ok(std::env::var("BENCH_SIZE_MIB")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("BENCH_SIZE_MIB must be a number")?
        .unwrap_or(1024))
}
