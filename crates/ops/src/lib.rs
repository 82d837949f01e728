//! geosnap-ops: the operations a user asks for, joining the catalog (what we know) and the
//! regions (what is stored). The `geosnap` binary parses arguments, calls one method of
//! [`Geosnap`], and prints what it returns.
//!
//! Why a crate of its own: the catalog stays free of object stores and the replication
//! crate free of SQL, and the binary stays thin.
//!
//! Invariants kept here:
//! - catalog calls never run on the async reactor: methods are synchronous and only the
//!   region calls inside them go through the runtime handle;
//! - a snapshot is committed in the catalog only after its manifest is in the quorum;
//! - every job can be run again after a crash without duplicating anything.

mod error;

pub mod bench;
pub mod config;
pub mod demo;
pub mod instances;
pub mod jobs;
pub mod maintenance;
pub mod rebuild;
pub mod regions;
pub mod restore;
pub mod snapshots;
pub mod ui;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use geosnap_catalog::{Catalog, Clock, SystemClock};
use geosnap_replication::retry::RetryPolicy;
use geosnap_replication::{Region, Regions};
use serde::Serialize;

pub use config::Config;
pub use error::{Error, Result};
pub use ui::{Silent, Ui};

/// An open data directory: configuration, catalog and regions.
pub struct Geosnap {
    dir: PathBuf,
    config: Config,
    catalog: Catalog,
    regions: Regions,
    rt: tokio::runtime::Handle,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Geosnap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geosnap").field("dir", &self.dir).finish()
    }
}

/// What `init` created.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    /// Data directory.
    pub dir: PathBuf,
    /// Configuration file.
    pub config: PathBuf,
    /// Catalog file.
    pub catalog: PathBuf,
    /// Regions configured.
    pub regions: Vec<geosnap_replication::RegionSpec>,
}

impl Geosnap {
    /// Creates a data directory: configuration with the three default regions, their
    /// stores, and the catalog.
    pub fn init(dir: &Path) -> Result<InitReport> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| Error::io(format!("cannot resolve {}", dir.display()), e))?;
        if dir.join(config::CONFIG_FILE).exists() {
            return Err(Error::AlreadyInitialised { dir });
        }
        let config = Config::default_for(&dir);
        // Open every store once so that its directory exists and its URL is checked.
        for spec in &config.regions {
            Region::open(spec, Default::default(), RetryPolicy::default())?;
        }
        Catalog::open(&dir.join(config::CATALOG_FILE))?;
        config.save(&dir)?;
        Ok(InitReport {
            config: dir.join(config::CONFIG_FILE),
            catalog: dir.join(config::CATALOG_FILE),
            regions: config.regions.clone(),
            dir,
        })
    }

    /// Opens an initialised data directory; region calls run on `rt`.
    pub fn open(dir: &Path, rt: tokio::runtime::Handle) -> Result<Geosnap> {
        let config = Config::load(dir)?;
        let catalog = Catalog::open_existing(&dir.join(config::CATALOG_FILE))?;
        let sim = config::load_simulator(dir)?;
        let regions = config
            .regions
            .iter()
            .map(|spec| {
                let faults = sim.get(&spec.name).cloned().unwrap_or_default();
                Region::open(spec, faults, RetryPolicy::default())
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut regions = Regions::new(regions, config.quorum)?;
        regions.tuning = config.tuning().map_err(|reason| Error::Config {
            path: dir.join(config::CONFIG_FILE),
            reason,
        })?;
        Ok(Geosnap {
            dir: dir.to_path_buf(),
            config,
            catalog,
            regions,
            rt,
            clock: Arc::new(SystemClock),
        })
    }

    /// Replaces the clock (tests, `--now`).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Geosnap {
        self.clock = clock;
        self
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The regions.
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// Mutable regions (tuning).
    pub fn regions_mut(&mut self) -> &mut Regions {
        &mut self.regions
    }

    /// Current time, Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}
