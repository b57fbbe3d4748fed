//! Exit codes and [`CliError`], an error with a hint for the operator.

use std::fmt;

use person_streaming::{StreamingError, StreamingErrorKind};

/// Everything went well.
pub const EXIT_OK: u8 = 0;
/// Any other failure (a missing stream, a rejected request, ...).
pub const EXIT_OTHER: u8 = 1;
/// Invalid arguments or configuration (clap uses 2 for usage errors too).
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached, or refused the credentials or TLS.
pub const EXIT_CONNECTION: u8 = 3;
/// Some items were processed and some failed (bad lines, failed replays).
pub const EXIT_PARTIAL: u8 = 4;
/// Stopped by Ctrl-C before the work was done; what was done is complete.
pub const EXIT_INTERRUPTED: u8 = 5;

/// The exit codes, as shown in `--help` and the README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error (missing stream, server rejected a request, ...)
  2  usage error (bad arguments or configuration file)
  3  connection error (server unreachable, authentication or TLS failed)
  4  partial failure (some lines or dead letters failed; see the summary)
  5  interrupted by Ctrl-C (finished items are complete, the rest untouched)";

/// What kind of failure a [`CliError`] is; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CliErrorKind {
    /// Bad arguments or configuration.
    Usage,
    /// The server could not be reached or refused the connection.
    Connection,
    /// Some items failed.
    Partial,
    /// Stopped by Ctrl-C.
    Interrupted,
    /// Anything else.
    Other,
}

impl CliErrorKind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            CliErrorKind::Usage => EXIT_USAGE,
            CliErrorKind::Connection => EXIT_CONNECTION,
            CliErrorKind::Partial => EXIT_PARTIAL,
            CliErrorKind::Interrupted => EXIT_INTERRUPTED,
            CliErrorKind::Other => EXIT_OTHER,
        }
    }
}

/// A failure to report on stderr: a message, and a hint on what to do about it.
#[derive(Debug, thiserror::Error)]
pub struct CliError {
    kind: CliErrorKind,
    message: String,
    hint: Option<String>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl CliError {
    /// An error of `kind`.
    pub fn new(kind: CliErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(CliErrorKind::Usage, message)
    }

    /// Any other error.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(CliErrorKind::Other, message)
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// What kind of failure.
    pub fn kind(&self) -> CliErrorKind {
        self.kind
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// A streaming-layer error, classified by its kind and given a hint. `url` is the
    /// server the CLI connected to.
    pub fn from_streaming(e: &StreamingError, url: &str) -> Self {
        let message = e.to_string();
        match e.kind() {
            StreamingErrorKind::Connect
            | StreamingErrorKind::TimedOut
            | StreamingErrorKind::Unavailable => {
                Self::new(CliErrorKind::Connection, message).with_hint(format!(
                    "is a server running at {url}? `\"$(cargo xtask nats --path)\" -js` starts one; \
                     or point --nats-url / NATS_URL at yours"
                ))
            }
            StreamingErrorKind::Authentication => Self::new(CliErrorKind::Connection, message)
                .with_hint(
                    "check --user/--password, --token, --nkey or --creds, and the account's permissions",
                ),
            StreamingErrorKind::Tls => Self::new(CliErrorKind::Connection, message).with_hint(
                "check --tls-ca, --tls-cert and --tls-key, and that the server speaks TLS",
            ),
            StreamingErrorKind::InvalidConfig => Self::usage(message)
                .with_hint("fix the field named above in the file given with --config"),
            StreamingErrorKind::NotFound => Self::other(message)
                .with_hint("`person-stream setup` creates the streams and consumers"),
            StreamingErrorKind::PermissionDenied => Self::other(message).with_hint(
                "the user lacks the permission named above: grant it in the account's permissions",
            ),
            StreamingErrorKind::ImmutableField => Self::other(message)
                .with_hint("`person-stream setup --dry-run` shows every difference"),
            _ => Self::other(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_distinct_exit_codes() {
        let codes = [
            CliErrorKind::Usage,
            CliErrorKind::Connection,
            CliErrorKind::Partial,
            CliErrorKind::Interrupted,
            CliErrorKind::Other,
        ]
        .map(CliErrorKind::exit_code);
        let mut sorted = codes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        assert!(!codes.contains(&EXIT_OK));
        for code in codes {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")), "{code}");
        }
    }
}
