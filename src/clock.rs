//! The time source. `KMSFS_NOW` pins "now" so tests can move time past rotation and deletion dates.

use crate::error::{KmsError, Result};
use chrono::{DateTime, SecondsFormat, Utc};

/// Environment variable that fixes the clock: an RFC 3339 time or `@<unix seconds>`.
pub const NOW_ENV: &str = "KMSFS_NOW";

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    Fixed(DateTime<Utc>),
}

impl Clock {
    /// The system clock, unless `KMSFS_NOW` is set; a malformed value is an error, never ignored.
    pub fn from_env() -> Result<Clock> {
        match std::env::var(NOW_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                Ok(Clock::Fixed(parse_time(&v).map_err(|e| {
                    KmsError::validation(format!("{NOW_ENV}: {}", e.message))
                })?))
            }
            _ => Ok(Clock::System),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Fixed(t) => *t,
        }
    }
}

/// Parses an RFC 3339 time, a bare date (`2026-01-31`, midnight UTC) or `@<unix seconds>`.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Some(secs) = s.strip_prefix('@') {
        let n: i64 = secs
            .parse()
            .map_err(|_| KmsError::validation(format!("bad unix time {s:?}")))?;
        return DateTime::from_timestamp(n, 0)
            .ok_or_else(|| KmsError::validation(format!("unix time out of range: {s:?}")));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(KmsError::validation(format!(
        "bad time {s:?}: use RFC 3339 (2026-01-31T12:00:00Z), a date (2026-01-31) or @<unix seconds>"
    )))
}

/// The one text form of times in output, the key store and the audit log.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        let a = parse_time("2026-01-31T12:00:00Z").unwrap();
        let b = parse_time("@1769860800").unwrap();
        assert_eq!(a, b);
        let c = parse_time("2026-01-31").unwrap();
        assert_eq!(format_time(&c), "2026-01-31T00:00:00.000Z");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("@x").is_err());
    }
}
