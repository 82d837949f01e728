//! Where chunks end: fixed-size cells on an absolute grid, or FastCDC 2020 cut points.
//!
//! Both chunkers only ever see data extents (zero runs are cut out before them, see
//! [`crate::scanner`]). A chunker is stateless between chunks: a fixed cut depends only on
//! the absolute offset, a CDC cut only on the bytes from the chunk start up to `max`.

use std::fmt;
use std::str::FromStr;

use fastcdc::v2020;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Smallest fixed chunk size.
pub const FIXED_MIN: u32 = 4 * 1024;
/// Largest chunk of any chunker.
pub const CHUNK_MAX: u32 = 16 * 1024 * 1024;
/// The fixed chunk size used when none is given; chosen in `docs/benchmarks.md`.
pub const DEFAULT_FIXED_SIZE: u32 = 16 * 1024;

/// How an image is cut into chunks. Recorded in every manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ChunkerParams {
    /// Cells of `size` bytes on a grid anchored at offset 0 of the image.
    Fixed {
        /// Cell size: a power of two from 4 KiB to 16 MiB.
        size: u32,
    },
    /// FastCDC 2020 with normalization level 1.
    Cdc {
        /// Smallest chunk (except an extent's last).
        min: u32,
        /// Target average.
        avg: u32,
        /// Largest chunk.
        max: u32,
    },
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams::Fixed {
            size: DEFAULT_FIXED_SIZE,
        }
    }
}

impl ChunkerParams {
    /// Fixed chunks of `size` bytes; `size` must be a power of two from 4 KiB to 16 MiB.
    pub fn fixed(size: u32) -> Result<Self, Error> {
        let p = ChunkerParams::Fixed { size };
        p.validate()?;
        Ok(p)
    }

    /// FastCDC with the given bounds (as the `fastcdc` crate allows them).
    pub fn cdc(min: u32, avg: u32, max: u32) -> Result<Self, Error> {
        let p = ChunkerParams::Cdc { min, avg, max };
        p.validate()?;
        Ok(p)
    }

    /// Rejects parameters no chunker accepts: manifests are checked with this too.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::InvalidChunker(why));
        match *self {
            ChunkerParams::Fixed { size } => {
                if !size.is_power_of_two() || !(FIXED_MIN..=CHUNK_MAX).contains(&size) {
                    return bad(format!(
                        "fixed chunk size {} is not a power of two from 4 KiB to 16 MiB",
                        size
                    ));
                }
            }
            ChunkerParams::Cdc { min, avg, max } => {
                let (min_u, avg_u, max_u) = (min as usize, avg as usize, max as usize);
                let in_range = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min_u)
                    && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg_u)
                    && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max_u)
                    && min <= avg
                    && avg <= max;
                let even = min % 2 == 0 && avg % 2 == 0 && max % 2 == 0;
                if !(in_range && even) {
                    return bad(format!(
                        "CDC sizes min {min}, avg {avg}, max {max} are out of range \
                         (min 64 B..1 MiB, avg 256 B..4 MiB, max 1 KiB..16 MiB, even, min <= avg <= max)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The largest chunk these parameters produce.
    pub fn max_chunk(&self) -> usize {
        match *self {
            ChunkerParams::Fixed { size } => size as usize,
            ChunkerParams::Cdc { max, .. } => max as usize,
        }
    }

    /// The size most chunks have: the fixed size, or CDC's average.
    pub fn typical_chunk(&self) -> u64 {
        match *self {
            ChunkerParams::Fixed { size } => u64::from(size),
            ChunkerParams::Cdc { avg, .. } => u64::from(avg),
        }
    }

    /// A cutter for these (validated) parameters.
    pub fn cutter(&self) -> Cutter {
        match *self {
            ChunkerParams::Fixed { size } => Cutter::Fixed { size: size as u64 },
            ChunkerParams::Cdc { min, avg, max } => {
                let (mask_s, mask_l) =
                    v2020::select_masks(avg as usize, v2020::Normalization::Level1);
                Cutter::Cdc {
                    min: min as usize,
                    avg: avg as usize,
                    max: max as usize,
                    mask_s,
                    mask_l,
                }
            }
        }
    }
}

impl fmt::Display for ChunkerParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ChunkerParams::Fixed { size } => write!(f, "fixed:{}", size_str(size)),
            ChunkerParams::Cdc { min, avg, max } => write!(
                f,
                "cdc:{}:{}:{}",
                size_str(min),
                size_str(avg),
                size_str(max)
            ),
        }
    }
}

fn size_str(n: u32) -> String {
    format_size(u64::from(n))
}

/// Writes a size as [`parse_size`] reads it, in the largest unit that divides it exactly:
/// `1M`, `256K`, `65537`.
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Parses `1M`, `256K`, `65536`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix(['b', 'B']).unwrap_or(s);
    let s = s.strip_suffix(['i', 'I']).unwrap_or(s);
    let (digits, shift) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 10),
        'm' | 'M' => (&s[..s.len() - 1], 20),
        'g' | 'G' => (&s[..s.len() - 1], 30),
        't' | 'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl FromStr for ChunkerParams {
    type Err = Error;

    /// `fixed`, `fixed:1M`, `cdc` (256K:1M:4M), `cdc:MIN:AVG:MAX`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            Error::InvalidChunker(format!(
                "'{s}' is not a chunker; use fixed, fixed:SIZE, cdc or cdc:MIN:AVG:MAX"
            ))
        };
        let size = |t: &str| -> Result<u32, Error> {
            parse_size(t)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["fixed"] => Ok(ChunkerParams::default()),
            ["fixed", n] => ChunkerParams::fixed(size(n)?),
            ["cdc"] => ChunkerParams::cdc(256 * 1024, 1024 * 1024, 4 * 1024 * 1024),
            ["cdc", a, b, c] => ChunkerParams::cdc(size(a)?, size(b)?, size(c)?),
            _ => Err(bad()),
        }
    }
}

/// The cut-point logic of one [`ChunkerParams`], ready to run.
#[derive(Clone, Copy, Debug)]
pub enum Cutter {
    /// Grid cells of `size` bytes.
    Fixed {
        /// Cell size.
        size: u64,
    },
    /// FastCDC 2020, same masks and gear table as `fastcdc::v2020::FastCDC`.
    Cdc {
        /// Smallest chunk.
        min: usize,
        /// Average chunk.
        avg: usize,
        /// Largest chunk.
        max: usize,
        /// Strict mask (before `avg`).
        mask_s: u64,
        /// Relaxed mask (after `avg`).
        mask_l: u64,
    },
}

impl Cutter {
    /// Length of the next chunk of `data`, which starts at absolute image offset `offset`
    /// and runs to the end of its extent (`data_is_all = true`) or holds at least
    /// [`Cutter::lookahead`] bytes. Always `> 0` for non-empty data.
    #[inline]
    pub fn next_len(&self, offset: u64, data: &[u8]) -> usize {
        match *self {
            Cutter::Fixed { size } => {
                let to_grid = size - offset % size;
                (to_grid as usize).min(data.len())
            }
            Cutter::Cdc {
                min,
                avg,
                max,
                mask_s,
                mask_l,
            } => {
                let (_, len) = v2020::cut(
                    data,
                    min,
                    avg,
                    max,
                    mask_s,
                    mask_l,
                    mask_s << 1,
                    mask_l << 1,
                );
                len
            }
        }
    }

    /// How many bytes from the chunk start decide a cut: with fewer bytes left in an
    /// extent that may still grow, the cut must wait for more data.
    #[inline]
    pub fn lookahead(&self, offset: u64) -> u64 {
        match *self {
            Cutter::Fixed { size } => size - offset % size,
            Cutter::Cdc { max, .. } => max as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_chunkers() {
        assert_eq!(
            "fixed:1M".parse::<ChunkerParams>().unwrap(),
            ChunkerParams::Fixed { size: 1 << 20 }
        );
        assert_eq!(
            "cdc:16K:64K:256K".parse::<ChunkerParams>().unwrap(),
            ChunkerParams::Cdc {
                min: 16384,
                avg: 65536,
                max: 262144
            }
        );
        let p = "cdc".parse::<ChunkerParams>().unwrap();
        assert_eq!(p.to_string().parse::<ChunkerParams>().unwrap(), p);
        assert_eq!(ChunkerParams::default().to_string(), "fixed:16K");
        for bad in [
            "fixed:3M",
            "fixed:2K",
            "fixed:32M",
            "cdc:1M:64K:4M",
            "rabin",
            "fixed:x",
        ] {
            assert!(bad.parse::<ChunkerParams>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size(""), None);
        for n in [0, 1, 1023, 1024, 65537, 3 << 20, (1 << 30) + 1024, 5 << 40] {
            assert_eq!(parse_size(&format_size(n)), Some(n), "{}", format_size(n));
        }
        assert_eq!(format_size(20 << 20), "20M");
        assert_eq!(format_size((1 << 30) + (1 << 20)), "1025M");
    }

    #[test]
    fn fixed_cuts_follow_the_absolute_grid() {
        let c = ChunkerParams::fixed(65536).unwrap().cutter();
        let data = vec![1u8; 200_000];
        assert_eq!(c.next_len(0, &data), 65536);
        assert_eq!(c.next_len(65536 - 10, &data), 10);
        assert_eq!(c.next_len(65536, &data[..100]), 100);
    }
}
