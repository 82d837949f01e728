//! The fixed-chunk-size trade-off behind the default (docs/benchmarks.md):
//! for each size, snapshot a generated image, rewrite 1 % of its 4 KiB data blocks in
//! place, snapshot again, and report objects per GiB, new bytes, and throughput.
//!
//! `cargo run --release -p geosnap-engine --example chunk_tradeoff [SIZE_MIB] [PROFILE]`

use std::time::Instant;

use geosnap_engine::NoProgress;
use geosnap_engine::chunker::ChunkerParams;
use geosnap_engine::image::Image;
use geosnap_engine::imagegen::{Profile, generate, scatter_writes};
use geosnap_engine::snapshot::{SnapshotOptions, snapshot_image};
use geosnap_engine::store::MemStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let profile: Profile = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(Profile::Mixed);
    let dir = tempfile::tempdir()?;
    let base = dir.path().join("base.img");
    generate(&base, mib << 20, profile, 1)?;
    let changed = dir.path().join("changed.img");
    std::fs::copy(&base, &changed)?;
    let blocks = scatter_writes(&changed, 0.01, 2)?;
    println!(
        "image {mib} MiB {profile:?}; 1 % rewrite = {blocks} blocks ({:.1} MiB)",
        (blocks * 4096) as f64 / (1 << 20) as f64
    );
    println!(
        "| chunker | chunks | objects/GiB of data | full MB/s | incremental new chunks | incremental new MB (raw) | incremental stored MB |"
    );
    println!("|---|---|---|---|---|---|---|");
    let sizes = [
        "fixed:64K",
        "fixed:128K",
        "fixed:256K",
        "fixed:512K",
        "fixed:1M",
        "fixed:4M",
        "cdc:16K:64K:256K",
        "cdc:64K:256K:1M",
    ];
    for p in sizes {
        let chunker: ChunkerParams = p.parse()?;
        let opts = SnapshotOptions {
            chunker,
            ..Default::default()
        };
        let store = MemStore::new();
        let t = Instant::now();
        let full = snapshot_image(&Image::open(&base)?, &opts, &store, &NoProgress)?;
        let secs = t.elapsed().as_secs_f64();
        let inc = snapshot_image(&Image::open(&changed)?, &opts, &store, &NoProgress)?;
        let per_gib =
            full.stats.chunks as f64 / (full.stats.data_bytes as f64 / (1u64 << 30) as f64);
        println!(
            "| {p} | {} | {:.0} | {:.0} | {} | {:.1} | {:.1} |",
            full.stats.chunks,
            per_gib,
            (mib << 20) as f64 / 1e6 / secs,
            inc.stats.new_chunks,
            inc.stats.new_bytes as f64 / 1e6,
            inc.stats.stored_bytes as f64 / 1e6,
        );
    }
    Ok(())
}
