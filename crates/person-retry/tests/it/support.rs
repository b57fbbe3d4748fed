//! Test helpers.

use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use person_retry::Clock;
use tokio::time::Instant;

/// A clock whose time only moves when it is asked to sleep: sleeps return at once
/// and are recorded.
#[derive(Clone)]
pub(crate) struct VirtualClock {
    start: Instant,
    slept: Arc<Mutex<Vec<Duration>>>,
}

impl VirtualClock {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            slept: Arc::default(),
        }
    }

    pub(crate) fn sleeps(&self) -> Vec<Duration> {
        self.slept.lock().unwrap().clone()
    }
}

impl Clock for VirtualClock {
    type Sleep = Ready<()>;

    fn now(&self) -> Instant {
        self.start + self.slept.lock().unwrap().iter().sum::<Duration>()
    }

    fn sleep(&self, duration: Duration) -> Ready<()> {
        self.slept.lock().unwrap().push(duration);
        ready(())
    }
}
