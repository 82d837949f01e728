//! The data directory: its layout, the configuration file and the simulator state file.
//!
//! ```text
//! DIR/config.toml      regions (name, country, store URLs), write quorum, chunker, zstd level
//! DIR/catalog.db       the SQLite catalog
//! DIR/simulator.json   each region's simulated condition (geosnap region fail/heal)
//! DIR/regions/<name>/  default main store of a region (file://)
//! DIR/volumes/<name>/  default volume store of a region (file://)
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use geosnap_engine::chunker::ChunkerParams;
use geosnap_engine::codec::DEFAULT_LEVEL;
use geosnap_replication::RegionSpec;
use geosnap_replication::simulator::FaultConfig;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Configuration file name.
pub const CONFIG_FILE: &str = "config.toml";
/// Catalog file name.
pub const CATALOG_FILE: &str = "catalog.db";
/// Simulator state file name.
pub const SIMULATOR_FILE: &str = "simulator.json";

/// The default regions: name and country.
pub const DEFAULT_REGIONS: [(&str, &str); 3] = [
    ("it-1", "Italy"),
    ("de-1", "Germany"),
    ("nl-1", "Netherlands"),
];

/// What `config.toml` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Regions that must hold every chunk and the manifest before an image-backed
    /// snapshot counts as taken.
    pub quorum: usize,
    /// Chunker for new snapshots (`fixed:256K`, `cdc:64K:256K:1M`, ...).
    pub chunker: String,
    /// zstd level for new chunks.
    pub zstd_level: i32,
    /// Seconds after which a running job whose worker stopped heartbeating is taken over.
    #[serde(default = "default_stale_after")]
    pub stale_after_secs: i64,
    /// Size a pack is filled to before it is uploaded (e.g. "16M").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_size: Option<String>,
    /// Packs uploaded at once per region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_concurrency: Option<usize>,
    /// Bytes that may wait for one region before it holds the others back (e.g. "64M").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_buffer: Option<String>,
    /// The largest manifest held in memory (e.g. "1M"); larger ones go through a
    /// temporary file and are uploaded in parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_memory: Option<String>,
    /// Bytes of index records sorted in memory at a time (e.g. "2M"); more go through
    /// temporary files, so a restore's and a snapshot's index do not grow with the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_memory: Option<String>,
    /// Bytes per second below which a restore's region shares its work with the other
    /// regions that hold the snapshot (e.g. "128M"; "0" never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_below: Option<String>,
    /// Image bytes a snapshot scans between checkpoints, from which a retry of an
    /// interrupted attempt resumes (e.g. "256M"; "0" never resumes); also how many pack
    /// bytes it uploads to a region between index objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<String>,
    /// The regions, home region of new instances first.
    #[serde(rename = "region")]
    pub regions: Vec<RegionSpec>,
}

/// Default [`Config::checkpoint_every`]: 256 MiB, a quarter of a second of scanning here
/// and a few seconds of uploading to a remote region.
pub const CHECKPOINT_EVERY: u64 = 256 << 20;

fn default_stale_after() -> i64 {
    30
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

impl Config {
    /// Three local-directory regions under `dir`.
    pub fn default_for(dir: &Path) -> Config {
        Config {
            quorum: 2,
            chunker: ChunkerParams::default().to_string(),
            zstd_level: DEFAULT_LEVEL,
            stale_after_secs: default_stale_after(),
            pack_size: None,
            upload_concurrency: None,
            region_buffer: None,
            manifest_memory: None,
            index_memory: None,
            stripe_below: None,
            checkpoint_every: None,
            regions: DEFAULT_REGIONS
                .iter()
                .map(|(name, country)| RegionSpec {
                    name: name.to_string(),
                    country: country.to_string(),
                    url: file_url(&dir.join("regions").join(name)),
                    volume_url: file_url(&dir.join("volumes").join(name)),
                    options: BTreeMap::new(),
                })
                .collect(),
        }
    }

    /// Reads `DIR/config.toml`.
    pub fn load(dir: &Path) -> Result<Config> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotInitialised {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let config: Config = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            reason: where_in(&text, &e),
        })?;
        config.check(&path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        self.chunker_params().map_err(|e| bad(e.to_string()))?;
        if !zstd_range().contains(&self.zstd_level) {
            return Err(bad(format!(
                "zstd_level {} is out of range ({} to {}; negative levels are zstd's fast modes)",
                self.zstd_level,
                zstd_range().start(),
                zstd_range().end()
            )));
        }
        for r in &self.regions {
            geosnap_catalog::names::validate_region(&r.name).map_err(|e| bad(e.to_string()))?;
        }
        let mut names: Vec<_> = self.regions.iter().map(|r| &r.name).collect();
        names.sort();
        names.dedup();
        if names.len() != self.regions.len() {
            return Err(bad("two regions share a name".into()));
        }
        if self.regions.len() > geosnap_replication::region::MAX_REGIONS {
            return Err(bad(format!(
                "{} regions are configured; geosnap supports at most {}",
                self.regions.len(),
                geosnap_replication::region::MAX_REGIONS
            )));
        }
        if self.quorum == 0 || self.quorum > self.regions.len() {
            return Err(bad(format!(
                "quorum {} is impossible with {} regions",
                self.quorum,
                self.regions.len()
            )));
        }
        if self.stale_after_secs <= 0 {
            return Err(bad("stale_after_secs must be positive".into()));
        }
        self.tuning().map_err(bad)?;
        Ok(())
    }

    /// The write tuning these settings ask for, on top of the defaults.
    pub fn tuning(&self) -> std::result::Result<geosnap_replication::Tuning, String> {
        let mut t = geosnap_replication::Tuning::default();
        let size = |name: &str, v: &str| {
            geosnap_engine::chunker::parse_size(v)
                .filter(|n| (64 << 10..=1 << 30).contains(n))
                .map(|n| n as usize)
                .ok_or_else(|| format!("{name} {v:?} is not a size from 64K to 1G"))
        };
        if let Some(v) = &self.pack_size {
            t.pack_bytes = size("pack_size", v)?;
        }
        if let Some(v) = &self.region_buffer {
            t.buffer_bytes = size("region_buffer", v)?;
        }
        if let Some(v) = &self.manifest_memory {
            t.manifest_memory = geosnap_engine::chunker::parse_size(v)
                .filter(|n| *n <= 1 << 30)
                .ok_or_else(|| format!("manifest_memory {v:?} is not a size from 0 to 1G"))?;
        }
        if let Some(v) = &self.index_memory {
            t.index_memory = geosnap_engine::chunker::parse_size(v)
                .filter(|n| *n <= 1 << 30)
                .map(|n| n as usize)
                .ok_or_else(|| format!("index_memory {v:?} is not a size from 0 to 1G"))?;
        }
        if let Some(v) = &self.stripe_below {
            t.stripe_below = geosnap_engine::chunker::parse_size(v)
                .filter(|n| *n <= 1 << 40)
                .ok_or_else(|| {
                    format!("stripe_below {v:?} is not a rate in bytes per second from 0 to 1T")
                })?;
        }
        let every = self.checkpoint_bytes()?;
        if every > 0 {
            t.index_every = every;
        }
        if let Some(n) = self.upload_concurrency {
            if !(1..=256).contains(&n) {
                return Err(format!("upload_concurrency {n} is not from 1 to 256"));
            }
            t.upload_concurrency = n;
        }
        Ok(t)
    }

    /// Writes `DIR/config.toml` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| Error::Config {
            path: dir.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        let header = "# geosnap configuration: regions, write quorum and snapshot defaults.\n\
                      # Region URLs: file:///path, memory:// or an object_store URL (s3://...).\n\n";
        write_atomic(&dir.join(CONFIG_FILE), format!("{header}{text}").as_bytes())
    }

    /// Image bytes between a snapshot's checkpoints ([`Config::checkpoint_every`]; 0: none).
    pub fn checkpoint_bytes(&self) -> std::result::Result<u64, String> {
        match &self.checkpoint_every {
            None => Ok(CHECKPOINT_EVERY),
            Some(v) => geosnap_engine::chunker::parse_size(v)
                .filter(|n| *n == 0 || (1 << 20..=1 << 40).contains(n))
                .ok_or_else(|| format!("checkpoint_every {v:?} is not 0 or a size from 1M to 1T")),
        }
    }

    /// The chunker for new snapshots.
    pub fn chunker_params(&self) -> Result<ChunkerParams> {
        Ok(self.chunker.parse()?)
    }
}

fn zstd_range() -> std::ops::RangeInclusive<i32> {
    -1000..=22
}

/// A parse error of the configuration as one sentence that says where: the line, and for
/// an error inside a `[[region]]` table, which region's (a top-level setting written after
/// the region tables belongs to the last of them, which is then said too).
fn where_in(text: &str, e: &toml::de::Error) -> String {
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return e.message().to_string();
    };
    let before = text.get(..at).unwrap_or(text);
    let after = text.get(at..).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let is_region = |l: &str| l.trim_start().starts_with("[[region]]");
    // An error about a whole table (a missing field) points at its header.
    let table = if is_region(after) {
        Some(after)
    } else {
        match before
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('['))
        {
            Some(header) if is_region(header) => before.rsplit("[[region]]").next(),
            _ => None,
        }
    };
    let Some(table) = table else {
        return format!("line {line}: {}", e.message());
    };
    let name = table
        .lines()
        .skip_while(|l| is_region(l))
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| l.trim().strip_prefix("name")?.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string());
    let which = name.map_or("a [[region]] table".to_string(), |r| {
        format!("the [[region]] table of {r}")
    });
    let hint = if e.message().starts_with("unknown field") {
        " (the settings of geosnap itself go above the first [[region]])"
    } else {
        ""
    };
    format!("line {line}, in {which}: {}{hint}", e.message())
}

/// Each region's simulated condition, persisted so that `geosnap region fail` lasts across
/// commands.
pub fn load_simulator(dir: &Path) -> Result<BTreeMap<String, FaultConfig>> {
    let path = dir.join(SIMULATOR_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Config {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// Saves the simulator state.
pub fn save_simulator(dir: &Path, state: &BTreeMap<String, FaultConfig>) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::Config {
        path: dir.join(SIMULATOR_FILE),
        reason: e.to_string(),
    })?;
    write_atomic(&dir.join(SIMULATOR_FILE), &bytes)
}

/// Writes `path` through a temporary file in the same directory, fsyncs, renames, and
/// fsyncs the directory: readers see the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let what = || format!("cannot write {}", path.display());
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(what(), e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(what(), e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(what(), e))?;
    tmp.persist(path).map_err(|e| Error::io(what(), e.error))?;
    geosnap_engine::restore::sync_dir(&dir).map_err(|e| Error::io(what(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn error_of(text: &str) -> String {
        let e = toml::from_str::<Config>(text).unwrap_err();
        where_in(text, &e)
    }

    #[test]
    fn parse_errors_say_the_line_and_the_region() {
        let config = Config::default_for(Path::new("/data"));
        let good = toml::to_string(&config).unwrap();
        assert!(toml::from_str::<Config>(&good).is_ok());

        // A top-level setting appended after the region tables lands in the last one.
        let e = error_of(&format!("{good}\ncheckpoint_every = \"8M\"\n"));
        assert!(e.contains("the [[region]] table of nl-1"), "{e}");
        assert!(e.contains("unknown field `checkpoint_every`"), "{e}");
        assert!(e.contains("go above the first [[region]]"), "{e}");

        // A field missing from the second region: that region is named, with no hint.
        let de = config.regions.iter().find(|r| r.name == "de-1").unwrap();
        let missing = good.replace(&format!("volume_url = \"{}\"\n", de.volume_url), "");
        assert_ne!(missing, good);
        let e = error_of(&missing);
        assert!(e.contains("de-1") && e.contains("volume_url"), "{e}");
        assert!(!e.contains("go above"), "{e}");

        // A bad value at the top: its line, no region.
        let e = error_of(&good.replace("quorum = 2", "quorum = \"two\""));
        assert!(e.starts_with("line 1") || e.starts_with("line "), "{e}");
        assert!(!e.contains("region"), "{e}");
    }
}
