//! A progress line on stderr, drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Draws `label [#####     ] 120/500` on stderr, at most ten times a second, and only
/// when stderr is a terminal (so logs and pipes stay clean). `finish` clears it.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    enabled: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A progress line for `total` items (`None`: unknown, only the count is shown).
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Self {
        Self {
            label: label.into(),
            total,
            done: 0,
            enabled: std::io::stderr().is_terminal(),
            last_draw: None,
        }
    }

    /// Counts `n` more items done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if !self.enabled {
            return;
        }
        let due = self
            .last_draw
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || self.total == Some(self.done) {
            self.last_draw = Some(Instant::now());
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{}", render(&self.label, self.done, self.total));
            let _ = err.flush();
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Clears the line.
    pub fn finish(&mut self) {
        if self.enabled && self.last_draw.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.enabled = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The text of a progress line.
///
/// ```
/// assert_eq!(person_cli::progress::render("replay", 5, Some(10)), "replay [##########          ] 5/10");
/// assert_eq!(person_cli::progress::render("publish", 7, None), "publish 7");
/// ```
pub fn render(label: &str, done: u64, total: Option<u64>) -> String {
    const WIDTH: u64 = 20;
    match total {
        Some(total) if total > 0 => {
            let filled = (done.min(total) * WIDTH / total) as usize;
            format!(
                "{label} [{}{}] {done}/{total}",
                "#".repeat(filled),
                " ".repeat(WIDTH as usize - filled)
            )
        }
        _ => format!("{label} {done}"),
    }
}
