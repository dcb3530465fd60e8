//! `banker`: the reference budget service of docs/banker.md.
//!
//! `banker --listen 127.0.0.1:9100 --data DIR [--budgets FILE] [--request-timeout-ms MS]`
//!
//! - `POST /v1/spend` applies a spend batch once per `Idempotency-Key`: the batch is appended to
//!   `DIR/ledger.jsonl` and fsynced before the answer, so an acknowledged batch survives a crash,
//!   and a key seen before is acknowledged again without being applied.
//! - `GET /balance` returns the spend in micros per budget key and in total, with budgets and
//!   the keys over budget.
//! - Budgets (micros per budget key) come from `--budgets FILE` or `DIR/budgets.json`:
//!   `{"campaign_id=7": 5000000}`.
//!
//! Prints `banker: listening on ADDR` to stderr once it accepts (port 0 picks a free port).
//! Threads: one per connection, at most CONNECTIONS_MAX; one lock around the ledger. A request
//! must arrive whole within `--request-timeout-ms` (default 30000) of its connection, or it is
//! answered 408: a client trickling bytes cannot hold one of the connections for ever.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Largest request head, bytes.
const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest request body, bytes.
const BODY_BYTES_MAX: usize = 16 << 20;
/// Concurrent connections; more are answered 503.
const CONNECTIONS_MAX: usize = 64;
/// Default bound on reading a whole request, and on writing its answer.
const REQUEST_TIMEOUT_MS: u64 = 30_000;

struct Ledger {
    /// The data directory, flock'ed while this banker runs.
    _lock: File,
    file: File,
    /// Idempotency key → xxh3 of the body it was applied with.
    applied: HashMap<String, u64>,
    spend: BTreeMap<String, i64>,
    budgets: BTreeMap<String, i64>,
    batches: u64,
    /// Batches acknowledged again without being applied, since start.
    duplicates: u64,
    /// A failed append could not be cut back off the file: what is on disk may differ from
    /// what is in memory, so every spend is refused (503) until a restart replays the file.
    broken: Option<String>,
}

impl Ledger {
    fn open(dir: &Path, budgets: BTreeMap<String, i64>) -> Result<Ledger, String> {
        // The directory and the ledger's entry in it are made durable before any batch is
        // acknowledged: a power loss must not take the file that holds acknowledged spend.
        tracker::journal::create_dir_durable(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        // One banker per directory: a second one keeps its own set of applied keys, so each
        // would apply a batch once (and a replay would then count both lines).
        let lock = File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
        // SAFETY: flock on a descriptor we own and keep open (`Ledger::_lock`).
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "{}: another banker holds this data directory ({}); stop it first",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        let path = dir.join("ledger.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        tracker::journal::fsync_dir(dir).map_err(|e| format!("fsync {}: {e}", dir.display()))?;
        let mut l = Ledger {
            _lock: lock,
            file: file.try_clone().map_err(|e| e.to_string())?,
            applied: HashMap::new(),
            spend: BTreeMap::new(),
            budgets,
            batches: 0,
            duplicates: 0,
            broken: None,
        };
        // Replay the ledger; a torn last line (crash mid-append, never acknowledged) is cut off.
        // A line that cannot be read with more after it is damage, not a tear: cutting there
        // would erase acknowledged batches (and their keys, so their resends would be applied
        // again), so the start stops and says where.
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        let mut good = 0u64;
        let mut reader = BufReader::new(&mut file);
        // Bytes, not a String: a crash can tear the last line inside a multi-byte character of a
        // budget key, and read_line would fail the whole start on that instead of cutting it.
        let mut line = Vec::new();
        for number in 1u64.. {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(|e| format!("read {}: {e}", path.display()))?;
            if n == 0 || !line.ends_with(b"\n") {
                break;
            }
            let entry = serde_json::from_slice::<Value>(&line).ok();
            let Some((key, digest, v)) =
                entry.as_ref().and_then(|v| Some((v["key"].as_str()?, v["digest"].as_u64()?, v)))
            else {
                let more = reader.fill_buf().map_err(|e| format!("read {}: {e}", path.display()))?;
                if more.is_empty() {
                    break;
                }
                return Err(format!(
                    "{}: line {number} is not a ledger entry (JSON with \"key\" and \"digest\") and more \
                     entries follow it: the ledger is damaged; fix or remove that line (the batches after it \
                     were acknowledged)",
                    path.display()
                ));
            };
            l.apply(key, digest, &v["spend"]);
            good += n as u64;
        }
        let len = l.file.metadata().map_err(|e| e.to_string())?.len();
        if len != good {
            // The last line only: a crash before its append was synced (so before it was
            // acknowledged) can leave any prefix of it, or, where the file's size reached the
            // disk and a page of it did not, a whole line with zeros in it.
            eprintln!("banker: {}: dropping a torn tail of {} bytes", path.display(), len - good);
            l.file.set_len(good).map_err(|e| e.to_string())?;
            l.file.sync_data().map_err(|e| format!("fsync {}: {e}", path.display()))?;
        }
        Ok(l)
    }

    fn apply(&mut self, key: &str, digest: u64, spend: &Value) {
        for s in spend.as_array().into_iter().flatten() {
            if let (Some(k), Some(m)) = (s["budget_key"].as_str(), s["micros"].as_i64()) {
                let e = self.spend.entry(k.to_string()).or_insert(0);
                *e = e.saturating_add(m);
            }
        }
        self.applied.insert(key.to_string(), digest);
        self.batches += 1;
    }

    fn over_budget(&self) -> Vec<&str> {
        self.budgets
            .iter()
            .filter(|(k, b)| self.spend.get(*k).copied().unwrap_or(0) >= **b)
            .map(|(k, _)| k.as_str())
            .collect()
    }

    fn balance(&self) -> Value {
        let mut keys = serde_json::Map::new();
        let mut names: Vec<&String> = self.spend.keys().chain(self.budgets.keys()).collect();
        names.sort();
        names.dedup();
        for k in names {
            let spend = self.spend.get(k).copied().unwrap_or(0);
            let budget = self.budgets.get(k).copied();
            keys.insert(
                k.clone(),
                json!({"spend_micros": spend, "budget_micros": budget, "over_budget": budget.is_some_and(|b| spend >= b)}),
            );
        }
        let total: i64 = self.spend.values().fold(0i64, |a, b| a.saturating_add(*b));
        json!({
            "total_micros": total,
            "batches": self.batches,
            "duplicates": self.duplicates,
            "keys": keys,
            "over_budget": self.over_budget(),
        })
    }
}

struct Request {
    method: String,
    path: String,
    idempotency_key: Option<String>,
    body: Vec<u8>,
}

/// Reads one request, which must arrive whole within `timeout` (one deadline for all reads,
/// not a timer each read restarts). What cannot be read is answered by status: a 400 tells the
/// tracker its batch is malformed, which stops its collector (docs/banker.md), so a request
/// that stopped arriving in time is a 408, which it retries.
fn read_request(s: &mut TcpStream, timeout: Duration) -> Result<Option<Request>, (u16, String)> {
    let deadline = Instant::now() + timeout;
    let too_slow = || (408, format!("request not received whole within {} ms", timeout.as_millis()));
    // Each read may wait only for what is left of the deadline.
    let read = |s: &mut TcpStream, chunk: &mut [u8]| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(too_slow());
        }
        let _ = s.set_read_timeout(Some(left));
        s.read(chunk).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => too_slow(),
            _ => (400, e.to_string()),
        })
    };
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let mut len = None;
                let mut key = None;
                for h in r.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        // Digits only, once (RFC 9112 §6.3): a proxy in front that reads a `+5`
                        // or the other of two lengths differently would frame another body.
                        let v = h.value.trim_ascii();
                        if len.is_some() {
                            return Err((400, "more than one Content-Length".into()));
                        }
                        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                            return Err((400, "bad Content-Length".into()));
                        }
                        // Too many digits for usize is over any limit.
                        len = Some(std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX));
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        // 501, not 400 (RFC 9112 §6.1): the request may be fine and this server
                        // lacks the coding (a proxy in front that re-chunks bodies). A client
                        // retries a 501 and says why; a 400 stops the tracker's collector.
                        return Err((501, "Transfer-Encoding is not supported; send Content-Length".into()));
                    } else if h.name.eq_ignore_ascii_case("idempotency-key") {
                        key = std::str::from_utf8(h.value).ok().map(|v| v.trim().to_string());
                    }
                }
                let len: usize = len.unwrap_or(0);
                if len > BODY_BYTES_MAX {
                    return Err((413, format!("body over {BODY_BYTES_MAX} bytes")));
                }
                let method = r.method.unwrap_or("").to_string();
                let path = r.path.unwrap_or("").to_string();
                while buf.len() < head + len {
                    let n = read(s, &mut chunk)?;
                    if n == 0 {
                        return Err((400, "connection closed mid-body".into()));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(Some(Request { method, path, idempotency_key: key, body: buf[head..head + len].to_vec() }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err((400, format!("bad request: {e}"))),
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err((431, "request head too large".into()));
        }
        let n = read(s, &mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn respond(s: &mut TcpStream, status: u16, body: &Value) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let b = serde_json::to_vec(body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        b.len()
    );
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&b));
}

fn spend(ledger: &Mutex<Ledger>, req: &Request) -> (u16, Value) {
    let v: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return (400, json!({"error": format!("body is not JSON: {e}")})),
    };
    let Some(key) = v["key"].as_str() else { return (400, json!({"error": "missing \"key\""})) };
    if req.idempotency_key.as_deref() != Some(key) {
        return (400, json!({"error": "the Idempotency-Key header must equal the body's \"key\""}));
    }
    let Some(items) = v["spend"].as_array() else { return (400, json!({"error": "missing \"spend\" array"})) };
    for s in items {
        if s["budget_key"].as_str().is_none() || s["micros"].as_i64().is_none() {
            return (400, json!({"error": "each spend item needs \"budget_key\" (string) and \"micros\" (integer)"}));
        }
    }
    let digest = xxhash_rust::xxh3::xxh3_64(&req.body);
    let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(why) = &l.broken {
        return (503, json!({"error": format!("ledger is inconsistent ({why}); restart the banker")}));
    }
    if let Some(&d) = l.applied.get(key) {
        if d != digest {
            return (409, json!({"error": format!("key {key} was applied with a different body")}));
        }
        l.duplicates += 1;
        return (200, json!({"applied": false, "duplicate": true, "over_budget": l.over_budget()}));
    }
    let line =
        serde_json::to_string(&json!({"key": key, "digest": digest, "spend": v["spend"]})).unwrap_or_default() + "\n";
    let before = match l.file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return (503, json!({"error": format!("ledger stat failed: {e}")})),
    };
    if let Err(e) = l.file.write_all(line.as_bytes()).and_then(|_| l.file.sync_data()) {
        // Not applied: cut the line (whole or partial) back off, or the retry of this batch
        // would append it a second time and a restart would apply it twice.
        if let Err(t) = l.file.set_len(before) {
            l.broken = Some(format!("append failed ({e}) and could not be cut back ({t})"));
        }
        return (503, json!({"error": format!("ledger write failed: {e}")}));
    }
    l.apply(key, digest, &v["spend"]);
    (200, json!({"applied": true, "duplicate": false, "over_budget": l.over_budget()}))
}

fn serve(mut s: TcpStream, ledger: &Mutex<Ledger>, timeout: Duration) {
    let _ = s.set_write_timeout(Some(timeout));
    let req = match read_request(&mut s, timeout) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err((status, why)) => return respond(&mut s, status, &json!({"error": why})),
    };
    let (status, body) = match (req.method.as_str(), req.path.split('?').next().unwrap_or("")) {
        ("POST", "/v1/spend") => spend(ledger, &req),
        ("GET", "/balance") => (200, ledger.lock().unwrap_or_else(|p| p.into_inner()).balance()),
        ("GET", "/health") => (200, json!({"ok": true})),
        (_, "/v1/spend" | "/balance" | "/health") => (405, json!({"error": "method not allowed"})),
        _ => (404, json!({"error": "no such path"})),
    };
    respond(&mut s, status, &body);
}

fn load_budgets(path: &Path) -> Result<BTreeMap<String, i64>, String> {
    let text = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let v: BTreeMap<String, i64> = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: expected {{\"budget key\": micros, ...}}: {e}", path.display()))?;
    Ok(v)
}

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:9100".to_string();
    let mut data: Option<PathBuf> = None;
    let mut budgets: Option<PathBuf> = None;
    let mut timeout_ms = REQUEST_TIMEOUT_MS;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_default(),
            "--data" => data = args.next().map(PathBuf::from),
            "--budgets" => budgets = args.next().map(PathBuf::from),
            "--request-timeout-ms" => match args.next().and_then(|v| v.parse::<u64>().ok()).filter(|&v| v > 0) {
                Some(v) => timeout_ms = v,
                None => {
                    eprintln!("banker: --request-timeout-ms takes a number of milliseconds above 0");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                eprintln!("usage: banker --listen ADDR --data DIR [--budgets FILE] [--request-timeout-ms MS]   (protocol: docs/banker.md)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!(
                    "banker: unknown argument {other:?}; usage: banker --listen ADDR --data DIR [--budgets FILE] [--request-timeout-ms MS]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let Some(data) = data else {
        eprintln!("banker: --data DIR is required (the ledger lives there)");
        return ExitCode::from(2);
    };
    let budgets_path = budgets.unwrap_or_else(|| data.join("budgets.json"));
    let budgets = if budgets_path.exists() {
        match load_budgets(&budgets_path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("banker: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        BTreeMap::new()
    };
    let ledger = match Ledger::open(&data, budgets) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(e) => {
            eprintln!("banker: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("banker: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    match listener.local_addr() {
        Ok(a) => eprintln!("banker: listening on {a}"),
        Err(e) => {
            eprintln!("banker: {e}");
            return ExitCode::from(1);
        }
    }
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or memory: retrying at once would spin a core.
                eprintln!("banker: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.load(SeqCst) >= CONNECTIONS_MAX {
            respond(&mut s, 503, &json!({"error": "too many connections"}));
            continue;
        }
        active.fetch_add(1, SeqCst);
        let (ledger, done) = (ledger.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("banker-conn".into()).spawn(move || {
            serve(s, &ledger, Duration::from_millis(timeout_ms));
            done.fetch_sub(1, SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, SeqCst);
        }
    }
    ExitCode::SUCCESS
}
