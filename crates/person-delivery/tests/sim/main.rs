//! Deterministic simulation of the delivery core against a model of a JetStream
//! consumer: seeded schedules of failures, panics, hung handlers, DLQ outages,
//! breaker outages, crashes, graceful restarts, operator purges, the consumer paused on
//! the server (longer than the ack wait), hot people and crowds of people, with the
//! contract checked throughout.
//!
//! - `SIM_SEEDS=N` sets how many schedules `schedules_keep_the_contract` explores
//!   (default 100,000), from `SIM_FIRST` (default 0).
//! - `SIM_SEED=S` makes `one_schedule` replay seed S with a trace.
//!
//! The consumer-group simulation (`group`) has its own tests and variables: see there.

mod group;
mod model;

use std::sync::Mutex;

use model::{Scenario, Sim, Tally};

/// Seeds that found bugs while the core was written; each stays a regression test.
const REGRESSIONS: &[u64] = &[1, 4, 5, 6, 7, 11, 13, 14, 25, 78, 1414, 1907, 10270];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// Runs seeds `first..first + count` over the machine's threads (at most 8): each
/// thread takes every `threads`-th seed and stops at its first failure. Returns the
/// summed tallies, the failures sorted by seed, and the wall time.
fn explore<T: Default + Send>(
    count: u64,
    first: u64,
    run: impl Fn(u64) -> (Result<(), String>, T) + Sync,
    add: impl Fn(&mut T, &T) + Sync,
) -> (T, Vec<(u64, String)>, std::time::Duration) {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8) as u64;
    let failures = Mutex::new(Vec::new());
    let total = Mutex::new(T::default());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (failures, total, run, add) = (&failures, &total, &run, &add);
            s.spawn(move || {
                let mut tally = T::default();
                let mut seed = first + t;
                while seed < first + count {
                    let (outcome, t2) = run(seed);
                    add(&mut tally, &t2);
                    if let Err(e) = outcome {
                        failures.lock().unwrap().push((seed, e));
                        break;
                    }
                    seed += threads;
                }
                add(&mut total.lock().unwrap(), &tally);
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(s, _)| *s);
    (total.into_inner().unwrap(), failures, started.elapsed())
}

/// Panics naming the first failing seed and how to replay it, if any failed.
fn fail_on(failures: &[(u64, String)], reproducer: impl Fn(u64) -> String) {
    if let Some((seed, e)) = failures.first() {
        panic!(
            "{} failing seed(s), first {seed}: {e}\n  reproduce: {}",
            failures.len(),
            reproducer(*seed)
        );
    }
}

/// Replays `seeds` with a trace; on a failure prints the trace's last lines (the
/// number in `lines_var`, default 400) and panics with the reproducer.
fn replay(
    seeds: &[u64],
    run: impl Fn(u64) -> (Result<(), String>, Option<String>),
    lines_var: &str,
    reproducer: impl Fn(u64) -> String,
) {
    for &seed in seeds {
        let (outcome, trace) = run(seed);
        if let Err(e) = outcome {
            let trace = trace.unwrap_or_default();
            let keep = std::env::var(lines_var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(400);
            let tail: Vec<&str> = trace.lines().rev().take(keep).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            panic!("seed {seed}: {e}\n  reproduce: {}", reproducer(seed));
        }
    }
}

fn run_seed(seed: u64, trace: bool) -> (Result<(), String>, Tally, Option<String>) {
    let scenario = Scenario::from_seed(seed);
    let described = format!("{scenario:?}");
    let mut sim = Sim::new(scenario, trace);
    let outcome = sim
        .run()
        .map_err(|v| format!("{}\n  scenario: {described}", v.0));
    (outcome, sim.tally, sim.trace.take())
}

fn reproducer(seed: u64) -> String {
    format!("SIM_SEED={seed} cargo test -p person-delivery --test sim one_schedule -- --nocapture")
}

#[test]
fn schedules_keep_the_contract() {
    let count = env_u64("SIM_SEEDS").unwrap_or(100_000);
    let first = env_u64("SIM_FIRST").unwrap_or(0);
    let (t, failures, elapsed) = explore(
        count,
        first,
        |seed| {
            let (outcome, tally, _) = run_seed(seed, false);
            (outcome, tally)
        },
        Tally::add,
    );
    eprintln!(
        "sim: {} schedules in {:.1?}: {} messages; faults: {} transient, {} permanent, {} panicking, \
         {} hung, {} rejected, {} crashes, {} graceful restarts, {} handler outages, {} DLQ outages \
         ({} failed stores), {} purges, {} server pauses, {} calls refused (not run), {} other consumers' messages; {} multi-instance, {} hot-person; the core opened the \
         breaker {} times, evicted {} messages to make room, stopped waiting {} times",
        t.schedules,
        elapsed,
        t.messages,
        t.transient,
        t.permanent,
        t.panics,
        t.hangs,
        t.rejected,
        t.crashes,
        t.graceful,
        t.outages,
        t.dlq_outages,
        t.dlq_failures,
        t.purges,
        t.pauses,
        t.not_run,
        t.foreign,
        t.multi_instance,
        t.hot_person,
        t.breaker_opens,
        t.evictions,
        t.stopped_waiting,
    );
    fail_on(&failures, reproducer);
}

#[test]
fn one_schedule() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => REGRESSIONS.to_vec(),
    };
    replay(
        &seeds,
        |seed| {
            let (outcome, _, trace) = run_seed(seed, true);
            (outcome, trace)
        },
        "SIM_TRACE_LINES",
        reproducer,
    );
}
