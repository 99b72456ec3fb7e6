//! Keyed rate limiting: one budget per (service, bucket) where a bucket is a GHL location
//! (or company) or a connector's API key. A GCRA pacer spaces requests; the server's own
//! rate-limit headers correct it; the daily budget is split by priority.
//!
//! Budget by priority (issue 22), in both horizons:
//! - **The window.** Requests waiting on one bucket queue by priority (webhook > poll >
//!   write-back > sweep > reconcile > export), first come first served within a priority: the
//!   next slot the pacer frees goes to the highest priority waiting, so a webhook or poll
//!   request never queues behind a stream of sweep requests, and bulk work uses exactly what
//!   incremental work leaves.
//! - **The day.** Each priority stops when the budget left falls to its reserve, and the bulk
//!   priorities (sweep, reconcile, export) together never spend more than
//!   `bulk_daily_share` of the day's budget.
//!
//! The pacer runs on tokio's clock, so tests can pause time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

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

    /// Bulk work: it may use what incremental work leaves, within `bulk_daily_share` of the day.
    pub fn is_bulk(self) -> bool {
        matches!(self, Priority::Sweep | Priority::Reconcile | Priority::Export)
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
    /// Share (0–1] of the day's budget the bulk priorities (sweep, reconcile, export) may
    /// spend together; incremental work keeps the rest.
    pub bulk_daily_share: f64,
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

    /// Requests per bucket and day the bulk priorities may spend together, of a day's `limit`.
    fn bulk_cap(&self, limit: u64) -> u64 {
        (limit as f64 * self.bulk_daily_share.clamp(0.0, 1.0)).floor() as u64
    }
}

/// A request waiting for a slot: lower sorts first (priority, then arrival).
type Ticket = (Priority, u64);

#[derive(Debug, Default)]
struct Bucket {
    paused_until: Option<Instant>,
    /// GCRA's theoretical arrival time of the next request.
    tat: Option<Instant>,
    day: i64,
    used_today: u64,
    /// Of `used_today`, what the bulk priorities spent.
    bulk_used_today: u64,
    daily_remaining: Option<u64>,
    daily_limit: Option<u64>,
    remaining: Option<u64>,
    max: Option<u64>,
    /// Requests waiting for a slot; the first one is the only one that may take the next.
    waiting: BTreeSet<Ticket>,
    /// Bumped whenever the first waiter may have changed; waiters re-check on a change.
    generation: u64,
    changed: Arc<Notify>,
}

impl Bucket {
    /// Wakes the waiters: the first in line may be another now.
    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.changed.notify_waiters();
    }
}

/// A snapshot of one bucket, for metrics and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSnapshot {
    pub bucket: String,
    pub used_today: u64,
    pub daily_remaining: Option<u64>,
    pub remaining: Option<u64>,
}

/// GCRA (the generic cell rate algorithm, as in `governor`): a request is allowed when the
/// theoretical arrival time is at most `tau` ahead; each request moves it `t` on.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Emission interval: the window over the requests allowed in it.
    t: Duration,
    /// Burst tolerance: `t × (burst − 1)`.
    tau: Duration,
}

impl Gcra {
    /// Takes a slot at `now`, or says when the next one frees.
    fn take(&self, tat: &mut Option<Instant>, now: Instant) -> Result<(), Instant> {
        let at = tat.unwrap_or(now);
        if let Some(earliest) = at.checked_sub(self.tau)
            && now < earliest
        {
            return Err(earliest);
        }
        *tat = Some(at.max(now) + self.t);
        Ok(())
    }
}

/// What a waiting request does next.
enum Step {
    Granted,
    Refused(LimitScope),
    /// Not first in line, or first but the bucket has no slot before `until`.
    Wait {
        until: Option<Instant>,
        generation: u64,
        changed: Arc<Notify>,
    },
}

/// Rate limits of one service, keyed by bucket.
pub struct RateLimits {
    quota: QuotaSettings,
    gcra: Gcra,
    buckets: Mutex<HashMap<String, Bucket>>,
    tickets: AtomicU64,
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

/// Takes a waiting request out of its bucket's line when it leaves for any reason (granted,
/// refused, or its caller gave up), so the next in line is never blocked by a gone request.
struct InLine<'a> {
    limits: &'a RateLimits,
    bucket: &'a str,
    ticket: Ticket,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.limits.with_bucket(self.bucket, |state| {
            if state.waiting.remove(&self.ticket) {
                state.bump();
            }
        });
    }
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
        let t = (quota.window / allowed.max(1)).max(Duration::from_micros(1));
        Self {
            quota,
            gcra: Gcra { t, tau: t * (burst - 1) },
            buckets: Mutex::new(HashMap::new()),
            tickets: AtomicU64::new(0),
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
            state.bulk_used_today = 0;
            state.daily_remaining = None;
        }
        f(state)
    }

    /// Whether the day's budget refuses a request at `priority` now.
    fn refused_today(&self, state: &Bucket, priority: Priority) -> bool {
        let budget_left = self.quota.daily_budget.saturating_sub(state.used_today);
        let left = match state.daily_remaining {
            Some(server) => budget_left.min(server),
            None => budget_left,
        };
        let limit = state.daily_limit.map_or(self.quota.daily_budget, |l| l.min(self.quota.daily_budget));
        let reserve = (limit as f64 * priority.daily_reserve()).ceil() as u64;
        left == 0
            || (priority != Priority::Webhook && left <= reserve)
            || (priority.is_bulk() && state.bulk_used_today >= self.quota.bulk_cap(limit))
    }

    /// One look at the bucket for the request holding `ticket`.
    fn step(&self, bucket: &str, ticket: Ticket) -> Step {
        let (priority, _) = ticket;
        self.with_bucket(bucket, |state| {
            if self.refused_today(state, priority) {
                return Step::Refused(LimitScope::Daily);
            }
            let wait = |state: &Bucket, until| Step::Wait {
                until,
                generation: state.generation,
                changed: state.changed.clone(),
            };
            if state.waiting.first() != Some(&ticket) {
                return wait(state, None);
            }
            let now = Instant::now();
            if let Some(until) = state.paused_until.filter(|until| *until > now) {
                return wait(state, Some(until));
            }
            match self.gcra.take(&mut state.tat, now) {
                Ok(()) => {
                    state.used_today += 1;
                    if priority.is_bulk() {
                        state.bulk_used_today += 1;
                    }
                    Step::Granted
                }
                Err(until) => wait(state, Some(until)),
            }
        })
    }

    /// Waits until a request in `bucket` at `priority` may be sent, or refuses it when the
    /// day's budget left for its priority is spent. Requests waiting on one bucket are served
    /// highest priority first, in arrival order within a priority.
    pub async fn acquire(&self, bucket: &str, priority: Priority) -> Result<(), LimitScope> {
        let ticket = (priority, self.tickets.fetch_add(1, Ordering::Relaxed));
        self.with_bucket(bucket, |state| {
            state.waiting.insert(ticket);
        });
        // Leaving the line (on return or when the caller drops this future) lets the next in.
        let _in_line = InLine { limits: self, bucket, ticket };
        loop {
            let (until, generation, changed) = match self.step(bucket, ticket) {
                Step::Granted => return Ok(()),
                Step::Refused(scope) => return Err(scope),
                Step::Wait { until, generation, changed } => (until, generation, changed),
            };
            // Registered before the re-check, so a change in between is not missed.
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.with_bucket(bucket, |state| state.generation) != generation {
                continue;
            }
            match until {
                Some(until) => {
                    tokio::select! {
                        _ = notified => {},
                        _ = tokio::time::sleep_until(until) => {},
                    }
                }
                None => notified.await,
            }
        }
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

    /// Counts `used` requests already made today in `bucket` (by an earlier process, or by the
    /// replica that held the location before): the day's budget goes on from there. Never
    /// lowers what this limiter counted itself.
    pub fn seed_used_today(&self, bucket: &str, used: u64) {
        self.with_bucket(bucket, |state| state.used_today = state.used_today.max(used));
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

    use proptest::prelude::*;

    fn quota(burst_max: u32, share: f64, daily: u64) -> QuotaSettings {
        QuotaSettings { burst_max, window: Duration::from_secs(10), share, daily_budget: daily, bulk_daily_share: 1.0 }
    }

    /// Takes a slot at once if the bucket has one (no waiting, no line).
    fn take_now(limits: &RateLimits, bucket: &str) -> bool {
        limits.with_bucket(bucket, |state| limits.gcra.take(&mut state.tat, Instant::now()).is_ok())
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_never_allows_more_than_the_server_limit_in_a_window() {
        let limits = RateLimits::new(quota(100, 0.9, 1000));
        // Without waiting, only the burst is available at once.
        let immediate = (0..200).filter(|_| take_now(&limits, "loc")).count();
        assert_eq!(immediate, 4);
        // Burst plus a window of steady pacing stays above the low-water mark with as much
        // again to spare, so our own traffic never triggers the header-correction pause.
        assert!((immediate as u64 + 90) + low_water(100) < 100 - low_water(100));
        assert_eq!(quota(100, 0.9, 1).allowed_per_window(), 90);
        assert!((quota(100, 0.9, 1).ceiling_per_second() - 9.0).abs() < 1e-9);
        // A whole window later, a window's worth more: 90 paced slots (and the burst again).
        tokio::time::advance(Duration::from_secs(10)).await;
        let next = (0..200).filter(|_| take_now(&limits, "loc")).count();
        assert!(next <= 90 + 4, "{next} slots after one window");
    }

    #[tokio::test(start_paused = true)]
    async fn low_priorities_yield_when_the_daily_budget_runs_short() {
        let limits = RateLimits::new(QuotaSettings {
            burst_max: 1000,
            window: Duration::from_secs(1),
            share: 1.0,
            daily_budget: 100,
            bulk_daily_share: 1.0,
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
        // A refused request left the line: the next one is not blocked behind it.
        assert!(limits.with_bucket("loc", |state| state.waiting.is_empty()));
    }

    /// A location that moves to this process (or a restart) keeps the day's count: requests
    /// made elsewhere today count against the budget here.
    #[tokio::test(start_paused = true)]
    async fn requests_made_elsewhere_today_count_against_the_budget() {
        let limits = RateLimits::new(QuotaSettings {
            burst_max: 1000,
            window: Duration::from_secs(1),
            share: 1.0,
            daily_budget: 100,
            bulk_daily_share: 1.0,
        });
        limits.seed_used_today("loc", 100);
        assert_eq!(limits.acquire("loc", Priority::Webhook).await, Err(LimitScope::Daily));
        assert_eq!(limits.acquire("other", Priority::Webhook).await, Ok(()));
        // A lower figure (read before this limiter's own requests) changes nothing.
        limits.seed_used_today("other", 0);
        assert_eq!(limits.with_bucket("other", |state| state.used_today), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_nearly_spent_window_pauses_the_bucket() {
        let limits = RateLimits::new(QuotaSettings {
            burst_max: 100,
            window: Duration::from_millis(200),
            share: 1.0,
            daily_budget: 100,
            bulk_daily_share: 1.0,
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
        // Paused clock: time moved only because the limiter slept.
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    /// Spawns one `acquire` per priority, each recording its grant in `granted`.
    fn spawn_acquires(
        limits: &Arc<RateLimits>,
        granted: &Arc<Mutex<Vec<Priority>>>,
        priorities: &[Priority],
    ) -> Vec<tokio::task::JoinHandle<()>> {
        priorities
            .iter()
            .map(|&priority| {
                let (limits, granted) = (limits.clone(), granted.clone());
                tokio::spawn(async move {
                    limits.acquire("loc", priority).await.unwrap();
                    granted.lock().unwrap().push(priority);
                })
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_or_webhook_request_issued_later_goes_before_queued_sweep_requests() {
        // 100 per 10 s at 0.9: burst 4, then one slot every 111 ms.
        let limits = Arc::new(RateLimits::new(quota(100, 0.9, 1_000_000)));
        let granted = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = spawn_acquires(&limits, &granted, &[Priority::Sweep; 30]);
        // Every sweep request is in line; the burst went to the first four.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(granted.lock().unwrap().len(), 4);
        assert_eq!(limits.with_bucket("loc", |state| state.waiting.len()), 26);
        // Later arrivals of higher priority: served before every sweep request still waiting,
        // highest first, whatever their order of arrival.
        tasks.extend(spawn_acquires(&limits, &granted, &[Priority::Poll, Priority::Export, Priority::Webhook]));
        tokio::time::sleep(Duration::from_millis(1)).await;
        for task in tasks {
            task.await.unwrap();
        }
        let order = granted.lock().unwrap().clone();
        assert_eq!(order.len(), 33);
        assert_eq!(
            &order[..6],
            &[Priority::Sweep, Priority::Sweep, Priority::Sweep, Priority::Sweep, Priority::Webhook, Priority::Poll]
        );
        assert!(order[6..32].iter().all(|p| *p == Priority::Sweep));
        // Export is the lowest: it goes when the sweep line is empty.
        assert_eq!(order[32], Priority::Export);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_leaves_the_line() {
        let limits = Arc::new(RateLimits::new(quota(100, 0.9, 1_000_000)));
        for _ in 0..4 {
            limits.acquire("loc", Priority::Poll).await.unwrap();
        }
        // The next slot is 111 ms away; a poll request gives up before it.
        let gave_up = tokio::time::timeout(Duration::from_millis(10), limits.acquire("loc", Priority::Poll)).await;
        assert!(gave_up.is_err());
        assert!(limits.with_bucket("loc", |state| state.waiting.is_empty()));
        // A sweep request behind it is not blocked by the gone request.
        limits.acquire("loc", Priority::Sweep).await.unwrap();
        assert_eq!(limits.with_bucket("loc", |state| state.used_today), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn bulk_work_stops_at_its_share_of_the_day_while_webhooks_and_polls_go_on() {
        let limits = RateLimits::new(QuotaSettings {
            burst_max: 1000,
            window: Duration::from_secs(1),
            share: 1.0,
            daily_budget: 100,
            bulk_daily_share: 0.3,
        });
        for i in 0..30 {
            let priority = [Priority::Sweep, Priority::Reconcile, Priority::Export][i % 3];
            assert_eq!(limits.acquire("loc", priority).await, Ok(()), "bulk request {i}");
        }
        // 30 of 100 spent by bulk work: every bulk priority is refused from now on…
        for priority in [Priority::Sweep, Priority::Reconcile, Priority::Export] {
            assert_eq!(limits.acquire("loc", priority).await, Err(LimitScope::Daily), "{priority:?}");
        }
        // …while incremental work still has the rest of the day.
        for priority in [Priority::Webhook, Priority::Poll, Priority::WriteBack] {
            assert_eq!(limits.acquire("loc", priority).await, Ok(()), "{priority:?}");
        }
        // The share is of the day's limit the server states, when it is lower than ours.
        limits.observe("other", LimitObservation { daily_limit: Some(10), ..Default::default() });
        for _ in 0..3 {
            assert_eq!(limits.acquire("other", Priority::Sweep).await, Ok(()));
        }
        assert_eq!(limits.acquire("other", Priority::Sweep).await, Err(LimitScope::Daily));
        assert_eq!(limits.acquire("other", Priority::Webhook).await, Ok(()));
    }

    /// Largest number of `times` (sorted) inside any window of length `window`.
    fn most_in_a_window(times: &[Instant], window: Duration) -> usize {
        let mut most = 0;
        let mut first = 0;
        for (last, at) in times.iter().enumerate() {
            while *at - times[first] >= window {
                first += 1;
            }
            most = most.max(last - first + 1);
        }
        most
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever mix of priorities arrives whenever, the grants in any window stay below the
        /// server's limit (and its low-water mark), and every request is granted.
        #[test]
        fn no_mix_of_priorities_exceeds_the_window_limit(
            arrivals in proptest::collection::vec((0usize..6, 0u64..3_000), 1..400),
            share in 0.5f64..=1.0,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let expected = arrivals.len();
            let (most, count, limit) = runtime.block_on(async move {
                let window = Duration::from_secs(1);
                let quota = QuotaSettings { burst_max: 100, window, share, daily_budget: 1_000_000, bulk_daily_share: 1.0 };
                let limits = Arc::new(RateLimits::new(quota));
                let start = Instant::now();
                let mut tasks = Vec::new();
                for (priority, at) in arrivals.iter().copied() {
                    let priority = [
                        Priority::Webhook,
                        Priority::Poll,
                        Priority::WriteBack,
                        Priority::Sweep,
                        Priority::Reconcile,
                        Priority::Export,
                    ][priority];
                    let limits = limits.clone();
                    tasks.push(tokio::spawn(async move {
                        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                        limits.acquire("loc", priority).await.unwrap();
                        Instant::now()
                    }));
                }
                let mut times = Vec::new();
                for task in tasks {
                    times.push(task.await.unwrap());
                }
                times.sort();
                (most_in_a_window(&times, window), times.len(), 100 - low_water(100))
            });
            prop_assert_eq!(count, expected);
            prop_assert!(most < limit as usize, "{} grants in one window", most);
        }
    }
}
