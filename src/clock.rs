//! The wall clock, in one place. Timers, rate limits, the circuit breaker and Lusha's gates use
//! the monotonic clock (`Instant`, tokio's timers) and ignore jumps of the system clock; what is
//! stored or compared with stored times uses the wall clock: the outbox's `next_attempt_at`,
//! token expiry, daily budgets, schedules. Those read it through [`Clock`] (injected: the
//! dispatcher, the token manager, the Lucky Orange connector) or [`now_ms`] (everything else).
//!
//! Both are the system clock, plus — in a process started with the test-only variable
//! `GHL_SYNC_TEST_CLOCK_OFFSET_FILE` — an offset read from that file (signed milliseconds,
//! re-read every 20 ms): the integration tests jump the clock of a running daemon by writing
//! it, as `date -s` would. The daemon warns at start-up when the variable is set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The test-only variable naming the file that holds the process clock's offset.
pub const OFFSET_FILE_ENV: &str = "GHL_SYNC_TEST_CLOCK_OFFSET_FILE";

/// How often the offset file is read.
const OFFSET_POLL: Duration = Duration::from_millis(20);

/// The process clock's offset from the system clock (ms); only the offset file moves it.
static PROCESS_OFFSET: AtomicI64 = AtomicI64::new(0);

/// The path of the offset file being watched, once a watcher runs.
static WATCHED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The process's wall clock in milliseconds since the Unix epoch (the store's time unit).
pub fn now_ms() -> i64 {
    system_ms().saturating_add(PROCESS_OFFSET.load(Ordering::Relaxed))
}

fn system_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A source of wall-clock time (epoch ms). Cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The process's wall clock ([`now_ms`]).
    pub fn system() -> Self {
        Self(Arc::new(now_ms))
    }

    /// Any function of epoch ms (a fixed instant, a test's own clock).
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }

    /// The process clock, after starting the watcher of the test-only offset file when
    /// [`OFFSET_FILE_ENV`] is set. Returns the path watched, for the start-up warning.
    #[allow(clippy::disallowed_methods, reason = "the watcher is a thread of its own, not an async task")]
    pub fn from_env() -> (Self, Option<PathBuf>) {
        let watched = std::env::var_os(OFFSET_FILE_ENV).map(PathBuf::from).map(|path| {
            WATCHED
                .get_or_init(|| {
                    read_offset(&path);
                    let watched = path.clone();
                    std::thread::Builder::new()
                        .name("test-clock".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(OFFSET_POLL);
                                read_offset(&watched);
                            }
                        })
                        .ok();
                    path
                })
                .clone()
        });
        (Self::system(), watched)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// Sets the process offset from the file; a missing or unreadable file leaves it as it is.
fn read_offset(path: &Path) {
    if let Some(offset) = std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse::<i64>().ok()) {
        PROCESS_OFFSET.store(offset, Ordering::Relaxed);
    }
}

/// A test clock: the system clock moved by jumps, forward or back, as an administrator or a
/// broken NTP client moves it. Cheap to clone; every clone sees every jump.
#[derive(Clone, Default, Debug)]
pub struct Jumps(Arc<AtomicI64>);

impl Jumps {
    /// The clock that follows these jumps.
    pub fn clock(&self) -> Clock {
        let offset = self.0.clone();
        Clock::from_fn(move || now_ms().saturating_add(offset.load(Ordering::SeqCst)))
    }

    /// Moves the clock by `by_ms` (negative: back).
    pub fn jump(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_moves_every_clone_of_the_test_clock_and_nothing_else() {
        let jumps = Jumps::default();
        let clock = jumps.clock();
        let copy = clock.clone();
        jumps.jump(-3_600_000);
        let (moved, real) = (copy.now_ms(), Clock::system().now_ms());
        assert!((real - moved - 3_600_000).abs() < 1_000, "moved back an hour: {moved} vs {real}");
        jumps.jump(7_200_000);
        assert!((clock.now_ms() - now_ms() - 3_600_000).abs() < 1_000, "then forward two");
    }
}
