//! Paged reads of the DLQ: every letter once, in order, across `after` / `limit` edges
//! and filters; counts; purges that delete exactly the matching letters and bodies.

use bytes::Bytes;
use futures::StreamExt;
use person_events::PersonId;
use person_retry::DeadLetter;
use person_streaming::{
    DeadLetterFilter, DeadLetterQueue, StoredDeadLetter, StreamingConfig, StreamingErrorKind,
};

use crate::dlq::letter_for;

const A: &str = "person-projection-summary";
const B: &str = "policy-engine";

/// Every page of `filter` read with `limit`, checked page by page: at most `limit`
/// letters, `next_after` the last one's sequence exactly when another page follows.
async fn all_pages(
    dlq: &DeadLetterQueue,
    filter: &DeadLetterFilter,
    limit: usize,
) -> Vec<StoredDeadLetter> {
    let mut out: Vec<StoredDeadLetter> = Vec::new();
    let mut after = None;
    loop {
        let page = dlq.page(filter, after, limit).await.unwrap();
        assert!(page.letters.len() <= limit, "limit {limit}");
        if let Some(next) = page.next_after {
            assert_eq!(page.letters.len(), limit, "a page before another is full");
            assert_eq!(Some(next), page.letters.last().map(|s| s.dlq_sequence));
        }
        if let Some(a) = after {
            assert!(page.letters.iter().all(|s| s.dlq_sequence > a));
        }
        out.extend(page.letters);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

fn seqs(letters: &[StoredDeadLetter]) -> Vec<u64> {
    letters.iter().map(|s| s.dlq_sequence).collect()
}

async fn bodies(client: &person_streaming::StreamingClient) -> Vec<String> {
    let bucket = client
        .jetstream()
        .get_object_store("PERSON_EVENTS_DLQ_BODIES")
        .await
        .unwrap();
    let mut names: Vec<String> = bucket
        .list()
        .await
        .unwrap()
        .map(|o| o.unwrap().name)
        .collect()
        .await;
    names.sort();
    names
}

#[tokio::test]
async fn pages_cover_every_letter_once_in_order_with_filters_and_purges() {
    let (_server, client) =
        crate::support::start_with(StreamingConfig::default(), Some("max_payload: 65536")).await;
    let dlq = client.dead_letters();
    let people: Vec<PersonId> = (0..4).map(|_| PersonId::new()).collect();
    let template = letter_for(
        "person.events.x.created",
        0,
        Bytes::from_static(b"{}"),
        vec![],
        &people[0],
    );
    // 300 letters, more than one read batch: two consumers, four people, two reasons;
    // every 50th is too large for its record and kept in the bodies bucket.
    let mut letters: Vec<(u64, DeadLetter)> = Vec::new();
    for i in 0..300u64 {
        let person = people[(i % 4) as usize];
        let letter = DeadLetter {
            subject: format!("person.events.{person}.created"),
            stream_sequence: i + 1,
            consumer: if i % 3 == 0 { B } else { A }.into(),
            person_id: Some(person.to_string()),
            reason: if i % 2 == 0 {
                "even failure"
            } else {
                "odd failure"
            }
            .into(),
            payload: if i % 50 == 7 {
                Bytes::from(vec![b'x'; 80_000])
            } else {
                Bytes::from(format!("{{\"n\":{i}}}"))
            },
            ..template.clone()
        };
        let seq = dlq.put(&letter).await.unwrap();
        letters.push((seq, letter));
    }
    let all_seqs: Vec<u64> = letters.iter().map(|(s, _)| *s).collect();
    assert_eq!(bodies(&client).await.len(), 6);

    // Every page size gives every letter once, in DLQ order, like list.
    let everything = DeadLetterFilter::default();
    let listed = dlq.list(&everything).await.unwrap();
    assert_eq!(seqs(&listed), all_seqs);
    for limit in [1, 7, 256, 299, 300, 301, 1000] {
        let paged = all_pages(&dlq, &everything, limit).await;
        assert_eq!(seqs(&paged), all_seqs, "limit {limit}");
        assert_eq!(paged, listed, "limit {limit}");
    }
    let big = listed.iter().find(|s| s.body.is_some()).unwrap();
    assert!(
        !big.body.as_ref().unwrap().loaded,
        "pages do not load bodies"
    );

    // after / limit edges.
    let first = dlq.page(&everything, None, 10).await.unwrap();
    assert_eq!(seqs(&first.letters), all_seqs[..10]);
    assert_eq!(first.next_after, Some(all_seqs[9]));
    assert_eq!(dlq.page(&everything, Some(0), 10).await.unwrap(), first);
    let mid = dlq.page(&everything, Some(all_seqs[41]), 5).await.unwrap();
    assert_eq!(seqs(&mid.letters), all_seqs[42..47], "after is exclusive");
    let tail = dlq.page(&everything, Some(all_seqs[297]), 2).await.unwrap();
    assert_eq!(seqs(&tail.letters), all_seqs[298..]);
    assert_eq!(
        tail.next_after, None,
        "an exactly full last page has no next"
    );
    let short = dlq.page(&everything, Some(all_seqs[297]), 3).await.unwrap();
    assert_eq!((short.letters.len(), short.next_after), (2, None));
    for after in [all_seqs[299], all_seqs[299] + 1000, u64::MAX] {
        let page = dlq.page(&everything, Some(after), 10).await.unwrap();
        assert!(page.letters.is_empty() && page.next_after.is_none());
    }
    let err = dlq.page(&everything, None, 0).await.unwrap_err();
    assert_eq!(err.kind(), StreamingErrorKind::InvalidInput);

    // Filters with paging: subject filters, a content filter, and both.
    let filters = [
        DeadLetterFilter {
            consumer: Some(A.into()),
            ..Default::default()
        },
        DeadLetterFilter {
            person_id: Some(people[1].to_string()),
            ..Default::default()
        },
        DeadLetterFilter {
            reason_contains: Some("odd".into()),
            ..Default::default()
        },
        DeadLetterFilter {
            consumer: Some(B.into()),
            person_id: Some(people[2].to_string()),
            reason_contains: Some("even".into()),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let expected: Vec<u64> = letters
            .iter()
            .filter(|(_, l)| filter.matches(l))
            .map(|(s, _)| *s)
            .collect();
        assert!(!expected.is_empty(), "{filter:?}");
        for limit in [1, 4, 1000] {
            let paged = all_pages(&dlq, filter, limit).await;
            assert_eq!(seqs(&paged), expected, "{filter:?} limit {limit}");
            assert!(paged.iter().all(|s| filter.matches(&s.letter)));
        }
        assert_eq!(
            dlq.count(filter).await.unwrap(),
            expected.len() as u64,
            "{filter:?}"
        );
    }
    assert_eq!(dlq.count(&everything).await.unwrap(), 300);

    // A letter deleted between pages is not seen; one stored meanwhile comes later.
    let p1 = dlq.page(&everything, None, 100).await.unwrap();
    dlq.delete(all_seqs[150]).await.unwrap();
    let newer = DeadLetter {
        stream_sequence: 10_000,
        ..letters[0].1.clone()
    };
    let newer_seq = dlq.put(&newer).await.unwrap();
    let mut rest = p1.letters;
    rest.extend(all_pages_after(&dlq, p1.next_after).await);
    let mut expected: Vec<u64> = all_seqs.clone();
    expected.remove(150);
    expected.push(newer_seq);
    assert_eq!(seqs(&rest), expected);

    // Purge with a content filter deletes exactly the matching letters and their bodies.
    let odd_of_a = DeadLetterFilter {
        consumer: Some(A.into()),
        reason_contains: Some("odd".into()),
        ..Default::default()
    };
    let doomed: Vec<u64> = dlq
        .list(&odd_of_a)
        .await
        .unwrap()
        .iter()
        .map(|s| s.dlq_sequence)
        .collect();
    let doomed_bodies = dlq
        .list(&odd_of_a)
        .await
        .unwrap()
        .iter()
        .filter(|s| s.body.is_some())
        .count();
    assert!(doomed_bodies > 0, "the filter covers a body object");
    let bodies_before = bodies(&client).await.len();
    assert_eq!(dlq.purge(&odd_of_a).await.unwrap(), doomed.len());
    let left = seqs(&dlq.list(&everything).await.unwrap());
    let expected: Vec<u64> = expected
        .into_iter()
        .filter(|s| !doomed.contains(s))
        .collect();
    assert_eq!(left, expected);
    assert_eq!(bodies(&client).await.len(), bodies_before - doomed_bodies);

    // Purge by consumer and person (headers only) removes those and their bodies.
    let of_b = DeadLetterFilter {
        consumer: Some(B.into()),
        ..Default::default()
    };
    let b_letters = dlq.list(&of_b).await.unwrap();
    let b_bodies = b_letters.iter().filter(|s| s.body.is_some()).count();
    assert!(b_bodies > 0);
    let bodies_before = bodies(&client).await.len();
    assert_eq!(dlq.purge(&of_b).await.unwrap(), b_letters.len());
    assert_eq!(dlq.count(&of_b).await.unwrap(), 0);
    assert_eq!(bodies(&client).await.len(), bodies_before - b_bodies);
    let left_now = seqs(&dlq.list(&everything).await.unwrap());
    let expected: Vec<u64> = left
        .into_iter()
        .filter(|s| !b_letters.iter().any(|b| b.dlq_sequence == *s))
        .collect();
    assert_eq!(left_now, expected);
    assert!(!expected.is_empty());

    // purge_with reports every deletion; what is left is fewer than a batch, so all go.
    let mut told = Vec::new();
    let purged = dlq
        .purge_with(&everything, |seq, result| {
            result.unwrap();
            told.push(seq);
            true
        })
        .await
        .unwrap();
    assert_eq!(told, expected);
    assert_eq!(purged, expected.len());
    assert_eq!(dlq.count(&everything).await.unwrap(), 0);
    assert!(bodies(&client).await.is_empty());
    let page = dlq.page(&everything, None, 10).await.unwrap();
    assert!(page.letters.is_empty() && page.next_after.is_none());
}

async fn all_pages_after(dlq: &DeadLetterQueue, mut after: Option<u64>) -> Vec<StoredDeadLetter> {
    let mut out = Vec::new();
    while let Some(a) = after {
        let page = dlq
            .page(&DeadLetterFilter::default(), Some(a), 64)
            .await
            .unwrap();
        out.extend(page.letters);
        after = page.next_after;
    }
    out
}
