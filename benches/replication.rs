//! Regions overlap, they do not add up: a snapshot of a 1 GiB mixed image into three
//! in-memory regions (it-1 unthrottled, de-1 and nl-1 at 20 ms and 200 MB/s) against the
//! same snapshot into de-1 alone. Run: `cargo bench --bench replication`.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group};
use geosnap_engine::imagegen::{Profile, generate};
use geosnap_engine::manifest::{Backing, SnapshotMeta};
use geosnap_engine::{NoProgress, SnapshotId};
use geosnap_replication::region::{Region, RegionSpec, Regions};
use geosnap_replication::retry::RetryPolicy;
use geosnap_replication::simulator::FaultConfig;
use geosnap_replication::writer::{WriteRequest, write_snapshot};

fn slow() -> FaultConfig {
    FaultConfig {
        latency_ms: 20,
        bandwidth: 200_000_000,
        ..Default::default()
    }
}

fn regions(which: &[(&str, FaultConfig)], quorum: usize) -> Regions {
    let list = which
        .iter()
        .map(|(name, faults)| {
            Region::open(
                &RegionSpec::memory(name),
                faults.clone(),
                RetryPolicy::default(),
            )
            .expect("region")
        })
        .collect();
    Regions::new(list, quorum).expect("regions")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("mixed.img");
    generate(&image, 1 << 30, Profile::Mixed, 1).expect("generate");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("replicated-snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(1 << 30));
    type Setup<'a> = (&'a str, Vec<(&'a str, FaultConfig)>, usize);
    let setups: [Setup; 2] = [
        (
            "three-regions",
            vec![
                ("it-1", FaultConfig::default()),
                ("de-1", slow()),
                ("nl-1", slow()),
            ],
            2,
        ),
        ("de-1-alone", vec![("de-1", slow())], 1),
    ];
    for (name, which, quorum) in setups {
        g.bench_function(name, |b| {
            b.iter(|| {
                // Fresh, empty regions each time: every chunk is uploaded.
                let regions = regions(&which, quorum);
                let req = WriteRequest {
                    image: image.clone(),
                    meta: SnapshotMeta {
                        id: SnapshotId::generate(),
                        instance: "bench".into(),
                        name: "s".into(),
                        backing: Backing::Image,
                        home_region: which[0].0.into(),
                        created_at: 0,
                        completed_at: 0,
                        retention_days: 0,
                    },
                    options: Default::default(),
                    reuse: None,
                    resume: Default::default(),
                };
                let out = rt
                    .block_on(write_snapshot(&regions, req, Arc::new(NoProgress), &|| 0))
                    .expect("snapshot");
                assert!(
                    out.replicas
                        .iter()
                        .all(|r| r.1 == geosnap_replication::writer::ReplicaOutcome::Written)
                );
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
fn main() {
    // The allocator settings the binary runs with, so the pipeline is measured as it runs.
    geosnap_engine::malloc::tune();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
