//! Wall and CPU time of snapshots into three `memory://` regions (fresh regions each time),
//! as `geosnap bench` takes them: where the replicated pipeline's time goes beside the
//! engine's own.
//!
//! `cargo run --release -p geosnap-replication --example regions_cpu [SNAPSHOTS [IMAGE]]`
//! (default 6 snapshots of a generated 1 GiB mixed image). As in the bench, the slabs one
//! snapshot's regions free are kept for the next (`geosnap_engine::slab::keep_freed`), so
//! only the first pays for fresh memory; with `GEOSNAP_COLD=1` every snapshot does.

use std::sync::Arc;
use std::time::Instant;

use geosnap_engine::imagegen::{Profile, generate};
use geosnap_engine::manifest::{Backing, SnapshotMeta};
use geosnap_engine::snapshot::SnapshotOptions;
use geosnap_engine::{NoProgress, SnapshotId};
use geosnap_replication::region::{Region, RegionSpec, Regions};
use geosnap_replication::retry::RetryPolicy;
use geosnap_replication::writer::{WriteRequest, write_snapshot};

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

fn regions() -> Result<Regions, Box<dyn std::error::Error>> {
    let list = ["it-1", "de-1", "nl-1"]
        .iter()
        .map(|name| {
            Region::open(
                &RegionSpec::memory(name),
                Default::default(),
                RetryPolicy::default(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Regions::new(list, 2)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    geosnap_engine::malloc::tune();
    let runs: usize = std::env::args().nth(1).map_or(Ok(6), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let image = match std::env::args_os().nth(2) {
        Some(path) => path.into(),
        None => {
            let image = dir.path().join("mixed.img");
            generate(&image, 1 << 30, Profile::Mixed, 1)?;
            image
        }
    };
    let size = std::fs::metadata(&image)?.len();
    let rt = tokio::runtime::Runtime::new()?;
    if std::env::var_os("GEOSNAP_COLD").is_none() {
        geosnap_engine::slab::keep_freed(4 << 30);
    }
    for _ in 0..runs.max(1) {
        let regions = regions()?;
        let meta = SnapshotMeta {
            id: SnapshotId::generate(),
            instance: "bench".into(),
            name: "bench".into(),
            backing: Backing::Image,
            home_region: "it-1".into(),
            created_at: 0,
            completed_at: 0,
            retention_days: 0,
        };
        let (u0, s0) = cpu();
        let t = Instant::now();
        rt.block_on(write_snapshot(
            &regions,
            WriteRequest {
                image: image.clone(),
                meta,
                options: SnapshotOptions::default(),
                reuse: None,
                resume: Default::default(),
            },
            Arc::new(NoProgress),
            &|| 0,
        ))?;
        let wall = t.elapsed().as_secs_f64();
        let (user, sys) = (cpu().0 - u0, cpu().1 - s0);
        println!(
            "{:.0} MB/s  wall {wall:.3} s  user {user:.3} s  sys {sys:.3} s  CPUs {:.2}",
            size as f64 / wall / 1e6,
            (user + sys) / wall
        );
        drop(regions);
    }
    Ok(())
}
