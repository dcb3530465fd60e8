//! systemd service notifications (`sd_notify`) and the watchdog, without libsystemd.
//!
//! Stage: control plane only; nothing here runs on a request path. In: `$NOTIFY_SOCKET`,
//! `$WATCHDOG_USEC`, `$WATCHDOG_PID` set by systemd for `Type=notify` units. Out: datagrams
//! such as `READY=1`, `RELOADING=1\nMONOTONIC_USEC=…`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`.
//!
//! The protocol is one `AF_UNIX` datagram per message to the socket named in `$NOTIFY_SOCKET`;
//! a name starting with `@` is in the abstract namespace (the `@` stands for a leading NUL).
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
//!
//! Watchdog: `WATCHDOG=1` means "every shard reactor is alive", not "the process exists". Each
//! reactor bumps its `ShardShared::heartbeat` every [`HEARTBEAT_PERIOD`] from a timer task on
//! its own io_uring; [`Watchdog`] pings only when every counter moved since its last look, so a
//! reactor stuck in a loop or a blocking call stops the pings and systemd restarts the service.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use super::ShardShared;

/// How often each reactor bumps its heartbeat counter. The window a shard is judged over
/// (`Watchdog::new`) is at least four of these, whatever `WatchdogSec=` says.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(100);
/// A reactor whose heartbeat is older than this fails `/health` (50 heartbeats: no busy reactor
/// goes that long without its timer task, a stuck one does).
pub const HEALTH_STALL: Duration = Duration::from_secs(5);
/// Shortest `WatchdogSec=` the tracker honours: pings go out every half of it, and a shard needs
/// a few heartbeats in each half.
pub const WATCHDOG_MIN: Duration = Duration::from_millis(800);

/// Where service notifications go; `None` when not started by systemd.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. A malformed value is reported once and notifications are off.
    pub fn from_env() -> Notifier {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        match Self::connect(name.as_bytes()) {
            Ok(t) => Notifier { target: Some(t) },
            Err(e) => {
                eprintln!("tracker: NOTIFY_SOCKET={}: {e}; systemd notifications are off", name.to_string_lossy());
                Notifier { target: None }
            }
        }
    }

    fn connect(name: &[u8]) -> io::Result<(UnixDatagram, SocketAddr)> {
        let addr = match name {
            [] => return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty socket name")),
            [b'@', rest @ ..] => SocketAddr::from_abstract_name(rest)?,
            [b'/', ..] => SocketAddr::from_pathname(OsStr::from_bytes(name))?,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "expected an absolute path or @name")),
        };
        let sock = UnixDatagram::unbound()?;
        Ok((sock, addr))
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (newline-separated `KEY=value` lines). Failures are reported and
    /// otherwise ignored: systemd being gone must not stop the tracker.
    pub fn notify(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
                eprintln!("tracker: sd_notify {:?}: {e}", msg.lines().next().unwrap_or(""));
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that `Type=notify-reload` and newer systemd want.
    pub fn reloading(&self) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading configuration",
            crate::clock::monotonic_usec()
        ));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: finishing in-flight requests, draining rings");
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`), if it is meant for this process
/// (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings `WATCHDOG=1` while every shard's heartbeat keeps moving.
pub struct Watchdog {
    /// How often a ping may go out: half the interval systemd gave (the usual advice).
    period: Duration,
    /// How long every heartbeat must have moved over to count as alive: the period, but never
    /// below [`WATCHDOG_MIN`] / 2, a few heartbeats.
    window: Duration,
}

impl Watchdog {
    /// Pings every half of `interval`. Below [`WATCHDOG_MIN`] the reactors are judged over a
    /// longer window than that, so a short `WatchdogSec=` is still met (pinging only every
    /// `WATCHDOG_MIN` / 2 missed systemd's deadline and had the service killed at every start)
    /// while a stalled reactor is noticed a little later than the interval.
    pub fn new(interval: Duration) -> Watchdog {
        let period = interval / 2;
        let window = period.max(WATCHDOG_MIN / 2);
        if window > period {
            eprintln!(
                "tracker: WatchdogSec={}ms is below the {}ms the shard heartbeats need: pinging every {}ms, but a \
                 stalled reactor stops the pings only after {}ms",
                interval.as_millis(),
                WATCHDOG_MIN.as_millis(),
                period.as_millis(),
                window.as_millis()
            );
        }
        Watchdog { period, window }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Runs on its own thread until `done`: pings when every heartbeat moved in the last period.
    /// A shard that stalls is named once; pings resume when it moves again.
    pub fn run(self, notifier: Arc<Notifier>, shards: Vec<Arc<ShardShared>>, done: Arc<AtomicBool>) {
        let mut last: Vec<u64> = shards.iter().map(|s| s.heartbeat()).collect();
        let mut looked = std::time::Instant::now();
        let mut stalled = None;
        let mut stalled_reported = false;
        // The first ping goes out at once: start-up already proved every reactor runs.
        notifier.notify("WATCHDOG=1");
        while !done.load(SeqCst) {
            std::thread::park_timeout(self.period);
            if done.load(SeqCst) {
                break;
            }
            // A verdict over the window; between two, the last one stands.
            if looked.elapsed() >= self.window {
                looked = std::time::Instant::now();
                stalled = None;
                for (i, s) in shards.iter().enumerate() {
                    let now = s.heartbeat();
                    if now == last[i] && !s.reactor_done.load(SeqCst) {
                        stalled = Some(s.index);
                    }
                    last[i] = now;
                }
            }
            match stalled {
                None => {
                    notifier.notify("WATCHDOG=1");
                    stalled_reported = false;
                }
                Some(i) if !stalled_reported => {
                    eprintln!(
                        "tracker: shard {i}: reactor heartbeat did not move for {}ms; withholding the systemd watchdog ping",
                        self.window.as_millis()
                    );
                    stalled_reported = true;
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_names() {
        let (_, a) = Notifier::connect(b"@tracker-test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"tracker-test"[..]));
        let (_, p) = Notifier::connect(b"/run/systemd/notify").unwrap();
        assert_eq!(p.as_pathname().unwrap().to_str(), Some("/run/systemd/notify"));
        assert!(Notifier::connect(b"").is_err());
        assert!(Notifier::connect(b"relative").is_err());
    }

    /// Regression: under WATCHDOG_MIN the pings went out every WATCHDOG_MIN / 2 (400 ms),
    /// later than `WatchdogSec=300ms` allows, and systemd killed the service at every start.
    #[test]
    fn a_short_watchdog_interval_is_pinged_at_half_of_it_and_judged_over_a_few_heartbeats() {
        let w = Watchdog::new(Duration::from_millis(300));
        assert_eq!((w.period(), w.window), (Duration::from_millis(150), WATCHDOG_MIN / 2));
        let w = Watchdog::new(Duration::from_secs(10));
        assert_eq!((w.period(), w.window), (Duration::from_secs(5), Duration::from_secs(5)));
    }

    #[test]
    fn watchdog_pings_only_while_every_heartbeat_moves() {
        use crate::metrics::ShardCounters;
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let notifier = Arc::new(Notifier { target: Some(Notifier::connect(path.as_os_str().as_bytes()).unwrap()) });
        let shards: Vec<Arc<ShardShared>> = (0..2)
            .map(|i| Arc::new(ShardShared::new(i, ShardCounters::new(1, 1), Default::default()).unwrap()))
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let w = Watchdog::new(WATCHDOG_MIN);
        let period = w.period();
        let t = {
            let (n, s, d) = (notifier.clone(), shards.clone(), done.clone());
            std::thread::spawn(move || w.run(n, s, d))
        };
        let mut b = [0u8; 64];
        rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let n = rx.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"WATCHDOG=1", "first ping at once");

        // Shard 1 stalls while shard 0 moves: no ping for several periods.
        let start = std::time::Instant::now();
        while start.elapsed() < period * 3 {
            shards[0].heartbeat.fetch_add(1, Relaxed);
            rx.set_nonblocking(true).unwrap();
            assert!(rx.recv(&mut b).is_err(), "pinged while shard 1 was stalled");
            rx.set_nonblocking(false).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // Both move again: pings resume.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        rx.set_nonblocking(true).unwrap();
        let resumed = loop {
            for s in &shards {
                s.heartbeat.fetch_add(1, Relaxed);
            }
            if let Ok(n) = rx.recv(&mut b) {
                break n;
            }
            assert!(std::time::Instant::now() < deadline, "pings did not resume");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(&b[..resumed], b"WATCHDOG=1");
        done.store(true, SeqCst);
        t.thread().unpark();
        t.join().unwrap();
    }

    #[test]
    fn sends_a_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let (sock, addr) = Notifier::connect(path.as_os_str().as_bytes()).unwrap();
        let n = Notifier { target: Some((sock, addr)) };
        n.ready("ok");
        let mut b = [0u8; 256];
        let len = rx.recv(&mut b).unwrap();
        assert_eq!(&b[..len], b"READY=1\nSTATUS=ok");
    }
}
