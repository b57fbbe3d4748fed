//! CPU time per event, for this process and for the server: the figure a shared, noisy
//! machine cannot hide (a rate halves when another job takes a core; the CPU an event
//! costs does not).

use std::time::Duration;

/// CPU time (user + system, every thread) a process has used so far; `pid` is a
/// number or `self`. Read from `/proc/<pid>/stat`, in clock ticks of 10 ms.
pub(crate) fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: fields 14 and 15 are utime and stime.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The CPU time spent per event over one measured stretch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PerEvent {
    /// This process (the benchmark side: product or raw).
    pub(crate) client_us: f64,
    /// The nats-server process.
    pub(crate) server_us: f64,
}

/// Reads both processes' CPU time at the start of a stretch.
pub(crate) struct Meter {
    server: String,
    client0: Duration,
    server0: Duration,
}

impl Meter {
    pub(crate) fn start(server_pid: &str) -> Self {
        Self {
            server: server_pid.to_owned(),
            client0: cpu_time("self"),
            server0: cpu_time(server_pid),
        }
    }

    /// The CPU time each of `events` events cost since [`Meter::start`].
    pub(crate) fn per_event(&self, events: usize) -> PerEvent {
        let n = events.max(1) as f64;
        PerEvent {
            client_us: (cpu_time("self") - self.client0).as_secs_f64() * 1e6 / n,
            server_us: (cpu_time(&self.server).saturating_sub(self.server0)).as_secs_f64() * 1e6
                / n,
        }
    }
}
