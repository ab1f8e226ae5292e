use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The bounds every container of an app runs under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory a single instance may grow to, in bytes. Default 128 MiB.
    pub memory_bytes: u64,
    /// Wall-clock budget of one request, guest CPU and host waits together, in
    /// milliseconds. Default 30 000 (30 s).
    pub timeout_ms: u64,
    /// Requests one container serves at once; past it the ingress answers 503 at once.
    /// Default 64.
    pub concurrency: u32,
}

impl Limits {
    /// The largest memory limit accepted: wasm32's whole address space.
    pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
    /// The longest timeout accepted (one hour).
    pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
    /// The most concurrent requests one container may be given.
    pub const MAX_CONCURRENCY: u32 = 10_000;

    /// The request timeout as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 128 << 20,
            timeout_ms: 30_000,
            concurrency: 64,
        }
    }
}

/// Parses a byte size the way Docker and Kubernetes users write it: `134217728`, `64k`,
/// `64KiB`, `64Mi`, `64m`, `64MB`, `1g`, `1GiB`. Units are binary (`m` = MiB), as in
/// `docker run --memory`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 64MiB"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {unit:?} (use k, m, g)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Parses a duration: `250ms`, `2s`, `1m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 2s"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h)"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert_eq!(parse_bytes("8Ki").unwrap(), 8192);
        assert!(
            parse_bytes("64 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999999999g").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
