//! `p2p-sim`: replay one scenario, or run many and summarize.
//!
//! - `--seed S`: run the scenario generated from seed S and print its trace.
//! - `--plan 'TEXT'`: run exactly this scenario (as printed by a failing test).
//! - `--seeds N [--first K] [--jobs J]`: run seeds K..K+N in J worker
//!   processes (default: one per core), print a summary with the failing
//!   seeds; exit non-zero if any failed. The summary does not depend on J.
//! - With `--features mutants`: `--mutant NAME` plants that bug for any of
//!   the above; `--mutants [--first K] [--limit N] [--jobs J]` runs each
//!   planted bug on seeds K.. until one catches it (at most N, default
//!   2000), prints the catching seed and its replay line, and exits 0 only
//!   if every bug was caught.
//! - `--worker` (what a sweep starts): reads lines `SEED [BUG]` on standard
//!   input and answers each with one outcome line (`sweep::Outcome`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use p2p_sim::plan::Scenario;
use p2p_sim::run::{Report, SimConfig, run};
use p2p_sim::sweep::{Outcome, Totals};

struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = turmoil::sim_elapsed().unwrap_or_default();
        write!(w, "{:>6}ms", t.as_millis())
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: p2p-sim --seed S | --plan 'TEXT' | --seeds N [--first K] [--jobs J]   (with --features mutants: [--mutant NAME] ... | --mutants [--first K] [--limit N] [--jobs J])"
    );
    ExitCode::from(2)
}

/// Answer `SEED [BUG]` lines on standard input with outcome lines, until
/// it closes.
fn worker(cfg: &SimConfig) -> ExitCode {
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let Some(Ok(seed)) = words.next().map(str::parse::<u64>) else {
            eprintln!("error: a worker takes lines `SEED [BUG]`, not {line:?}");
            return ExitCode::from(2);
        };
        #[cfg(feature = "mutants")]
        p2p_core::mutants::set(words.next().and_then(p2p_core::mutants::Mutant::from_name));
        let out = Outcome::run(seed, cfg).to_line();
        let mut w = stdout.lock();
        if writeln!(w, "{out}").and_then(|()| w.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// One worker process and its pipes.
struct Worker {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn start() -> std::io::Result<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("worker without pipes"));
        };
        Ok(Worker {
            child,
            to,
            from: BufReader::new(from),
        })
    }

    fn run(&mut self, seed: u64, bug: &str) -> Option<Outcome> {
        writeln!(self.to, "{seed} {bug}").ok()?;
        self.to.flush().ok()?;
        let mut line = String::new();
        self.from.read_line(&mut line).ok()?;
        Outcome::from_line(line.trim_end_matches('\n')).ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcomes of `seeds`, with planted bug `bug` (a name, or "" for
/// none), in this process when `jobs` is 1 and in `jobs` worker processes
/// otherwise. A worker that dies (a panic in a run) fails its seed and is
/// replaced.
fn outcomes(seeds: &[u64], jobs: usize, bug: &str, cfg: &SimConfig) -> Vec<Outcome> {
    if jobs <= 1 {
        return seeds.iter().map(|&seed| Outcome::run(seed, cfg)).collect();
    }
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(seeds.len()) {
            scope.spawn(|| {
                let mut worker = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { return };
                    if worker.is_none() {
                        worker = Worker::start().ok();
                    }
                    let out = worker.as_mut().and_then(|w| w.run(seed, bug));
                    let out = out.unwrap_or_else(|| {
                        worker = None;
                        Outcome {
                            seed,
                            violations: vec![format!(
                                "the simulator's worker process died running this seed (replay it: cargo run -p p2p-sim --release -- --seed {seed})"
                            )],
                            sim_ms: 0,
                            acked_puts: 0,
                            verified_reads: 0,
                            expected_losses: 0,
                            coverage: Default::default(),
                        }
                    });
                    done.lock().expect("outcomes").push(out);
                }
            });
        }
    });
    let mut done = done.into_inner().expect("outcomes");
    done.sort_by_key(|o| o.seed);
    done
}

/// Run every planted bug on seeds from `first` until one catches it, in
/// batches of seeds run on `jobs` workers. A batch's first catching seed is
/// the first in seed order, as a sequential search would find it.
#[cfg(feature = "mutants")]
fn run_mutants(first: u64, limit: u64, jobs: usize, cfg: &SimConfig) -> ExitCode {
    use p2p_core::mutants::{self, Mutant};
    let started = Instant::now();
    let mut caught = 0;
    let mut seeds_needed = 0;
    // A seed that fails without any planted bug catches nothing: it is
    // the product's failure, reported, and skipped.
    let mut fails_anyway: std::collections::BTreeMap<u64, bool> = Default::default();
    // Small batches first: many bugs are caught within a few seeds.
    let batch_max = (jobs as u64 * 16).max(1);
    for &m in Mutant::ALL {
        let t = Instant::now();
        let (mut next, end) = (first, first + limit);
        let mut batch = (jobs as u64).max(1);
        let mut hit = None;
        while hit.is_none() && next < end {
            let seeds: Vec<u64> = (next..(next + batch).min(end)).collect();
            next += seeds.len() as u64;
            batch = (batch * 2).min(batch_max);
            // In this process (one job) the bug is switched here.
            mutants::set(Some(m));
            let failing: Vec<u64> = outcomes(&seeds, jobs, m.name(), cfg)
                .into_iter()
                .filter(|o| !o.passed())
                .map(|o| o.seed)
                .collect();
            mutants::set(None);
            let unknown: Vec<u64> = failing
                .iter()
                .copied()
                .filter(|s| !fails_anyway.contains_key(s))
                .collect();
            for o in outcomes(&unknown, jobs, "", cfg) {
                let anyway = !o.passed();
                fails_anyway.insert(o.seed, anyway);
                if anyway {
                    println!(
                        "seed {} fails without any planted bug: cargo run -p p2p-sim --release -- --seed {}",
                        o.seed, o.seed
                    );
                }
            }
            hit = failing.into_iter().find(|s| !fails_anyway[s]);
        }
        match hit {
            Some(seed) => {
                caught += 1;
                seeds_needed += seed - first + 1;
                println!(
                    "{:<28} caught by seed {seed} ({} seeds, {:.1} s); replay: cargo run -p p2p-sim --release --features mutants -- --mutant {} --seed {seed}",
                    m.name(),
                    seed - first + 1,
                    t.elapsed().as_secs_f64(),
                    m.name()
                );
            }
            None => println!("{:<28} SURVIVED seeds {first}..{end}", m.name()),
        }
    }
    mutants::set(None);
    let failing: Vec<u64> = fails_anyway
        .iter()
        .filter(|(_, f)| **f)
        .map(|(s, _)| *s)
        .collect();
    println!(
        "mutation score: {caught}/{} planted bugs caught from seed {first}, {seeds_needed} seeds in all, {:.1} s on {jobs} workers",
        Mutant::ALL.len(),
        started.elapsed().as_secs_f64()
    );
    if !failing.is_empty() {
        println!("seeds that fail without any planted bug (the product's failures): {failing:?}");
    }
    if caught == Mutant::ALL.len() && failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(s: &Scenario, r: &Report) {
    println!("scenario: {s}");
    for line in &r.trace {
        println!("{line}");
    }
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    println!(
        "result: {} ({} simulated ms, {} violations, {} expected losses)",
        if r.passed() { "pass" } else { "FAIL" },
        r.sim_ms,
        r.violations.len(),
        r.expected_losses.len()
    );
}

fn main() -> ExitCode {
    // Counts the services' events for the coverage line; RUST_LOG=debug
    // also shows what every host does, stamped with simulated time.
    p2p_sim::coverage::install(SimTime);
    if !p2p_sim::deterministic() {
        eprintln!(
            "warning: built without --cfg tokio_unstable (a RUSTFLAGS in the environment replaces .cargo/config.toml's): the same seed may run differently twice"
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let cfg = SimConfig::default();
    if args.iter().any(|a| a == "--worker") {
        return worker(&cfg);
    }
    let jobs = match get("--jobs").map(|j| j.parse::<usize>()) {
        None => p2p_sim::sweep::jobs_default(),
        Some(Ok(j)) if j > 0 => j,
        Some(_) => return usage(),
    };
    #[cfg(feature = "mutants")]
    {
        if let Some(name) = get("--mutant") {
            let Some(m) = p2p_core::mutants::Mutant::from_name(name) else {
                eprintln!("error: no planted bug named {name:?}");
                return ExitCode::from(2);
            };
            p2p_core::mutants::set(Some(m));
        }
        if args.iter().any(|a| a == "--mutants") {
            let num =
                |flag: &str, default: u64| get(flag).map_or(Ok(default), |v| v.parse::<u64>());
            let (Ok(first), Ok(limit)) = (num("--first", 0), num("--limit", 2000)) else {
                return usage();
            };
            return run_mutants(first, limit, jobs, &cfg);
        }
    }
    if let Some(seed) = get("--seed") {
        let Ok(seed) = seed.parse::<u64>() else {
            return usage();
        };
        let s = Scenario::from_seed(seed);
        let r = run(&s, &cfg);
        print_report(&s, &r);
        return if r.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Some(text) = get("--plan") {
        let s: Scenario = match text.parse() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot parse the plan: {e}");
                return ExitCode::from(2);
            }
        };
        let r = run(&s, &cfg);
        print_report(&s, &r);
        return if r.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if let Some(n) = get("--seeds") {
        let Ok(n) = n.parse::<u64>() else {
            return usage();
        };
        let first = match get("--first").map(|k| k.parse::<u64>()) {
            None => 0,
            Some(Ok(k)) => k,
            Some(Err(_)) => return usage(),
        };
        let started = Instant::now();
        // A bug planted with --mutant: the workers plant it too.
        #[cfg(feature = "mutants")]
        let bug = p2p_core::mutants::active().map_or("", |m| m.name());
        #[cfg(not(feature = "mutants"))]
        let bug = "";
        let seeds: Vec<u64> = (first..first + n).collect();
        let t = Totals::of(outcomes(&seeds, jobs, bug, &cfg));
        for (seed, violations) in &t.failed {
            println!("FAIL seed {seed}: {}", violations.join("; "));
            println!("  replay: cargo run -p p2p-sim --release -- --seed {seed}");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{n} scenarios (seeds {first}..{}), {} passed, {} failed; {:.1} scenarios/s on {jobs} workers, {:.0} simulated s in {:.1} s; {} acknowledged puts, {} verified reads, {} expected losses",
            first + n,
            n as usize - t.failed.len(),
            t.failed.len(),
            n as f64 / secs,
            t.sim_ms as f64 / 1000.0,
            secs,
            t.acked_puts,
            t.verified_reads,
            t.expected_losses
        );
        println!("coverage: {}", p2p_sim::coverage::line(&t.coverage));
        if !t.failed.is_empty() {
            let seeds: Vec<u64> = t.failed.iter().map(|(s, _)| *s).collect();
            println!("failing seeds: {seeds:?}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    usage()
}
