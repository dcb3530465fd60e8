//! Test harness: runs the real `tracker` binary on 127.0.0.1:0 with a temporary journal, and a
//! minimal HTTP/1.1 client over std TcpStream that reads responses byte for byte.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tracker");
/// Bound on every wait in these tests; generous for two busy cores.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener (`tracker: admin on ADDR`); tests always ask for port 0.
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub stderr: mpsc::Receiver<String>,
    /// What the server wrote to stderr before it reported listening (recovery, notes).
    pub startup: Vec<String>,
}

impl Server {
    /// Starts the tracker with `config` (None = the embedded default) and extra flags.
    pub fn start(config: Option<&str>, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, config: Option<&str>, extra: &[&str]) -> Server {
        Self::start_with(dir, &[], config, extra, &[])
    }

    /// Like `start_in`, with the binary run under a wrapper command (e.g. `taskset -c 1`).
    pub fn start_wrapped(dir: tempfile::TempDir, wrapper: &[&str], config: Option<&str>, extra: &[&str]) -> Server {
        Self::start_with(dir, wrapper, config, extra, &[])
    }

    /// Like `start_in`, with extra environment variables (e.g. NOTIFY_SOCKET).
    pub fn start_env(dir: tempfile::TempDir, config: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_with(dir, &[], config, extra, env)
    }

    fn start_with(
        dir: tempfile::TempDir,
        wrapper: &[&str],
        config: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let journal = dir.path().join("journal");
        let mut cmd = match wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.envs(env.iter().copied());
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--journal-dir").arg(&journal);
        if let Some(text) = config {
            let p = dir.path().join("tracker.toml");
            std::fs::write(&p, text).unwrap();
            cmd.arg("--config").arg(p);
        }
        // Never the default admin port 9090: tests run in parallel, and others use the box.
        if !extra.contains(&"--admin-listen") {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        cmd.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tracker");
        let rx = stderr_lines(&mut child);
        let deadline = Instant::now() + WAIT;
        let mut admin = None;
        let mut startup = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("tracker: listening on ") {
                        break rest.split_whitespace().next().unwrap().parse().unwrap();
                    }
                    if let Some(rest) = line.strip_prefix("tracker: admin on ") {
                        admin = Some(rest.trim().parse().unwrap());
                        continue;
                    }
                    eprintln!("[tracker] {line}");
                    startup.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("tracker did not report listening within {WAIT:?}");
                }
            }
        };
        Server { child, addr, admin, dir, stderr: rx, startup }
    }

    pub fn journal(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// SIGTERM, then wait (bounded) for exit; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn wait_exit(&mut self) -> i32 {
        wait_child(&mut self.child, "of SIGTERM").code().unwrap_or(-1)
    }

    /// Lines the server wrote to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Waits up to WAIT for a stderr line containing `needle`, collecting every line read into
    /// `seen` (for the failure message); false if none came.
    pub fn wait_line(&self, seen: &mut Vec<String>, needle: &str) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            seen.extend(self.stderr_lines());
            if seen.iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One GET on the admin listener (a connection per request, as it closes after each).
    pub fn admin_get(&self, path: &str) -> Response {
        let mut c = Client::connect(self.admin.expect("tracker printed no admin address"));
        c.get(path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns another `tracker serve` on `addr` and `journal` (a running server's) with `extra`
/// arguments; returns it with its stderr lines.
pub fn spawn_beside<S: AsRef<std::ffi::OsStr>>(
    addr: SocketAddr,
    journal: &std::path::Path,
    extra: &[S],
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen"])
        .arg(addr.to_string())
        .arg("--journal-dir")
        .arg(journal)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stderr_lines(&mut child);
    (child, rx)
}

/// Waits up to WAIT for a line of `rx` containing `needle` (lines before it are echoed); panics
/// if none comes.
pub fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.contains(needle) => return,
            Ok(l) => eprintln!("[tracker] {l}"),
            Err(_) => panic!("no line containing {needle:?} within {WAIT:?}"),
        }
    }
}

/// Polls `f` every 50 ms until it holds; fails the test after `within`, naming `what`.
pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Forwards a child's stderr, line by line, to the returned channel (read from a thread, so a
/// chatty child never blocks on a full pipe).
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let err = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Standard base64 (how HdrHistogram interval logs encode each histogram), decoded here so the
/// tests need no dependency for it.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = acc << 6 | val(c) as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `tracker journal cat` over a directory, parsed.
pub fn journal_cat(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(BIN).args(["journal", "cat", "--journal-dir"]).arg(dir).output().unwrap();
    assert!(out.status.success(), "journal cat failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_response(false)
    }

    /// Reads one response (bodies framed by Content-Length; none for HEAD or 204/304).
    pub fn read_response(&mut self, head: bool) -> Response {
        self.try_read_response(head).expect("connection closed before a response")
    }

    pub fn try_read_response(&mut self, head: bool) -> Option<Response> {
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = if head || status == 204 || status == 304 {
            0
        } else {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0)
        };
        while self.buf.len() < end + len {
            assert!(self.fill(), "connection closed mid-body");
        }
        let body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Some(Response { status, headers, body })
    }

    /// True when the server closed the connection (reads EOF) with nothing more to read.
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    fn fill(&mut self) -> bool {
        let mut b = [0u8; 8192];
        match self.stream.read(&mut b) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                false
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Waits (bounded by WAIT) for `child` to exit; on timeout kills it and panics, saying it did
/// not exit within WAIT `after` ("of SIGTERM", ...).
pub fn wait_child(child: &mut std::process::Child, after: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tracker did not exit within {WAIT:?} {after}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One thread of another process held still with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT stop
/// that thread alone, no signal involved), resumed when dropped. ptrace is per calling thread:
/// hold and drop it on the same one (a test's own). Lets a test keep a shard's journal drain from
/// running without timing anything.
pub struct HeldThread(libc::pid_t);

impl HeldThread {
    /// Holds the thread of process `pid` named `name` (its comm, at most 15 bytes).
    pub fn hold(pid: u32, name: &str) -> HeldThread {
        Self::try_hold(pid, name).unwrap_or_else(|why| panic!("thread {name} of process {pid}: {why}"))
    }

    /// Like `hold`, for a thread that may not exist or may exit first (a short-lived helper):
    /// Err says which.
    pub fn try_hold(pid: u32, name: &str) -> Result<HeldThread, String> {
        let tid: libc::pid_t = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("/proc/{pid}/task: {e}"))?
            .filter_map(|t| t.ok())
            .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
            .ok_or("no such thread")?
            .file_name()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: ptrace requests on a thread id; no memory of ours is passed.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) } != 0 {
            return Err(format!("PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error()));
        }
        let held = HeldThread(tid);
        // SAFETY: as above.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null) } != 0 {
            return Err(format!("PTRACE_INTERRUPT {tid}: {}", std::io::Error::last_os_error()));
        }
        let mut status = 0;
        // SAFETY: waits for the tracee's stop (or its exit); writes only `status`.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if waited != tid || !libc::WIFSTOPPED(status) {
            return Err(format!("thread {tid} did not stop (it exited?): {status:#x}"));
        }
        Ok(held)
    }
}

impl Drop for HeldThread {
    fn drop(&mut self) {
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: detaching a tracee of this thread resumes it; no memory is passed.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, null, null) };
    }
}
