//! SIGINT/SIGTERM handling: the first signal cancels one token (stop taking work, finish
//! what is in flight within the grace period); a second signal exits at once. Also the
//! streams of SIGHUP (reload) and SIGUSR1 (sync now) the daemon's main loop listens to.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit code after a second signal forced the exit.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Installs the SIGTERM/SIGINT handlers, spawns their listener and returns the token it
/// cancels on the first signal. The handlers are in place when this returns (not when the
/// listener task first runs): a signal sent right after it is a graceful stop, never the
/// default disposition's death by signal. Call it first thing in a long-running command.
pub fn listen_for_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut signals = StopSignals::install();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("Shutdown requested; finishing in-flight work (a second signal exits at once)");
        cancel.cancel();
        signals.recv().await;
        tracing::warn!("Second signal: exiting now");
        std::process::exit(FORCED_EXIT_CODE);
    });
    token
}

/// SIGTERM and SIGINT, as one stream: two [`ReloadSignals`] (the handlers are installed when
/// it is made). Where signals are not available, Ctrl-C.
struct StopSignals {
    #[cfg(unix)]
    term: ReloadSignals,
    #[cfg(unix)]
    int: ReloadSignals,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            Self { term: signals_of(SignalKind::terminate()), int: signals_of(SignalKind::interrupt()) }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A stream of one kind of signal: SIGHUP (config reload requests, [`reload_signals`]),
/// SIGUSR1 (sync-now requests, [`sync_now_signals`]), SIGTERM or SIGINT ([`StopSignals`]).
/// Never yields where signals are not available, or when its handler could not be installed
/// (the process can still be stopped by SIGKILL).
pub struct ReloadSignals {
    #[cfg(unix)]
    inner: Option<tokio::signal::unix::Signal>,
}

impl ReloadSignals {
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.inner
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Installs the handler of `kind` (when this returns, the signal no longer takes its default
/// action) and returns its stream.
#[cfg(unix)]
fn signals_of(kind: tokio::signal::unix::SignalKind) -> ReloadSignals {
    ReloadSignals { inner: tokio::signal::unix::signal(kind).ok() }
}

/// Listens for SIGHUP.
pub fn reload_signals() -> ReloadSignals {
    #[cfg(unix)]
    {
        signals_of(tokio::signal::unix::SignalKind::hangup())
    }
    #[cfg(not(unix))]
    {
        ReloadSignals {}
    }
}

/// Listens for SIGUSR1: "start a pass for every location now".
pub fn sync_now_signals() -> ReloadSignals {
    #[cfg(unix)]
    {
        signals_of(tokio::signal::unix::SignalKind::user_defined1())
    }
    #[cfg(not(unix))]
    {
        ReloadSignals {}
    }
}

/// Waits for tracked tasks to finish, at most `grace`. Returns whether they all finished.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "In-flight work did not finish within the shutdown grace; exiting anyway"
            );
            false
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// The handlers exist when `listen_for_signals` returns, before its listener task has run
    /// (a current-thread runtime runs nothing else until this test awaits). Were they installed
    /// by the task, the SIGTERM below would kill the test process by the default disposition.
    #[tokio::test(flavor = "current_thread")]
    async fn a_sigterm_right_after_listen_for_signals_is_a_graceful_stop() {
        let stop = listen_for_signals();
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(std::process::id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), stop.cancelled())
            .await
            .expect("the first SIGTERM cancels the stop token");
    }
}
