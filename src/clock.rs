//! Wall-clock time for event timestamps. `SystemTime::now` is served by the vDSO on Linux: no
//! syscall, no allocation, so it is fine on the request path.

#[inline]
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
