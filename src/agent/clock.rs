//! Time sources.
//!
//! Leases are measured on `CLOCK_MONOTONIC` in milliseconds. It keeps running while a process is
//! stopped (SIGSTOP), is shared by all processes of one machine (so the test harness can compare
//! transition timestamps across agents), and never jumps with wall-clock corrections. The pure
//! state machines take these values as plain `u64` inputs so tests and the simulation drive them
//! with their own clocks.

/// Milliseconds on the machine's monotonic clock.
pub fn monotonic_millis() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // Cannot happen for CLOCK_MONOTONIC with a valid pointer; fall back to a clock that
        // still never goes backwards within this process.
        return fallback_millis();
    }
    (ts.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

fn fallback_millis() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Milliseconds since the Unix epoch (wall clock), for human-facing timestamps only.
pub fn unix_millis() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// RFC 3339 text of a Unix-millisecond timestamp.
pub fn rfc3339(unix_millis: i64) -> String {
    match jiff::Timestamp::from_millisecond(unix_millis) {
        Ok(ts) => ts.to_string(),
        Err(_) => jiff::Timestamp::UNIX_EPOCH.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_backwards() {
        let a = monotonic_millis();
        let b = monotonic_millis();
        assert!(b >= a);
        assert!(a > 0);
    }

    #[test]
    fn rfc3339_formats_epoch_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
    }
}
