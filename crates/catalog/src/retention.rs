//! Retention: how long a snapshot is kept after it completed, in whole days.

use std::fmt;
use std::num::NonZeroU32;

use crate::Error;
use crate::error::clip;

/// Longest retention accepted: 100 years of 365 days.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// Seconds in a retention day: exactly 24 h, calendars and leap seconds aside.
pub const SECONDS_PER_DAY: i64 = 86_400;

/// How long a snapshot is kept once it completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Never expires (user input "0").
    Forever,
    /// Expires exactly this many 24-hour days after completion.
    Days(NonZeroU32),
}

impl Retention {
    /// Parses `--retention-days` input: a whole number of days from 0 (forever) to 36500.
    ///
    /// Surrounding whitespace is trimmed (it comes from config files and quoting, and
    /// is never meaningful); a sign, even `+`, is refused, as are fractions, exponents,
    /// digit separators and non-ASCII digits, so what is stored is what was meant.
    pub fn parse(input: &str) -> Result<Retention, Error> {
        let bad = |why: String| Error::InvalidRetention {
            input: clip(input),
            why,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(bad(
                "retention is empty; give a whole number of days (0 keeps snapshots forever)"
                    .into(),
            ));
        }
        if s.starts_with('-') {
            return Err(bad("retention cannot be negative".into()));
        }
        if s.starts_with('+') {
            return Err(bad(
                "retention must be a plain number of days, without a sign".into(),
            ));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<u32>() {
                Ok(days) if days <= MAX_RETENTION_DAYS => Retention::from_days(days),
                // Too long for u32 is also more than 100 years: say so with the digits given.
                _ => Err(bad(format!(
                    "retention of {} days is more than 100 years (at most {MAX_RETENTION_DAYS})",
                    clip(s.trim_start_matches('0'))
                ))),
            };
        }
        let decimal = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if let Some((whole, frac)) = s.split_once(['.', ','])
            && (decimal(whole) || whole.is_empty())
            && decimal(frac)
        {
            return Err(bad("retention must be a whole number of days".into()));
        }
        Err(bad(
            "retention must be a whole number of days, such as 7 (0 keeps snapshots forever)"
                .into(),
        ))
    }

    /// The retention for a stored day count (0 = forever); refuses more than 100 years.
    pub fn from_days(days: u32) -> Result<Retention, Error> {
        if days > MAX_RETENTION_DAYS {
            return Err(Error::InvalidRetention {
                input: days.to_string(),
                why: format!(
                    "retention of {days} days is more than 100 years (at most {MAX_RETENTION_DAYS})"
                ),
            });
        }
        Ok(NonZeroU32::new(days).map_or(Retention::Forever, Retention::Days))
    }

    /// Whole days kept; 0 for forever (the manifest's `retention_days`).
    pub fn days(&self) -> u32 {
        match self {
            Retention::Forever => 0,
            Retention::Days(d) => d.get(),
        }
    }

    /// When a snapshot completed at `completed_at` expires; `None` if never.
    pub fn expires_at(&self, completed_at: i64) -> Option<i64> {
        match self {
            Retention::Forever => None,
            Retention::Days(d) => {
                Some(completed_at.saturating_add(i64::from(d.get()) * SECONDS_PER_DAY))
            }
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.days() {
            0 => f.write_str("forever"),
            1 => f.write_str("1 day"),
            n => write!(f, "{n} days"),
        }
    }
}

/// Serialised as the day count, 0 meaning forever, like the manifest's `retention_days`.
impl serde::Serialize for Retention {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.days())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(input: &str) -> String {
        match Retention::parse(input) {
            Err(Error::InvalidRetention { why, .. }) => why,
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    #[test]
    fn accepts_whole_days() {
        assert_eq!(Retention::parse("0").unwrap(), Retention::Forever);
        assert_eq!(Retention::parse("1").unwrap().days(), 1);
        assert_eq!(Retention::parse("007").unwrap().days(), 7);
        assert_eq!(Retention::parse(" 30\n").unwrap().days(), 30);
        assert_eq!(Retention::parse("36500").unwrap().days(), 36_500);
    }

    #[test]
    fn refuses_each_bad_input_with_its_reason() {
        assert!(why("").contains("empty"));
        assert!(why("   ").contains("empty"));
        assert_eq!(why("-1"), "retention cannot be negative");
        assert_eq!(why("-0"), "retention cannot be negative");
        assert_eq!(why("1.5"), "retention must be a whole number of days");
        assert_eq!(why("1,5"), "retention must be a whole number of days");
        assert_eq!(why(".5"), "retention must be a whole number of days");
        assert!(why("abc").starts_with("retention must be a whole number of days, such as"));
        assert!(why("7d").starts_with("retention must be a whole number of days, such as"));
        assert!(why("1e3").starts_with("retention must be a whole number of days, such as"));
        assert!(why("1_000").starts_with("retention must be a whole number of days, such as"));
        assert!(why("٣").starts_with("retention must be a whole number of days, such as"));
        assert!(why("+7").contains("without a sign"));
        assert!(
            why("36501").starts_with("retention of 36501 days is more than 100 years"),
            "{}",
            why("36501")
        );
        assert!(why("99999999999").starts_with("retention of 99999999999 days is more than"));
        assert!(why(&"9".repeat(500)).contains("more than 100 years"));
    }

    #[test]
    fn error_message_is_one_sentence_naming_the_input() {
        let e = Retention::parse("-1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid retention \"-1\": retention cannot be negative"
        );
    }

    #[test]
    fn expiry_is_completion_plus_whole_days() {
        let t = 1_700_000_000;
        assert_eq!(Retention::Forever.expires_at(t), None);
        assert_eq!(
            Retention::parse("1").unwrap().expires_at(t),
            Some(t + 86_400)
        );
        assert_eq!(
            Retention::parse("30").unwrap().expires_at(t),
            Some(t + 30 * 86_400)
        );
        assert_eq!(
            Retention::parse("1").unwrap().expires_at(i64::MAX),
            Some(i64::MAX)
        );
    }

    #[test]
    fn displays_for_people() {
        assert_eq!(Retention::Forever.to_string(), "forever");
        assert_eq!(Retention::from_days(1).unwrap().to_string(), "1 day");
        assert_eq!(Retention::from_days(14).unwrap().to_string(), "14 days");
        assert!(Retention::from_days(36_501).is_err());
    }
}
