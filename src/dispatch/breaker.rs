//! A circuit breaker per connector: after `threshold` consecutive failed batches it opens for
//! `cooldown`, then lets one probe batch through; a failed probe re-opens it at once.

use std::time::{Duration, Instant};

/// What the dispatcher may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Deliver normally.
    Closed,
    /// Cool-down over: deliver one batch to test the target.
    Probe,
    /// Leave this connector alone until the cool-down ends.
    Open,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, failures: 0, open_until: None }
    }

    pub fn gate(&self, now: Instant) -> Gate {
        match self.open_until {
            None => Gate::Closed,
            Some(until) if now < until => Gate::Open,
            Some(_) => Gate::Probe,
        }
    }

    /// Records a batch: `true` when the target answered (anything but retryable failures).
    /// Returns true when this call opened the circuit.
    pub fn record(&mut self, success: bool, now: Instant) -> bool {
        if success {
            self.failures = 0;
            self.open_until = None;
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        let probing = self.open_until.is_some();
        if probing || self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.gate(now) == Gate::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_after_the_cooldown_and_closes_on_success() {
        let start = Instant::now();
        let cooldown = Duration::from_secs(30);
        let mut breaker = Breaker::new(3, cooldown);
        assert_eq!(breaker.gate(start), Gate::Closed);
        assert!(!breaker.record(false, start));
        assert!(!breaker.record(false, start));
        assert!(breaker.record(false, start));
        assert_eq!(breaker.gate(start + Duration::from_secs(1)), Gate::Open);
        let later = start + cooldown;
        assert_eq!(breaker.gate(later), Gate::Probe);
        // A failed probe re-opens at once.
        assert!(breaker.record(false, later));
        assert_eq!(breaker.gate(later + Duration::from_secs(1)), Gate::Open);
        let again = later + cooldown;
        assert_eq!(breaker.gate(again), Gate::Probe);
        breaker.record(true, again);
        assert_eq!(breaker.gate(again), Gate::Closed);
        // Success resets the count.
        assert!(!breaker.record(false, again));
        assert!(!breaker.record(false, again));
    }
}
