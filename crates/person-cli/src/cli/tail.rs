//! `tail`: follow events, or show the last N, filtered.

use std::collections::VecDeque;

use async_nats::jetstream::consumer;
use futures::StreamExt;
use person_cli::error::CliError;
use person_cli::filter::{EventFilter, event_type};
use person_cli::format::event_line;
use person_events::PersonId;
use person_legacy_compat::{Origin, RawMessage, decode_message};

use super::Global;

pub(crate) const EXAMPLES: &str = "\
Examples:
  person-stream tail                                   # new events, until Ctrl-C
  person-stream tail --last 20 --no-follow             # the last 20 events, then exit
  person-stream tail --person 0f8fad5b-d9cb-469f-a165-70867728950e --last 100
  person-stream tail --correlation 0190f3c2-7b1e-7cc0-9a8e-2f6d1c1b2a3f --no-follow
  person-stream tail --type name_updated --json | jq .envelope.event

Without --last, following starts with the next event stored; with --no-follow and no
--last, every stored event is shown. Events stored by the old system (raw V1 or week-1
envelopes) are shown upcast to V2 and marked `[upcast from ...]`; in --json they carry
\"upcast_from\". --last with --correlation or --type reads the whole stream (or the
person's events) to find the matches.";

/// `tail` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only this person's events (a person id, a UUID).
    #[arg(long, value_name = "ID")]
    person: Option<String>,
    /// Only events with this correlation id.
    #[arg(long, value_name = "ID")]
    correlation: Option<String>,
    /// Only events of this type (`created`, `name_updated`, ... or `NameUpdated`).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Start with the last N matching events.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Exit once the stored events are shown instead of waiting for new ones.
    #[arg(long)]
    no_follow: bool,
    /// Exit after showing N events.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// One JSON document per line.
    #[arg(long)]
    json: bool,
}

struct Shown {
    seq: u64,
    text: String,
}

pub(crate) async fn run(g: &Global, args: Args) -> Result<(), CliError> {
    let person = args
        .person
        .as_deref()
        .map(|p| {
            p.parse::<PersonId>()
                .map_err(|e| CliError::usage(format!("--person `{p}`: {e}")))
        })
        .transpose()?;
    let filter = EventFilter {
        person,
        correlation: args.correlation.clone(),
        event_type: args
            .event_type
            .as_deref()
            .map(event_type)
            .transpose()
            .map_err(|e| CliError::usage(format!("--type: {e}")))?,
    };
    let follow = !args.no_follow;
    if args.limit == Some(0) {
        return Ok(());
    }
    let client = g.connect().await?;
    let name = client.config().stream.name.clone();
    let mut stream = client.jetstream().get_stream(&name).await.map_err(|e| {
        CliError::other(format!("cannot open stream {name}: {e}"))
            .with_hint("`person-stream setup` creates it")
    })?;
    let last_sequence = stream
        .info()
        .await
        .map_err(|e| CliError::other(format!("cannot read stream {name}: {e}")))?
        .state
        .last_sequence;
    let deliver_policy = match args.last {
        None if follow => consumer::DeliverPolicy::New,
        None => consumer::DeliverPolicy::All,
        Some(0) => consumer::DeliverPolicy::New,
        Some(n) if filter.is_subject_only() && filter.person.is_none() => {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last_sequence.saturating_sub(n as u64 - 1).max(1),
            }
        }
        Some(_) => consumer::DeliverPolicy::All,
    };
    let subject = filter.subject(&client.config().subjects());
    let mut reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| CliError::other(format!("cannot read {subject} from {name}: {e}")))?;
    let pending = reader
        .info()
        .await
        .map_err(|e| CliError::other(format!("cannot read {subject} from {name}: {e}")))?
        .num_pending;
    let mut caught_up = pending == 0;
    if caught_up && !follow {
        return Ok(());
    }
    let mut messages = reader
        .messages()
        .await
        .map_err(|e| CliError::other(format!("cannot read {subject} from {name}: {e}")))?;
    let keep = args.last.unwrap_or(usize::MAX);
    let mut backlog: VecDeque<Shown> = VecDeque::new();
    let mut shown = 0usize;
    let limit = args.limit.unwrap_or(usize::MAX);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => break,
            next = messages.next() => next,
        };
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| CliError::other(format!("reading {subject} failed: {e}")))?;
        let info = msg
            .info()
            .map_err(|e| CliError::other(format!("message without JetStream info: {e}")))?;
        let (seq, remaining) = (info.stream_sequence, info.pending);
        if let Some(text) = render(&msg, seq, &filter, args.json) {
            if caught_up {
                println!("{text}");
                shown += 1;
            } else {
                backlog.push_back(Shown { seq, text });
                if backlog.len() > keep {
                    backlog.pop_front();
                }
            }
        }
        if !caught_up && (remaining == 0 || seq >= last_sequence) {
            caught_up = true;
            for s in backlog.drain(..) {
                debug_assert!(s.seq <= seq);
                if shown < limit {
                    println!("{}", s.text);
                    shown += 1;
                }
            }
            if !follow {
                break;
            }
        }
        if shown >= limit {
            break;
        }
    }
    Ok(())
}

fn render(
    msg: &async_nats::jetstream::Message,
    seq: u64,
    filter: &EventFilter,
    json: bool,
) -> Option<String> {
    let content_type = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(person_metadata::headers::CONTENT_TYPE))
        .map(|v| v.as_str());
    let decoded = decode_message(&RawMessage {
        subject: Some(msg.subject.as_str()),
        payload: &msg.payload,
        content_type,
        stream_sequence: Some(seq),
    });
    match decoded {
        Ok(d) => {
            if !filter.matches(&d.envelope) {
                return None;
            }
            let origin = match d.origin {
                Origin::Current => None,
                Origin::LegacyV1 => Some("V1".to_owned()),
                Origin::OlderEnvelope { schema_version } => {
                    Some(format!("a schema {schema_version} envelope"))
                }
                _ => Some("an older shape".to_owned()),
            };
            if json {
                let upcast_from = match d.origin {
                    Origin::Current => serde_json::Value::Null,
                    Origin::LegacyV1 => "PersonEvent.v1".into(),
                    Origin::OlderEnvelope { schema_version } => {
                        format!("envelope.v{schema_version}").into()
                    }
                    _ => "older".into(),
                };
                Some(
                    serde_json::json!({
                        "stream_sequence": seq,
                        "subject": msg.subject.as_str(),
                        "upcast_from": upcast_from,
                        "envelope": serde_json::to_value(&d.envelope).unwrap_or_default(),
                    })
                    .to_string(),
                )
            } else {
                Some(event_line(seq, &d.envelope, origin.as_deref()))
            }
        }
        Err(e) if filter.is_subject_only() => Some(if json {
            serde_json::json!({
                "stream_sequence": seq,
                "subject": msg.subject.as_str(),
                "error": e.to_string(),
            })
            .to_string()
        } else {
            format!("#{seq}  undecodable on {}: {e}", msg.subject)
        }),
        Err(_) => None,
    }
}
