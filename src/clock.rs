//! Clock reads: wall-clock time for event timestamps, coarse monotonic ms for deadlines, and
//! monotonic µs for systemd. clock_gettime is served by the vDSO on Linux: no
//! syscall, no allocation, so it is fine on the request path.

/// One clock_gettime. Every clock read here exists on every Linux since 2.6.32.
#[inline]
fn read(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts
}

#[inline]
pub fn unix_nanos() -> u64 {
    // Straight from clock_gettime in u64 arithmetic: SystemTime::now().duration_since() costs a
    // checked subtraction and a u128 conversion on top, and this runs twice per request.
    let ts = read(libc::CLOCK_REALTIME);
    // Before 1970 (a clock set wrong) reads as 0, as SystemTime's error did.
    if ts.tv_sec < 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Monotonic milliseconds from the kernel's tick-granular clock (CLOCK_MONOTONIC_COARSE: a
/// vDSO read of a variable, no TSC read, ~1–4 ms resolution). For connection deadlines, which
/// are swept every 250 ms: they need neither precision nor the wall clock's jumps.
#[inline]
pub fn mono_coarse_ms() -> u64 {
    let ts = read(libc::CLOCK_MONOTONIC_COARSE);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// CLOCK_MONOTONIC in microseconds, as systemd compares it (sd_notify `MONOTONIC_USEC`).
pub fn monotonic_usec() -> u64 {
    let ts = read(libc::CLOCK_MONOTONIC);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
