//! The container image's build stage sees the files cargo needs. No Docker engine runs where the
//! tests run, so this rebuilds the stage's build context by hand: the files its `COPY`
//! instructions take from the repository, minus what `.dockerignore` leaves out, then asks cargo
//! to read the manifest there. cargo refuses a manifest one of whose targets (the binaries under
//! tools/, the bench, the example) is missing — the way an earlier Dockerfile, which copied a
//! hand-picked subset, failed at its first `cargo build`.

use std::path::{Path, PathBuf};
use std::process::Command;

const DOCKERFILE: &str = include_str!("../../Dockerfile");
const DOCKERIGNORE: &str = include_str!("../../.dockerignore");

/// The build stage's `COPY` instructions as (sources, destination), in order: every `COPY`
/// without `--from` between the first `FROM` and the next.
fn build_stage_copies() -> Vec<(Vec<String>, String)> {
    let mut copies = Vec::new();
    let mut stage = 0;
    let mut cargo_ran = false;
    // One instruction per entry: continuation lines (ending in `\`) joined.
    let instructions = DOCKERFILE.replace("\\\n", " ");
    for line in instructions.lines().map(str::trim) {
        if line.starts_with("FROM ") {
            stage += 1;
            continue;
        }
        if stage != 1 {
            continue;
        }
        if line.starts_with("RUN ") && line.contains("cargo ") {
            cargo_ran = true;
        }
        if let Some(args) = line.strip_prefix("COPY ") {
            // A cargo run before the sources are all in needs placeholder targets that must
            // track Cargo.toml by hand: the earlier Dockerfile's did not, and failed.
            assert!(!cargo_ran, "COPY after a cargo build in the build stage: {line}");
            let mut words: Vec<String> = args.split_whitespace().map(String::from).collect();
            assert!(!words.iter().any(|w| w.starts_with("--")), "COPY with flags in the build stage: {line}");
            assert!(words.len() >= 2, "COPY needs a source and a destination: {line}");
            let dest = words.pop().unwrap();
            copies.push((words, dest));
        }
    }
    assert_eq!(stage, 2, "expected a build stage and a runtime stage");
    copies
}

/// `.dockerignore` patterns, each a path relative to the context root. Only plain paths are
/// understood: a glob or an exception would make this copy differ from Docker's, so it fails.
fn ignored() -> Vec<PathBuf> {
    DOCKERIGNORE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert!(
                !l.contains(['*', '?', '[', '!']),
                ".dockerignore pattern {l:?} is not a plain path; teach this test"
            );
            PathBuf::from(l.trim_start_matches("./").trim_end_matches('/'))
        })
        .collect()
}

/// Copies `from` (relative to the repository) to `to`, skipping ignored paths.
fn copy_context(repo: &Path, rel: &Path, to: &Path, ignore: &[PathBuf]) {
    if ignore.iter().any(|i| rel == i) {
        return;
    }
    let from = repo.join(rel);
    let meta = std::fs::symlink_metadata(&from).unwrap_or_else(|e| panic!("COPY source {}: {e}", from.display()));
    if meta.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let name = entry.unwrap().file_name();
            copy_context(repo, &rel.join(&name), &to.join(&name), ignore);
        }
    } else if meta.is_file() {
        std::fs::copy(&from, to).unwrap();
    }
}

#[test]
fn build_stage_context_holds_every_cargo_target() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ignore = ignored();
    let ctx = tempfile::tempdir().unwrap();
    let workdir = ctx.path().join("src-root");
    std::fs::create_dir_all(&workdir).unwrap();
    let copies = build_stage_copies();
    assert!(!copies.is_empty(), "the build stage copies nothing");
    for (sources, dest) in copies {
        let dest = workdir.join(dest.trim_start_matches("./"));
        for src in sources {
            // Relative to the context root, "" for the root itself, so ignore patterns match.
            let rel: PathBuf = Path::new(&src).components().filter(|c| *c != std::path::Component::CurDir).collect();
            // Docker's rules: a directory's contents go into the destination (`COPY . .` is
            // the whole context); a file goes into it when it is a directory (`./`, or made by
            // an earlier COPY), else becomes it.
            let to =
                if repo.join(&rel).is_dir() || !(dest.is_dir() || dest.as_os_str().to_string_lossy().ends_with('/')) {
                    dest.clone()
                } else {
                    dest.join(rel.file_name().unwrap())
                };
            copy_context(repo, &rel, &to, &ignore);
        }
    }
    // `cargo metadata` does not look for target files; a build does, before anything else. A
    // bin that does not exist stops it right after the manifest is read, compiling nothing.
    let out = Command::new(env!("CARGO"))
        .args(["check", "--offline", "--locked", "--bin", "no-such-bin", "--manifest-path"])
        .arg(workdir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", ctx.path().join("target"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no bin target named `no-such-bin`"),
        "cargo cannot read the manifest in the image's build context:\n{stderr}"
    );
    // What the crate reads at compile time beyond its sources.
    for needed in ["Cargo.lock", "config/tracker.toml", "tools/loadgen/default.requests"] {
        assert!(workdir.join(needed).is_file(), "the build context lacks {needed}");
    }
}

/// The image's HEALTHCHECK command, run against a real tracker's admin listener: it passes while
/// the tracker serves, and fails against a listener that answers 503.
#[test]
fn healthcheck_command_passes_against_the_admin_listener_and_fails_on_another_answer() {
    let line = DOCKERFILE
        .replace("\\\n", " ")
        .lines()
        .find(|l| l.trim_start().starts_with("HEALTHCHECK"))
        .expect("the image has a HEALTHCHECK")
        .to_string();
    let json = &line[line.find("CMD [").expect("HEALTHCHECK … CMD [exec form]") + 4..];
    let argv: Vec<String> = serde_json::from_str(json.trim()).expect("CMD is a JSON array");
    assert_eq!(argv[..2], ["bash", "-c"], "the check runs a bash script: {argv:?}");
    let script = &argv[2];
    // The image serves /etc/tracker/tracker.toml, whose admin listener is 127.0.0.1:9090.
    assert!(script.contains("127.0.0.1/9090"), "the check no longer targets the admin port: {script}");
    let run = |port: u16| {
        Command::new("timeout")
            .args(["10", "bash", "-c", &script.replace("127.0.0.1/9090", &format!("127.0.0.1/{port}"))])
            .status()
            .unwrap()
    };

    let srv = crate::harness::Server::start(Some(include_str!("../../config/tracker.toml")), &[]);
    assert!(
        run(srv.admin.expect("admin listener").port()).success(),
        "the health check failed against a serving tracker"
    );

    let unhealthy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unhealthy.local_addr().unwrap().port();
    let answer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = unhealthy.accept().unwrap();
        let mut b = [0u8; 512];
        let _ = c.read(&mut b);
        let _ = c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    assert!(!run(port).success(), "the health check passed on a 503");
    answer.join().unwrap();
}
