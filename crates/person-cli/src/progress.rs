//! Progress on stderr that fits the output: a live bar on a terminal (indicatif),
//! a plain line every few seconds otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written when stderr is not a terminal. Work that
/// finishes sooner writes none, so short runs leave logs and pipes clean.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Progress of `total` items on stderr.
///
/// On a terminal it is an indicatif bar, redrawn in place at most ten times a second.
/// Otherwise (a CI log, a file, a pipe) it writes a plain line such as
/// `publish [######              ] 120/400` every [`PLAIN_INTERVAL`], never a carriage
/// return. `finish` clears the bar.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    out: Output,
}

#[derive(Debug)]
enum Output {
    Bar(ProgressBar),
    Plain { last: Instant },
    Off,
}

impl Progress {
    /// Progress of `total` items (`None`: unknown, only the count is shown).
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Self {
        let label = label.into();
        let out = if std::io::stderr().is_terminal() {
            Output::Bar(bar(&label, total))
        } else {
            Output::Plain {
                last: Instant::now(),
            }
        };
        Self {
            label,
            total,
            done: 0,
            out,
        }
    }

    /// Counts `n` more items done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        match &mut self.out {
            Output::Bar(bar) => bar.inc(n),
            Output::Plain { last } if last.elapsed() >= PLAIN_INTERVAL => {
                *last = Instant::now();
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{}", render(&self.label, self.done, self.total));
            }
            Output::Plain { .. } | Output::Off => {}
        }
    }

    /// Prints one line on stdout without breaking the bar.
    pub fn note(&self, line: impl AsRef<str>) {
        match &self.out {
            Output::Bar(bar) => bar.suspend(|| println!("{}", line.as_ref())),
            Output::Plain { .. } | Output::Off => println!("{}", line.as_ref()),
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Clears the bar; nothing more is written.
    pub fn finish(&mut self) {
        if let Output::Bar(bar) = &self.out {
            bar.finish_and_clear();
        }
        self.out = Output::Off;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A terminal bar: `label [#####     ] 120/500` or, without a total, `label 120`.
fn bar(label: &str, total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(total) if total > 0 => (ProgressBar::new(total), "{prefix} [{bar:20}] {pos}/{len}"),
        _ => (ProgressBar::no_length(), "{prefix} {pos}"),
    };
    let style = ProgressStyle::with_template(template)
        .expect("a valid progress template")
        .progress_chars("## ");
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    bar
}

/// The text of a plain progress line.
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
