//! The retry policy: waits that double from `initial` up to `max`, each drawn uniformly
//! from `[wait / 2, wait]` so that many processes retrying together spread out.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter. Cheap to copy; [`reset`](Self::reset) after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Waits start at `initial` and double up to `max` (raised to `initial` if below it).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self { initial, max, current: initial }
    }

    /// The next wait (jittered), doubling the one after it.
    pub fn next_wait(&mut self) -> Duration {
        let wait = jitter(self.current);
        self.current = (self.current * 2).min(self.max);
        wait
    }

    /// Sleeps for [`next_wait`](Self::next_wait).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }

    /// Back to the initial wait, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The un-jittered wait the next call is drawn around.
    pub fn current(&self) -> Duration {
        self.current
    }
}

/// A wait drawn uniformly from `[backoff / 2, backoff]`.
fn jitter(backoff: Duration) -> Duration {
    let nanos = backoff.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(nanos / 2 + rand::rng().random_range(0..=nanos / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_stay_within_the_jitter_band() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let bands = [100, 200, 400, 500, 500];
        for band in bands {
            let wait = backoff.next_wait();
            let band = Duration::from_millis(band);
            assert!(wait >= band / 2 && wait <= band, "{wait:?} outside [{:?}, {band:?}]", band / 2);
        }
        backoff.reset();
        assert_eq!(backoff.current(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_waits() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.insert(Backoff::new(Duration::from_millis(200), Duration::from_secs(1)).next_wait());
        }
        assert!(seen.len() > 50, "only {} distinct waits of 100", seen.len());
    }

    #[test]
    fn a_max_below_initial_is_raised() {
        let mut backoff = Backoff::new(Duration::from_millis(300), Duration::from_millis(10));
        backoff.next_wait();
        assert_eq!(backoff.current(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_drawn_time() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        backoff.wait().await;
        let slept = started.elapsed();
        assert!(slept >= Duration::from_secs(1) && slept <= Duration::from_secs(2), "{slept:?}");
    }
}
