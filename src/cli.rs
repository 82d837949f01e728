//! The command line, as clap parses it. Every command of `docs/cli.md`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Deduplicated, compressed snapshots of VM disk images, replicated to three regions.
#[derive(Debug, Parser)]
#[command(name = "geosnap", version, about, max_term_width = 100)]
pub struct Cli {
    /// Data directory (catalog, configuration, local region stores).
    #[arg(long, global = true, env = "GEOSNAP_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Print results as JSON (stable schema, see docs/cli.md); no progress bars.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// More detail on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data directory: configuration with regions it-1, de-1, nl-1, and the catalog.
    Init,
    /// Manage instances (named disk images).
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Take, list, show and delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Restore a snapshot to a file, from any region.
    Restore(RestoreArgs),
    /// List jobs and their state.
    Jobs,
    /// Run queued jobs (snapshots, replication) and prune what is due.
    Worker {
        /// Drain the queue and exit instead of waiting for more jobs.
        #[arg(long)]
        once: bool,
    },
    /// Delete snapshots whose retention has run out.
    Prune {
        /// Judge expiry at this instant (RFC 3339, e.g. 2026-11-27T03:00:00Z) instead of now.
        #[arg(long, value_name = "RFC3339")]
        now: Option<String>,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete chunks that no manifest references, in every store.
    Gc {
        /// Keep unreferenced chunks younger than this many seconds.
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        grace: u64,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Read back every chunk of a region (or all) and check its SHA-256.
    Verify {
        /// Only this region.
        #[arg(long)]
        region: Option<String>,
        /// Only this snapshot (id, id prefix, name or instance/name).
        #[arg(long)]
        snapshot: Option<String>,
        /// Copy missing snapshots in and fix damage from other regions.
        #[arg(long)]
        repair: bool,
    },
    /// Regions: list them, make one fail (simulated), heal it.
    #[command(subcommand)]
    Region(RegionCmd),
    /// The catalog: rebuild it from what a region holds (disaster recovery).
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Tell geosnap's story in under a minute, offline, with figures measured as it runs.
    Demo {
        /// Size of the sample disk.
        #[arg(long, default_value = "384M", value_name = "SIZE")]
        size: String,
    },
    /// Measure this machine: stage rates, the ceiling they imply, and the whole pipelines.
    Bench {
        /// Measure this image instead of a generated one.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["size", "profile"])]
        input: Option<PathBuf>,
        /// Size of the generated image.
        #[arg(long, default_value = "1G")]
        size: String,
        /// mixed | random | text | zeros | sparse | halves
        #[arg(long, default_value = "mixed")]
        profile: String,
        /// Chunker under test (default: the default chunker).
        #[arg(long)]
        chunker: Option<String>,
        /// zstd level under test.
        #[arg(long, default_value_t = geosnap_engine::codec::DEFAULT_LEVEL, allow_hyphen_values = true)]
        level: i32,
        /// Also snapshot the image with several chunkers and compare them.
        #[arg(long)]
        compare_chunkers: bool,
    },
    /// Write a seeded test image (for benchmarks and trials).
    GenImage {
        /// File to write (replaced).
        path: PathBuf,
        /// Size, e.g. 1G.
        #[arg(long, default_value = "1G")]
        size: String,
        /// mixed | random | text | zeros | sparse | halves
        #[arg(long, default_value = "mixed")]
        profile: String,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Instead of writing a new image, rewrite this fraction of PATH's 4 KiB data blocks in place.
        #[arg(long, value_name = "FRACTION")]
        rewrite: Option<f64>,
    },
    /// Print a shell completion script.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// `geosnap instance ...`
#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// Register a disk image as an instance.
    Create {
        /// Instance name.
        name: String,
        /// Raw disk image.
        #[arg(long, value_name = "PATH")]
        image: PathBuf,
        /// Home region (default: the first configured, it-1).
        #[arg(long)]
        region: Option<String>,
        /// Boot-from-volume instance: snapshots stay in the home region's volume store.
        #[arg(long)]
        volume_backed: bool,
    },
    /// List instances.
    List,
    /// Show one instance and its snapshots.
    Show {
        /// Instance name.
        name: String,
    },
    /// Remove an instance (refused while it has snapshots).
    Delete {
        /// Instance name.
        name: String,
        /// Delete its snapshots everywhere first.
        #[arg(long)]
        with_snapshots: bool,
    },
}

/// `geosnap snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Queue a snapshot of an instance and (unless --no-wait) take it now.
    Take {
        /// Instance name.
        instance: String,
        /// Snapshot name.
        #[arg(long)]
        name: String,
        /// Days to keep it after it completes; 0 keeps it forever.
        #[arg(
            long,
            default_value = "0",
            allow_hyphen_values = true,
            value_name = "N"
        )]
        retention_days: String,
        /// Only queue the job; a worker takes it.
        #[arg(long)]
        no_wait: bool,
    },
    /// List snapshots.
    List {
        /// Only this instance's.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Show one snapshot.
    Show {
        /// Snapshot id, id prefix, name or instance/name.
        snap: String,
    },
    /// Delete a snapshot in every region.
    Delete {
        /// Snapshot id, id prefix, name or instance/name.
        snap: String,
    },
}

/// `geosnap restore ...`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id, id prefix, name or instance/name.
    pub snap: String,
    /// File to create.
    #[arg(long, value_name = "PATH")]
    pub to: PathBuf,
    /// Region to read from (default: the snapshot's home region).
    #[arg(long)]
    pub region: Option<String>,
    /// Read only from --region; fail rather than fetch damaged chunks elsewhere.
    #[arg(long)]
    pub strict_region: bool,
    /// Overwrite an existing file at --to.
    #[arg(long)]
    pub force: bool,
}

/// `geosnap region ...`
#[derive(Debug, Subcommand)]
pub enum RegionCmd {
    /// List regions, their simulated state and what they hold.
    List,
    /// Make a region misbehave (persists until `heal`).
    Fail {
        /// Region.
        region: String,
        /// down | flaky:RATE | corrupt:RATE | slow:LATENCY_MS,BYTES_PER_S
        #[arg(long)]
        mode: String,
    },
    /// Restore a region to health and queue the replication it is owed.
    Heal {
        /// Region.
        region: String,
    },
}

/// `geosnap catalog ...`
#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Record every snapshot whose manifest region R holds (after losing the data dir).
    Rebuild {
        /// Region to read the manifests from.
        #[arg(long)]
        from: String,
    },
}
