//! Zero-downtime restart: a new process binds the same port (SO_REUSEPORT) while the old one
//! drains and exits. docs/operations.md has the procedure; this module holds the two pieces of
//! it that live in code.
//!
//! 1. **The journal lock.** A shard directory has one writer (`flock`). The new process binds its
//!    listeners first, then waits — bounded by [`JOURNAL_LOCK_WAIT`] — for the old process to
//!    release each shard's lock. New connections queue in the new process's listen backlog
//!    meanwhile (`LISTEN_BACKLOG` per shard socket) and are served as soon as it starts. Chosen
//!    over per-process directories because a shard's journal stays one in-order sequence of
//!    segments that readers and collectors follow without knowing about restarts.
//! 2. **The old process's accept queue.** Closing a listening socket resets the connections still
//!    queued on it. On SIGTERM each shard stops its io_uring accept, then accepts whatever is
//!    queued without blocking ([`accept_queued`]) until EAGAIN, serves those connections, and only
//!    then closes the socket. The kernel keeps choosing the old socket for new connections until
//!    it is closed, so a connection can still land in the instant between the last accept and the
//!    close; with `net.ipv4.tcp_migrate_req = 1` (Linux ≥ 5.14) the kernel moves such
//!    connections to the new process's socket instead of resetting them. [`migrate_req_enabled`]
//!    reports the setting; the tracker warns at start when it is off.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::journal::{JournalError, RecoveryReport, ShardJournal};

/// Longest a starting process waits for another process to release its shards' journal locks,
/// all shards together.
/// Covers an old process's drain (in-flight requests, ring, final sync); a lock still held after
/// it means a second tracker is running on the same journal, which is an operator error.
pub const JOURNAL_LOCK_WAIT: Duration = Duration::from_secs(60);
/// How often the lock is tried again while waiting.
const LOCK_RETRY: Duration = Duration::from_millis(20);

const CANCELLED: &str = "stop requested while waiting for the lock";

/// Whether `open_journal` gave up because `cancelled` said so, rather than failed.
pub fn is_cancelled(e: &JournalError) -> bool {
    e.op() == "lock" && e.kind() == io::ErrorKind::Interrupted && e.io_error().to_string() == CANCELLED
}

/// Opens a shard's journal, waiting for a previous process (restart) to release its lock.
/// `deadline` is shared by all shards (JOURNAL_LOCK_WAIT from the start); `cancelled` is asked
/// between tries, so a stop requested during the wait ends it (the error says so).
pub fn open_journal(
    cfg: &Config,
    shard: u16,
    addr: SocketAddr,
    status: &dyn Fn(&str),
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<(ShardJournal, RecoveryReport), JournalError> {
    let mut told = false;
    loop {
        match ShardJournal::open(&cfg.journal.dir, shard, cfg.journal.segment_bytes, &cfg.schema) {
            Err(e) if is_locked(&e) && cancelled() => {
                return Err(JournalError::new(
                    "lock",
                    &crate::journal::shard_dir(&cfg.journal.dir, shard),
                    io::Error::new(io::ErrorKind::Interrupted, CANCELLED),
                ));
            }
            Err(e) if is_locked(&e) && Instant::now() < deadline => {
                if !told {
                    let msg = format!(
                        "bound {addr}; journal shard {shard} is locked by another tracker process (restart in progress?): \
                         waiting up to {}s for it to exit, new connections queue meanwhile",
                        JOURNAL_LOCK_WAIT.as_secs()
                    );
                    eprintln!("tracker: {msg}");
                    status(&msg);
                    told = true;
                }
                std::thread::sleep(LOCK_RETRY);
            }
            r => {
                if told && r.is_ok() {
                    eprintln!("tracker: journal shard {shard}: lock acquired");
                }
                return r;
            }
        }
    }
}

fn is_locked(e: &JournalError) -> bool {
    e.op() == "lock" && e.kind() == io::ErrorKind::WouldBlock
}

/// Accepts one connection already queued on the non-blocking listener `fd`, if any.
pub fn accept_queued(fd: RawFd) -> io::Result<Option<(std::net::TcpStream, SocketAddr)>> {
    loop {
        // SAFETY: accept4 on a listening socket we own; a null address is allowed, the peer is
        // read back from the new socket.
        let c = unsafe {
            libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
        };
        if c >= 0 {
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            let s = unsafe { std::net::TcpStream::from_raw_fd(c) };
            match s.peer_addr() {
                Ok(peer) => return Ok(Some((s, peer))),
                // Reset by the client while queued: nothing to serve; dropping closes it.
                Err(_) => continue,
            }
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
            _ => return Err(e),
        }
    }
}

/// `net.ipv4.tcp_migrate_req` of this network namespace: `Some(true)` when connections queued on a
/// closing SO_REUSEPORT listener move to another listener of the group instead of being reset.
pub fn migrate_req_enabled() -> Option<bool> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok()?;
    Some(s.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lock_wait_called_off_counts_as_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::embedded();
        cfg.journal.dir = dir.path().join("journal");
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let held = open_journal(&cfg, 0, addr, &|_| {}, far, &|| false).unwrap();
        let e = open_journal(&cfg, 0, addr, &|_| {}, far, &|| true).err().expect("the lock is held");
        assert!(is_cancelled(&e), "{e}");
        // Given up at the deadline, the wait failed: not a cancel.
        let e = open_journal(&cfg, 0, addr, &|_| {}, Instant::now(), &|| false).err().expect("the lock is held");
        assert!(!is_cancelled(&e), "{e}");
        drop(held);
    }
}
