//! Finding the binary: version checks and explicit-environment resolution.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nats_harness::provision::{
    self, BinarySource, MIN_VERSION, ProvisionError, ServerVersion, check_version, resolve_with,
};

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// Writes an executable shell script that prints `version_line` for `--version`.
fn fake_server(dir: &Path, version_line: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("nats-server");
    std::fs::write(&path, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn too_old_versions_are_refused_naming_2_12() {
    let path = Path::new("/opt/old/nats-server");
    let err = check_version(path, "nats-server: v2.11.9\n").unwrap_err();
    assert!(matches!(err, ProvisionError::TooOld { .. }));
    let message = err.to_string();
    assert!(message.contains("2.11.9"), "{message}");
    assert!(message.contains(">= 2.12"), "{message}");
    assert!(message.contains("atomic batch publish"), "{message}");
    assert!(message.contains("NATS_SERVER_BIN"), "{message}");

    assert_eq!(
        check_version(path, "nats-server: v2.12.0").unwrap(),
        MIN_VERSION
    );
    assert_eq!(
        check_version(path, "nats-server: v2.15.1").unwrap(),
        ServerVersion {
            major: 2,
            minor: 15,
            patch: 1
        }
    );
    assert!(matches!(
        check_version(path, "hello"),
        Err(ProvisionError::UnrecognizedVersion { .. })
    ));
}

#[test]
fn a_bogus_nats_server_bin_is_a_clear_error() {
    let err =
        resolve_with(&env_of(&[("NATS_SERVER_BIN", "/nonexistent/nats-server")])).unwrap_err();
    assert!(matches!(err, ProvisionError::BadEnvBinary { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("NATS_SERVER_BIN=/nonexistent/nats-server"),
        "{message}"
    );
    assert!(message.contains("no such file"), "{message}");

    let not_executable = env!("CARGO_MANIFEST_PATH");
    let err = resolve_with(&env_of(&[("NATS_SERVER_BIN", not_executable)])).unwrap_err();
    assert!(err.to_string().contains("not executable"), "{err}");

    let err = resolve_with(&env_of(&[
        ("NATS_SERVER_BIN", "no-such-nats"),
        ("PATH", "/nonexistent"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("not found in PATH"), "{err}");
}

#[test]
fn an_old_server_in_nats_server_bin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_server(dir.path(), "nats-server: v2.10.22");
    let err = resolve_with(&env_of(&[("NATS_SERVER_BIN", bin.to_str().unwrap())])).unwrap_err();
    assert!(matches!(err, ProvisionError::TooOld { .. }), "{err}");
    assert!(err.to_string().contains("2.12"), "{err}");
}

#[test]
fn the_cache_is_used_before_installing() {
    let home = tempfile::tempdir().unwrap();
    let cache = home
        .path()
        .join(".cache/person-streaming/nats-server-2.15.1");
    std::fs::create_dir_all(&cache).unwrap();
    let bin = fake_server(&cache, "nats-server: v2.15.1");
    let resolved = resolve_with(&env_of(&[
        ("HOME", home.path().to_str().unwrap()),
        ("PATH", "/nonexistent"),
    ]))
    .unwrap();
    assert_eq!(resolved.path, bin);
    assert_eq!(resolved.source, BinarySource::Cache);
}

#[test]
fn without_pip_the_error_says_what_to_install() {
    let home = tempfile::tempdir().unwrap();
    let err = resolve_with(&env_of(&[
        ("HOME", home.path().to_str().unwrap()),
        ("PATH", "/nonexistent"),
    ]))
    .unwrap_err();
    assert!(
        matches!(err, ProvisionError::PipUnavailable { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("python3 -m pip"), "{message}");
    assert!(
        message.contains("NATS_SERVER_BIN=/path/to/nats-server"),
        "{message}"
    );

    let err = resolve_with(&env_of(&[])).unwrap_err();
    assert_eq!(err, ProvisionError::NoCacheDir);
    assert!(err.to_string().contains("NATS_SERVER_BIN"), "{err}");
}

#[test]
fn the_process_wide_binary_is_recent_enough() {
    let resolved = provision::nats_server().expect("a nats-server for the tests");
    assert!(resolved.version >= MIN_VERSION, "{resolved:?}");
    assert_eq!(provision::nats_server_bin().unwrap(), resolved.path);
}
