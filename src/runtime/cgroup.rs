//! The process's cgroup v2 limits, for sizing at start: a container given `--cpus 2` on a
//! 64-CPU host still sees all 64 in its affinity mask, and `shards = 0` would start a reactor and
//! a drain per CPU on a quota of two; its memory limit is not the host's RAM either.
//!
//! Read from `/proc/self/cgroup` (the `0::<path>` line of the unified hierarchy) and the
//! `cpu.max` / `memory.max` files of that cgroup and each of its ancestors under
//! `/sys/fs/cgroup` (the tightest counts). Anything missing or unreadable (cgroup v1, no
//! `/sys/fs/cgroup`, no controller) is no limit: the caller falls back to the CPUs and memory the
//! machine reports.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// CPUs the cgroup's quota allows (`cpu.max`, rounded up), the tightest of the process's cgroup
/// and its ancestors; None when no quota is set or none can be read.
pub fn cpu_limit() -> Option<usize> {
    tightest(|dir| std::fs::read_to_string(dir.join("cpu.max")).ok().and_then(|t| parse_cpu_max(&t)))
}

/// Bytes of memory the cgroup allows (`memory.max`), the tightest of the process's cgroup and
/// its ancestors; None when none is set or none can be read.
pub fn memory_limit() -> Option<u64> {
    tightest(|dir| std::fs::read_to_string(dir.join("memory.max")).ok().and_then(|t| parse_memory_max(&t)))
}

fn tightest<T: Ord>(limit: impl Fn(&Path) -> Option<T>) -> Option<T> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_dirs(&text, Path::new(ROOT)).iter().filter_map(|d| limit(d)).min()
}

/// The directories of the unified-hierarchy cgroup named in `/proc/self/cgroup` (`text`) and of
/// each ancestor, under `root`, innermost first. Empty without a `0::` line (cgroup v1).
fn cgroup_dirs(text: &str, root: &Path) -> Vec<PathBuf> {
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else { return Vec::new() };
    let mut dir = root.to_path_buf();
    let mut dirs = vec![dir.clone()];
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs.reverse();
    dirs
}

/// `cpu.max`: "`$MAX $PERIOD`" (µs of CPU per period), or "`max $PERIOD`" for no quota.
fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut it = text.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next()?.parse().ok().filter(|&p| p > 0)?;
    Some(quota.div_ceil(period).max(1) as usize)
}

/// `memory.max`: bytes, or "`max`" for no limit.
fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_rounds_a_quota_up_to_whole_cpus() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2), "1.5 CPUs: two shards, each below a whole CPU");
        assert_eq!(parse_cpu_max("10000 100000"), Some(1));
        assert_eq!(parse_cpu_max("100000 0"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn memory_max_is_bytes_or_no_limit() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
    }

    #[test]
    fn the_cgroup_and_its_ancestors_innermost_first() {
        let root = Path::new("/sys/fs/cgroup");
        let dirs = cgroup_dirs("0::/system.slice/tracker.service\n", root);
        assert_eq!(dirs, [root.join("system.slice/tracker.service"), root.join("system.slice"), root.to_path_buf()]);
        // In a container's own cgroup namespace the process is at its root.
        assert_eq!(cgroup_dirs("0::/\n", root), [root.to_path_buf()]);
        assert!(cgroup_dirs("12:cpu,cpuacct:/docker/abc\n", root).is_empty(), "cgroup v1: no limit read");
    }
}
