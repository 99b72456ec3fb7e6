//! Keyed rate limiting: one budget per (service, bucket) where a bucket is a GHL location
//! (or company) or a connector's API key. A `governor` GCRA limiter paces requests; the
//! server's own rate-limit headers correct it; a daily budget is split by priority.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::LimitScope;

/// Why a request is made. When the daily budget runs short, lower priorities yield first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A webhook said this record changed: the user is waiting.
    Webhook,
    /// The incremental contacts poll.
    Poll,
    /// Writes back to GHL (enrichment results, notes, tags).
    WriteBack,
    /// The budgeted tasks/notes sweep.
    Sweep,
    /// Listing ids to find deletes.
    Reconcile,
    /// Snapshot exports and other bulk reads.
    Export,
}

impl Priority {
    /// Share of the daily budget that must remain for this priority to go ahead.
    fn daily_reserve(self) -> f64 {
        match self {
            Priority::Webhook => 0.0,
            Priority::Poll => 0.02,
            Priority::WriteBack => 0.05,
            Priority::Sweep => 0.10,
            Priority::Reconcile => 0.15,
            Priority::Export => 0.20,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Webhook => "webhook",
            Priority::Poll => "poll",
            Priority::WriteBack => "write_back",
            Priority::Sweep => "sweep",
            Priority::Reconcile => "reconcile",
            Priority::Export => "export",
        }
    }
}

/// What a response said about the remaining budget (already parsed from its headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitObservation {
    pub remaining: Option<u64>,
    pub max: Option<u64>,
    pub interval: Option<Duration>,
    pub daily_remaining: Option<u64>,
    pub daily_limit: Option<u64>,
}

/// The configured quota of one service.
#[derive(Debug, Clone, Copy)]
pub struct QuotaSettings {
    /// The server's limit per window (GHL: 100).
    pub burst_max: u32,
    pub window: Duration,
    /// Share of `burst_max` we allow ourselves (0–1].
    pub share: f64,
    /// Our own daily cap per bucket.
    pub daily_budget: u64,
}

impl QuotaSettings {
    /// Requests per window the daemon allows itself.
    pub fn allowed_per_window(&self) -> u32 {
        ((f64::from(self.burst_max) * self.share).floor() as u32).clamp(1, self.burst_max.max(1))
    }

    /// The steady request rate the limiter aims for (requests per second).
    pub fn ceiling_per_second(&self) -> f64 {
        f64::from(self.allowed_per_window()) / self.window.as_secs_f64()
    }
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    paused_until: Option<Instant>,
    day: i64,
    used_today: u64,
    daily_remaining: Option<u64>,
    daily_limit: Option<u64>,
    remaining: Option<u64>,
    max: Option<u64>,
}

/// A snapshot of one bucket, for metrics and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSnapshot {
    pub bucket: String,
    pub used_today: u64,
    pub daily_remaining: Option<u64>,
    pub remaining: Option<u64>,
}

/// Rate limits of one service, keyed by bucket.
pub struct RateLimits {
    quota: QuotaSettings,
    limiter: DefaultKeyedRateLimiter<String>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// 429 answers per bucket since this limiter was built (never reset; readers diff it).
    rate_limited: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("quota", &self.quota).finish_non_exhaustive()
    }
}

/// At or below this many requests left in the server's window, the bucket pauses until the
/// window rolls over (2 of GHL's 100).
fn low_water(max: u64) -> u64 {
    (max / 50).max(1)
}

fn day_number() -> i64 {
    crate::store::now_ms() / 86_400_000
}

impl RateLimits {
    pub fn new(quota: QuotaSettings) -> Self {
        let allowed = quota.allowed_per_window();
        // GCRA allows `burst + rate × window` in any window of that length, and the server
        // counts the same requests in its own sliding window. The burst is the headroom left
        // by the share minus twice (low-water mark + 1): once so our own traffic never leaves
        // the server's `remaining` at or below the mark (the pause in `observe` then fires
        // only when someone else spends this bucket), once more for arrival jitter (requests
        // sent evenly paced can arrive bunched). A burst of the whole headroom let our own
        // pacing reach the mark once per window and pause a full window each time: 57 % of
        // the ceiling in `benches/ghl_rate.rs`. 100 per 10 s at share 0.9: burst 4.
        let headroom = quota.burst_max.saturating_sub(allowed);
        let reserve = 2 * (low_water(u64::from(quota.burst_max)) as u32 + 1);
        let burst = headroom.saturating_sub(reserve).clamp(1, allowed.max(1));
        let period = quota.window / allowed.max(1);
        let governor_quota = Quota::with_period(period.max(Duration::from_micros(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            quota,
            limiter: RateLimiter::keyed(governor_quota),
            buckets: Mutex::new(HashMap::new()),
            rate_limited: Mutex::new(HashMap::new()),
        }
    }

    pub fn quota(&self) -> QuotaSettings {
        self.quota
    }

    fn with_bucket<R>(&self, bucket: &str, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let state = buckets.entry(bucket.to_owned()).or_default();
        let today = day_number();
        if state.day != today {
            state.day = today;
            state.used_today = 0;
            state.daily_remaining = None;
        }
        f(state)
    }

    /// Waits until a request in `bucket` at `priority` may be sent, or refuses it when the
    /// daily budget left is below the priority's reserve.
    pub async fn acquire(&self, bucket: &str, priority: Priority) -> Result<(), LimitScope> {
        loop {
            let (paused_until, refused) = self.with_bucket(bucket, |state| {
                let budget_left = self.quota.daily_budget.saturating_sub(state.used_today);
                let left = match state.daily_remaining {
                    Some(server) => budget_left.min(server),
                    None => budget_left,
                };
                let limit = state.daily_limit.map_or(self.quota.daily_budget, |l| l.min(self.quota.daily_budget));
                let reserve = (limit as f64 * priority.daily_reserve()).ceil() as u64;
                let refused = left == 0 || (priority != Priority::Webhook && left <= reserve);
                (state.paused_until, refused)
            });
            if refused {
                return Err(LimitScope::Daily);
            }
            match paused_until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until.into()).await,
                _ => break,
            }
        }
        let key = bucket.to_owned();
        self.limiter.until_key_ready(&key).await;
        self.with_bucket(bucket, |state| state.used_today += 1);
        Ok(())
    }

    /// Corrects the bucket from what the server said.
    pub fn observe(&self, bucket: &str, seen: LimitObservation) {
        let window = seen.interval.unwrap_or(self.quota.window);
        self.with_bucket(bucket, |state| {
            if seen.daily_remaining.is_some() {
                state.daily_remaining = seen.daily_remaining;
            }
            if seen.daily_limit.is_some() {
                state.daily_limit = seen.daily_limit;
            }
            state.remaining = seen.remaining.or(state.remaining);
            state.max = seen.max.or(state.max);
            // The server says the window is (nearly) spent: someone else shares this bucket,
            // or our pacing drifted. Wait for the window to roll over instead of earning a 429.
            if let Some(remaining) = seen.remaining {
                let max = seen.max.unwrap_or(u64::from(self.quota.burst_max)).max(1);
                if remaining <= low_water(max) {
                    let until = Instant::now() + window;
                    state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
                }
            }
        });
    }

    /// Stops sending in `bucket` for `duration` (after a 429).
    pub fn pause(&self, bucket: &str, duration: Duration) {
        let until = Instant::now() + duration;
        self.with_bucket(bucket, |state| {
            state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
        });
    }

    /// Marks the daily budget of `bucket` as used up (a daily 429).
    pub fn exhaust_daily(&self, bucket: &str) {
        self.with_bucket(bucket, |state| state.daily_remaining = Some(0));
    }

    /// Counts a 429 answer in `bucket`.
    pub fn note_rate_limited(&self, bucket: &str) {
        let mut counts = self.rate_limited.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(bucket.to_owned()).or_default() += 1;
    }

    /// 429 answers received in `bucket` since this limiter was built. Monotonic: a run reads
    /// it at its start and diffs it to count its own.
    pub fn rate_limited_total(&self, bucket: &str) -> u64 {
        let counts = self.rate_limited.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(bucket).copied().unwrap_or(0)
    }

    /// Requests made today per bucket.
    pub fn snapshot(&self) -> Vec<BucketSnapshot> {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = buckets
            .iter()
            .map(|(bucket, state)| BucketSnapshot {
                bucket: bucket.clone(),
                used_today: state.used_today,
                daily_remaining: state.daily_remaining,
                remaining: state.remaining,
            })
            .collect();
        out.sort_by(|a, b| a.bucket.cmp(&b.bucket));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(burst_max: u32, share: f64, daily: u64) -> QuotaSettings {
        QuotaSettings { burst_max, window: Duration::from_secs(10), share, daily_budget: daily }
    }

    #[test]
    fn the_limiter_never_allows_more_than_the_server_limit_in_a_window() {
        let limits = RateLimits::new(quota(100, 0.9, 1000));
        // Without waiting, only the burst is available at once.
        let key = "loc".to_owned();
        let immediate = (0..200).filter(|_| limits.limiter.check_key(&key).is_ok()).count();
        assert_eq!(immediate, 4);
        // Burst plus a window of steady pacing stays above the low-water mark with as much
        // again to spare, so our own traffic never triggers the header-correction pause.
        assert!((immediate as u64 + 90) + low_water(100) < 100 - low_water(100));
        assert_eq!(quota(100, 0.9, 1).allowed_per_window(), 90);
        assert!((quota(100, 0.9, 1).ceiling_per_second() - 9.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn low_priorities_yield_when_the_daily_budget_runs_short() {
        let limits = RateLimits::new(QuotaSettings {
            burst_max: 1000,
            window: Duration::from_secs(1),
            share: 1.0,
            daily_budget: 100,
        });
        limits.observe(
            "loc",
            LimitObservation { daily_remaining: Some(12), daily_limit: Some(100), ..Default::default() },
        );
        assert_eq!(limits.acquire("loc", Priority::Export).await, Err(LimitScope::Daily));
        assert_eq!(limits.acquire("loc", Priority::Reconcile).await, Err(LimitScope::Daily));
        assert_eq!(limits.acquire("loc", Priority::Sweep).await, Ok(()));
        assert_eq!(limits.acquire("loc", Priority::Poll).await, Ok(()));
        limits.exhaust_daily("loc");
        assert_eq!(limits.acquire("loc", Priority::Poll).await, Err(LimitScope::Daily));
        assert_eq!(limits.acquire("loc", Priority::Webhook).await, Err(LimitScope::Daily));
        // Other buckets are unaffected.
        assert_eq!(limits.acquire("other", Priority::Export).await, Ok(()));
    }

    #[tokio::test]
    async fn a_nearly_spent_window_pauses_the_bucket() {
        let limits = RateLimits::new(QuotaSettings {
            burst_max: 100,
            window: Duration::from_millis(200),
            share: 1.0,
            daily_budget: 100,
        });
        limits.observe(
            "loc",
            LimitObservation {
                remaining: Some(1),
                max: Some(100),
                interval: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        );
        let started = Instant::now();
        limits.acquire("loc", Priority::Poll).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
