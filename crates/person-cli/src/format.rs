//! Human-readable output: tables, one-line event summaries, sizes and ages.

use chrono::{DateTime, SecondsFormat, Utc};
use person_events::StreamingEventEnvelope;

/// Left-aligned columns separated by two spaces, the header first. Cells are
/// single-line; the last column is not padded.
///
/// ```
/// let t = person_cli::format::table(&["ID", "NAME"], &[vec!["1".into(), "a".into()], vec!["22".into(), "b".into()]]);
/// assert_eq!(t, "ID  NAME\n1   a\n22  b\n");
/// ```
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// At most `max` characters, with `…` when cut; line breaks become spaces.
///
/// ```
/// assert_eq!(person_cli::format::truncate("abcdef", 4), "abc…");
/// assert_eq!(person_cli::format::truncate("a\nb", 4), "a b");
/// ```
pub fn truncate(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A size in bytes, binary units.
///
/// ```
/// assert_eq!(person_cli::format::bytes(512), "512 B");
/// assert_eq!(person_cli::format::bytes(1536), "1.5 KiB");
/// assert_eq!(person_cli::format::bytes(3 * 1024 * 1024), "3.0 MiB");
/// ```
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// How long ago `t` was, coarsely (`12s ago`, `5m ago`, `3h ago`, `2d ago`); `-` for
/// none.
///
/// ```
/// use chrono::{Duration, Utc};
/// let now = Utc::now();
/// assert_eq!(person_cli::format::ago(Some(now - Duration::seconds(90)), now), "1m ago");
/// assert_eq!(person_cli::format::ago(None, now), "-");
/// ```
pub fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = (now - t).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// A time as RFC 3339, seconds precision.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One line for an event: stream sequence, time, type, person, correlation, event id,
/// and a short preview of its data; `[upcast from V1]` or `[upcast from week-1
/// envelope]` when it was stored in an older shape (`origin`).
pub fn event_line(seq: u64, env: &StreamingEventEnvelope, origin: Option<&str>) -> String {
    let meta = env.metadata();
    let mut data = serde_json::to_value(&env.event)
        .ok()
        .and_then(|v| v.get("data").cloned())
        .unwrap_or_default();
    if let Some(obj) = data.as_object_mut() {
        obj.remove("metadata");
        obj.remove("person_id");
    }
    let mut line = format!(
        "#{seq}  {}  {:<20}  person={}  correlation={}  event={}  {}",
        time(meta.timestamp),
        env.event.event_type(),
        env.aggregate_id,
        meta.correlation_id,
        env.event_id,
        truncate(&data.to_string(), 100),
    );
    if let Some(origin) = origin {
        line.push_str(&format!("  [upcast from {origin}]"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use person_events::{PersonEventV2, PersonId};
    use person_metadata::EventMetadata;

    #[test]
    fn event_lines_show_the_essentials() {
        let p = PersonId::new();
        let env = StreamingEventEnvelope::new(
            p,
            1,
            PersonEventV2::Suspended {
                person_id: p,
                reason: "policy review".into(),
                metadata: EventMetadata::new(),
            },
        );
        let line = event_line(7, &env, None);
        assert!(line.starts_with("#7  "), "{line}");
        assert!(line.contains("suspended"), "{line}");
        assert!(line.contains(&format!("person={p}")), "{line}");
        assert!(line.contains(r#"{"reason":"policy review"}"#), "{line}");
        assert!(!line.contains("upcast"));
        assert!(event_line(7, &env, Some("V1")).ends_with("[upcast from V1]"));
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let t = table(
            &["A", "B", "C"],
            &[vec!["xx".into(), "".into(), "z".into()]],
        );
        assert_eq!(t, "A   B  C\nxx     z\n");
    }
}
