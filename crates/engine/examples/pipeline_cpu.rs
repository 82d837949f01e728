//! Wall and CPU time of the engine's snapshot pipeline into a `MemStore`, snapshot by
//! snapshot: says whether a pipeline short of its ceiling idles (CPUs below 2) or does more
//! work per byte than the stage benches (core-seconds per GiB above the ceiling's).
//!
//! `cargo run --release -p geosnap-engine --example pipeline_cpu [SNAPSHOTS]` (default 12)
//! on the 512 MiB mixed image of the pipeline bench.

use std::time::Instant;

use geosnap_engine::NoProgress;
use geosnap_engine::image::Image;
use geosnap_engine::imagegen::{Profile, generate};
use geosnap_engine::snapshot::{SnapshotOptions, snapshot_image};
use geosnap_engine::store::MemStore;

/// User and system CPU seconds of this process so far.
fn cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct it is given and nothing else.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    (secs(u.ru_utime), secs(u.ru_stime))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    geosnap_engine::malloc::tune();
    let runs: usize = std::env::args().nth(1).map_or(Ok(12), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mixed.img");
    generate(&path, 512 << 20, Profile::Mixed, 1)?;
    let image = Image::open(&path)?;
    let gib = image.size() as f64 / f64::from(1u32 << 30);
    let opts = SnapshotOptions::default();
    let mut rates = Vec::new();
    for _ in 0..runs.max(1) {
        let store = MemStore::new();
        let (u0, s0) = cpu();
        let t = Instant::now();
        snapshot_image(&image, &opts, &store, &NoProgress)?;
        let wall = t.elapsed().as_secs_f64();
        let (user, sys) = (cpu().0 - u0, cpu().1 - s0);
        println!(
            "{:.3} GiB/s  wall {wall:.3} s  user {user:.3} s  sys {sys:.3} s  CPUs {:.2}  \
             {:.3} core-s/GiB",
            gib / wall,
            (user + sys) / wall,
            (user + sys) / gib
        );
        rates.push(gib / wall);
        drop(store);
    }
    rates.sort_by(f64::total_cmp);
    println!("median {:.3} GiB/s", rates[rates.len() / 2]);
    Ok(())
}
