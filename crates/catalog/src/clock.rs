//! Time as the catalog sees it: Unix seconds, UTC, from an injectable [`Clock`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::Error;
use crate::error::clip;

/// A source of the current time, so tests and `prune --now` can fix it.
pub trait Clock: Send + Sync {
    /// Now, in Unix seconds (UTC).
    fn now(&self) -> i64;
}

/// The machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // A clock set before 1970: count backwards rather than fail.
            Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
        }
    }
}

/// A clock stopped at the given Unix second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now(&self) -> i64 {
        self.0
    }
}

impl fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(now = {})", self.now())
    }
}

/// Parses an RFC 3339 time (any offset) to Unix seconds; fractions of a second are dropped
/// (rounded towards the past).
pub fn parse_rfc3339(input: &str) -> Result<i64, Error> {
    DateTime::parse_from_rfc3339(input)
        .map(|t| t.timestamp())
        .map_err(|_| Error::InvalidTime { input: clip(input) })
}

/// Formats Unix seconds as RFC 3339 in UTC with a `Z` suffix, e.g. `2026-11-26T03:00:00Z`.
///
/// Times beyond chrono's range (about ±262,000 years) cannot come from a real clock; they
/// print as the raw number of seconds rather than panic.
pub fn format_rfc3339(t: i64) -> String {
    match DateTime::<Utc>::from_timestamp(t, 0) {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => format!("{t} s since 1970-01-01T00:00:00Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_utc_seconds() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_662_000), "2026-11-26T03:00:00Z");
        assert_eq!(
            parse_rfc3339("2026-11-26T03:00:00Z").unwrap(),
            1_795_662_000
        );
        for t in [-86_400, 0, 1, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)).unwrap(), t);
        }
    }

    #[test]
    fn honours_offsets_and_drops_fractions() {
        assert_eq!(
            parse_rfc3339("2026-11-26T04:00:00+01:00").unwrap(),
            1_795_662_000
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T03:00:00.999Z").unwrap(),
            1_795_662_000
        );
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "now",
            "2026-11-26",
            "2026-11-26T03:00:00",
            "2026-13-01T00:00:00Z",
            "1795662000",
        ] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidTime { .. }), "{bad:?}: {e:?}");
            assert!(e.to_string().contains("RFC 3339"), "{e}");
        }
    }

    #[test]
    fn out_of_range_times_do_not_panic() {
        assert!(format_rfc3339(i64::MAX).contains("s since 1970"));
    }

    #[test]
    fn clocks_tell_time() {
        assert_eq!(FixedClock(42).now(), 42);
        // After 2020-01-01: catches a clock that returns 0 or milliseconds mangled into seconds.
        let now = SystemClock.now();
        assert!(now > 1_577_836_800 && now < 32_503_680_000, "{now}");
    }
}
