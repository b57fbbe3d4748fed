//! The event timestamp's text form, written and read without chrono's general
//! formatter and parser in the common case.
//!
//! Every envelope carries one timestamp in its body and one in its `ce-time` header, so
//! each publish writes two and each delivery reads one. chrono's `Serialize` goes
//! through `Display` and serde's `collect_str` (about 230 ns), its parser through its
//! format-item machinery (about 220 ns). Here the shape every writer of this crate
//! produces, `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z` for the years 0 to 9999,
//! is written into a stack buffer and read by fixed offsets. Anything else (another
//! offset, a leap second, a year outside that range, a space for the `T`, more than
//! nine fraction digits) goes to chrono, so the accepted inputs, the values read and
//! the text written are exactly chrono's (`SecondsFormat::AutoSi` with `Z`), which the
//! tests check against chrono itself.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};
use serde::{Deserializer, Serializer, de};

/// The longest text of the fast path: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;

/// A timestamp's text, as chrono writes it with `SecondsFormat::AutoSi` and `Z`.
pub(crate) enum Text {
    /// The common shape, in a stack buffer (ASCII only).
    Fixed { buf: [u8; MAX_LEN], len: usize },
    /// The rare shapes the fixed layout does not cover, written by chrono.
    Other(String),
}

impl Text {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Fixed { buf, len } => std::str::from_utf8(&buf[..*len]).expect("ASCII"),
            Self::Other(s) => s,
        }
    }
}

/// Writes `ts` as RFC 3339 text, exactly as
/// `ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)` does.
pub(crate) fn text(ts: &DateTime<Utc>) -> Text {
    let year = ts.year();
    let nano = ts.nanosecond();
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        return Text::Other(ts.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    let mut buf = *b"0000-00-00T00:00:00.000000000Z";
    put(&mut buf[0..4], year as u32);
    put(&mut buf[5..7], ts.month());
    put(&mut buf[8..10], ts.day());
    put(&mut buf[11..13], ts.hour());
    put(&mut buf[14..16], ts.minute());
    put(&mut buf[17..19], ts.second());
    let digits = if nano == 0 {
        0
    } else if nano.is_multiple_of(1_000_000) {
        put(&mut buf[20..23], nano / 1_000_000);
        3
    } else if nano.is_multiple_of(1_000) {
        put(&mut buf[20..26], nano / 1_000);
        6
    } else {
        put(&mut buf[20..29], nano);
        9
    };
    // The `Z` right after the seconds, or after the fraction's digits.
    let end = if digits == 0 { 19 } else { 20 + digits };
    buf[end] = b'Z';
    Text::Fixed { buf, len: end + 1 }
}

/// Writes `value` as decimal digits filling `out`, zero-padded on the left.
fn put(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Reads RFC 3339 text as chrono's `Deserialize` for `DateTime<Utc>` does (any offset
/// converted to UTC), or gives chrono's error.
pub(crate) fn parse(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match parse_common(text.as_bytes()) {
        Some(ts) => Ok(ts),
        None => text
            .parse::<DateTime<chrono::FixedOffset>>()
            .map(|t| t.with_timezone(&Utc)),
    }
}

/// The fixed layout `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` with a valid date and time
/// (second 59 at most); `None` for anything else.
fn parse_common(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let nano = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    // A second of 60 (a leap second) is refused here and read by chrono.
    let naive = NaiveDate::from_ymd_opt(year as i32, month, day)?
        .and_hms_nano_opt(hour, minute, second, nano)?;
    Some(DateTime::from_naive_utc_and_offset(naive, Utc))
}

/// The ASCII digits of `b` as a number; `None` if any byte is not a digit.
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

/// `#[serde(serialize_with)]`: the same string chrono's `Serialize` writes.
pub(crate) fn serialize<S: Serializer>(
    ts: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(text(ts).as_str())
}

/// `#[serde(deserialize_with)]`: what chrono's `Deserialize` accepts, with its value.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<Utc>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 formatted date and time string")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            parse(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Visitor)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn chrono_json(ts: &DateTime<Utc>) -> String {
        serde_json::to_string(ts).unwrap()
    }

    fn ours_json(ts: &DateTime<Utc>) -> String {
        let mut out = Vec::new();
        serialize(ts, &mut serde_json::Serializer::new(&mut out)).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn ours_from_json(json: &str) -> Result<DateTime<Utc>, serde_json::Error> {
        deserialize(&mut serde_json::Deserializer::from_str(json))
    }

    /// Instants across and beyond the fast path's years, with every fraction width.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let secs = prop_oneof![
            // Years 0 to 9999.
            -62_167_219_200i64..253_402_300_800i64,
            // Anywhere chrono can represent, outside that range included.
            -8_000_000_000_000i64..8_000_000_000_000i64,
            // Around now.
            1_700_000_000i64..1_900_000_000i64,
        ];
        let nanos = prop_oneof![
            Just(0u32),
            (0u32..1_000).prop_map(|n| n * 1_000_000),
            (0u32..1_000_000).prop_map(|n| n * 1_000),
            0u32..1_000_000_000,
            // A leap second, which chrono writes as second 60.
            1_000_000_000u32..2_000_000_000,
        ];
        (secs, nanos).prop_filter_map("representable", |(s, n)| {
            let t = DateTime::from_timestamp(s, n % 1_000_000_000)?;
            if n < 1_000_000_000 {
                return Some(t);
            }
            // Leap seconds exist only at the last second of a minute.
            let naive = t.naive_utc();
            let last = naive
                .date()
                .and_hms_nano_opt(naive.hour(), naive.minute(), 59, n)?;
            Some(Utc.from_utc_datetime(&last))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn writes_what_chrono_writes(ts in instant()) {
            prop_assert_eq!(ours_json(&ts), chrono_json(&ts));
            let written = text(&ts);
            prop_assert_eq!(written.as_str(), ts.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        }

        #[test]
        fn reads_back_what_it_writes(ts in instant()) {
            prop_assert_eq!(ours_from_json(&ours_json(&ts)).unwrap(), ts);
        }

        /// Text near the fast path's shape, valid or not: the same value or an error,
        /// as chrono.
        #[test]
        fn reads_what_chrono_reads(
            text in "[0-9]{4}-[0-1][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,11})?(Z|z|[+-][0-1][0-9]:[0-5][0-9]|)",
        ) {
            let json = serde_json::to_string(&text).unwrap();
            let ours = ours_from_json(&json).ok();
            let theirs = serde_json::from_str::<DateTime<Utc>>(&json).ok();
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn reads_any_string_as_chrono_does(text in "\\PC{0,34}") {
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(
                ours_from_json(&json).ok(),
                serde_json::from_str::<DateTime<Utc>>(&json).ok()
            );
        }
    }

    #[test]
    fn each_fraction_width_as_chrono_writes_it() {
        let base = Utc.with_ymd_and_hms(2026, 12, 6, 1, 2, 3).unwrap();
        for nanos in [
            0,
            5_000_000,
            120_000_000,
            7_000,
            123_456_000,
            1,
            999_999_999,
        ] {
            let ts = base + chrono::Duration::nanoseconds(nanos);
            assert_eq!(ours_json(&ts), chrono_json(&ts), "{nanos} ns");
        }
        assert_eq!(text(&base).as_str(), "2026-12-06T01:02:03Z");
    }

    #[test]
    fn errors_name_the_expected_shape() {
        let err = ours_from_json("\"yesterday\"").unwrap_err().to_string();
        let chrono_err = serde_json::from_str::<DateTime<Utc>>("\"yesterday\"")
            .unwrap_err()
            .to_string();
        assert_eq!(err, chrono_err);
        assert!(ours_from_json("17").is_err());
    }
}
