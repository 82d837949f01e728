//! Regions: a name, a country and two object stores (main and volume), built from the URLs
//! in the configuration, each seen through the simulator.

use std::collections::BTreeMap;
use std::sync::Arc;

use geosnap_engine::manifest::Backing;
use object_store::ObjectStore;
use object_store::prefix::PrefixStore;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::bucket::{Bucket, StoreKind};
use crate::retry::RetryPolicy;
use crate::s3::{S3Config, S3Location};
use crate::simulator::{FaultConfig, Faults, FaultyStore};
use crate::{Error, Result};

/// A region as written in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Short name, e.g. `it-1`.
    pub name: String,
    /// Country, for people.
    pub country: String,
    /// Main store URL: `file:///path`, `memory://`, `s3://BUCKET[/PREFIX]` (options below)
    /// or any other URL object_store parses.
    pub url: String,
    /// Volume store URL (same forms).
    pub volume_url: String,
    /// Store options: for `s3://` URLs the keys of [`crate::s3::OPTION_KEYS`] (endpoint,
    /// signing region, credentials, timeouts); for other URLs passed to object_store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl RegionSpec {
    /// A region named `name` whose main and volume stores are both `memory://`
    /// (benchmarks, tests).
    pub fn memory(name: &str) -> RegionSpec {
        RegionSpec {
            name: name.to_string(),
            country: String::new(),
            url: "memory://".into(),
            volume_url: "memory://".into(),
            options: BTreeMap::new(),
        }
    }
}

/// One region, ready to use.
#[derive(Debug)]
pub struct Region {
    spec: RegionSpec,
    main: Bucket,
    volume: Bucket,
    faults: Arc<Faults>,
}

impl Region {
    /// Opens the region's stores (creating local directories) behind a simulator that starts
    /// in state `faults`.
    pub fn open(spec: &RegionSpec, faults: FaultConfig, retry: RetryPolicy) -> Result<Region> {
        // A setting written after the last [[region]] table lands in its options: refused
        // where neither of the region's stores takes any, rather than ignored.
        let local = |url: &str| url.starts_with("file:") || url.starts_with("memory:");
        if local(&spec.url)
            && local(&spec.volume_url)
            && let Some(key) = spec.options.keys().next()
        {
            return Err(Error::Config {
                region: spec.name.clone(),
                reason: format!(
                    "option '{key}' means nothing to its file:// and memory:// stores (options \
                     are for s3:// and other object store URLs; the settings of geosnap itself \
                     go above the first [[region]])"
                ),
            });
        }
        let faults = Faults::new(&spec.name, faults);
        let bucket = |url: &str, kind| -> Result<Bucket> {
            let opened = open_store(&spec.name, url, &spec.options)?;
            Ok(Bucket {
                region: spec.name.clone(),
                kind,
                store: Arc::new(FaultyStore::new(opened.store, faults.clone())),
                remote: opened.remote,
                retry,
            })
        };
        Ok(Region {
            main: bucket(&spec.url, StoreKind::Main)?,
            volume: bucket(&spec.volume_url, StoreKind::Volume)?,
            spec: spec.clone(),
            faults,
        })
    }

    /// Region name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its configuration.
    pub fn spec(&self) -> &RegionSpec {
        &self.spec
    }

    /// One of its stores.
    pub fn bucket(&self, kind: StoreKind) -> &Bucket {
        match kind {
            StoreKind::Main => &self.main,
            StoreKind::Volume => &self.volume,
        }
    }

    /// Its simulator state, changeable at run time.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }
}

/// A store built from a URL, with what replication needs to know about it.
struct OpenedStore {
    store: Arc<dyn ObjectStore>,
    /// Endpoint and bucket, for S3 stores.
    remote: Option<S3Location>,
}

/// Builds the store a URL names: `file://` (directory, created), `memory://`, `s3://`
/// (checked and built by [`crate::s3`]), or any other URL object_store parses.
fn open_store(region: &str, url: &str, options: &BTreeMap<String, String>) -> Result<OpenedStore> {
    let config = |reason: String| Error::Config {
        region: region.to_string(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| config(format!("'{url}' is not a URL ({e})")))?;
    let local = |store: Arc<dyn ObjectStore>| OpenedStore {
        store,
        remote: None,
    };
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| config(format!("'{url}' is not a local path")))?;
            std::fs::create_dir_all(&path)
                .map_err(|e| config(format!("cannot create {}: {e}", path.display())))?;
            // Every object is fsynced with its directory before its put returns, as an S3
            // put is durable when it returns: a manifest never outruns its packs. Packs are
            // written with direct I/O (see crate::direct).
            let store = crate::direct::DirectFs::new(&path)
                .map_err(|e| config(format!("cannot open {}: {e}", path.display())))?;
            Ok(local(Arc::new(store)))
        }
        "memory" => Ok(local(Arc::new(crate::memory::SlabMemory::new()))),
        "s3" => {
            let s3 = S3Config::parse(region, url, options)?;
            Ok(OpenedStore {
                store: s3.open()?,
                remote: Some(s3.location()),
            })
        }
        _ => {
            // S3 only through `s3://` and crate::s3: object_store's own URL parsing would
            // let a bucket without credentials ask a cloud's instance-metadata service.
            if matches!(
                object_store::ObjectStoreScheme::parse(&parsed),
                Ok((object_store::ObjectStoreScheme::AmazonS3, _))
            ) {
                return Err(config(format!(
                    "'{url}' is an S3 URL: write it as s3://BUCKET[/PREFIX] and put endpoint, \
                     region and credentials in [region.options]"
                )));
            }
            let (store, prefix) = object_store::parse_url_opts(&parsed, options)
                .map_err(|e| config(format!("cannot use '{url}': {e}")))?;
            let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
                Arc::from(store)
            } else {
                Arc::new(PrefixStore::new(store, prefix))
            };
            Ok(local(store))
        }
    }
}

/// Knobs of replicated writes.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Packs uploaded at once per store (also chunk copies at once in repair).
    pub upload_concurrency: usize,
    /// Encoded bytes that may wait for one store before it holds the others back.
    pub buffer_bytes: usize,
    /// How long a store may keep its buffer full while others have room before it is cut
    /// loose (its chunks then come from a replication job).
    pub detach_after: std::time::Duration,
    /// Size a pack is filled to before it is uploaded.
    pub pack_bytes: usize,
    /// The largest manifest held in memory; larger ones are written to and read from an
    /// anonymous temporary file (and uploaded in parts). 1 MiB by default, as for a
    /// restore: an unchanged 8 GiB image's snapshot, which holds the previous manifest and
    /// the new one, peaked at 25–27 MiB with it against 43–46 MiB with 16 MiB, in the same
    /// time (`docs/benchmarks.md`, "Peak memory").
    pub manifest_memory: u64,
    /// Bytes of index records (a restore's chunk locations, a snapshot's view of what the
    /// stores hold) sorted in memory at a time; more are sorted in runs through temporary
    /// files ([`crate::sorted`]), so this bounds their memory whatever the image size.
    pub index_memory: usize,
    /// Bytes per second below which a restore's preferred region shares its work with the
    /// other regions that hold the snapshot (striping); 0 turns striping off.
    pub stripe_below: u64,
    /// Pack bytes a snapshot uploads to a store between two index objects (also after
    /// [`crate::index`]'s entry limit): what an interrupted attempt leaves unindexed, which
    /// the next attempt uploads again and cannot resume past.
    pub index_every: u64,
}

/// Default [`Tuning::stripe_below`]: 128 MiB/s, below what a local disk reads and above a
/// slow link.
pub const STRIPE_BELOW: u64 = 128 << 20;

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            upload_concurrency: 4,
            buffer_bytes: 64 << 20,
            detach_after: std::time::Duration::from_secs(2),
            pack_bytes: 16 << 20,
            manifest_memory: 1 << 20,
            index_memory: crate::sorted::RUN_MEMORY,
            stripe_below: STRIPE_BELOW,
            index_every: 256 << 20,
        }
    }
}

/// Every configured region and the write quorum.
#[derive(Debug)]
pub struct Regions {
    regions: Vec<Region>,
    quorum: usize,
    /// Write tuning.
    pub tuning: Tuning,
}

/// Most regions one configuration may name: a snapshot's writer keeps, per chunk, one bit
/// for each store it writes.
pub const MAX_REGIONS: usize = 32;

impl Regions {
    /// A set of regions; `quorum` must be between 1 and their number, and there may be at
    /// most [`MAX_REGIONS`].
    pub fn new(regions: Vec<Region>, quorum: usize) -> Result<Regions> {
        if regions.len() > MAX_REGIONS {
            return Err(Error::Config {
                region: "*".into(),
                reason: format!(
                    "{} regions are configured; geosnap supports at most {MAX_REGIONS}",
                    regions.len()
                ),
            });
        }
        if regions.is_empty() || quorum == 0 || quorum > regions.len() {
            return Err(Error::Config {
                region: "*".into(),
                reason: format!(
                    "write quorum {quorum} is impossible with {} regions",
                    regions.len()
                ),
            });
        }
        Ok(Regions {
            regions,
            quorum,
            tuning: Tuning::default(),
        })
    }

    /// Write quorum for image-backed snapshots.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The region called `name`.
    pub fn get(&self, name: &str) -> Result<&Region> {
        self.regions
            .iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| Error::UnknownRegion {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// All regions in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Region> {
        self.regions.iter()
    }

    /// Region names in configuration order.
    pub fn names(&self) -> Vec<&str> {
        self.regions.iter().map(Region::name).collect()
    }

    /// The stores a snapshot of this backing is written to, and the quorum among them:
    /// every main store for image-backed instances, the home volume store alone for
    /// volume-backed ones.
    pub fn targets(&self, backing: Backing, home: &str) -> Result<(Vec<Bucket>, usize)> {
        match backing {
            Backing::Image => Ok((
                self.regions
                    .iter()
                    .map(|r| r.bucket(StoreKind::Main).clone())
                    .collect(),
                self.quorum,
            )),
            Backing::Volume => Ok((vec![self.get(home)?.bucket(StoreKind::Volume).clone()], 1)),
        }
    }

    /// Main stores of every region but `except`, for fallback reads and repair sources.
    pub fn others(&self, except: &str) -> Vec<Bucket> {
        self.regions
            .iter()
            .filter(|r| r.name() != except)
            .map(|r| r.bucket(StoreKind::Main).clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> RegionSpec {
        RegionSpec {
            name: "de-1".into(),
            country: "Germany".into(),
            url: url.into(),
            volume_url: "memory://".into(),
            options: BTreeMap::new(),
        }
    }

    #[test]
    fn more_regions_than_a_chunk_has_bits_for_are_refused() {
        let open = |n: usize| -> Vec<Region> {
            (0..n)
                .map(|i| {
                    let s = RegionSpec {
                        name: format!("r-{i}"),
                        ..spec("memory://")
                    };
                    Region::open(&s, FaultConfig::default(), RetryPolicy::default()).unwrap()
                })
                .collect()
        };
        assert!(Regions::new(open(MAX_REGIONS), 2).is_ok());
        let err = Regions::new(open(MAX_REGIONS + 1), 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 32"), "{err}");
    }

    #[test]
    fn s3_stores_are_only_built_from_s3_urls_with_explicit_credentials() {
        for url in [
            "s3a://geosnap-de-1",
            "https://geosnap-de-1.s3.amazonaws.com",
        ] {
            let err = Region::open(&spec(url), FaultConfig::default(), RetryPolicy::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("is an S3 URL"), "{url}: {err}");
        }
        let err = Region::open(
            &spec("s3://geosnap-de-1"),
            FaultConfig::default(),
            RetryPolicy::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no credentials configured"), "{err}");
    }
}
