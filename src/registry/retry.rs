//! The one retry policy for registry traffic: exponential backoff with jitter, honouring
//! Retry-After, bounded by a number of attempts and by an overall deadline. Requests (manifest,
//! HEAD, a blob's first byte) and blob bodies resumed after a break each draw one [`Backoff`]
//! from it; a blob body's backoff spans every resume of that blob.

use std::time::{Duration, Instant};

const BASE: Duration = Duration::from_millis(200);
const CAP: Duration = Duration::from_secs(10);
/// How long one request or one blob may keep failing before it is given up.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// Attempts and deadline, shared by every request of a client.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Time a request or blob may spend failing (from its first failure); progress on a blob
    /// body starts the clock again.
    pub deadline: Duration,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// A fresh budget for one request or one blob.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            attempt: 1,
            policy: *self,
            failing_since: None,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new(5)
    }
}

/// Counts attempts and hands out the delay before the next one.
pub struct Backoff {
    attempt: u32,
    policy: RetryPolicy,
    failing_since: Option<Instant>,
}

impl Backoff {
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy::new(max_attempts).backoff()
    }

    /// The 1-based number of the attempt about to be made.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Bytes arrived: the failures so far are behind us (attempts still count).
    pub fn progressed(&mut self) {
        self.failing_since = None;
    }

    /// The delay before another attempt, or `None` when the attempts or the deadline are
    /// spent. A server's Retry-After wins over the computed delay.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.attempt >= self.policy.max_attempts {
            return None;
        }
        let failing_since = *self.failing_since.get_or_insert_with(Instant::now);
        let exponential = BASE
            .saturating_mul(1 << (self.attempt - 1).min(16))
            .min(CAP);
        let delay = retry_after.unwrap_or_else(|| with_jitter(exponential));
        if failing_since.elapsed() + delay > self.policy.deadline {
            return None;
        }
        self.attempt += 1;
        Some(delay)
    }
}

/// Adds up to 25% so retrying clients spread out.
fn with_jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    delay + delay.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_and_retry_after() {
        let mut backoff = Backoff::new(3);
        assert!(backoff.next_delay(None).unwrap() >= BASE);
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(backoff.attempt(), 3);
        assert_eq!(backoff.next_delay(None), None);
    }

    #[test]
    fn the_deadline_ends_retries() {
        let policy = RetryPolicy {
            max_attempts: 100,
            deadline: Duration::from_secs(5),
        };
        let mut backoff = policy.backoff();
        assert!(backoff.next_delay(Some(Duration::from_secs(4))).is_some());
        assert_eq!(backoff.next_delay(Some(Duration::from_secs(6))), None);
    }
}
