//! The `tracker` command: parse the command line, load config, run; errors become exit codes
//! here and nowhere else (0 ok, 1 runtime failure, 2 bad config or usage, 3 `journal cat --strict`
//! skipped damage).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tracker::config::{Config, ConfigErrors, Overrides};

#[derive(Parser)]
#[command(name = "tracker", version, about = "Thread-per-core io_uring HTTP event tracker for ad-tech")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the configured endpoints (the embedded default config when --config is not given).
    Serve {
        /// Config file (TOML); see config/tracker.toml for every key.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding server.listen (e.g. 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Journal directory, overriding journal.dir.
        #[arg(long)]
        journal_dir: Option<PathBuf>,
        /// Number of shards, overriding server.shards (0 = one per allowed CPU; at most 256, as
        /// in the file).
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=tracker::constants::SHARDS_MAX as u64))]
        shards: Option<usize>,
        /// Admin listener address, overriding admin.listen (port 0 picks a free port).
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
    },
    /// Print latency percentiles (µs, per shard and total) of a running tracker, read from its
    /// admin listener's /stats.
    Stats {
        /// Admin address of the running tracker.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
    },
    /// Validate a config file: exit 0, or print every error (file:line: key: problem) and exit 2.
    CheckConfig { file: PathBuf },
    /// Print, per collector, exactly which fields of which event types leave the process.
    PrivacyManifest {
        /// Config file (default: the embedded config).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the reference of every config key (markdown: type, unit, default, bounds), generated
    /// from the table the validator uses; docs/config-reference.md is this output.
    ConfigReference,
    /// Print a signed click URL for a redirect endpoint (see docs/redirects.md).
    SignUrl {
        /// Config file holding the endpoint's [[endpoint.redirect.key]] (the embedded default has none).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Path of the redirect endpoint the URL is for; a signature holds on that endpoint only.
        /// Needed when the config has more than one redirect endpoint.
        #[arg(long)]
        endpoint: Option<String>,
        /// Key id to sign with (default: the last key listed, the newest).
        #[arg(long)]
        kid: Option<String>,
        /// Expiry, unix seconds (default: now + --ttl-s).
        #[arg(long)]
        exp: Option<u64>,
        /// Lifetime of the URL when --exp is not given, seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        /// Scheme and host the URL starts with.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base: String,
        /// The landing URL, unencoded; may contain {macros}.
        #[arg(long)]
        url: String,
        /// The click's other parameters, already encoded (e.g. "c=123&cr=45&imp=abc").
        #[arg(default_value = "")]
        query: String,
    },
    /// Read the journal (cat, tail) and move collectors back over it (replay). `tracker log …`
    /// is the same command.
    #[command(visible_alias = "log")]
    Journal {
        #[command(subcommand)]
        cmd: JournalCmd,
    },
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Print every event as one JSON object per line, decoded with the schema in each segment.
    Cat {
        /// Journal directory (default: journal.dir of the embedded config, "journal").
        #[arg(long, default_value = "journal")]
        journal_dir: PathBuf,
        /// Keep printing events as they are appended (like tail -f).
        #[arg(long)]
        follow: bool,
        /// Exit 3 when a damaged record or segment was skipped (it is always named on stderr),
        /// so a script can tell a clean read from one that passed over damage. A bad last
        /// record of a shard's newest segment is damage only once its writer stopped cleanly;
        /// before that it may be a record still being written.
        #[arg(long, conflicts_with = "follow")]
        strict: bool,
    },
    /// `cat --follow`: every event so far, then each one as it is appended.
    Tail {
        #[arg(long, default_value = "journal")]
        journal_dir: PathBuf,
    },
    /// Move a collector's cursors back so it delivers again from a segment or a time (the
    /// tracker must be stopped). Batches are cut exactly as before: same keys, same ids.
    Replay {
        #[arg(long, default_value = "journal")]
        journal_dir: PathBuf,
        /// Collector name (its `[[collector]]` name).
        #[arg(long)]
        collector: String,
        /// Start of the first segment created at or before this time (RFC 3339, e.g.
        /// 2026-11-26T08:00:00Z, or unix seconds).
        #[arg(long, conflicts_with = "from_segment", required_unless_present = "from_segment")]
        from_time: Option<String>,
        /// Start of segment N of every shard.
        #[arg(long)]
        from_segment: Option<u64>,
    },
}

/// The collector kinds' checks of `cfg`'s `[[collector]]` options (each kind's build).
fn collectors_build(cfg: &Config) -> Result<(), ConfigErrors> {
    tracker::collector::Registry::builtin().build_all(&cfg.collectors).map(drop)
}

/// The config named on the command line, or the embedded default; errors are printed (every one,
/// with file, line and key) and become exit code 2.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    match path {
        None => Ok(Config::embedded()),
        Some(p) => Config::load(p).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(2)
        }),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, listen, journal_dir, shards, admin_listen } => {
            let overrides = Overrides { listen, journal_dir, shards, admin_listen };
            // The file is validated as the flags will have it, and the flags applied. Collector
            // options are checked by their kind's build (librdkafka's own checks among them), as
            // check-config does, their errors listed with the rest: before anything is bound or
            // opened. Found only when the collectors start, a bad one failed the process after it
            // had waited for another process's journal locks (in a handoff, the cue to stop that
            // process) and served.
            let loaded = match config.as_deref() {
                None => {
                    let mut c = Config::embedded();
                    c.apply(&overrides);
                    collectors_build(&c).map(|()| c)
                }
                Some(p) => Config::load_with(p, &overrides, &collectors_build),
            };
            let cfg = match loaded {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            // The file was checked for this where no flag sets an address; a flag may make the
            // clash too.
            if tracker::config::listeners_clash(cfg.server.listen, cfg.admin.listen) {
                eprintln!(
                    "tracker: admin.listen / --admin-listen {} shares a port with server.listen / --listen {}: {}",
                    cfg.admin.listen,
                    cfg.server.listen,
                    tracker::config::LISTENERS_CLASH
                );
                return ExitCode::from(2);
            }
            serve(cfg, config, overrides)
        }
        Cmd::CheckConfig { file } => match Config::load_with_errors(&file) {
            Ok((c, mut errors)) => {
                // Collector options are checked by their kind's build, also when the rest has
                // errors: every error in one run.
                if let Err(e) = collectors_build(&c) {
                    errors.extend(e.0);
                    tracker::config::sort_by_line(&mut errors);
                }
                if !errors.is_empty() {
                    eprintln!("{}", ConfigErrors(errors));
                    return ExitCode::from(2);
                }
                println!("{}: ok ({} endpoints, {} event types)", file.display(), c.endpoints.len(), c.types.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::ConfigReference => {
            print!("{}", tracker::config::keys::reference_markdown());
            ExitCode::SUCCESS
        }
        Cmd::Journal { cmd: JournalCmd::Cat { journal_dir, follow, strict } } => {
            journal_cat(&journal_dir, follow, strict)
        }
        Cmd::Journal { cmd: JournalCmd::Tail { journal_dir } } => journal_cat(&journal_dir, true, false),
        Cmd::PrivacyManifest { config } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            print!("{}", tracker::collector::cli::privacy_manifest(&cfg));
            ExitCode::SUCCESS
        }
        Cmd::Journal { cmd: JournalCmd::Replay { journal_dir, collector, from_time, from_segment } } => {
            match tracker::collector::cli::replay(&journal_dir, &collector, from_time.as_deref(), from_segment) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tracker: replay: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Stats { admin } => stats(admin),
        Cmd::SignUrl { config, endpoint, kid, exp, ttl_s, base, url, query } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rule = match redirect_rule(&cfg, endpoint.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("tracker: {e}");
                    return ExitCode::from(2);
                }
            };
            let now_s = tracker::clock::unix_nanos() / 1_000_000_000;
            // An absurd --ttl-s says so instead of wrapping into an expiry in the past.
            let Some(exp) = exp.or_else(|| now_s.checked_add(ttl_s)) else {
                eprintln!("tracker: --ttl-s {ttl_s} is past any expiry a URL can carry");
                return ExitCode::from(2);
            };
            match tracker::redirect::signed_click_url(rule, &base, &query, &url, kid.as_deref(), exp, now_s) {
                Ok(u) => {
                    println!("{u}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tracker: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The rule `sign-url` signs for: the endpoint at `path`, or the config's only redirect
/// endpoint. Since a signature holds on one endpoint only, it never guesses among several: a
/// wrong guess would print a URL that is refused where it is used.
fn redirect_rule<'c>(cfg: &'c Config, path: Option<&str>) -> Result<&'c tracker::redirect::RedirectRule, String> {
    let rules: Vec<&tracker::redirect::RedirectRule> =
        cfg.endpoints.iter().filter_map(|e| e.redirect.as_deref()).collect();
    let paths = || rules.iter().map(|r| r.path.as_str()).collect::<Vec<_>>().join(", ");
    match (path, rules.as_slice()) {
        (_, []) => Err("this config has no redirect endpoint (response = \"redirect\") to sign for".to_string()),
        (Some(p), _) => rules.iter().copied().find(|r| r.path == p).ok_or_else(|| {
            format!("no redirect endpoint with path {p} in this config; give --endpoint one of: {}", paths())
        }),
        (None, [only]) => Ok(only),
        (None, _) => Err(format!(
            "this config has {} redirect endpoints and a signature holds on one only: give --endpoint one of: {}",
            rules.len(),
            paths()
        )),
    }
}

/// Runs until SIGTERM/SIGINT. SIGHUP reloads `config_path` (ops: `runtime::reload`); systemd
/// hears READY, RELOADING, STOPPING and watchdog pings (`runtime::notify`).
fn serve(cfg: Config, config_path: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    use tracker::runtime::{handoff, notify, reload::Reloader};
    // Block-free signal delivery: a dedicated thread turns signals into stop and reload requests.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tracker: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let notifier = Arc::new(notify::Notifier::from_env());
    let journal_dir = cfg.journal.dir.clone();
    let collectors = cfg.clone();
    // Admin listener: bound before the shards start so a taken port fails start-up at once.
    let admin_listener = match tracker::admin::bind(cfg.admin.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "tracker: cannot listen on admin address {} (admin.listen / --admin-listen): {e}",
                cfg.admin.listen
            );
            return ExitCode::from(1);
        }
    };
    // The .hlog file likewise: a path that cannot be opened must not fail the start after the
    // journal was taken.
    let hlog = match tracker::admin::open_hlog(&cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("tracker: admin: {e}");
            return ExitCode::from(1);
        }
    };
    // A stop asked for while start-up waits for another process's journal locks (a handoff
    // being called off) ends the wait; the signal iterator takes over once serving.
    let stop_asked = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop_asked.clone()) {
            eprintln!("tracker: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    let admin_cfg = cfg.clone();
    let started_with = cfg.clone();
    let running = match tracker::runtime::start_with(cfg, &|s| notifier.status(s), &|| stop_asked.load(SeqCst)) {
        Ok(r) => r,
        // Only a start called off by the stop exits as a stop: any other failure is reported
        // as one, whether or not a stop was asked for meanwhile.
        Err(e) if e.cancelled => {
            eprintln!("tracker: stopped during start-up, before serving anything");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tracker: {e}");
            return ExitCode::from(1);
        }
    };
    let mut admin = match tracker::admin::start(admin_listener, hlog, &admin_cfg, &running) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tracker: admin: {e}");
            running.stop();
            running.wait();
            return ExitCode::from(1);
        }
    };
    drop(admin_cfg);
    eprintln!("tracker: admin on {}", admin.addr());
    eprintln!(
        "tracker: listening on {} ({} shards), journal {}",
        running.addr(),
        running.shards().len(),
        journal_dir.display()
    );
    // Collectors run off the reactors, each on its own thread (collector/).
    let forwarders = match tracker::collector::start_with_shards(
        &collectors,
        &tracker::collector::Registry::builtin(),
        running.shards(),
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tracker: collectors: {e}");
            running.stop();
            running.wait();
            // Their options were checked before the start: what fails here is the journal's
            // collector files or a thread, a runtime failure, not the config.
            return ExitCode::from(1);
        }
    };
    if handoff::migrate_req_enabled() == Some(false) {
        eprintln!("tracker: note: net.ipv4.tcp_migrate_req is 0: in a zero-downtime restart, a connection that reaches this process's listen queue in the instant it closes is reset; set it to 1 (docs/operations.md)");
    }
    let status = format!("listening on {}, {} shards", running.addr(), running.shards().len());
    notifier.ready(&status);

    let watchdog_done = Arc::new(AtomicBool::new(false));
    let watchdog = notify::watchdog_from_env().map(|interval| {
        let (n, shards, done) = (notifier.clone(), running.shards().to_vec(), watchdog_done.clone());
        let w = notify::Watchdog::new(interval);
        std::thread::Builder::new()
            .name("tracker-watchdog".into())
            .spawn(move || w.run(n, shards, done))
            .expect("spawn watchdog thread")
    });
    // A reload refuses what check-config refuses, collector options included.
    let mut reloader =
        config_path.map(|p| Reloader::new(p, overrides, started_with, &running).with_check(Box::new(collectors_build)));

    let stop = running.stopper();
    let handle = signals.handle();
    let sig_notifier = notifier.clone();
    let hlog_reopen = admin.hlog_reopener();
    std::thread::Builder::new()
        .name("tracker-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGHUP => {
                        // Log rotation renames the .hlog and sends SIGHUP: a new file, with or
                        // without a config change.
                        if let Some(r) = &hlog_reopen {
                            r.store(true, SeqCst);
                        }
                        reload(reloader.as_mut(), &sig_notifier, &status)
                    }
                    _ => {
                        eprintln!("tracker: signal {sig}: stopping (finishing in-flight requests, draining rings)");
                        sig_notifier.stopping();
                        stop();
                    }
                }
            }
        })
        .expect("spawn signal thread");
    let shards = running.shards().to_vec();
    running.wait();
    // Nothing is served any more: the admin port goes to a new process (a zero-downtime
    // restart) while this one drains its collectors, instead of both answering on it.
    admin.stop_listening();
    // A drain that gave up on a failing journal at shutdown (runtime/drain.rs STOP_RETRY).
    let lost: u64 = shards.iter().map(|s| s.events_lost.load(SeqCst)).sum();
    handle.close();
    // The journal holds everything acknowledged now: collectors deliver it, then stop.
    forwarders.stop();
    let hung = forwarders.join(std::time::Duration::from_secs(10));
    if hung > 0 {
        eprintln!("tracker: {hung} collector(s) did not finish within 10 s; their cursors resume at the next start");
    }
    // Shards, drains and collectors have published their last histograms (the collectors'
    // shutdown deliveries included): write the last .hlog interval.
    admin.finish();
    watchdog_done.store(true, SeqCst);
    if let Some(w) = watchdog {
        w.thread().unpark();
        let _ = w.join();
    }
    let panicked: Vec<u16> = shards.iter().filter(|s| s.reactor_panicked()).map(|s| s.index).collect();
    if !panicked.is_empty() {
        eprintln!("tracker: stopped because the reactor of shard(s) {panicked:?} panicked (see above)");
        return ExitCode::from(1);
    }
    if lost > 0 {
        eprintln!(
            "tracker: stopped; {lost} event(s) acknowledged as received were lost: the journal could not be written"
        );
        return ExitCode::from(1);
    }
    let unsynced: Vec<u16> = shards.iter().filter(|s| s.final_sync_failed()).map(|s| s.index).collect();
    if !unsynced.is_empty() {
        eprintln!(
            "tracker: stopped; the last journal sync of shard(s) {unsynced:?} failed (see above): every event is in \
             its segment, but the disk may not hold them all until the kernel writes them back"
        );
        return ExitCode::from(1);
    }
    eprintln!("tracker: stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: reload the config file, tell systemd, log the outcome (errors with file:line: key).
fn reload(
    reloader: Option<&mut tracker::runtime::reload::Reloader>,
    notifier: &tracker::runtime::notify::Notifier,
    status: &str,
) {
    notifier.reloading();
    let Some(r) = reloader else {
        eprintln!("tracker: SIGHUP: running the embedded config (no --config FILE): nothing to reload");
        // Under Type=notify-reload systemd waits for READY=1 after the RELOADING=1 it asked for
        // with this SIGHUP: without it `systemctl reload` hangs until its timeout.
        notifier.ready(&format!("{status}; nothing to reload (embedded config)"));
        return;
    };
    match r.reload() {
        Ok(rep) => {
            for k in &rep.needs_restart {
                eprintln!("tracker: reload: {k} needs a restart to take effect; the running value is kept");
            }
            if !rep.late_shards.is_empty() {
                eprintln!(
                    "tracker: reload: shards {:?} had not switched yet; they will on their next turn",
                    rep.late_shards
                );
            }
            eprintln!(
                "tracker: reload: applied {} as generation {}: {} endpoints, {} event types{}",
                r.path().display(),
                rep.generation,
                rep.endpoints,
                rep.types,
                if rep.schema_changed { "; schema changed: new journal segments follow" } else { "" }
            );
        }
        Err(e) => {
            eprintln!("tracker: reload of {} failed; the running config is kept:", r.path().display());
            for line in e.to_string().lines() {
                eprintln!("tracker: reload: {line}");
            }
            // READY=1 ends a refused reload too (systemd has no other answer to RELOADING=1), so
            // the status line is where `systemctl status` shows the refusal, until a reload works.
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            notifier.ready(&format!(
                "{status}; reload of {} failed, running config kept (see the log): {first}",
                r.path().display()
            ));
            return;
        }
    }
    notifier.ready(status);
}

fn journal_cat(dir: &std::path::Path, follow: bool, strict: bool) -> ExitCode {
    use std::io::Write;
    let mut reader = match tracker::journal::JournalReader::open(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tracker: {e}");
            return ExitCode::from(1);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut line = String::with_capacity(1024);
    let mut broken = false;
    // The error the last poll failed with, while following.
    let mut failing: Option<String> = None;
    loop {
        let r = reader.poll(&mut |schema, ev| {
            if broken {
                return;
            }
            line.clear();
            schema.write_json(ev, &mut line);
            line.push('\n');
            if out.write_all(line.as_bytes()).is_err() {
                broken = true;
            }
        });
        // What was skipped (a bad record, an unreadable one, a segment with a bad header) or read
        // around (a header read from its second copy) is said, not hidden: stdout stays one event
        // per line, stderr names each file and what was wrong (each warning says what was done).
        let (warnings, dropped) = reader.take_warnings();
        for w in &warnings {
            eprintln!("tracker: journal cat: {w}");
        }
        if dropped > 0 {
            eprintln!("tracker: journal cat: {dropped} more warning(s) (not listed)");
        }
        match r {
            Ok(_) => failing = None,
            // Following, an error (EMFILE, EIO, a segment being replaced by hand) is waited out
            // like `tail -F` does, said once until it changes: the reader tries the same place
            // again, so nothing is skipped. A one-shot read reports it and fails (after every
            // other shard's events: one shard's failure does not hold up the rest).
            Err(e) if follow => {
                let said = e.to_string();
                if failing.as_deref() != Some(said.as_str()) {
                    eprintln!("tracker: {said}; retrying every second");
                    failing = Some(said);
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                eprintln!("tracker: {e}");
                return ExitCode::from(1);
            }
        }
        if broken || out.flush().is_err() {
            // stdout closed (e.g. piped into head): not an error.
            return ExitCode::SUCCESS;
        }
        if !follow {
            // Every tracker that ran on a journal made its shard directories at start: none means
            // another directory was given, not an empty journal. (Following may start first.)
            if reader.shards() == 0 {
                eprintln!(
                    "tracker: journal cat: no shard-NNN directory under {}: not a journal root; give journal.dir",
                    dir.display()
                );
                return ExitCode::from(1);
            }
            let (records, segments) = (reader.corrupt_records(), reader.corrupt_segments());
            let unreadable = reader.unreadable_records();
            if records + segments + unreadable > 0 {
                let unreadable = match unreadable {
                    0 => String::new(),
                    n => format!(", {n} unreadable record(s)"),
                };
                eprintln!(
                    "tracker: journal cat: skipped {records} bad record(s){unreadable} and {segments} bad segment(s)"
                );
                if strict {
                    return ExitCode::from(3);
                }
            }
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `tracker stats`: the percentile table of a running tracker.
fn stats(admin: std::net::SocketAddr) -> ExitCode {
    match tracker::admin::client::stats_table(admin) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tracker: {e}");
            ExitCode::from(1)
        }
    }
}
