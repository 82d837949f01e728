//! Silent corruption at rest: 1,000 seeded trials each flip one bit of a random chunk
//! object or manifest in one region. Every flip must be caught (by verify, and by a strict
//! restore from that region), and no restore may ever produce a wrong byte.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use geosnap_engine::imagegen::{Profile, generate};
use geosnap_engine::manifest::{Backing, SnapshotMeta};
use geosnap_engine::snapshot::SnapshotOptions;
use geosnap_engine::{NoProgress, SnapshotId};
use geosnap_replication::StoreKind;
use geosnap_replication::reader::{RestoreRequest, restore_snapshot};
use geosnap_replication::region::{Region, RegionSpec, Regions};
use geosnap_replication::repair::verify_store;
use geosnap_replication::retry::RetryPolicy;
use geosnap_replication::simulator::FaultConfig;
use geosnap_replication::writer::{WriteRequest, write_snapshot};
use object_store::ObjectStoreExt;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

const SEED: u64 = 0x0067_656f_736e_6170;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_bit_flips_are_all_caught_and_none_reaches_a_restored_byte() {
    let dir = tempfile::tempdir().unwrap();
    let regions = Regions::new(
        ["it-1", "de-1", "nl-1"]
            .iter()
            .map(|n| {
                let spec = RegionSpec {
                    name: n.to_string(),
                    country: String::new(),
                    url: format!("file://{}/{n}", dir.path().display()),
                    volume_url: format!("file://{}/{n}-v", dir.path().display()),
                    options: Default::default(),
                };
                Region::open(&spec, FaultConfig::default(), RetryPolicy::default()).unwrap()
            })
            .collect(),
        2,
    )
    .unwrap();
    let img = dir.path().join("img");
    generate(&img, 640 << 10, Profile::Mixed, 3).unwrap();
    let original = std::fs::read(&img).unwrap();
    let id = SnapshotId::generate();
    let req = WriteRequest {
        image: img.clone(),
        meta: SnapshotMeta {
            id,
            instance: "vm".into(),
            name: "s".into(),
            backing: Backing::Image,
            home_region: "it-1".into(),
            created_at: 0,
            completed_at: 0,
            retention_days: 0,
        },
        options: SnapshotOptions {
            chunker: "fixed:64K".parse().unwrap(),
            ..Default::default()
        },
        reuse: None,
        resume: Default::default(),
    };
    write_snapshot(&regions, req, Arc::new(NoProgress), &|| 0)
        .await
        .unwrap();

    let de = regions.get("de-1").unwrap().bucket(StoreKind::Main).clone();
    // Every object of the snapshot in de-1: packs, index objects, the manifest.
    let mut keys: Vec<_> = de
        .list(&object_store::path::Path::from(""))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location)
        .collect();
    keys.sort();
    for part in ["packs/", "index/", "/manifest"] {
        assert!(
            keys.iter().any(|k| k.as_ref().contains(part)),
            "{part}: {keys:?}"
        );
    }

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED);
    let mut detected_on_restore = 0;
    let out = dir.path().join("restored");
    for trial in 0..1000 {
        let key = &keys[rng.random_range(0..keys.len())];
        let good = de.store.get(key).await.unwrap().bytes().await.unwrap();
        let mut bad = good.to_vec();
        let at = rng.random_range(0..bad.len());
        bad[at] ^= 1 << rng.random_range(0..8u32);
        de.store.put(key, Bytes::from(bad).into()).await.unwrap();

        let report = verify_store(&regions, "de-1", StoreKind::Main, None, false).await;
        let caught_by_verify = match &report {
            Ok(r) => r.found_damage(),
            Err(_) => true,
        };
        let restored = restore_snapshot(
            &regions,
            RestoreRequest {
                snapshot: id,
                backing: Backing::Image,
                home: "it-1".into(),
                from: "de-1".into(),
                strict: true,
                target: out.clone(),
                overwrite: true,
            },
            Arc::new(NoProgress),
        )
        .await;
        if restored.is_ok() {
            assert_eq!(
                std::fs::read(&out).unwrap(),
                original,
                "trial {trial} (seed {SEED:#x}): a flip at byte {at} of {key} reached a restored byte"
            );
        }
        assert!(
            caught_by_verify,
            "trial {trial} (seed {SEED:#x}): flip at byte {at} of {key} went unnoticed by verify \
             (restore failed: {})",
            restored.is_err()
        );
        if restored.is_err() {
            detected_on_restore += 1;
        }
        de.store.put(key, good.into()).await.unwrap();
    }
    // Most flips land in data a strict restore reads; those it does not read (a pack's
    // header, say) are verify's to find, and verify found every one.
    assert!(detected_on_restore > 500, "{detected_on_restore}");
}
