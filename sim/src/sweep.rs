//! Sweeps: many scenarios, summed in seed order.
//!
//! A scenario's run is a function of its seed only when nothing else in
//! the process spawns tokio tasks meanwhile (see `run::run`): tokio
//! numbers tasks from one process-wide counter. So a sweep on several
//! cores runs worker processes (`p2p-sim --worker`), each running the
//! seeds it is handed one after another, and puts their [`Outcome`]s back
//! in seed order: the totals, the coverage line and the failing seeds are
//! the same whatever the number of workers, and the same as `--seed S`
//! shows for each seed.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::coverage::{Counts, NAMES};
use crate::plan::Scenario;
use crate::run::{Report, SimConfig, run};

/// Workers a sweep uses unless told: one per core.
pub fn jobs_default() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a sweep keeps of one scenario's run: its counts, and its broken
/// invariants (the trace stays behind: a replay prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<String>,
    pub sim_ms: u64,
    pub acked_puts: usize,
    pub verified_reads: usize,
    pub expected_losses: usize,
    pub coverage: Counts,
}

impl Outcome {
    pub fn of(seed: u64, r: &Report) -> Outcome {
        Outcome {
            seed,
            violations: r.violations.clone(),
            sim_ms: r.sim_ms,
            acked_puts: r.acked_puts(),
            verified_reads: r.verified_reads(),
            expected_losses: r.expected_losses.len(),
            coverage: r.coverage.clone(),
        }
    }

    /// Run seed `seed`'s scenario.
    pub fn run(seed: u64, cfg: &SimConfig) -> Outcome {
        Outcome::of(seed, &run(&Scenario::from_seed(seed), cfg))
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// One line, as a worker prints it: `seed sim_ms puts reads losses`,
    /// a tab, the coverage as `name=count,...`, a tab, the violations
    /// separated by the unit separator (tabs and newlines in them become
    /// spaces).
    pub fn to_line(&self) -> String {
        let coverage: Vec<String> = self
            .coverage
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let violations: Vec<String> = self
            .violations
            .iter()
            .map(|v| v.replace(['\t', '\n', '\x1f'], " "))
            .collect();
        format!(
            "{} {} {} {} {}\t{}\t{}",
            self.seed,
            self.sim_ms,
            self.acked_puts,
            self.verified_reads,
            self.expected_losses,
            coverage.join(","),
            violations.join("\x1f")
        )
    }

    /// The outcome [`Outcome::to_line`] printed.
    pub fn from_line(line: &str) -> Result<Outcome, String> {
        let bad = || format!("not an outcome line: {line:?}");
        let mut parts = line.splitn(3, '\t');
        let (Some(head), Some(coverage), Some(violations)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let nums: Vec<u64> = head
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let [seed, sim_ms, puts, reads, losses] = nums[..] else {
            return Err(bad());
        };
        let mut counts = Counts::new();
        for kv in coverage.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            counts.insert(name(k), v.parse().map_err(|_| bad())?);
        }
        Ok(Outcome {
            seed,
            violations: violations
                .split('\x1f')
                .filter(|v| !v.is_empty())
                .map(String::from)
                .collect(),
            sim_ms,
            acked_puts: puts as usize,
            verified_reads: reads as usize,
            expected_losses: losses as usize,
            coverage: counts,
        })
    }
}

/// The name `k` as the coverage counts keep names: one of
/// [`NAMES`], or (a count the line does not show) kept once per process.
fn name(k: &str) -> &'static str {
    static OTHERS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    if let Some(n) = NAMES.iter().find(|n| **n == k) {
        return n;
    }
    let mut others = OTHERS.lock().expect("coverage names");
    match others.get(k) {
        Some(n) => n,
        None => {
            let n: &'static str = Box::leak(k.to_string().into_boxed_str());
            others.insert(n);
            n
        }
    }
}

/// A sweep's totals, added up in seed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub scenarios: u64,
    pub sim_ms: u64,
    pub acked_puts: usize,
    pub verified_reads: usize,
    pub expected_losses: usize,
    pub coverage: Counts,
    /// The failing seeds, in order, with their broken invariants.
    pub failed: Vec<(u64, Vec<String>)>,
}

impl Totals {
    pub fn add(&mut self, o: Outcome) {
        self.scenarios += 1;
        self.sim_ms += o.sim_ms;
        self.acked_puts += o.acked_puts;
        self.verified_reads += o.verified_reads;
        self.expected_losses += o.expected_losses;
        for (k, v) in o.coverage {
            *self.coverage.entry(k).or_default() += v;
        }
        if !o.violations.is_empty() {
            self.failed.push((o.seed, o.violations));
        }
    }

    /// The totals of `outcomes`, in seed order whatever their order.
    pub fn of(mut outcomes: Vec<Outcome>) -> Totals {
        outcomes.sort_by_key(|o| o.seed);
        let mut t = Totals::default();
        for o in outcomes {
            t.add(o);
        }
        t
    }
}
