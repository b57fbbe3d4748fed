//! Property tests of the policy, its backoff and the handler's attempt count.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use person_retry::{Jitter, RetryHandler, RetryPolicy};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
    ]
}

prop_compose! {
    fn policy()(
        attempts in 1u32..60,
        initial_ms in 0u64..5_000,
        extra_ms in 0u64..120_000,
        multiplier in 1.0f64..8.0,
        jitter in jitter(),
    ) -> RetryPolicy {
        RetryPolicy::builder()
            .max_attempts(attempts)
            .initial_backoff(Duration::from_millis(initial_ms))
            .max_backoff(Duration::from_millis(initial_ms + extra_ms))
            .multiplier(multiplier)
            .jitter(jitter)
            .build()
            .unwrap()
    }
}

proptest! {
    #[test]
    fn delays_stay_within_zero_and_max(p in policy(), seed in any::<u64>(), attempt in 0u32..200) {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = p.delay_with(attempt, &mut rng);
        prop_assert!(d <= p.max_backoff(), "{d:?} > {:?}", p.max_backoff());
        prop_assert!(p.delay(attempt) <= p.max_backoff());
        for d in p.backoff_seeded(seed) {
            prop_assert!(d <= p.max_backoff());
        }
        for d in p.backoff() {
            prop_assert!(d <= p.max_backoff());
        }
        prop_assert_eq!(p.delay_with(1, &mut rng), Duration::ZERO);
    }

    #[test]
    fn jitter_free_delays_never_decrease_until_the_cap(p in policy()) {
        let p = p.to_builder().jitter(Jitter::None).build().unwrap();
        let delays: Vec<Duration> = p.backoff().collect();
        prop_assert_eq!(delays.len() as u32, p.max_attempts() - 1);
        for pair in delays.windows(2) {
            prop_assert!(pair[0] <= pair[1], "{:?} then {:?}", pair[0], pair[1]);
            if pair[0] == p.max_backoff() {
                prop_assert_eq!(pair[1], p.max_backoff());
            }
        }
        for attempt in 2..p.max_attempts() {
            prop_assert!(p.delay(attempt) <= p.delay(attempt + 1));
        }
        if let Some(first) = delays.first() {
            prop_assert_eq!(*first, p.initial_backoff());
        }
    }

    #[test]
    fn schedule_fits_max_deliver_and_matches_nak_delay(p in policy()) {
        let schedule = p.schedule();
        // JetStream requires backoff.len() < max_deliver (= max_attempts).
        prop_assert!(schedule.len() < p.max_attempts() as usize || schedule.is_empty());
        prop_assert!(schedule.len() <= p.max_attempts() as usize);
        prop_assert!(schedule.iter().all(|d| *d <= p.max_backoff()));
        for delivered in 1..(p.max_attempts() as u64 + 5) {
            let expected = if schedule.is_empty() {
                p.initial_backoff()
            } else {
                schedule[(delivered.min(schedule.len() as u64) - 1) as usize]
            };
            prop_assert_eq!(p.nak_delay(delivered), expected);
            // The delay after delivery d is the jitter-free delay before attempt d + 1.
            if delivered < p.max_attempts() as u64 {
                let nominal = p.to_builder().jitter(Jitter::None).build().unwrap();
                prop_assert_eq!(p.nak_delay(delivered), nominal.delay(delivered as u32 + 1));
            }
        }
    }

    #[test]
    fn nak_delays_stay_within_zero_and_max_and_are_seeded(
        p in policy(),
        seed in any::<u64>(),
        delivered in 0u64..200,
    ) {
        let a = p.nak_delay_with(delivered, &mut StdRng::seed_from_u64(seed));
        let b = p.nak_delay_with(delivered, &mut StdRng::seed_from_u64(seed));
        prop_assert_eq!(a, b, "the same seed gives the same delay");
        prop_assert!(a <= p.max_backoff(), "{a:?} > {:?}", p.max_backoff());
        let nominal = p.nak_delay(delivered);
        match p.jitter() {
            Jitter::None => prop_assert_eq!(a, nominal),
            Jitter::Full => prop_assert!(a <= nominal, "{a:?} > {nominal:?}"),
            Jitter::Equal => prop_assert!(a >= nominal / 2 && a <= nominal, "{a:?} vs {nominal:?}"),
            Jitter::Decorrelated => prop_assert!(a >= p.initial_backoff().min(p.max_backoff())),
        }
    }

    #[test]
    fn nak_delays_jitter_like_the_in_process_retry_of_the_same_step(
        p in policy(),
        seed in any::<u64>(),
    ) {
        // The NAK after delivery d and the in-process wait before attempt d + 1 are the
        // same step, drawn the same way.
        for delivered in 1..u64::from(p.max_attempts()) {
            let nak = p.nak_delay_with(delivered, &mut StdRng::seed_from_u64(seed));
            let retry = p.delay_with(delivered as u32 + 1, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(nak, retry, "delivered {}", delivered);
        }
    }

    #[test]
    fn full_and_equal_jitter_spread_nak_delays(
        p in policy(),
        seed in any::<u64>(),
        delivered in 1u64..20,
        full in any::<bool>(),
    ) {
        let mode = if full { Jitter::Full } else { Jitter::Equal };
        let p = p.to_builder().jitter(mode).build().unwrap();
        // A nominal step of at least 1 ms leaves a million nanosecond values to draw.
        prop_assume!(p.nak_delay(delivered) >= Duration::from_millis(1));
        let mut rng = StdRng::seed_from_u64(seed);
        let draws: Vec<Duration> = (0..10).map(|_| p.nak_delay_with(delivered, &mut rng)).collect();
        prop_assert!(draws.iter().any(|d| *d != draws[0]), "{mode:?}: {draws:?}");
    }

    #[test]
    fn serde_round_trips(p in policy()) {
        // serde_json (without `float_roundtrip`) may be off by one ulp on arbitrary
        // floats; configuration multipliers are short decimals, so use exact ones.
        let exact = (p.multiplier() * 8.0).round() / 8.0;
        let p = p.to_builder().multiplier(exact).build().unwrap();
        let json = serde_json::to_string(&p).unwrap();
        prop_assert_eq!(serde_json::from_str::<RetryPolicy>(&json).unwrap(), p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_exact_number_of_attempts_is_made(p in policy()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let calls = AtomicU32::new(0);
        let handler = RetryHandler::new(p.clone());
        let result: Result<(), &str> = runtime.block_on(handler.execute_with_retry(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("always")
            },
            "prop",
        ));
        prop_assert_eq!(result, Err("always"));
        prop_assert_eq!(calls.load(Ordering::SeqCst), p.max_attempts());
    }
}
