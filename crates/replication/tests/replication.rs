//! Replicated writes, fallback restores, repair and residency, end to end over real stores.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use geosnap_engine::imagegen::{Profile, generate};
use geosnap_engine::manifest::{Backing, EncodedManifest, ManifestView, SnapshotMeta};
use geosnap_engine::snapshot::SnapshotOptions;
use geosnap_engine::{NoProgress, SnapshotId};
use geosnap_replication::index::StoreIndex;
use geosnap_replication::reader::{RestoreRequest, restore_snapshot};
use geosnap_replication::region::{Region, RegionSpec, Regions};
use geosnap_replication::repair::{repair_region, replicate_snapshot, verify_store};
use geosnap_replication::retry::RetryPolicy;
use geosnap_replication::simulator::{FaultConfig, corrupt_objects, lose_objects};
use geosnap_replication::writer::{ReplicaOutcome, WriteRequest, write_snapshot};
use geosnap_replication::{Error, StoreKind, layout, pack};
use object_store::ObjectStore;

const NAMES: [&str; 3] = ["it-1", "de-1", "nl-1"];

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 6,
        base: Duration::from_millis(1),
        max: Duration::from_millis(20),
    }
}

fn regions(dir: &Path) -> Regions {
    let list = NAMES
        .iter()
        .map(|n| {
            let spec = RegionSpec {
                name: n.to_string(),
                country: "x".into(),
                url: format!("file://{}/{n}", dir.display()),
                volume_url: format!("file://{}/{n}-volume", dir.display()),
                options: Default::default(),
            };
            Region::open(&spec, FaultConfig::default(), quick_retry()).unwrap()
        })
        .collect();
    let mut r = Regions::new(list, 2).unwrap();
    // Small packs, so that damage to one pack is damage to a few chunks.
    r.tuning.pack_bytes = 256 << 10;
    r
}

fn meta(backing: Backing) -> SnapshotMeta {
    SnapshotMeta {
        id: SnapshotId::generate(),
        instance: "web-1".into(),
        name: "snap".into(),
        backing,
        home_region: "it-1".into(),
        created_at: 1000,
        completed_at: 0,
        retention_days: 0,
    }
}

fn set(regions: &Regions, name: &str, config: FaultConfig) {
    regions.get(name).unwrap().faults().set(config);
}

fn down() -> FaultConfig {
    FaultConfig {
        down: true,
        ..Default::default()
    }
}

async fn take(
    regions: &Regions,
    image: &Path,
    meta: SnapshotMeta,
) -> geosnap_replication::Result<geosnap_replication::writer::WriteOutcome> {
    take_reusing(regions, image, meta, None).await
}

async fn take_reusing(
    regions: &Regions,
    image: &Path,
    meta: SnapshotMeta,
    reuse: Option<EncodedManifest>,
) -> geosnap_replication::Result<geosnap_replication::writer::WriteOutcome> {
    let req = WriteRequest {
        image: image.to_path_buf(),
        meta,
        options: SnapshotOptions {
            chunker: "fixed:64K".parse().unwrap(),
            ..Default::default()
        },
        reuse,
        resume: Default::default(),
    };
    write_snapshot(regions, req, Arc::new(NoProgress), &|| 2000).await
}

async fn restore(
    regions: &Regions,
    id: SnapshotId,
    backing: Backing,
    from: &str,
    strict: bool,
    to: &Path,
) -> geosnap_replication::Result<geosnap_replication::reader::RestoreOutcome> {
    let req = RestoreRequest {
        snapshot: id,
        backing,
        home: "it-1".into(),
        from: from.into(),
        strict,
        target: to.to_path_buf(),
        overwrite: true,
    };
    restore_snapshot(regions, req, Arc::new(NoProgress)).await
}

fn image(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("disk.img");
    generate(&p, size, Profile::Mixed, 7).unwrap();
    p
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

async fn keys(store: &dyn ObjectStore) -> Vec<String> {
    store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_regions_up_gives_an_available_snapshot_restorable_from_each() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 12 << 20);
    let out = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    assert!(
        out.replicas
            .iter()
            .all(|(_, r)| *r == ReplicaOutcome::Written)
    );
    assert_eq!(out.header.meta.completed_at, 2000);
    for name in NAMES {
        let to = dir.path().join(format!("restored-{name}"));
        let r = restore(
            &regions,
            out.header.meta.id,
            Backing::Image,
            name,
            true,
            &to,
        )
        .await
        .unwrap();
        assert!(same(&img, &to), "restore from {name} differs");
        assert!(r.repaired_chunks.is_empty());
        // No in-flight marker survives a committed snapshot.
        let store = regions
            .get(name)
            .unwrap()
            .bucket(StoreKind::Main)
            .store
            .clone();
        assert!(
            !keys(&*store)
                .await
                .iter()
                .any(|k| k.starts_with("inflight/"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_region_down_is_degraded_then_repaired_to_available() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 8 << 20);
    set(&regions, "de-1", down());
    let out = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    let de = out.replicas.iter().find(|(n, _)| n == "de-1").unwrap();
    assert!(
        matches!(&de.1, ReplicaOutcome::Owed { reason } if reason.contains("unavailable")),
        "{de:?}"
    );
    let id = out.header.meta.id;
    // While down, a restore from de-1 says so.
    let err = restore(
        &regions,
        id,
        Backing::Image,
        "de-1",
        false,
        &dir.path().join("x"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("de-1"), "{err}");

    set(&regions, "de-1", FaultConfig::default());
    let report = repair_region(&regions, "de-1").await.unwrap();
    assert_eq!(report.snapshots.len(), 1);
    assert!(report.snapshots[0].1.manifest_written);
    // Repair is idempotent.
    assert!(
        repair_region(&regions, "de-1")
            .await
            .unwrap()
            .snapshots
            .is_empty()
    );
    let to = dir.path().join("from-de");
    restore(&regions, id, Backing::Image, "de-1", true, &to)
        .await
        .unwrap();
    assert!(same(&img, &to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_down_fails_and_leaves_no_manifest_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 4 << 20);
    set(&regions, "de-1", down());
    set(&regions, "nl-1", down());
    let m = meta(Backing::Image);
    let id = m.id;
    let err = take(&regions, &img, m).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::QuorumNotMet {
                written: 1,
                needed: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("de-1") && err.to_string().contains("nl-1"),
        "{err}"
    );
    set(&regions, "de-1", FaultConfig::default());
    set(&regions, "nl-1", FaultConfig::default());
    for name in NAMES {
        let b = regions.get(name).unwrap().bucket(StoreKind::Main);
        assert!(!b.exists(&layout::manifest(&id)).await.unwrap(), "{name}");
        assert!(!b.exists(&layout::inflight(&id)).await.unwrap(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_region_restores_byte_identical_and_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 48 << 20);
    let out = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    let id = out.header.meta.id;
    let de_bucket = regions.get("de-1").unwrap().bucket(StoreKind::Main).clone();
    let de = de_bucket.store.clone();
    let index = StoreIndex::load(&de_bucket).await.unwrap();
    let wanted = EncodedManifest::parse(de_bucket.get_manifest(&id, 0).await.unwrap())
        .unwrap()
        .chunk_ids()
        .unwrap();
    let corrupted = corrupt_objects(&*de, &pack::prefix(), 0.02, 11)
        .await
        .unwrap();
    let lost = lose_objects(&*de, &pack::prefix(), 0.02, 12).await.unwrap();
    assert!(!corrupted.is_empty() && !lost.is_empty());
    let in_packs = |keys: &[object_store::path::Path]| -> std::collections::HashSet<String> {
        let packs: Vec<_> = keys.iter().filter_map(pack::parse_key).collect();
        index
            .chunks
            .iter()
            .filter(|(c, f)| packs.contains(&f.pack) && wanted.contains(c))
            .map(|(c, _)| c.to_hex())
            .collect()
    };
    let lost_chunks = in_packs(&lost);
    let hit_chunks = in_packs(&corrupted);

    // Strict: fails, naming a damaged chunk.
    let err = restore(
        &regions,
        id,
        Backing::Image,
        "de-1",
        true,
        &dir.path().join("strict"),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        lost_chunks
            .iter()
            .chain(&hit_chunks)
            .any(|c| msg.contains(c)),
        "{msg}"
    );
    assert!(!dir.path().join("strict").exists());

    // Verify sees every chunk of the lost packs as missing, and damage in the corrupted one.
    let v = verify_store(&regions, "de-1", StoreKind::Main, None, false)
        .await
        .unwrap();
    let missing: std::collections::HashSet<String> = v.missing_chunks.iter().cloned().collect();
    assert_eq!(missing, lost_chunks);
    assert!(
        !v.corrupt_chunks.is_empty() || !v.corrupt_packs.is_empty(),
        "{v:?}"
    );
    assert!(
        v.corrupt_chunks.iter().all(|c| hit_chunks.contains(c)),
        "{v:?}"
    );
    assert!(!v.is_clean());

    let to = dir.path().join("fallback");
    let r = restore(&regions, id, Backing::Image, "de-1", false, &to)
        .await
        .unwrap();
    assert!(same(&img, &to));
    let repaired: std::collections::HashSet<String> = r.repaired_chunks.iter().cloned().collect();
    assert!(lost_chunks.is_subset(&repaired));
    assert!(
        repaired
            .iter()
            .all(|c| lost_chunks.contains(c) || hit_chunks.contains(c))
    );
    let v = verify_store(&regions, "de-1", StoreKind::Main, None, false)
        .await
        .unwrap();
    assert!(v.is_clean(), "{v:?}");
    // And the repaired region alone restores it.
    let again = dir.path().join("again");
    restore(&regions, id, Backing::Image, "de-1", true, &again)
        .await
        .unwrap();
    assert!(same(&img, &again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_on_every_region_are_hidden_by_retries() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 16 << 20);
    for (i, n) in NAMES.iter().enumerate() {
        set(
            &regions,
            n,
            FaultConfig {
                error_rate: 0.1,
                seed: i as u64 + 1,
                ..Default::default()
            },
        );
    }
    let out = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    assert!(
        out.replicas
            .iter()
            .all(|(_, r)| *r == ReplicaOutcome::Written),
        "{:?}",
        out.replicas
    );
    let to = dir.path().join("r");
    restore(
        &regions,
        out.header.meta.id,
        Backing::Image,
        "nl-1",
        true,
        &to,
    )
    .await
    .unwrap();
    assert!(same(&img, &to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_backed_snapshots_never_leave_the_home_volume_store() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 6 << 20);
    let out = take(&regions, &img, meta(Backing::Volume)).await.unwrap();
    assert_eq!(out.replicas.len(), 1);
    let id = out.header.meta.id;
    for r in regions.iter() {
        for kind in [StoreKind::Main, StoreKind::Volume] {
            let held = keys(&*r.bucket(kind).store).await;
            let home = r.name() == "it-1" && kind == StoreKind::Volume;
            let has_manifest = held.contains(&layout::manifest(&id).to_string());
            let has_chunk = held.iter().any(|k| k.starts_with("packs/"));
            assert_eq!(has_manifest, home, "{} {kind:?}", r.name());
            assert_eq!(has_chunk, home, "{} {kind:?}", r.name());
            if !home {
                assert!(held.is_empty(), "{} {kind:?} holds {held:?}", r.name());
            }
        }
    }
    let err = restore(
        &regions,
        id,
        Backing::Volume,
        "de-1",
        false,
        &dir.path().join("x"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Residency { .. }));
    assert!(err.to_string().contains("data residency"), "{err}");
    let to = dir.path().join("home");
    restore(&regions, id, Backing::Volume, "it-1", false, &to)
        .await
        .unwrap();
    assert!(same(&img, &to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_falls_far_behind_is_cut_loose_and_replicated_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut regions = regions(dir.path());
    regions.tuning.buffer_bytes = 1 << 20;
    regions.tuning.detach_after = Duration::from_millis(200);
    let img = image(dir.path(), 24 << 20);
    set(
        &regions,
        "nl-1",
        FaultConfig {
            bandwidth: 1 << 20,
            ..Default::default()
        },
    );
    let out = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    let nl = out.replicas.iter().find(|(n, _)| n == "nl-1").unwrap();
    assert!(
        matches!(&nl.1, ReplicaOutcome::Owed { reason } if reason.contains("fell behind")),
        "{nl:?}"
    );
    set(&regions, "nl-1", FaultConfig::default());
    let id = out.header.meta.id;
    let r = replicate_snapshot(&regions, &id, "nl-1").await.unwrap();
    assert!(r.manifest_written && r.copied_chunks > 0);
    let to = dir.path().join("nl");
    restore(&regions, id, Backing::Image, "nl-1", true, &to)
        .await
        .unwrap();
    assert!(same(&img, &to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_snapshot_uploads_only_changed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 16 << 20);
    let first = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    let rewritten = geosnap_engine::imagegen::scatter_writes(&img, 0.01, 3).unwrap();
    let second = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    assert!(
        second.stats.new_chunks > 0 && second.stats.new_chunks <= rewritten,
        "{:?}",
        second.stats
    );
    // Each rewritten 4 KiB block dirties at most one 64 KiB chunk, sent to three regions.
    let bound = rewritten * (65536 + 12) * 3;
    assert!(
        second.uploaded_bytes <= bound,
        "{} > {bound}",
        second.uploaded_bytes
    );
    assert!(second.uploaded_bytes < first.uploaded_bytes / 3);
}

/// How many times each chunk appears in the packs of a store.
async fn copies(regions: &Regions, name: &str) -> std::collections::HashMap<String, usize> {
    let b = regions.get(name).unwrap().bucket(StoreKind::Main);
    let mut out = std::collections::HashMap::new();
    for key in keys(&*b.store).await {
        let key = object_store::path::Path::from(key);
        if pack::parse_key(&key).is_none() {
            continue;
        }
        let bytes = b.get(&key).await.unwrap();
        for f in pack::walk(&bytes).unwrap() {
            for (id, _) in geosnap_engine::codec::parse_table(&f.bytes).unwrap().chunks {
                *out.entry(id.to_hex()).or_default() += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_receives_only_the_chunks_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 8 << 20);
    // de-1 misses the first snapshot; the second one owes de-1 the chunks the first added,
    // and all three regions the chunks that changed.
    set(&regions, "de-1", down());
    take(&regions, &img, meta(Backing::Image)).await.unwrap();
    set(&regions, "de-1", FaultConfig::default());
    geosnap_engine::imagegen::scatter_writes(&img, 0.05, 3).unwrap();
    let second = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    assert!(
        second
            .replicas
            .iter()
            .all(|(_, r)| matches!(r, ReplicaOutcome::Written)),
        "{:?}",
        second.replicas
    );
    for name in NAMES {
        let c = copies(&regions, name).await;
        let twice = c.values().filter(|n| **n > 1).count();
        assert_eq!(twice, 0, "{name} holds {twice} chunks more than once");
        let bucket = regions.get(name).unwrap().bucket(StoreKind::Main).clone();
        let manifest = bucket
            .get_manifest(&second.header.meta.id, u64::MAX)
            .await
            .unwrap();
        assert!(
            EncodedManifest::parse(manifest)
                .unwrap()
                .chunk_ids()
                .unwrap()
                .iter()
                .all(|id| c.contains_key(&id.to_hex())),
            "{name} lacks a chunk of the second snapshot"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_gc_a_store_index_still_shares_frame_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 48 << 20);
    take(&regions, &img, meta(Backing::Image)).await.unwrap();
    // A second snapshot of other data: a second index object, which gc folds with the first.
    let other = dir.path().join("other.img");
    generate(&other, 48 << 20, Profile::Mixed, 8).unwrap();
    take(&regions, &other, meta(Backing::Image)).await.unwrap();
    let it = regions.get("it-1").unwrap().bucket(StoreKind::Main).clone();
    let before = StoreIndex::load(&it).await.unwrap();
    assert_eq!(before.objects.len(), 2);
    for r in geosnap_replication::gc::gc_all(&regions, &Default::default()).await {
        r.unwrap();
    }
    let after = StoreIndex::load(&it).await.unwrap();
    assert_eq!(
        after.objects.len(),
        1,
        "gc folds the index objects into one"
    );
    assert_eq!(after.chunks.len(), before.chunks.len());
    // gc writes its one index object in pack order, so frames are still stored once each
    // (about 16 chunks per frame), not once per chunk.
    assert!(
        after.chunks.frame_count() <= before.chunks.frame_count(),
        "{} frames after gc, {} before, {} chunks",
        after.chunks.frame_count(),
        before.chunks.frame_count(),
        after.chunks.len()
    );
    assert!(after.chunks.frame_count() * 4 < after.chunks.len());
}

/// A restore keeps of a store's index only the chunks its manifest may name (a Bloom
/// filter: never one it needs less, a few false positives more), so a store shared by many
/// instances costs it no more memory than one holding its own image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_keeps_only_its_own_chunks_of_a_shared_store_index() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let mut ids = Vec::new();
    for seed in [1, 2, 3] {
        let img = dir.path().join(format!("vm{seed}.img"));
        generate(&img, 24 << 20, Profile::Mixed, seed).unwrap();
        ids.push(take(&regions, &img, meta(Backing::Image)).await.unwrap());
    }
    let it = regions.get("it-1").unwrap().bucket(StoreKind::Main).clone();
    let full = StoreIndex::load(&it).await.unwrap();
    let first = EncodedManifest::parse(
        it.get_manifest(&ids[0].header.meta.id, u64::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    let own = first.chunk_ids().unwrap();
    let mut wanted = geosnap_engine::ChunkFilter::with_capacity(first.header().chunk_count);
    for id in &own {
        wanted.insert(id);
    }
    let kept = StoreIndex::load_only(&it, Some(&wanted)).await.unwrap();
    assert!(own.iter().all(|id| kept.contains(id)));
    let others = full.chunks.len() - own.len();
    assert!(
        others > 2 * own.len() - 50,
        "{others} others, {} own",
        own.len()
    );
    assert!(
        kept.chunks.len() <= own.len() + others / 50,
        "kept {} of {} for {} own chunks",
        kept.chunks.len(),
        full.chunks.len(),
        own.len()
    );
    // And the restore that uses it writes the same bytes.
    let out = dir.path().join("out.img");
    restore(
        &regions,
        ids[0].header.meta.id,
        Backing::Image,
        "it-1",
        true,
        &out,
    )
    .await
    .unwrap();
    assert!(same(&out, &dir.path().join("vm1.img")));
}

/// An earlier manifest offered for reuse (the image file looked unchanged) is taken only if
/// sampled chunks of the image still hash to its ids and every store holds its chunks;
/// otherwise the image is scanned, and every restore gives the image as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_manifest_is_checked_against_the_image_and_the_stores() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 16 << 20);
    let first = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    let first_id = first.header.meta.id;
    let it = regions.get("it-1").unwrap().bucket(StoreKind::Main).clone();
    let previous =
        EncodedManifest::parse(it.get_manifest(&first_id, u64::MAX).await.unwrap()).unwrap();
    let restored = |id: SnapshotId, from: &'static str| {
        let (regions, out) = (&regions, dir.path().join(format!("{from}.out")));
        async move {
            restore(regions, id, Backing::Image, from, true, &out)
                .await
                .unwrap();
            std::fs::read(&out).unwrap()
        }
    };

    // Unchanged: reused, nothing uploaded, the same extents under a new snapshot.
    let again = take_reusing(&regions, &img, meta(Backing::Image), Some(previous.clone()))
        .await
        .unwrap();
    assert_eq!(again.reused, Some(first_id));
    assert_eq!(again.uploaded_bytes, 0);
    assert_eq!(again.header.chunk_count, first.header.chunk_count);
    assert_eq!(again.header.data_bytes, first.header.data_bytes);
    assert!(restored(again.header.meta.id, "de-1").await == std::fs::read(&img).unwrap());

    // A store that lost its index (so holds nothing as far as a snapshot can tell): the
    // image is scanned and that store gets every chunk again.
    let nl = regions.get("nl-1").unwrap().bucket(StoreKind::Main).clone();
    for m in nl
        .list(&geosnap_replication::index::prefix())
        .await
        .unwrap()
    {
        nl.delete(&m.location).await.unwrap();
    }
    let rescanned = take_reusing(&regions, &img, meta(Backing::Image), Some(previous.clone()))
        .await
        .unwrap();
    assert_eq!(rescanned.reused, None);
    assert!(rescanned.uploaded_bytes > 0);
    assert!(restored(rescanned.header.meta.id, "nl-1").await == std::fs::read(&img).unwrap());

    // The same size with other content (as if the file's times had lied): sampled chunks
    // no longer match, so it is scanned, and restores give the new content.
    generate(&img, 16 << 20, Profile::Mixed, 99).unwrap();
    let changed = take_reusing(&regions, &img, meta(Backing::Image), Some(previous))
        .await
        .unwrap();
    assert_eq!(changed.reused, None);
    assert!(changed.uploaded_bytes > 0);
    assert!(restored(changed.header.meta.id, "it-1").await == std::fs::read(&img).unwrap());
}

/// Replication makes the target hold the very manifest the other regions hold: a different
/// one left under the same id (an earlier attempt of the snapshot) or a damaged one is
/// written over, an identical one is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_replaces_a_different_manifest_under_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let regions = regions(dir.path());
    let img = image(dir.path(), 8 << 20);
    let a = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    let b = take(&regions, &img, meta(Backing::Image)).await.unwrap();
    let (a_id, b_id) = (a.header.meta.id, b.header.meta.id);
    let bucket = |name: &str| regions.get(name).unwrap().bucket(StoreKind::Main).clone();
    let raw = |name: &'static str, id: SnapshotId| {
        let b = bucket(name);
        async move { b.get(&layout::manifest(&id)).await.unwrap() }
    };
    let good = raw("it-1", b_id).await;
    for stale in [raw("nl-1", a_id).await, {
        let mut v = good.to_vec();
        v[40] ^= 1;
        bytes::Bytes::from(v)
    }] {
        bucket("nl-1")
            .put(&layout::manifest(&b_id), stale)
            .await
            .unwrap();
        let report = replicate_snapshot(&regions, &b_id, "nl-1").await.unwrap();
        assert!(report.manifest_written);
        assert_eq!(raw("nl-1", b_id).await, good);
    }
    let again = replicate_snapshot(&regions, &b_id, "nl-1").await.unwrap();
    assert!(!again.manifest_written);
}
