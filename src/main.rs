//! The `tracker` command: parse the command line, load config, run; errors become exit codes
//! here and nowhere else (0 ok, 1 runtime failure, 2 bad config or usage).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tracker::config::{Config, Overrides};

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
        /// Number of shards, overriding server.shards (0 = one per allowed CPU).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// Validate a config file: exit 0, or print every error (file:line: key: problem) and exit 2.
    CheckConfig { file: PathBuf },
    /// Print, per collector, exactly which fields of which event types leave the process.
    PrivacyManifest {
        /// Config file (default: the embedded config).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read the journal (cat) and move collectors back over it (replay).
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, listen, journal_dir, shards } => {
            let mut cfg = match config {
                None => Config::embedded(),
                Some(p) => match Config::load(&p) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(2);
                    }
                },
            };
            cfg.apply(&Overrides { listen, journal_dir, shards });
            serve(cfg)
        }
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                if let Err(e) = tracker::collector::Registry::builtin().build_all(&c.collectors) {
                    eprintln!("{e}");
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
        Cmd::Journal { cmd: JournalCmd::Cat { journal_dir, follow } } => journal_cat(&journal_dir, follow),
        Cmd::PrivacyManifest { config } => {
            let cfg = match config {
                None => Config::embedded(),
                Some(p) => match Config::load(&p) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(2);
                    }
                },
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
    }
}

fn serve(cfg: Config) -> ExitCode {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Block-free signal delivery: a dedicated thread turns signals into a stop request.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tracker: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let journal_dir = cfg.journal.dir.clone();
    let collectors = cfg.clone();
    let running = match tracker::runtime::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tracker: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "tracker: listening on {} ({} shards), journal {}",
        running.addr(),
        running.shards().len(),
        journal_dir.display()
    );
    // Collectors run off the reactors, each on its own thread (collector/).
    let forwarders = match tracker::collector::start(&collectors, &tracker::collector::Registry::builtin()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tracker: collectors: {e}");
            running.stop();
            running.wait();
            return ExitCode::from(2);
        }
    };
    let stop = running.stopper();
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("tracker-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGHUP => eprintln!("tracker: SIGHUP: configuration reload is not supported yet; ignoring"),
                    _ => {
                        eprintln!("tracker: signal {sig}: stopping (finishing in-flight requests, draining rings)");
                        stop();
                    }
                }
            }
        })
        .expect("spawn signal thread");
    running.wait();
    handle.close();
    // The journal holds everything acknowledged now: collectors deliver it, then stop.
    forwarders.stop();
    let hung = forwarders.join(std::time::Duration::from_secs(10));
    if hung > 0 {
        eprintln!("tracker: {hung} collector(s) did not finish within 10 s; their cursors resume at the next start");
    }
    eprintln!("tracker: stopped");
    ExitCode::SUCCESS
}

fn journal_cat(dir: &std::path::Path, follow: bool) -> ExitCode {
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
        if let Err(e) = r {
            eprintln!("tracker: {e}");
            return ExitCode::from(1);
        }
        if broken || out.flush().is_err() {
            // stdout closed (e.g. piped into head): not an error.
            return ExitCode::SUCCESS;
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
