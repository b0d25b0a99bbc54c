//! Exponential backoff with jitter for transient registry failures, honouring Retry-After.

use std::time::Duration;

const BASE: Duration = Duration::from_millis(200);
const CAP: Duration = Duration::from_secs(10);

/// Counts attempts and hands out the delay before the next one.
pub struct Backoff {
    attempt: u32,
    max_attempts: u32,
}

impl Backoff {
    pub fn new(max_attempts: u32) -> Self {
        Backoff {
            attempt: 1,
            max_attempts: max_attempts.max(1),
        }
    }

    /// The 1-based number of the attempt about to be made.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before another attempt, or `None` when the budget is spent.
    /// A server's Retry-After wins over the computed delay.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        if self.attempt >= self.max_attempts {
            return None;
        }
        let exponential = BASE
            .saturating_mul(1 << (self.attempt - 1).min(16))
            .min(CAP);
        self.attempt += 1;
        Some(retry_after.unwrap_or_else(|| with_jitter(exponential)))
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
}
