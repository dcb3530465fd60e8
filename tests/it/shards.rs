//! Shards follow the process's CPU affinity mask: `shards = 0` means one per allowed CPU, and
//! shard i pins to the i-th allowed CPU, never outside the mask.

use crate::harness::*;

fn cpus_allowed(pid: u32, thread: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == thread {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
            out.push(line.split(':').nth(1).unwrap().trim().to_string());
        }
    }
    out
}

#[test]
fn shards_default_to_the_allowed_cpus_and_pin_inside_the_mask() {
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let last = (ncpu - 1).to_string();
    let mut s =
        Server::start_wrapped(tempfile::tempdir().unwrap(), &["taskset", "-c", &last], None, &["--shards", "0"]);
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    let pid = s.child.id();
    assert_eq!(cpus_allowed(pid, "tracker-shard-0"), std::slice::from_ref(&last), "pinned to the only allowed CPU");
    assert!(cpus_allowed(pid, "tracker-shard-1").is_empty(), "one allowed CPU → one shard");
    assert_eq!(s.stop(), 0);

    if ncpu >= 2 {
        // Two shards on one allowed CPU share it; neither leaves the mask.
        let mut s =
            Server::start_wrapped(tempfile::tempdir().unwrap(), &["taskset", "-c", "0"], None, &["--shards", "2"]);
        let pid = s.child.id();
        assert_eq!(cpus_allowed(pid, "tracker-shard-0"), ["0"]);
        assert_eq!(cpus_allowed(pid, "tracker-shard-1"), ["0"]);
        assert_eq!(s.stop(), 0);
    }
}
