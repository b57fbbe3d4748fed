//! Fuzzing the decoders with proptest: the V2 envelope codec, the V1/week-1 decoder,
//! the CloudEvents header codec and the DLQ record. Arbitrary bytes, byte-level
//! mutations of valid payloads and structural JSON mutations; any input must give a
//! value or a typed error, never a panic, and errors stay short whatever the input.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use person_events::codec::{self, DecodeErrorKind};
use person_events::{StreamingEventEnvelope, strategies};
use person_legacy_compat::{RawMessage, decode_message, v1::PersonEvent};
use person_metadata::headers::{CloudEventAttributes, decode_headers, encode_headers};
use person_retry::{DeadLetter, ErrorClass};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{Row, record};

/// Inputs per strategy. 11 runs of this many give over 50,000 inputs in seconds, in
/// debug builds too.
const CASES: u32 = 5_000;

/// Error messages are bounded whatever the input (details are cut at 300 bytes).
const MAX_ERROR_TEXT: usize = 1_024;

/// Runs `check` on `cases` inputs of `strategy`; returns how many it ran.
fn fuzz<S>(name: &str, strategy: S, check: impl Fn(&S::Value)) -> u64
where
    S: Strategy,
    S::Value: Debug,
{
    let mut config = Config::with_cases(CASES);
    config.failure_persistence = None;
    let mut runner = TestRunner::new(config);
    let count = AtomicU64::new(0);
    let started = Instant::now();
    runner
        .run(&strategy, |input| {
            count.fetch_add(1, Ordering::Relaxed);
            check(&input);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!(
        "fuzz {name}: {} inputs in {:.1?}",
        count.load(Ordering::Relaxed),
        started.elapsed()
    );
    count.into_inner()
}

/// `n` samples of `strategy`.
fn samples<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// A byte-level edit: flip, delete, insert, truncate.
fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8, u8)]) -> Vec<u8> {
    for (at, op, byte) in edits {
        if bytes.is_empty() {
            bytes.push(*byte);
            continue;
        }
        let i = at.index(bytes.len());
        match op % 4 {
            0 => bytes[i] ^= byte | 1,
            1 => {
                bytes.remove(i);
            }
            2 => bytes.insert(i, *byte),
            _ => bytes.truncate(i),
        }
    }
    bytes
}

/// A structural edit of a JSON value: replace, delete or retype the value at a node.
fn mutate_json(
    mut value: serde_json::Value,
    at: Index,
    op: u8,
    with: serde_json::Value,
) -> Vec<u8> {
    fn nodes(v: &serde_json::Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let mut p = path.clone();
                    p.push(k.clone());
                    nodes(child, p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(i.to_string());
                    nodes(child, p, out);
                }
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    nodes(&value, Vec::new(), &mut all);
    let path = &all[at.index(all.len())];
    let pointer: String = path.iter().map(|p| format!("/{p}")).collect();
    let (parent, last) = match path.split_last() {
        Some((last, parent)) => (
            parent.iter().map(|p| format!("/{p}")).collect::<String>(),
            Some(last.clone()),
        ),
        None => (String::new(), None),
    };
    match (op % 3, last) {
        (0, _) | (_, None) => {
            if let Some(v) = value.pointer_mut(&pointer) {
                *v = with;
            }
        }
        (1, Some(key)) => {
            if let Some(serde_json::Value::Object(m)) = value.pointer_mut(&parent) {
                m.remove(&key);
            }
        }
        _ => {
            if let Some(v) = value.pointer_mut(&pointer) {
                let retyped = match &*v {
                    serde_json::Value::String(s) => serde_json::Value::from(s.len()),
                    serde_json::Value::Number(n) => serde_json::Value::from(n.to_string()),
                    other => serde_json::Value::from(vec![other.clone()]),
                };
                *v = retyped;
            }
        }
    }
    serde_json::to_vec(&value).unwrap()
}

fn check_decode(bytes: &[u8]) {
    if let Err(e) = codec::decode(bytes) {
        assert!(e.to_string().len() < MAX_ERROR_TEXT, "{e}");
    }
}

fn check_decoder(bytes: &[u8]) {
    let msg = RawMessage {
        subject: None,
        payload: bytes,
        content_type: None,
        stream_sequence: Some(1),
    };
    if let Err(e) = decode_message(&msg) {
        assert!(e.to_string().len() < MAX_ERROR_TEXT, "{e}");
    }
}

fn check_dead_letter(bytes: &[u8]) {
    let _ = serde_json::from_slice::<DeadLetter>(bytes);
}

fn check_headers(pairs: &[(String, String)]) {
    if let Err(e) = decode_headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
        assert!(e.to_string().len() < MAX_ERROR_TEXT, "{e}");
        assert!(!e.header().is_empty());
    }
}

fn headers_of(env: &StreamingEventEnvelope) -> Vec<(String, String)> {
    let person = env.aggregate_id.to_string();
    encode_headers(
        env.metadata(),
        &CloudEventAttributes {
            id: env.event_id,
            source: "/fuzz",
            event_type: env.event.event_type(),
            subject: Some(&person),
        },
    )
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect()
}

fn dead_letter_of(env: &StreamingEventEnvelope, seq: u64) -> DeadLetter {
    DeadLetter {
        subject: env.subject(),
        stream: "PERSON_EVENTS".into(),
        stream_sequence: seq,
        payload: codec::encode(env).unwrap().into(),
        headers: headers_of(env),
        reason: "permanent failure: fuzz".into(),
        error_class: ErrorClass::Permanent,
        delivery_count: 1,
        first_failure_at: env.metadata().timestamp,
        last_failure_at: env.metadata().timestamp,
        consumer: "c".into(),
        handler: "h".into(),
        metadata: Some(env.metadata().clone()),
        event_id: Some(env.event_id.to_string()),
        person_id: Some(env.aggregate_id.to_string()),
        event_type: Some(env.event.event_type().to_owned()),
        payload_truncated: false,
        original_size: None,
        headers_truncated: false,
        attempts: Vec::new(),
    }
}

fn edits() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    proptest::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..8)
}

/// `len` pseudo-random bytes from `seed` (xorshift), half of them drawn from JSON's
/// own alphabet so the decoders get past their first byte. Generating from a seed keeps
/// tens of thousands of inputs cheap in debug builds.
fn expand(seed: u64, len: usize) -> Vec<u8> {
    const JSON: &[u8] = b"{}[]\":,.-+0123456789eEtrufalsn \\/u";
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x & 0x100 == 0 {
                JSON[(x >> 9) as usize % JSON.len()]
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    (any::<u64>(), 0usize..2_048).prop_map(|(seed, len)| expand(seed, len))
}

/// Any text: a few hostile fixed strings, or pseudo-random (lossy UTF-8) text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            String::new(),
            " ".to_owned(),
            "1.0".to_owned(),
            "\u{0}\r\n".to_owned(),
            "x".repeat(1_000),
            "ü€😀".to_owned(),
            "2025-13-45T99:99:99Z".to_owned(),
            "0190f3c2-7b1e-7cc0-9a8e-2f6d1c1b2a3f".to_owned(),
        ]),
        (any::<u64>(), 0usize..64)
            .prop_map(|(seed, len)| String::from_utf8_lossy(&expand(seed, len)).into_owned()),
    ]
}

/// A replacement JSON value: hostile scalars, empty and nested containers, any text.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        proptest::sample::select(vec![
            json!(null),
            json!(true),
            json!(-1),
            json!(0),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e308),
            json!(0.5),
            json!([]),
            json!({}),
            json!([[[[[[[[[[]]]]]]]]]]),
            json!({"event_type": "Created", "data": {}}),
            json!({"id": "not-a-uuid"}),
        ]),
        text().prop_map(serde_json::Value::from),
    ]
}

#[test]
fn decoders_give_typed_errors_on_any_input() {
    let started = Instant::now();
    let envelopes = samples(strategies::envelope(), 64);
    let v2: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| codec::encode(e).unwrap())
        .collect();
    let v1: Vec<Vec<u8>> = envelopes
        .iter()
        .filter_map(|e| PersonEvent::try_from(e.event.clone()).ok())
        .map(|e| serde_json::to_vec(&e).unwrap())
        .collect();
    assert!(v1.len() >= 16, "enough V1 seeds");
    // Week-1 envelopes: no schema_version (only the week-1 variants read back).
    let week1: Vec<Vec<u8>> = v2
        .iter()
        .map(|b| {
            let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v.as_object_mut().unwrap().remove("schema_version");
            serde_json::to_vec(&v).unwrap()
        })
        .filter(|b| decode_message(&RawMessage::from_payload(b)).is_ok())
        .collect();
    assert!(week1.len() >= 16, "enough week-1 seeds");
    let letters: Vec<Vec<u8>> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::to_vec(&dead_letter_of(e, i as u64)).unwrap())
        .collect();
    let headers: Vec<Vec<(String, String)>> = envelopes.iter().map(headers_of).collect();
    // The seeds themselves decode.
    for b in &v2 {
        codec::decode(b).unwrap();
    }
    for b in v1.iter().chain(&week1) {
        decode_message(&RawMessage::from_payload(b)).unwrap();
    }
    for b in &letters {
        serde_json::from_slice::<DeadLetter>(b).unwrap();
    }
    for h in &headers {
        decode_headers(h.iter().map(|(n, v)| (n.as_str(), v.as_str()))).unwrap();
    }

    let json_of = |seeds: &Vec<Vec<u8>>| -> Vec<serde_json::Value> {
        seeds
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect()
    };
    let structural = |seeds: Vec<serde_json::Value>| {
        (
            proptest::sample::select(seeds),
            any::<Index>(),
            any::<u8>(),
            json_value(),
        )
            .prop_map(|(v, at, op, with)| mutate_json(v, at, op, with))
    };
    let byte_level = |seeds: Vec<Vec<u8>>| {
        (proptest::sample::select(seeds), edits()).prop_map(|(b, e)| mutate(b, &e))
    };

    let mut counts: Vec<(&str, u64)> = vec![
        (
            "V2 arbitrary bytes",
            fuzz("v2 bytes", bytes(), |b| check_decode(b)),
        ),
        (
            "V2 byte edits",
            fuzz("v2 edits", byte_level(v2.clone()), |b| check_decode(b)),
        ),
        (
            "V2 JSON edits",
            fuzz("v2 json", structural(json_of(&v2)), |b| check_decode(b)),
        ),
        (
            "decoder arbitrary bytes",
            fuzz("decoder bytes", bytes(), |b| check_decoder(b)),
        ),
    ];
    let mut legacy = v1.clone();
    legacy.extend(week1.iter().cloned());
    counts.push((
        "V1/week-1 byte edits",
        fuzz("v1 edits", byte_level(legacy.clone()), |b| check_decoder(b)),
    ));
    counts.push((
        "V1/week-1 JSON edits",
        fuzz("v1 json", structural(json_of(&legacy)), |b| {
            check_decoder(b)
        }),
    ));
    counts.push((
        "DLQ arbitrary bytes",
        fuzz("dlq bytes", bytes(), |b| check_dead_letter(b)),
    ));
    counts.push((
        "DLQ byte edits",
        fuzz("dlq edits", byte_level(letters.clone()), |b| {
            check_dead_letter(b)
        }),
    ));
    counts.push((
        "DLQ JSON edits",
        fuzz("dlq json", structural(json_of(&letters)), |b| {
            check_dead_letter(b)
        }),
    ));
    // Header pairs from a seed: known names (any case) or random ones, values that are
    // valid, empty, random or hostile.
    let pairs = (any::<u64>(), 0usize..12).prop_map(|(seed, n)| {
        const NAMES: [&str; 11] = [
            "ce-specversion",
            "ce-id",
            "ce-time",
            "ce-correlationid",
            "ce-causationid",
            "ce-actor",
            "ce-source",
            "ce-type",
            "CE-ID",
            "traceparent",
            "Content-Type",
        ];
        const VALUES: [&str; 6] = [
            "1.0",
            "",
            "0190f3c2-7b1e-7cc0-9a8e-2f6d1c1b2a3f",
            "2025-07-15T12:30:00Z",
            "\u{0}\r\n",
            "1.0\u{7f}",
        ];
        let noise = expand(seed, n * 24 + 8);
        (0..n)
            .map(|i| {
                let r = &noise[i * 24..i * 24 + 24];
                let name = if r[0].is_multiple_of(4) {
                    String::from_utf8_lossy(&r[2..2 + (r[1] % 12) as usize]).into_owned()
                } else {
                    NAMES[r[1] as usize % NAMES.len()].to_owned()
                };
                let value = if r[0].is_multiple_of(3) {
                    String::from_utf8_lossy(&r[4..4 + (r[3] % 20) as usize]).into_owned()
                } else {
                    VALUES[r[3] as usize % VALUES.len()].to_owned()
                };
                (name, value)
            })
            .collect::<Vec<(String, String)>>()
    });
    counts.push((
        "headers arbitrary pairs",
        fuzz("headers arbitrary", pairs, |h| check_headers(h)),
    ));
    counts.push((
        "headers edits",
        fuzz(
            "headers edits",
            (
                proptest::sample::select(headers),
                any::<Index>(),
                any::<u8>(),
                text(),
            )
                .prop_map(|(mut h, at, op, text)| {
                    let i = at.index(h.len());
                    match op % 3 {
                        0 => h[i].1 = text,
                        1 => {
                            h.remove(i);
                        }
                        _ => h[i].0 = text,
                    }
                    h
                }),
            |h| check_headers(h),
        ),
    ));

    // Hostile shapes: deep nesting, huge strings and numbers. A typed error, no stack
    // overflow, and an error text that does not grow with the input.
    let deep_array = "[".repeat(1_000_000).into_bytes();
    let deep_object = "{\"a\":".repeat(200_000).into_bytes();
    let huge_string = format!(
        "{{\"schema_version\": 2, \"event_id\": \"{}\"}}",
        "x".repeat(4 * 1024 * 1024)
    )
    .into_bytes();
    let huge_key = format!("{{\"{}\": 1}}", "k".repeat(4 * 1024 * 1024)).into_bytes();
    let huge_number = format!("{{\"schema_version\": 1{}}}", "0".repeat(100_000)).into_bytes();
    let hostile = [deep_array, deep_object, huge_string, huge_key, huge_number];
    for input in &hostile {
        let e = codec::decode(input).unwrap_err();
        assert!(e.to_string().len() < MAX_ERROR_TEXT);
        let e = decode_message(&RawMessage::from_payload(input)).unwrap_err();
        assert!(e.to_string().len() < MAX_ERROR_TEXT);
        assert!(serde_json::from_slice::<DeadLetter>(input).is_err());
    }
    let e = codec::decode(&hostile[0]).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::MalformedJson, "{e}");
    let e = decode_message(&RawMessage::from_payload(&hostile[1])).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::MalformedJson, "{e}");
    counts.push(("hostile shapes", hostile.len() as u64 * 3));

    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert!(total >= 50_000, "{total} inputs");
    println!("fuzz: {total} inputs: {counts:?}");
    record(
        Row {
            case: "fuzz-decoders",
            area: "fuzz",
            what: "proptest on the V2 codec, the V1/week-1 decoder, the header codec and the DLQ record: arbitrary bytes, byte edits and JSON edits of valid seeds, deep nesting, 4 MiB strings".into(),
            load: "-".into(),
            faults: "-".into(),
            inputs: total,
            lost: 0,
            duplicated: 0,
            absorbed: 0,
            notes: counts
                .iter()
                .map(|(n, c)| format!("{n}: {c}"))
                .collect::<Vec<_>>()
                .join("; "),
            ..Row::default()
        },
        started,
    );
}

const MEMORY_ROLE_ENV: &str = "PERSON_FUZZ_MEMORY_CHILD";
const MEMORY_TEST: &str = "fuzz::hostile_inputs_use_memory_in_proportion_to_their_size";
/// Hostile inputs are this big.
const BIG: usize = 16 * 1024 * 1024;

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    kib * 1024
}

/// Hostile input number `i` (of [`BIG_INPUTS`]), `BIG` bytes or so, built on demand.
fn big_input(i: usize) -> (&'static str, Vec<u8>) {
    let x = || "x".repeat(BIG);
    match i {
        0 => ("16 Mi-deep array", "[".repeat(BIG).into_bytes()),
        1 => (
            "16 MiB event_id",
            format!("{{\"schema_version\": 2, \"event_id\": \"{}\"}}", x()).into_bytes(),
        ),
        2 => ("16 MiB key", format!("{{\"{}\": 1}}", x()).into_bytes()),
        3 => (
            "16 MiB V1 person id",
            format!("{{\"PersonCreated\": {{\"person_id\": {{\"id\": \"{}\"}}}}}}", x())
                .into_bytes(),
        ),
        4 => (
            "16 MiB week-1 field",
            format!(
                "{{\"event_id\": \"0190f3c2-7b1e-7cc0-9a8e-2f6d1c1b2a3f\", \"event\": {{\"event_type\": \"PersonCreated\", \"data\": \"{}\"}}}}",
                x()
            )
            .into_bytes(),
        ),
        _ => (
            "16 MiB DLQ payload and reason",
            format!(
                "{{\"subject\": \"s\", \"payload\": \"{}\", \"reason\": \"{}\"}}",
                "QUJD".repeat(BIG / 4),
                x()
            )
            .into_bytes(),
        ),
    }
}

const BIG_INPUTS: usize = 6;

/// Child side: for each input, reset the peak RSS (`/proc/self/clear_refs`), decode it
/// with every decoder, and report how far the peak rose above the resident size with
/// the input already built.
fn measure_memory() {
    let mut out = Vec::new();
    for i in 0..BIG_INPUTS {
        let (name, input) = big_input(i);
        std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
        let before = status_bytes("VmRSS:");
        let _ = codec::decode(&input);
        let _ = decode_message(&RawMessage::from_payload(&input));
        let _ = serde_json::from_slice::<DeadLetter>(&input);
        let growth = status_bytes("VmHWM:").saturating_sub(before);
        out.push(serde_json::json!({"name": name, "len": input.len(), "growth": growth}));
    }
    println!("FUZZ-MEMORY {}", serde_json::Value::from(out));
}

/// Decoding an input never takes more than a small multiple of its size: measured as
/// the peak RSS growth of a child process (this test binary re-run alone) decoding
/// 16 MiB hostile inputs with every decoder.
#[test]
fn hostile_inputs_use_memory_in_proportion_to_their_size() {
    if std::env::var_os(MEMORY_ROLE_ENV).is_some() {
        measure_memory();
        return;
    }
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([MEMORY_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(MEMORY_ROLE_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("FUZZ-MEMORY ").map(|(_, rest)| rest))
        .expect("the child reported");
    let measured: Vec<serde_json::Value> = serde_json::from_str(line).unwrap();
    assert_eq!(measured.len(), BIG_INPUTS);
    let mut notes = Vec::new();
    for m in &measured {
        let (len, growth) = (m["len"].as_u64().unwrap(), m["growth"].as_u64().unwrap());
        // Three decoders, each at most copying the input a couple of times.
        assert!(
            growth <= 4 * len + 16 * 1024 * 1024,
            "{}: peak RSS grew by {growth} bytes for a {len}-byte input",
            m["name"]
        );
        notes.push(format!(
            "{}: +{} MiB",
            m["name"].as_str().unwrap(),
            growth / (1024 * 1024)
        ));
    }
    record(
        Row {
            case: "fuzz-memory",
            area: "fuzz",
            what: "16 MiB hostile inputs (deep nesting, huge strings and keys) through the V2, V1/week-1 and DLQ decoders, in a child process".into(),
            load: "-".into(),
            faults: "-".into(),
            inputs: measured.len() as u64 * 3,
            lost: 0,
            duplicated: 0,
            absorbed: 0,
            notes: format!(
                "peak RSS growth per 16 MiB input, all three decoders (bound: 4x the input + 16 MiB): {}",
                notes.join("; ")
            ),
            ..Row::default()
        },
        started,
    );
}
