//! Bad configuration files: wrong types, unknown fields and impossible limits give
//! errors that name the field.

use std::time::Instant;

use person_streaming::{ConfigErrorKind, StreamingConfig};

use crate::support::{Row, record};

use ConfigErrorKind::{Invalid, Parse};

/// (file name, contents, kind, the field the error must name)
const CASES: &[(&str, &str, ConfigErrorKind, &str)] = &[
    // Wrong types.
    (
        "replicas.toml",
        "[stream]\nreplicas = \"three\"\n",
        Parse,
        "stream.replicas",
    ),
    (
        "age.toml",
        "[stream]\nmax_age_secs = -5\n",
        Parse,
        "stream.max_age_secs",
    ),
    (
        "storage.toml",
        "[stream]\nstorage = \"tape\"\n",
        Parse,
        "stream.storage",
    ),
    (
        "subjects.toml",
        "[stream]\nsubjects = \"person.events.>\"\n",
        Parse,
        "stream.subjects",
    ),
    (
        "ackwait.toml",
        "[[consumers]]\ndurable_name = \"x\"\nack_wait_secs = 1.5\n",
        Parse,
        "consumers[0].ack_wait_secs",
    ),
    (
        "second.toml",
        "[[consumers]]\ndurable_name = \"a\"\n[[consumers]]\ndurable_name = \"b\"\nmax_deliver = \"5\"\n",
        Parse,
        "consumers[1].max_deliver",
    ),
    (
        "inflight.json",
        r#"{"publisher": {"max_in_flight": "many"}}"#,
        Parse,
        "publisher.max_in_flight",
    ),
    (
        "consumers.json",
        r#"{"consumers": {"durable_name": "x"}}"#,
        Parse,
        "consumers",
    ),
    (
        "retry.json",
        r#"{"consumers": [{"durable_name": "x", "retry": {"max_attempts": -1}}]}"#,
        Parse,
        "consumers[0].retry.max_attempts",
    ),
    // Unknown fields.
    (
        "replica.toml",
        "[stream]\nreplica = 3\n",
        Parse,
        "stream.replica",
    ),
    (
        "timeout.toml",
        "[publisher]\nack_timeout = 5\n",
        Parse,
        "publisher.ack_timeout",
    ),
    (
        "name.toml",
        "[[consumers]]\nname = \"x\"\n",
        Parse,
        "consumers[0].name",
    ),
    (
        "streams.toml",
        "[streams]\nname = \"X\"\n",
        Parse,
        "streams",
    ),
    (
        "unknown.json",
        r#"{"dlq": {"replicas": 1, "mirror": "X"}}"#,
        Parse,
        "dlq.mirror",
    ),
    // Impossible limits.
    (
        "r7.toml",
        "[stream]\nreplicas = 7\n",
        Invalid,
        "stream.replicas",
    ),
    ("r0.toml", "[dlq]\nreplicas = 0\n", Invalid, "dlq.replicas"),
    (
        "window.toml",
        "[stream]\nmax_age_secs = 60\nduplicate_window_secs = 120\n",
        Invalid,
        "stream.duplicate_window_secs",
    ),
    (
        "maxmsgs.toml",
        "[stream]\nmax_messages = 0\n",
        Invalid,
        "stream.max_messages",
    ),
    (
        "maxbytes.toml",
        "[stream]\nmax_bytes = -7\n",
        Invalid,
        "stream.max_bytes",
    ),
    (
        "deliver.toml",
        "[[consumers]]\ndurable_name = \"x\"\nmax_deliver = 0\n",
        Invalid,
        "consumers[0].max_deliver",
    ),
    (
        "pending.toml",
        "[[consumers]]\ndurable_name = \"x\"\nmax_ack_pending = 0\n",
        Invalid,
        "consumers[0].max_ack_pending",
    ),
    (
        "ackwait0.toml",
        "[[consumers]]\ndurable_name = \"x\"\nack_wait_secs = 0\n",
        Invalid,
        "consumers[0].ack_wait_secs",
    ),
    (
        "backoff.toml",
        "[[consumers]]\ndurable_name = \"x\"\nmax_deliver = 2\nretry = { max_attempts = 6 }\n",
        Invalid,
        "consumers[0].retry",
    ),
    (
        "filter.toml",
        "[[consumers]]\ndurable_name = \"x\"\nfilter_subjects = [\"orders.>\"]\n",
        Invalid,
        "consumers[0].filter_subjects[0]",
    ),
    (
        "durable.toml",
        "[[consumers]]\ndurable_name = \"a.b\"\n",
        Invalid,
        "consumers[0].durable_name",
    ),
    (
        "twice.toml",
        "[[consumers]]\ndurable_name = \"a\"\n[[consumers]]\ndurable_name = \"a\"\n",
        Invalid,
        "consumers[1].durable_name",
    ),
    (
        "overlap.toml",
        "[dlq]\nsubjects = [\"person.>\"]\n",
        Invalid,
        "dlq.subjects",
    ),
    (
        "samename.toml",
        "[dlq]\nname = \"PERSON_EVENTS\"\n",
        Invalid,
        "dlq.name",
    ),
    (
        "flight0.json",
        r#"{"publisher": {"max_in_flight": 0}}"#,
        Invalid,
        "publisher.max_in_flight",
    ),
    (
        "ack0.json",
        r#"{"publisher": {"ack_timeout_ms": 0}}"#,
        Invalid,
        "publisher.ack_timeout_ms",
    ),
    (
        "source.json",
        r#"{"publisher": {"source": " "}}"#,
        Invalid,
        "publisher.source",
    ),
];

#[test]
fn bad_config_files_name_the_field() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    for (file, text, kind, field) in CASES {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let err =
            StreamingConfig::from_file(&path).expect_err(&format!("{file} was accepted:\n{text}"));
        assert_eq!(err.kind(), *kind, "{file}: {err}");
        assert_eq!(err.field(), *field, "{file}: {err}");
        assert!(
            err.to_string().contains(&format!("`{field}`")),
            "{file}: the message does not name `{field}`: {err}"
        );
    }
    // Not a file at all, and not TOML at all: still an error, saying which.
    let err = StreamingConfig::from_file(dir.path().join("missing.toml")).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Io);
    assert!(err.to_string().contains("missing.toml"), "{err}");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[stream\nreplicas = 3\n").unwrap();
    let err = StreamingConfig::from_file(&broken).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Parse);
    assert!(err.to_string().contains("line 1"), "{err}");
    record(
        Row {
            case: "config-files",
            area: "config",
            what: "bad TOML and JSON config files: wrong types, unknown fields, impossible limits".into(),
            load: "-".into(),
            faults: "-".into(),
            inputs: CASES.len() as u64 + 2,
            lost: 0,
            duplicated: 0,
            absorbed: 0,
            notes: "every error has the right kind and names the field (`consumers[1].max_deliver`, `stream.replica`...)".into(),
            ..Row::default()
        },
        started,
    );
}
