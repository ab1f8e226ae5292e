//! Wall-clock time as the node writes it: Unix milliseconds for signatures, windows and
//! records, RFC 3339 for what clients read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch (1 if the clock is before it): the base of
/// versions that must grow across restarts.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// Now as RFC 3339 (UTC, seconds).
pub(crate) fn now_rfc3339() -> String {
    skiff_image::build::rfc3339(SystemTime::now())
}

/// A time in Unix ms as RFC 3339 (UTC, seconds).
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    skiff_image::build::rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}
