//! One load thread: a monoio io_uring runtime (COOP_TASKRUN | TASKRUN_FLAG, as the tracker's
//! shards) pinned to a CPU, running its share of the connections on the open-loop schedule.
//!
//! The schedule: request number g of the run (g = 0, 1, 2, ...) is *intended* to be sent at
//! t0 + g / rate; connection k sends the requests g = k, k + C, k + 2C, ... (C connections), so
//! the rate is spread evenly over connections and the aggregate is exact. A connection sleeps
//! until a request's intended time (a timerfd with an absolute deadline: nanosecond precision,
//! unlike the runtime's millisecond timer wheel), or sends at once when it is already late
//! because the previous response was slow. Latency is measured from the intended time, so time
//! spent waiting for a busy connection is counted (coordinated omission corrected). A request
//! that fails (connect, write, reset, timeout, bad response) is in the histogram too, up to its
//! failure: the percentiles cover every measured request, not only the answered ones.
//!
//! What goes out of a thread: one histogram per 1 s interval (ns) over a channel, and its
//! counters at the end. A connection that is behind schedule when the run ends still sends the
//! requests it owes (intended inside the run) for up to `drain` more, so a stall at the very end
//! is measured rather than dropped; they are counted in `sent_after_end`. What it still owes
//! after that is counted as `missed`, and no request starts later than end + drain; the
//! measured ones among them are in the histogram too, timed from their intended time to that
//! cutoff (a lower bound: they were never sent), so a stall at the end shows in the percentiles.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::response::{frame, Framing};
use crate::template::{Mix, REQUEST_BYTES_MAX};

/// Read buffer per connection: a response head must fit (bodies larger than this are skipped).
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Histogram range: 1 ns ..= 1 hour at 3 significant digits (~350 KiB per histogram). Larger
/// latencies are recorded as the maximum.
pub const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;
pub const INTERVAL_NS: u64 = 1_000_000_000;
/// Submission queue entries per thread's io_uring.
const IO_URING_ENTRIES: u32 = 1024;

/// What every thread shares, fixed before the run starts.
pub struct Plan {
    pub target: SocketAddr,
    /// Requests per second, all connections together.
    pub rate: f64,
    pub connections: usize,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    pub timeout: Duration,
    /// How long after the end a late connection may still start the requests it owes.
    pub drain_ns: u64,
    pub mix: Mix,
}

impl Plan {
    /// Offset of request `g` from t0.
    pub fn offset_ns(&self, g: u64) -> u64 {
        (g as f64 * 1e9 / self.rate) as u64
    }
    pub fn intervals(&self) -> usize {
        self.duration_ns.div_ceil(INTERVAL_NS) as usize
    }
    /// Requests connection `k` is scheduled to send over the whole run (warm-up included).
    pub(crate) fn scheduled(&self, k: u64) -> u64 {
        let total = ((self.warmup_ns + self.duration_ns) as f64 * self.rate / 1e9).ceil() as u64;
        let c = self.connections as u64;
        if k >= total {
            0
        } else {
            (total - k).div_ceil(c)
        }
    }
}

/// Counters of one thread (summed by main). "Measured" ones count only requests whose intended
/// time is after the warm-up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Requests written, measured.
    pub sent: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub conn_errors: u64,
    pub timeouts: u64,
    pub protocol_errors: u64,
    /// Requests not sent because the run ended while the connection was behind schedule.
    pub missed: u64,
    /// Measured requests sent after the end of the run (the connection was behind schedule).
    pub sent_after_end: u64,
    /// 2xx responses over the whole run, warm-up included (what the server should have logged).
    pub all_ok: u64,
    /// Requests written over the whole run, warm-up included.
    pub all_sent: u64,
    /// Largest lateness of a send behind its intended time, ns.
    pub behind_ns_max: u64,
    /// Measured requests that failed (connect refused or timed out, write failed, connection
    /// closed or reset, response timeout, bad response): in the latency histogram up to the
    /// failure. Always conn_errors + timeouts + protocol_errors.
    pub failed_timed: u64,
    /// Measured requests among `missed`: in the latency histogram from their intended time up to
    /// the cutoff at end + drain (never sent, so a lower bound of what they would have waited).
    pub missed_timed: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.non_2xx += o.non_2xx;
        self.conn_errors += o.conn_errors;
        self.timeouts += o.timeouts;
        self.protocol_errors += o.protocol_errors;
        self.missed += o.missed;
        self.failed_timed += o.failed_timed;
        self.missed_timed += o.missed_timed;
        self.sent_after_end += o.sent_after_end;
        self.all_ok += o.all_ok;
        self.all_sent += o.all_sent;
        self.behind_ns_max = self.behind_ns_max.max(o.behind_ns_max);
    }
}

/// An interval histogram from one thread: (interval index, histogram of latencies in ns, when
/// the thread closed it, ns after the start of the measured window). Every interval closes a
/// second after it opened but the last, which holds everything up to the thread's end.
pub type IntervalMsg = (usize, Histogram<u64>, u64);

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static histogram bounds are valid")
}

/// CLOCK_MONOTONIC in ns: the clock timerfd deadlines are set on.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct ThreadArgs {
    pub index: usize,
    pub plan: Arc<Plan>,
    /// Global indexes of this thread's connections.
    pub conns: Vec<usize>,
    pub cpu: Option<usize>,
    /// Ok once every connection is open; main then sends t0 on `start`.
    pub ready: Sender<Result<(), String>>,
    pub start: Receiver<u64>,
    pub intervals: Sender<IntervalMsg>,
}

struct ThreadState {
    plan: Arc<Plan>,
    t0: u64,
    hist: RefCell<Histogram<u64>>,
    /// How late the timer woke a connection after a request's intended time (measured window):
    /// loadgen's own scheduling error, not the server's.
    wake: RefCell<Histogram<u64>>,
    counts: Cell<Counts>,
}

impl ThreadState {
    fn count(&self, f: impl FnOnce(&mut Counts)) {
        let mut c = self.counts.get();
        f(&mut c);
        self.counts.set(c);
    }

    /// A measured request that failed: counted by kind, and timed from its intended send time up
    /// to now. Left out of the histogram, a server that stalls (timeouts), drops (resets) or
    /// stops accepting (refused connects) would vanish from the percentiles instead of showing
    /// at least the time it made the request wait.
    fn fail(&self, intended: u64, f: Fail) {
        self.hist.borrow_mut().saturating_record(now_ns().saturating_sub(intended).max(1));
        self.count(|x| {
            x.failed_timed += 1;
            match f {
                Fail::Conn => x.conn_errors += 1,
                Fail::Timeout => x.timeouts += 1,
                Fail::Protocol(_) => x.protocol_errors += 1,
            }
        });
    }
}

/// What a thread hands back at the end: its counters and its timer-lateness histogram (ns).
pub type ThreadResult = (Counts, Histogram<u64>);

pub fn run(args: ThreadArgs) -> Result<ThreadResult, String> {
    let i = args.index;
    if let Some(cpu) = args.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            eprintln!("loadgen: thread {i}: could not pin to CPU {cpu}; running unpinned");
        }
    }
    // Every setup error goes to `ready`: main waits there for one answer per thread, and a
    // thread that returned without one hung the start while the others held the channel open.
    let mut rt = match start_runtime(i) {
        Ok(rt) => rt,
        Err(msg) => {
            let _ = args.ready.send(Err(msg.clone()));
            return Err(msg);
        }
    };
    rt.block_on(thread_main(args))
}

fn start_runtime(i: usize) -> Result<Rt, String> {
    match build_runtime(true) {
        Ok(rt) => Ok(rt),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("loadgen: thread {i}: this kernel refuses IORING_SETUP_COOP_TASKRUN (needs Linux ≥ 5.19); running without it, which costs CPU per request");
            build_runtime(false).map_err(|e| format!("thread {i}: cannot start the io_uring runtime: {e}"))
        }
        Err(e) => Err(format!(
            "thread {i}: cannot start the io_uring runtime: {e} (io_uring blocked by seccomp or kernel.io_uring_disabled?)"
        )),
    }
}

type Rt = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

fn build_runtime(coop: bool) -> io::Result<Rt> {
    let mut urb = io_uring::IoUring::builder();
    if coop {
        urb.setup_coop_taskrun().setup_taskrun_flag();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(IO_URING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build()
}

/// Every connection of a thread, open, with its timer; and the thread's interval ticker.
type Prepared = (Vec<(usize, TcpStream, Pacer)>, Pacer);

async fn prepare(plan: &Plan, conns: &[usize]) -> Result<Prepared, String> {
    let mut prepared = Vec::with_capacity(conns.len());
    for &k in conns {
        let stream = connect(plan).await.map_err(|e| format!("connection {k} to {}: {e}", plan.target))?;
        // Each connection holds two descriptors (its socket and its timerfd): EMFILE here is
        // `ulimit -n` against --connections.
        let pacer = Pacer::new()
            .map_err(|e| format!("connection {k}: timerfd: {e} (each connection needs 2 descriptors: ulimit -n?)"))?;
        prepared.push((k, stream, pacer));
    }
    let ticker = Pacer::new().map_err(|e| format!("timerfd: {e}"))?;
    Ok((prepared, ticker))
}

async fn thread_main(args: ThreadArgs) -> Result<ThreadResult, String> {
    let plan = args.plan.clone();
    // Open every connection and allocate every buffer before the schedule starts; an error goes
    // to `ready`, as in `run`.
    let (prepared, ticker) = match prepare(&plan, &args.conns).await {
        Ok(p) => p,
        Err(msg) => {
            let _ = args.ready.send(Err(msg.clone()));
            return Err(msg);
        }
    };
    let _ = args.ready.send(Ok(()));
    let Ok(t0) = args.start.recv() else { return Err("main thread went away".into()) };

    let st = Rc::new(ThreadState {
        plan: plan.clone(),
        t0,
        hist: RefCell::new(new_histogram()),
        wake: RefCell::new(new_histogram()),
        counts: Cell::new(Counts::default()),
    });
    let tick = monoio::spawn(tick_intervals(st.clone(), ticker, args.intervals.clone()));
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(k, stream, pacer)| monoio::spawn(connection(st.clone(), k, stream, pacer)))
        .collect();
    for t in tasks {
        t.await;
    }
    tick.await;
    // The last interval: everything since the last tick, including responses that arrived after
    // the end of the run, so it closes now (at least at the end of the run), not a second after
    // it opened.
    let last = std::mem::replace(&mut *st.hist.borrow_mut(), new_histogram());
    let closed = now_ns().saturating_sub(t0 + plan.warmup_ns).max(plan.duration_ns);
    let _ = args.intervals.send((plan.intervals() - 1, last, closed));
    let wake = std::mem::replace(&mut *st.wake.borrow_mut(), new_histogram());
    Ok((st.counts.get(), wake))
}

/// Hands this thread's histogram to main once per second of the measured window (all but the
/// last interval, which `thread_main` sends when the connections are done).
async fn tick_intervals(st: Rc<ThreadState>, mut pacer: Pacer, out: Sender<IntervalMsg>) {
    let m0 = st.t0 + st.plan.warmup_ns;
    for i in 0..st.plan.intervals().saturating_sub(1) {
        if let Err(e) = pacer.until(m0 + (i as u64 + 1) * INTERVAL_NS).await {
            eprintln!("loadgen: interval timer failed: {e}");
            return;
        }
        let h = std::mem::replace(&mut *st.hist.borrow_mut(), new_histogram());
        if out.send((i, h, (i as u64 + 1) * INTERVAL_NS)).is_err() {
            return;
        }
    }
}

async fn connect(plan: &Plan) -> io::Result<TcpStream> {
    match monoio::time::timeout(plan.timeout, TcpStream::connect(plan.target)).await {
        Ok(Ok(s)) => {
            s.set_nodelay(true)?;
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {:?}", plan.timeout))),
    }
}

#[derive(Clone, Copy)]
enum Fail {
    /// Connect refused or timed out, write failed, or the connection closed or reset.
    Conn,
    Timeout,
    Protocol(&'static str),
}

async fn connection(st: Rc<ThreadState>, k: usize, stream: TcpStream, mut pacer: Pacer) {
    let plan = &*st.plan;
    let (t0, c) = (st.t0, plan.connections as u64);
    let m0 = t0 + plan.warmup_ns;
    let end = m0 + plan.duration_ns;
    let mut stream = Some(stream);
    let mut wbuf: Vec<u8> = Vec::with_capacity(REQUEST_BYTES_MAX);
    let mut rbuf: Vec<u8> = Vec::with_capacity(RESPONSE_HEAD_BYTES_MAX);
    let mut rng = seed();
    let mut protocol_error_shown = false;
    let mut n = 0u64;
    loop {
        let g = k as u64 + n * c;
        let intended = t0 + plan.offset_ns(g);
        if intended >= end {
            break;
        }
        let now = now_ns();
        if now >= end + plan.drain_ns {
            let owed = plan.scheduled(k as u64);
            // The measured ones wait still: each is timed to now, as a failure is to its failure.
            // Left out, a stall over the last second of a run vanished from the percentiles.
            let mut timed = 0u64;
            let mut h = st.hist.borrow_mut();
            for m in n..owed {
                let intended = t0 + plan.offset_ns(k as u64 + m * c);
                if intended >= m0 && intended < end {
                    h.saturating_record(now.saturating_sub(intended).max(1));
                    timed += 1;
                }
            }
            st.count(|x| {
                x.missed += owed.saturating_sub(n);
                x.missed_timed += timed;
            });
            break;
        }
        n += 1;
        if intended > now {
            if let Err(e) = pacer.until(intended).await {
                eprintln!("loadgen: connection {k}: timer failed: {e}");
                return;
            }
            if intended >= m0 {
                st.wake.borrow_mut().saturating_record(now_ns().saturating_sub(intended).max(1));
            }
        } else {
            let behind = now - intended;
            st.count(|x| x.behind_ns_max = x.behind_ns_max.max(behind));
        }
        let measured = intended >= m0;
        if stream.is_none() {
            match connect(plan).await {
                Ok(s) => stream = Some(s),
                Err(_) => {
                    if measured {
                        st.fail(intended, Fail::Conn);
                    }
                    continue;
                }
            }
        }
        let s = stream.as_mut().unwrap();
        let t = plan.mix.pick(next(&mut rng));
        plan.mix.render(t, g, next(&mut rng), &mut wbuf);
        let (res, b) = s.write_all(wbuf).await;
        wbuf = b;
        if res.is_err() {
            stream = None;
            if measured {
                st.fail(intended, Fail::Conn);
            }
            continue;
        }
        let after_end = measured && now_ns() >= end;
        st.count(|x| {
            x.all_sent += 1;
            x.sent += measured as u64;
            x.sent_after_end += after_end as u64;
        });
        let deadline = now_ns() + plan.timeout.as_nanos() as u64;
        let (res, b) = read_response(s, rbuf, plan.mix.templates[t].head, deadline).await;
        rbuf = b;
        match res {
            Ok((status, close)) => {
                let done = now_ns();
                let ok = (200..300).contains(&status);
                st.count(|x| x.all_ok += ok as u64);
                if measured {
                    st.hist.borrow_mut().saturating_record(done.saturating_sub(intended).max(1));
                    st.count(|x| if ok { x.ok += 1 } else { x.non_2xx += 1 });
                }
                if close {
                    stream = None;
                    rbuf.clear();
                }
            }
            Err(f) => {
                stream = None;
                rbuf.clear();
                if rbuf.capacity() < RESPONSE_HEAD_BYTES_MAX {
                    rbuf = Vec::with_capacity(RESPONSE_HEAD_BYTES_MAX);
                }
                if measured {
                    st.fail(intended, f);
                }
                if let Fail::Protocol(why) = f {
                    if !protocol_error_shown {
                        protocol_error_shown = true;
                        eprintln!(
                            "loadgen: connection {k}: bad response ({why}); reconnecting (shown once per connection)"
                        );
                    }
                }
            }
        }
    }
}

/// Reads one response; leaves any bytes after it in the buffer. Returns (status, server closes).
async fn read_response(
    s: &mut TcpStream,
    mut rbuf: Vec<u8>,
    head: bool,
    deadline: u64,
) -> (Result<(u16, bool), Fail>, Vec<u8>) {
    let mut skip = 0u64; // body bytes still to discard when the body is larger than the buffer
    let mut result = None;
    loop {
        if skip == 0 {
            if let Some(r) = result {
                return (Ok(r), rbuf);
            }
            match frame(&rbuf, head) {
                Ok(Framing::Partial) => {
                    if rbuf.len() == rbuf.capacity() {
                        return (Err(Fail::Protocol("response head larger than 16 KiB")), rbuf);
                    }
                }
                Ok(Framing::Interim { head_bytes }) => {
                    rbuf.drain(..head_bytes);
                    continue;
                }
                Ok(Framing::Complete { status, head_bytes, body_bytes, close }) => {
                    let total = head_bytes as u64 + body_bytes;
                    if rbuf.len() as u64 >= total {
                        rbuf.drain(..total as usize);
                        return (Ok((status, close)), rbuf);
                    }
                    skip = total - rbuf.len() as u64;
                    rbuf.clear();
                    result = Some((status, close));
                }
                Err(why) => return (Err(Fail::Protocol(why)), rbuf),
            }
        }
        let (res, b) = read_some(s, rbuf, deadline).await;
        rbuf = b;
        if let Err(f) = res {
            return (Err(f), rbuf);
        }
        if skip > 0 {
            let have = rbuf.len() as u64;
            if have >= skip {
                rbuf.drain(..skip as usize);
                skip = 0;
            } else {
                skip -= have;
                rbuf.clear();
            }
        }
    }
}

/// One read into the spare capacity of `rbuf`, bounded by `deadline` (CLOCK_MONOTONIC ns).
async fn read_some(s: &mut TcpStream, rbuf: Vec<u8>, deadline: u64) -> (Result<(), Fail>, Vec<u8>) {
    let left = Duration::from_nanos(deadline.saturating_sub(now_ns()));
    let (len, cap) = (rbuf.len(), rbuf.capacity());
    let canceller = Canceller::new();
    let read = s.cancelable_read(rbuf.slice_mut(len..cap), canceller.handle());
    let mut read = std::pin::pin!(read);
    let mut timed_out = false;
    let (res, slice) = monoio::select! {
        r = &mut read => r,
        _ = monoio::time::sleep(left) => {
            timed_out = true;
            drop(canceller.cancel());
            (&mut read).await
        }
    };
    let rbuf = slice.into_inner();
    let res = match res {
        _ if timed_out => Err(Fail::Timeout),
        Ok(0) => Err(Fail::Conn),
        Ok(_) => Ok(()),
        Err(_) => Err(Fail::Conn),
    };
    (res, rbuf)
}

/// Sleeps until an absolute CLOCK_MONOTONIC time with a timerfd read through io_uring.
struct Pacer {
    file: monoio::fs::File,
    buf: Option<Vec<u8>>,
}

impl Pacer {
    fn new() -> io::Result<Pacer> {
        // SAFETY: timerfd_create takes no pointers; the result is checked.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        Ok(Pacer { file: monoio::fs::File::from_std(f)?, buf: Some(Vec::with_capacity(8)) })
    }

    async fn until(&mut self, t_ns: u64) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: (t_ns / 1_000_000_000) as _, tv_nsec: (t_ns % 1_000_000_000) as _ },
        };
        // SAFETY: the fd is ours and open; spec lives across the call; old value not requested.
        let r = unsafe {
            libc::timerfd_settime(self.file.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut b = self.buf.take().unwrap_or_else(|| Vec::with_capacity(8));
        b.clear();
        let (res, b) = self.file.read_at(b, 0).await;
        self.buf = Some(b);
        res.map(|_| ())
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        return now_ns() | 1;
    }
    u64::from_ne_bytes(b) | 1
}

/// xorshift64*: cheap, good enough for a template pick and a cache buster.
fn next(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}
