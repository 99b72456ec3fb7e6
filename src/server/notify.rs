//! systemd readiness and watchdog notifications (`sd_notify(3)`), written against the
//! protocol directly: one datagram per state change to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name starting with '@'). Everything is a no-op
//! when `NOTIFY_SOCKET` is unset (not under systemd, or `Type=` is not `notify`).
//!
//! The unit uses `Type=notify`, `NotifyAccess=main` and `WatchdogSec=30`: the daemon sends
//! `READY=1` once it serves, `WATCHDOG=1` every `WATCHDOG_USEC / 2`, `STOPPING=1` on stop.

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where notifications go, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// `None` when `NOTIFY_SOCKET` is unset or empty.
    pub fn from_env() -> Option<Self> {
        std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()).map(Self::new)
    }

    /// A notifier for an explicit socket (tests).
    pub fn new(socket: impl Into<String>) -> Self {
        Self { socket: socket.into() }
    }

    /// Sends one state string such as `READY=1`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        if let Some(name) = self.socket.strip_prefix('@') {
            send_abstract(&sock, name, state)
        } else {
            sock.send_to(state.as_bytes(), &self.socket).map(|_| ())
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &std::os::unix::net::UnixDatagram, name: &str, state: &str) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt as _;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt as _;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &std::os::unix::net::UnixDatagram, _: &str, _: &str) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract unix sockets need Linux"))
}

fn send_from_env(state: &str) {
    if let Some(notifier) = Notifier::from_env()
        && let Err(error) = notifier.send(state)
    {
        tracing::warn!(error = %error, state, "Failed to notify systemd");
    }
}

/// `READY=1`: start-up finished (store open, listener bound).
pub fn ready() {
    send_from_env("READY=1");
}

/// `RELOADING=1`: a config reload began (`ready()` follows when it is done).
pub fn reloading() {
    send_from_env("RELOADING=1");
}

/// `STOPPING=1`: shutdown began.
pub fn stopping() {
    send_from_env("STOPPING=1");
}

/// `WATCHDOG=1`: the process is alive.
pub fn watchdog() {
    send_from_env("WATCHDOG=1");
}

/// Half of `WATCHDOG_USEC` when the watchdog is enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    // WATCHDOG_PID, when set, names the process that must ping; ignore it if that is not us.
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.trim().parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog every `WATCHDOG_USEC / 2` until `stop`; returns at once when the
/// watchdog is off or `NOTIFY_SOCKET` is unset. Spawn it on the app's tracker.
///
/// It runs on the same runtime as the daemon, so a wedged runtime stops the pings and
/// systemd restarts the service, which is the point.
pub async fn run_watchdog(stop: CancellationToken) {
    let (Some(notifier), Some(every)) = (Notifier::from_env(), watchdog_interval()) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = notifier.send("WATCHDOG=1") {
            tracing::warn!(error = %error, "Failed to ping the systemd watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn states_arrive_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.to_string_lossy().into_owned());
        notifier.send("READY=1").unwrap();
        assert_eq!(receive(&socket), "READY=1");
        notifier.send("WATCHDOG=1").unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1");
        notifier.send("STOPPING=1").unwrap();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn states_arrive_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("ghl-sync-test-{}-{}", std::process::id(), fastrand::u64(..));
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(format!("@{name}")).send("READY=1").unwrap();
        assert_eq!(receive(&socket), "READY=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(dir.path().join("absent.sock").to_string_lossy().into_owned());
        assert!(notifier.send("READY=1").is_err());
    }
}
