//! `p2p-sim`: replay one scenario, or run many and summarize.
//!
//! - `--seed S`: run the scenario generated from seed S and print its trace.
//! - `--plan 'TEXT'`: run exactly this scenario (as printed by a failing test).
//! - `--seeds N [--first K]`: run seeds K..K+N, print a summary with the
//!   failing seeds; exit non-zero if any failed.
//! - With `--features mutants`: `--mutant NAME` plants that bug for any of
//!   the above; `--mutants [--first K] [--limit N]` runs each planted bug on
//!   seeds K.. until one catches it (at most N, default 2000), prints the
//!   catching seed and its replay line, and exits 0 only if every bug was
//!   caught.

use std::process::ExitCode;
use std::time::Instant;

use p2p_sim::plan::Scenario;
use p2p_sim::run::{Report, SimConfig, run};

struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = turmoil::sim_elapsed().unwrap_or_default();
        write!(w, "{:>6}ms", t.as_millis())
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: p2p-sim --seed S | --plan 'TEXT' | --seeds N [--first K]   (with --features mutants: [--mutant NAME] ... | --mutants [--first K] [--limit N])"
    );
    ExitCode::from(2)
}

/// Run every planted bug on seeds from `first` until one catches it.
#[cfg(feature = "mutants")]
fn run_mutants(first: u64, limit: u64, cfg: &SimConfig) -> ExitCode {
    use p2p_core::mutants::{self, Mutant};
    let started = Instant::now();
    let mut caught = 0;
    let mut seeds_needed = 0;
    // A seed that fails without any planted bug catches nothing: it is
    // the product's failure, reported, and skipped.
    let mut fails_anyway: std::collections::BTreeMap<u64, bool> = Default::default();
    let mut catches = |seed: u64| {
        if run(&Scenario::from_seed(seed), cfg).passed() {
            return false;
        }
        if let Some(&anyway) = fails_anyway.get(&seed) {
            return !anyway;
        }
        let active = mutants::active();
        mutants::set(None);
        let anyway = !run(&Scenario::from_seed(seed), cfg).passed();
        mutants::set(active);
        fails_anyway.insert(seed, anyway);
        if anyway {
            println!(
                "seed {seed} fails without any planted bug: cargo run -p p2p-sim --release -- --seed {seed}"
            );
        }
        !anyway
    };
    for &m in Mutant::ALL {
        mutants::set(Some(m));
        let t = Instant::now();
        let hit = (first..first + limit).find(|&seed| catches(seed));
        match hit {
            Some(seed) => {
                caught += 1;
                seeds_needed += seed - first + 1;
                println!(
                    "{:<26} caught by seed {seed} ({} seeds, {:.1} s); replay: cargo run -p p2p-sim --release --features mutants -- --mutant {} --seed {seed}",
                    m.name(),
                    seed - first + 1,
                    t.elapsed().as_secs_f64(),
                    m.name()
                );
            }
            None => println!("{:<26} SURVIVED seeds {first}..{}", m.name(), first + limit),
        }
    }
    mutants::set(None);
    let failing: Vec<u64> = fails_anyway
        .iter()
        .filter(|(_, f)| **f)
        .map(|(s, _)| *s)
        .collect();
    println!(
        "mutation score: {caught}/{} planted bugs caught, {seeds_needed} seeds in all, {:.1} s",
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
            return run_mutants(first, limit, &cfg);
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
        let mut failed = Vec::new();
        let (mut losses, mut sim_ms, mut puts, mut reads) = (0, 0, 0, 0);
        let mut coverage = p2p_sim::coverage::Counts::new();
        for seed in first..first + n {
            let s = Scenario::from_seed(seed);
            let r = run(&s, &cfg);
            sim_ms += r.sim_ms;
            puts += r.acked_puts();
            reads += r.verified_reads();
            losses += r.expected_losses.len();
            for (k, v) in &r.coverage {
                *coverage.entry(k).or_default() += v;
            }
            if !r.passed() {
                println!("FAIL seed {seed}: {}", r.violations.join("; "));
                println!("  replay: cargo run -p p2p-sim --release -- --seed {seed}");
                failed.push(seed);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{n} scenarios (seeds {first}..{}), {} passed, {} failed; {:.1} scenarios/s, {:.0} simulated s in {:.1} s; {puts} acknowledged puts, {reads} verified reads, {losses} expected losses",
            first + n,
            n as usize - failed.len(),
            failed.len(),
            n as f64 / secs,
            sim_ms as f64 / 1000.0,
            secs
        );
        println!("coverage: {}", p2p_sim::coverage::line(&coverage));
        if !failed.is_empty() {
            println!("failing seeds: {failed:?}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    usage()
}
