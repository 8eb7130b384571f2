//! Wall-clock time as the records keep it: whole seconds or milliseconds since 1970, which
//! every instance over shared records reads alike (an `Instant` means nothing to another
//! process).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Since 1970 (zero for a clock set before it).
fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Seconds since 1970.
pub fn unix_secs() -> i64 {
    since_epoch().as_secs() as i64
}

/// Milliseconds since 1970.
pub fn unix_ms() -> i64 {
    millis(since_epoch())
}

/// Seconds since 1970 at `d` from now.
pub fn unix_secs_in(d: Duration) -> i64 {
    (since_epoch() + d).as_secs() as i64
}

/// `d` in whole milliseconds, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
