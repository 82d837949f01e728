//! Seeded generator of test and benchmark disk images, so that every figure in
//! `docs/benchmarks.md` can be reproduced byte for byte.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};

use crate::zero::{ZERO_BLOCK, is_zero};

/// What an image is filled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Segments of 64 KiB to 4 MiB, a third each random, text-like and zeros (written).
    Mixed,
    /// Incompressible bytes.
    Random,
    /// Log-like text lines (compresses about 4:1 with zstd-1).
    Text,
    /// Zeros, written out (not a hole).
    Zeros,
    /// Like `Mixed`, but the zero segments are holes and a further half of the image is
    /// one hole at the end.
    Sparse,
    /// Dense: the first half random, the second half text-like.
    Halves,
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "mixed" => Profile::Mixed,
            "random" => Profile::Random,
            "text" => Profile::Text,
            "zeros" => Profile::Zeros,
            "sparse" => Profile::Sparse,
            "halves" => Profile::Halves,
            _ => {
                return Err(format!(
                    "'{s}' is not a profile; use mixed, random, text, zeros, sparse or halves"
                ));
            }
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    Random,
    Text,
    Zero,
}

/// Writes an image of `size` bytes at `path` (replacing it), filled per `profile` from
/// `seed`. Memory use is one 4 MiB segment.
pub fn generate(path: &Path, size: u64, profile: Profile, seed: u64) -> io::Result<()> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut file = File::create(path)?;
    let mut text = TextGen::default();
    let data_end = match profile {
        Profile::Sparse => size / 2 / ZERO_BLOCK as u64 * ZERO_BLOCK as u64,
        _ => size,
    };
    let mut buf = Vec::with_capacity(4 << 20);
    let mut pos = 0u64;
    while pos < data_end {
        let (fill, len) = match profile {
            Profile::Random => (Fill::Random, 4 << 20),
            Profile::Text => (Fill::Text, 4 << 20),
            Profile::Zeros => (Fill::Zero, 4 << 20),
            Profile::Halves if pos < size / 2 => {
                (Fill::Random, (4 << 20).min((size / 2 - pos) as usize))
            }
            Profile::Halves => (Fill::Text, 4 << 20),
            Profile::Mixed | Profile::Sparse => {
                let fill = match rng.random_range(0..3) {
                    0 => Fill::Random,
                    1 => Fill::Text,
                    _ => Fill::Zero,
                };
                (fill, rng.random_range(16..=1024usize) * ZERO_BLOCK)
            }
        };
        let len = len.min((data_end - pos) as usize);
        if fill == Fill::Zero && profile == Profile::Sparse {
            pos += len as u64;
            continue;
        }
        buf.clear();
        buf.resize(len, 0);
        match fill {
            Fill::Random => rng.fill_bytes(&mut buf),
            Fill::Text => text.fill(&mut rng, &mut buf),
            Fill::Zero => {}
        }
        file.write_all_at(&buf, pos)?;
        pos += len as u64;
    }
    file.set_len(size)?;
    file.flush()?;
    Ok(())
}

/// Rewrites `fraction` of the image's non-zero 4 KiB blocks in place with random bytes,
/// as a running VM's scattered writes would. Returns the number of blocks rewritten.
pub fn scatter_writes(path: &Path, fraction: f64, seed: u64) -> io::Result<u64> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut block = vec![0u8; ZERO_BLOCK];
    let mut data_blocks = Vec::new();
    let image = crate::image::Image::open(path).map_err(io::Error::other)?;
    let mut pos = 0;
    while let Some(d) = image.next_data(pos).map_err(io::Error::other)? {
        let end = image.next_hole(d).map_err(io::Error::other)?;
        let mut b = d / ZERO_BLOCK as u64;
        while b * (ZERO_BLOCK as u64) < end {
            let off = b * ZERO_BLOCK as u64;
            let n = (size - off).min(ZERO_BLOCK as u64) as usize;
            file.read_exact_at(&mut block[..n], off)?;
            if !is_zero(&block[..n]) {
                data_blocks.push(b);
            }
            b += 1;
        }
        pos = end;
    }
    let count = ((data_blocks.len() as f64) * fraction).round() as usize;
    let mut rewritten = 0;
    for i in 0..count {
        // Partial Fisher-Yates: the first `count` entries become a random sample.
        let j = rng.random_range(i..data_blocks.len());
        data_blocks.swap(i, j);
        let off = data_blocks[i] * ZERO_BLOCK as u64;
        let n = (size - off).min(ZERO_BLOCK as u64) as usize;
        rng.fill_bytes(&mut block[..n]);
        file.write_all_at(&block[..n], off)?;
        rewritten += 1;
    }
    file.sync_all()?;
    Ok(rewritten)
}

/// Log-like lines: timestamps, hosts, levels, paths, numbers.
#[derive(Default)]
struct TextGen {
    line: Vec<u8>,
    t: u64,
}

impl TextGen {
    const HOSTS: [&'static str; 6] = ["web-1", "web-2", "db-1", "cache-1", "queue-3", "auth-2"];
    const LEVELS: [&'static str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
    const PATHS: [&'static str; 8] = [
        "/api/v1/instances",
        "/api/v1/snapshots",
        "/api/v1/volumes/attach",
        "/healthz",
        "/api/v1/regions/it-1",
        "/login",
        "/static/app.js",
        "/api/v1/jobs",
    ];
    const WORDS: [&'static str; 12] = [
        "request",
        "completed",
        "snapshot",
        "queued",
        "replica",
        "written",
        "cache",
        "miss",
        "retrying",
        "upstream",
        "latency",
        "ok",
    ];

    fn fill(&mut self, rng: &mut Xoshiro256PlusPlus, out: &mut [u8]) {
        let mut pos = 0;
        while pos < out.len() {
            if self.line.is_empty() {
                self.next_line(rng);
            }
            let n = self.line.len().min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&self.line[..n]);
            self.line.drain(..n);
            pos += n;
        }
    }

    fn next_line(&mut self, rng: &mut Xoshiro256PlusPlus) {
        self.t += rng.random_range(1..2000u64);
        let pick = |rng: &mut Xoshiro256PlusPlus, words: &[&'static str]| {
            words[rng.random_range(0..words.len())]
        };
        let host = pick(rng, &Self::HOSTS);
        let level = pick(rng, &Self::LEVELS);
        let path = pick(rng, &Self::PATHS);
        let w1 = pick(rng, &Self::WORDS);
        let w2 = pick(rng, &Self::WORDS);
        let _ = writeln!(
            self.line,
            "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z {host} geosnapd[{}]: {level} {w1} {w2} path={path} status={} bytes={} id={:016x} took={}ms",
            1 + (self.t / 86_400_000) % 28,
            (self.t / 3_600_000) % 24,
            (self.t / 60_000) % 60,
            (self.t / 1000) % 60,
            self.t % 1000,
            rng.random_range(1000..1100u32),
            [200, 200, 200, 204, 304, 404, 500][rng.random_range(0..7usize)],
            rng.random_range(0..100_000u32),
            rng.random::<u64>(),
            rng.random_range(0..900u32),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_image_and_sparse_has_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        generate(&a, 3 << 20, Profile::Mixed, 7).unwrap();
        generate(&b, 3 << 20, Profile::Mixed, 7).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        generate(&b, 3 << 20, Profile::Mixed, 8).unwrap();
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        let s = dir.path().join("s");
        generate(&s, 64 << 20, Profile::Sparse, 1).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&s).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 40 << 20,
            "allocated {}",
            m.blocks() * 512
        );
    }

    #[test]
    fn scatter_writes_touch_the_asked_fraction() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        generate(&p, 8 << 20, Profile::Random, 1).unwrap();
        let before = std::fs::read(&p).unwrap();
        let n = scatter_writes(&p, 0.01, 2).unwrap();
        assert_eq!(n, 20); // 2048 data blocks
        let after = std::fs::read(&p).unwrap();
        let changed = before
            .chunks(4096)
            .zip(after.chunks(4096))
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(changed, 20);
    }
}
