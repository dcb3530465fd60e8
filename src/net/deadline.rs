//! Connection deadlines, enforced by one sweep per shard every TICK instead of a timer per read
//! or write.
//!
//! A connection arms its slot (its socket, when it gives up, what it waits for) before it
//! awaits a read or a write and disarms it after; arming is two stores, with no clock read
//! beyond the batch's coarse one and no timer-wheel entry. The sweep shuts down
//! (`shutdown(2)`) the socket of every slot whose time is up: a pending read completes with 0
//! (SHUT_RD: the write side stays open, so a connection cut in the middle of a request can
//! still answer 408), a pending write with EPIPE (SHUT_RDWR); the connection, finding its slot
//! expired, closes. A cancelled io_uring op would do the same at the price of a cancel handle
//! on every op (~0.7% of a request's CPU, measured with perf).
//!
//! Invariants: a slot is armed only while its connection owns the socket and is suspended on
//! it (the `Armed` guard disarms on every path out, drop included), so the sweep never touches
//! a closed or reused descriptor. Single-threaded: Cells, no locks.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::time::Duration;

/// How often the shard sweeps; a deadline fires up to this late.
pub const TICK: Duration = Duration::from_millis(250);
/// How long responses already being written may take once the shard stops.
pub const STOP_WRITE_GRACE: Duration = Duration::from_secs(2);
/// How long the 408 to a request that did not arrive in time may take to write.
pub const TIMED_OUT_ANSWER_GRACE: Duration = Duration::from_secs(1);
/// How long a connection that closes after its response reads on (and discards) what the
/// client still sends, waiting for the client's own close (connection.rs `linger_close`).
/// Holds the connection's slot that long at most; at shutdown the next sweep ends it.
pub const LINGER_GRACE: Duration = Duration::from_secs(1);

/// What an armed connection is suspended on; decides what shutdown does to it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wait {
    /// Reading, after at least one response, with nothing of the next request yet: closed at
    /// once when the shard stops.
    Read,
    /// Reading a request not yet answered: a connection's first, or one partly received. At
    /// shutdown it still gets `server.stop_request_grace_ms` to arrive whole and be answered
    /// (which bounds how much a silent client delays the exit of a draining process).
    Unanswered,
    /// Writing responses: at shutdown they get STOP_WRITE_GRACE.
    Write,
}

#[derive(Default)]
struct Slot {
    /// Socket; -1 when the slot is not armed.
    fd: Cell<RawFd>,
    /// Coarse monotonic ms (`clock::mono_coarse_ms`) at which the wait is given up.
    until_ms: Cell<u64>,
    wait: Cell<Option<Wait>>,
    expired: Cell<bool>,
}

/// One slot per connection a shard may hold (`connections_per_shard_max`).
pub struct Deadlines {
    slots: Box<[Slot]>,
    /// `server.stop_request_grace_ms`: what a [`Wait::Unanswered`] gets once the shard stops.
    stop_request_grace_ms: u64,
}

impl Deadlines {
    pub fn new(conns_max: usize, stop_request_grace_ms: u64) -> Deadlines {
        let slots = (0..conns_max).map(|_| Slot { fd: Cell::new(-1), ..Slot::default() }).collect();
        Deadlines { slots, stop_request_grace_ms }
    }

    /// `server.stop_request_grace_ms`.
    pub fn stop_request_grace_ms(&self) -> u64 {
        self.stop_request_grace_ms
    }

    /// Arms `slot` until the returned guard is dropped. A connection arms only its own slot.
    pub fn arm(&self, slot: usize, fd: RawFd, until_ms: u64, wait: Wait) -> Armed<'_> {
        let s = &self.slots[slot];
        s.fd.set(fd);
        s.until_ms.set(until_ms);
        s.wait.set(Some(wait));
        s.expired.set(false);
        Armed { slot: s }
    }

    /// Shuts down every armed socket whose time is up at `now_ms`; when the shard stops
    /// (`stop_at_ms`), the stop graces apply too. Returns how many it shut down.
    pub fn sweep(&self, now_ms: u64, stop_at_ms: Option<u64>) -> usize {
        let mut fired = 0;
        for s in self.slots.iter() {
            let (fd, Some(wait)) = (s.fd.get(), s.wait.get()) else { continue };
            if fd < 0 || s.expired.get() {
                continue;
            }
            let until = match (stop_at_ms, wait) {
                (None, _) => s.until_ms.get(),
                (Some(_), Wait::Read) => 0,
                (Some(t), Wait::Unanswered) => s.until_ms.get().min(t + self.stop_request_grace_ms),
                (Some(t), Wait::Write) => s.until_ms.get().min(t + ms(STOP_WRITE_GRACE)),
            };
            if now_ms >= until {
                s.expired.set(true);
                let how = if wait == Wait::Write { libc::SHUT_RDWR } else { libc::SHUT_RD };
                // SAFETY: `fd` is the socket of a connection suspended on it (module invariant),
                // so it is open and ours; shutdown only changes the socket's state.
                unsafe { libc::shutdown(fd, how) };
                fired += 1;
            }
        }
        fired
    }
}

/// An armed slot; disarms when dropped.
pub struct Armed<'d> {
    slot: &'d Slot,
}

impl Armed<'_> {
    /// Whether the sweep gave up on this wait (and shut the socket down).
    pub fn expired(&self) -> bool {
        self.slot.expired.get()
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.slot.fd.set(-1);
        self.slot.wait.set(None);
    }
}

pub const fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn fires_only_when_due_and_shuts_reads_down_but_leaves_writes_open() {
        let d = Deadlines::new(2, 1_000);
        let (mut client, server) = pair();
        let armed = d.arm(1, server.as_raw_fd(), 1_000, Wait::Read);
        assert_eq!(d.sweep(999, None), 0);
        assert!(!armed.expired());
        assert_eq!(d.sweep(1_000, None), 1);
        assert!(armed.expired());
        // Fired once only.
        assert_eq!(d.sweep(2_000, None), 0);
        // Our reads see EOF; a last answer can still be written, then the close reaches the client.
        let mut b = [0u8; 2];
        assert_eq!((&server).read(&mut b).unwrap(), 0);
        (&server).write_all(b"ok").unwrap();
        drop(server);
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
        assert_eq!(client.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn a_write_past_its_deadline_is_shut_both_ways() {
        let d = Deadlines::new(1, 1_000);
        let (mut client, server) = pair();
        let armed = d.arm(0, server.as_raw_fd(), 10, Wait::Write);
        assert_eq!(d.sweep(10, None), 1);
        assert!(armed.expired());
        assert!((&server).write_all(b"x").is_err());
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn disarmed_slots_are_never_touched() {
        let d = Deadlines::new(1, 1_000);
        let (mut client, server) = pair();
        drop(d.arm(0, server.as_raw_fd(), 10, Wait::Write));
        assert_eq!(d.sweep(u64::MAX, Some(0)), 0);
        (&server).write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ok");
    }

    #[test]
    fn stop_closes_answered_readers_at_once_and_gives_the_others_their_grace() {
        let d = Deadlines::new(3, 1_500);
        let (_c0, s0) = pair();
        let (_c1, s1) = pair();
        let (_c2, s2) = pair();
        let far = 1_000_000;
        let a = d.arm(0, s0.as_raw_fd(), far, Wait::Read);
        let b = d.arm(1, s1.as_raw_fd(), far, Wait::Unanswered);
        let c = d.arm(2, s2.as_raw_fd(), far, Wait::Write);
        assert_eq!(d.sweep(100, Some(100)), 1);
        assert!(a.expired() && !b.expired() && !c.expired());
        assert_eq!(d.sweep(100 + 1_499, Some(100)), 0);
        assert_eq!(d.sweep(100 + 1_500, Some(100)), 1);
        assert!(b.expired() && !c.expired());
        assert_eq!(d.sweep(100 + ms(STOP_WRITE_GRACE), Some(100)), 1);
        assert!(c.expired());
    }
}
