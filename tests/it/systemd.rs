//! systemd integration: the unit file verifies, and the real binary speaks the sd_notify protocol
//! to a datagram socket passed as NOTIFY_SOCKET (READY after the port listens, RELOADING +
//! MONOTONIC_USEC then READY on SIGHUP, WATCHDOG pings, STOPPING on SIGTERM).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;
use std::time::Instant;

use crate::harness::{Server, BIN, WAIT};

const UNIT: &str = include_str!("../../systemd/tracker.service");
const CONFIG: &str = include_str!("../../config/tracker.toml");

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    // Not skipped when missing: a unit file nobody verified is what this test exists to stop.
    assert!(
        Command::new("systemd-analyze").arg("--version").output().is_ok(),
        "systemd-analyze is not installed (Debian: apt-get install systemd)"
    );
    // verify checks that ExecStart's binary exists: point a copy at the binary under test.
    assert!(UNIT.contains("ExecStart=/usr/local/bin/tracker "), "the unit's ExecStart changed; update this test");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("tracker.service");
    std::fs::write(&unit, UNIT.replace("ExecStart=/usr/local/bin/tracker ", &format!("ExecStart={BIN} "))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(!stderr.contains("tracker.service:"), "systemd-analyze complained about the unit:\n{stderr}");
    for key in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "RestartPreventExitStatus=2",
        "LimitMEMLOCK=",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "io_uring_setup io_uring_enter io_uring_register",
    ] {
        assert!(UNIT.contains(key), "unit lacks {key}");
    }
}

/// Receives the next notification, bounded by WAIT.
fn recv(sock: &UnixDatagram) -> String {
    let mut b = [0u8; 1024];
    let n = sock.recv(&mut b).expect("no sd_notify message within the wait");
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// Receives until a message starts with `prefix`; returns it and the ones skipped.
fn recv_until(sock: &UnixDatagram, prefix: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + WAIT;
    let mut skipped = Vec::new();
    while Instant::now() < deadline {
        let m = recv(sock);
        if m.starts_with(prefix) {
            return (m, skipped);
        }
        skipped.push(m);
    }
    panic!("no {prefix} within {WAIT:?}; got {skipped:?}");
}

#[test]
fn ready_reloading_watchdog_and_stopping_reach_notify_socket() {
    // An abstract socket, as systemd uses; '@' in NOTIFY_SOCKET stands for the leading NUL.
    let name = format!("tracker-it-notify-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let notify = format!("@{name}");
    let mut srv = Server::start_env(
        tempfile::tempdir().unwrap(),
        Some(CONFIG),
        &[],
        &[("NOTIFY_SOCKET", notify.as_str()), ("WATCHDOG_USEC", "1000000")],
    );

    let ready = recv(&sock);
    assert!(ready.starts_with("READY=1\n"), "first message must be READY=1, got {ready:?}");
    // READY came after the port listens: a pixel is answered at once.
    assert_eq!(srv.connect().get("/i?c=1").status, 200);

    // Watchdog pings follow while the shards are alive.
    let (w, _) = recv_until(&sock, "WATCHDOG=1");
    assert_eq!(w, "WATCHDOG=1");

    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
    let (reloading, _) = recv_until(&sock, "RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("RELOADING=1 carries MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(usec > 0);
    recv_until(&sock, "READY=1");

    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    recv_until(&sock, "STOPPING=1");
    assert_eq!(srv.wait_exit(), 0);
}

/// Regression: on the embedded config (no --config) a SIGHUP sent neither RELOADING=1 nor
/// READY=1, so under `Type=notify-reload` (where systemd sends the SIGHUP and waits for them)
/// `systemctl reload` hung until its timeout.
#[test]
fn a_reload_with_nothing_to_reload_still_answers_systemd() {
    let name = format!("tracker-it-notify-embedded-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let notify = format!("@{name}");
    let mut srv = Server::start_env(tempfile::tempdir().unwrap(), None, &[], &[("NOTIFY_SOCKET", notify.as_str())]);
    assert!(recv(&sock).starts_with("READY=1\n"));
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
    recv_until(&sock, "RELOADING=1");
    let (ready, _) = recv_until(&sock, "READY=1");
    assert!(ready.contains("nothing to reload"), "{ready}");
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    assert_eq!(srv.wait_exit(), 0);
}

const HANDOFF: &str = include_str!("../../systemd/tracker-handoff.sh");

/// systemd/tracker-handoff.sh decides that the new instance is bound and waiting for the old
/// one's journal locks by grepping its StatusText (the sd_notify `STATUS=` line) for a fixed
/// phrase; if the message changed, every handoff would time out and leave the old one serving.
#[test]
fn lock_wait_status_carries_the_phrase_the_handoff_script_waits_for() {
    let needle = HANDOFF
        .lines()
        .find(|l| l.contains("StatusText") && l.contains("grep -q"))
        .and_then(|l| l.split("grep -q '").nth(1))
        .and_then(|rest| rest.split('\'').next())
        .expect("tracker-handoff.sh polls StatusText with grep -q '…'");

    let mut old = Server::start(None, &["--shards", "1"]);
    let name = format!("tracker-it-handoff-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    // Killed on drop, so a failed assertion leaves no process behind.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut new = Child(
        Command::new(BIN)
            .args(["serve", "--shards", "1", "--admin-listen", "127.0.0.1:0", "--listen"])
            .arg(old.addr.to_string())
            .arg("--journal-dir")
            .arg(old.journal())
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (status, before) = recv_until(&sock, "STATUS=");
    assert!(
        status.contains(needle),
        "the lock wait's status {status:?} lacks {needle:?}, which tracker-handoff.sh waits for (after {before:?})"
    );
    assert!(!before.iter().any(|m| m.starts_with("READY=1")), "READY before the locks were taken: {before:?}");
    // The old instance stops; the new one takes the locks and only then reports ready.
    assert_eq!(old.stop(), 0);
    recv_until(&sock, "READY=1");
    unsafe { libc::kill(new.0.id() as i32, libc::SIGTERM) };
    assert!(new.0.wait().unwrap().success());
}

/// Regression: after a refused reload the tracker sent `READY=1` with the same `STATUS=` as
/// after a good one, so `systemctl reload` succeeded and `systemctl status` showed nothing: the
/// only trace of the refusal was in the log. The status line now says that the reload of the
/// file failed and the running config is kept, until a reload succeeds.
#[test]
fn a_refused_reload_shows_in_the_service_status() {
    let name = format!("tracker-it-notify-reload-{}", std::process::id());
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let notify = format!("@{name}");
    let mut srv =
        Server::start_env(tempfile::tempdir().unwrap(), Some(CONFIG), &[], &[("NOTIFY_SOCKET", notify.as_str())]);
    recv_until(&sock, "READY=1");
    let path = srv.dir.path().join("tracker.toml");
    std::fs::write(&path, "[server]\nlisen = 3\n").unwrap();
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
    let (ready, _) = recv_until(&sock, "READY=1");
    let status = ready.lines().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or("");
    assert!(status.contains("reload") && status.contains("failed") && status.contains("config kept"), "{ready:?}");
    // A good reload clears it.
    std::fs::write(&path, CONFIG).unwrap();
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
    let (ready, _) = recv_until(&sock, "READY=1");
    assert!(ready.contains("STATUS=listening on") && !ready.contains("failed"), "{ready:?}");
    assert_eq!(srv.stop(), 0);
}
