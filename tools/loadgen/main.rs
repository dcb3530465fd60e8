//! `loadgen`: an open-loop (constant-rate) HTTP/1.1 load generator for perf engineers, on the
//! tracker's own stack (one monoio io_uring runtime per thread, COOP_TASKRUN | TASKRUN_FLAG,
//! pinned with core_affinity).
//!
//! ```text
//! main.rs      command line → Plan → threads → merge intervals → .hlog / .hgrm / table; exit codes
//! template.rs  requests file → Mix; renders one request into a reused buffer ({seq}, {rand})
//! conn.rs      per thread: runtime, the intended-time schedule, connections, latency recording
//! response.rs  keep-alive response framing (status, Content-Length, no body for 204/304/HEAD)
//! report.rs    interval log, percentile distribution, the summary table
//! ```
//!
//! Requests are sent on a fixed schedule whatever the server does, and latency is measured from
//! when each request *should* have gone out, so a stalled server shows up in the percentiles
//! instead of quietly lowering the offered load (coordinated omission). Everything is bounded:
//! duration, warm-up, connections, threads, request size, response head size, timeouts.
//! Exit codes: 0 the run completed (read the error counts), 1 the run could not start (no
//! connection, no io_uring), 2 bad arguments or requests file.

mod conn;
mod report;
mod response;
mod template;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use clap::Parser;

use conn::{now_ns, Counts, Plan, ThreadArgs};
use template::{Mix, DEFAULT_REQUESTS};

/// A run is at most this long (warm-up not included): bounds the run and the interval count.
const DURATION_MAX: Duration = Duration::from_secs(3600);
const WARMUP_MAX: Duration = Duration::from_secs(600);
/// Connections in all: each owns 32 KiB of buffers and a timerfd.
const CONNECTIONS_MAX: usize = 10_000;
const THREADS_MAX: usize = 64;
/// Requests per second, all connections together.
const RATE_MAX: f64 = 10_000_000.0;
const TIMEOUT_MAX: Duration = Duration::from_secs(60);
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// Gap between "every connection is open" and the first intended send, so every thread is
/// waiting on its schedule when it starts.
const START_DELAY_NS: u64 = 20_000_000;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop HTTP/1.1 load generator: constant rate, latency from the intended send time, HdrHistogram output",
    after_help = "Output: a percentile table and one `LOADGEN_RESULT key=value ...` line on stdout; progress per second on stderr.\nRequests file format: `loadgen --print-default-requests` prints the default mix with its format."
)]
struct Args {
    /// Server address, IP:PORT.
    #[arg(long, required_unless_present = "print_default_requests")]
    target: Option<SocketAddr>,
    /// Requests per second, all connections together.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured run time (10s, 500ms, 2m; a bare number is seconds), after the warm-up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time at the same rate before the measured run.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Connections in all, opened before the run and spread over the threads; the rate is spread
    /// evenly over them, one request in flight per connection.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Load threads, each one io_uring runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin the threads to, round robin: "1", "2,3", "2-5".
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<Cpus>,
    /// Requests file (see --print-default-requests for the format); default: the built-in mix.
    #[arg(long)]
    requests: Option<PathBuf>,
    /// Host header (default: the target address).
    #[arg(long)]
    host: Option<String>,
    /// Time to wait for a connect or a response before counting a timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// After the run, how long a connection that is behind schedule may still send the requests
    /// it owes (counted as sent after the end; what is left is counted as missed).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    drain: Duration,
    /// Write an HdrHistogram interval log (1 s intervals, latencies in ns) to this file.
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// Write the measured window's percentile distribution (HdrHistogram .hgrm text, µs).
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Print the built-in request mix (with the file format in its comments) and exit.
    #[arg(long)]
    print_default_requests: bool,
}

#[derive(Clone, Debug)]
struct Cpus(Vec<usize>);

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let x: f64 = num.parse().map_err(|_| format!("{s:?}: expected a duration such as 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => x / 1e3,
        "s" => x,
        "m" => x * 60.0,
        _ => return Err(format!("{s:?}: unit {unit:?} is not one of ms, s, m")),
    };
    if !secs.is_finite() || !(0.0..=1e6).contains(&secs) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_cpus(s: &str) -> Result<Cpus, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let bad = || format!("{s:?}: expected CPU numbers such as 1, 2,3 or 2-5");
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a > b || b >= 4096 {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    Ok(Cpus(out))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_requests {
        print!("{DEFAULT_REQUESTS}");
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("loadgen: {msg}");
            ExitCode::from(code)
        }
    }
}

fn usage(msg: String) -> (u8, String) {
    (2, msg)
}

fn run(args: Args) -> Result<(), (u8, String)> {
    let target = args.target.expect("clap requires --target");
    if !(args.rate >= 1.0 && args.rate <= RATE_MAX) {
        return Err(usage(format!("--rate {}: expected 1..={RATE_MAX} requests per second", args.rate)));
    }
    if args.duration < Duration::from_millis(100) || args.duration > DURATION_MAX {
        return Err(usage(format!("--duration {:?}: expected 100ms..={}s", args.duration, DURATION_MAX.as_secs())));
    }
    if args.warmup > WARMUP_MAX {
        return Err(usage(format!("--warmup {:?}: at most {}s", args.warmup, WARMUP_MAX.as_secs())));
    }
    if args.timeout < Duration::from_millis(1) || args.timeout > TIMEOUT_MAX {
        return Err(usage(format!("--timeout {:?}: expected 1ms..={}s", args.timeout, TIMEOUT_MAX.as_secs())));
    }
    if args.drain > DRAIN_MAX {
        return Err(usage(format!("--drain {:?}: at most {}s", args.drain, DRAIN_MAX.as_secs())));
    }
    if args.connections == 0 || args.connections > CONNECTIONS_MAX {
        return Err(usage(format!("--connections {}: expected 1..={CONNECTIONS_MAX}", args.connections)));
    }
    if args.threads == 0 || args.threads > THREADS_MAX || args.threads > args.connections {
        return Err(usage(format!(
            "--threads {}: expected 1..={} (at most {THREADS_MAX}, and no more than --connections)",
            args.threads,
            THREADS_MAX.min(args.connections)
        )));
    }
    let host = args.host.clone().unwrap_or_else(|| target.to_string());
    let (text, name) = match &args.requests {
        None => (DEFAULT_REQUESTS.to_string(), "<built-in mix>".to_string()),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => return Err(usage(format!("--requests {}: {e}", p.display()))),
        },
    };
    let mix = Mix::parse(&text, &host).map_err(|e| usage(format!("{name}: {e}")))?;
    let plan = Arc::new(Plan {
        target,
        rate: args.rate,
        connections: args.connections,
        warmup_ns: args.warmup.as_nanos() as u64,
        duration_ns: args.duration.as_nanos() as u64,
        timeout: args.timeout,
        drain_ns: args.drain.as_nanos() as u64,
        mix,
    });

    let threads = args.threads;
    let cpus = args.cpus.map(|c| c.0).unwrap_or_default();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (int_tx, int_rx) = mpsc::channel();
    let mut starts = Vec::new();
    let mut handles = Vec::new();
    for i in 0..threads {
        let (start_tx, start_rx) = mpsc::channel();
        starts.push(start_tx);
        let a = ThreadArgs {
            index: i,
            plan: plan.clone(),
            conns: (i..plan.connections).step_by(threads).collect(),
            cpu: if cpus.is_empty() { None } else { Some(cpus[i % cpus.len()]) },
            ready: ready_tx.clone(),
            start: start_rx,
            intervals: int_tx.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || conn::run(a))
            .map_err(|e| (1, format!("cannot spawn thread {i}: {e}")))?;
        handles.push(h);
    }
    drop((ready_tx, int_tx));
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                drop(starts); // every thread waiting for t0 gives up
                for h in handles {
                    let _ = h.join();
                }
                return Err((1, format!("{e} (is the server running at {target}?)")));
            }
            Err(_) => return Err((1, "a load thread died before the run started".into())),
        }
    }

    let t0 = now_ns() + START_DELAY_NS;
    let wall_start = SystemTime::now() + Duration::from_nanos(START_DELAY_NS + plan.warmup_ns);
    for s in &starts {
        let _ = s.send(t0);
    }
    let comment = format!(
        "loadgen {}: target {target}, rate {} req/s, {} connections, {} thread(s), warm-up {:?}, duration {:?}; latency in ns from the intended send time",
        env!("CARGO_PKG_VERSION"),
        plan.rate,
        plan.connections,
        threads,
        args.warmup,
        args.duration
    );
    eprintln!("loadgen: {comment}");
    let mut intervals =
        report::Intervals::new(threads, plan.intervals(), plan.duration_ns, args.hlog.as_deref(), &comment, wall_start)
            .map_err(|e| (1, format!("--hlog: {e}")))?;
    while let Ok((i, h, closed)) = int_rx.recv() {
        for (j, m) in intervals.add(i, h, closed).map_err(|e| (1, format!("--hlog: {e}")))? {
            eprintln!(
                "loadgen: {:>4}s  {:>8} responses  p50 {:>9.1} µs  p99 {:>9.1} µs  max {:>10.1} µs",
                j + 1,
                m.len(),
                m.value_at_quantile(0.5) as f64 / 1e3,
                m.value_at_quantile(0.99) as f64 / 1e3,
                m.max() as f64 / 1e3
            );
        }
    }
    let mut counts = Counts::default();
    let mut wake = conn::new_histogram();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok((c, w))) => {
                counts.add(&c);
                wake.add(&w).expect("same bounds");
            }
            Ok(Err(e)) => return Err((1, format!("thread {i}: {e}"))),
            Err(_) => return Err((1, format!("thread {i} panicked"))),
        }
    }
    if !intervals.complete() {
        return Err((1, "a load thread stopped before reporting every interval".into()));
    }
    if let Some(p) = &args.hgrm {
        report::write_hgrm(p, &intervals.total).map_err(|e| (1, format!("--hgrm: {e}")))?;
    }
    print!("{}", report::summary(plan.rate, args.duration.as_secs_f64(), &counts, &intervals.total, &wake));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_cpus_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3h").is_err());
        assert_eq!(parse_cpus("1").unwrap().0, [1]);
        assert_eq!(parse_cpus("0,2-4").unwrap().0, [0, 2, 3, 4]);
        assert!(parse_cpus("3-1").is_err());
    }

    #[test]
    fn schedule_spreads_the_rate_exactly_over_connections() {
        let plan = Plan {
            target: "127.0.0.1:1".parse().unwrap(),
            rate: 2000.0,
            connections: 7,
            warmup_ns: 0,
            duration_ns: 2_000_000_000,
            timeout: Duration::from_secs(1),
            drain_ns: 0,
            mix: Mix::parse("1 GET /\n", "h").unwrap(),
        };
        let total: u64 = (0..7).map(|k| plan.scheduled(k)).sum();
        assert_eq!(total, 4000);
        assert_eq!(plan.offset_ns(1999), 999_500_000);
        assert_eq!(plan.intervals(), 2);
    }
}
