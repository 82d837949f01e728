//! The catalog through its public API, on real files in temporary directories.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use geosnap_catalog::*;
use geosnap_engine::SnapshotId;
use geosnap_engine::manifest::{Backing, SnapshotMeta};
use tempfile::TempDir;

const T0: i64 = 1_795_662_000;
const DAY: i64 = 86_400;

fn catalog() -> (TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("catalog.db")).unwrap();
    (dir, cat)
}

fn new_instance(name: &str, backing: Backing) -> NewInstance {
    NewInstance {
        name: name.into(),
        image_path: format!("/images/{name}.raw"),
        home_region: "it-1".into(),
        backing,
        created_at: T0,
    }
}

fn add_vm(cat: &Catalog, name: &str) -> Instance {
    cat.add_instance(&new_instance(name, Backing::Image))
        .unwrap()
}

fn new_snapshot(instance: &str, name: &str, days: &str, created_at: i64) -> NewSnapshot {
    NewSnapshot {
        id: SnapshotId::generate(),
        instance: instance.into(),
        name: name.into(),
        retention: Retention::parse(days).unwrap(),
        created_at,
    }
}

fn add_snap(cat: &Catalog, instance: &str, name: &str) -> SnapshotId {
    cat.add_snapshot(&new_snapshot(instance, name, "7", T0))
        .unwrap()
        .id
}

fn id(hex: &str) -> SnapshotId {
    hex.parse().unwrap()
}

fn stats() -> SnapshotStatsRow {
    SnapshotStatsRow {
        image_size: 1 << 30,
        data_bytes: 300 << 20,
        stored_bytes: 120 << 20,
        chunk_count: 75,
    }
}

fn complete(cat: &Catalog, id: &SnapshotId, at: i64) {
    cat.complete_snapshot(
        id,
        &Completion {
            completed_at: at,
            state: SnapshotState::Available,
            stats: stats(),
        },
    )
    .unwrap();
}

// ---------------------------------------------------------------- opening and schema

#[test]
fn open_twice_migrates_once_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    {
        let cat = Catalog::open(&path).unwrap();
        add_vm(&cat, "web-1");
    }
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.instances().unwrap().len(), 1);
    let cat2 = Catalog::open_existing(&path).unwrap();
    assert_eq!(cat2.instance("web-1").unwrap().name, "web-1");

    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i32 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = raw
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn open_existing_refuses_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.db");
    let e = Catalog::open_existing(&path).unwrap_err();
    assert!(
        matches!(&e, Error::NotInitialised { path: p } if p == &path),
        "{e:?}"
    );
    assert!(e.is_not_found());
    assert!(!path.exists(), "open_existing must not create the file");
}

#[test]
fn schema_too_new_is_refused_and_the_file_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    {
        let cat = Catalog::open(&path).unwrap();
        add_vm(&cat, "web-1");
    }
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "user_version", 999).unwrap();
        // Rollback-journal mode, so that switching it to WAL would show in the bytes.
        let mode: String = raw
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
    }
    let before = std::fs::read(&path).unwrap();
    let e = Catalog::open_existing(&path).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SchemaTooNew {
                found: 999,
                supported: SCHEMA_VERSION
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("upgrade geosnap"), "{e}");
    let e = Catalog::open(&path).unwrap_err();
    assert!(matches!(e, Error::SchemaTooNew { found: 999, .. }), "{e:?}");
    // Not assert_eq: a failure would print every byte of the file.
    assert!(std::fs::read(&path).unwrap() == before, "file was modified");
}

#[test]
fn a_file_that_is_not_a_catalog_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "these are not the bytes of a database, at least 100 of them: ......................................").unwrap();
    let before = std::fs::read(&path).unwrap();
    let e = Catalog::open_existing(&path).unwrap_err();
    assert!(matches!(e, Error::NotACatalog { .. }), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE mine (x INTEGER);")
        .unwrap();
    let e = Catalog::open(&other).unwrap_err();
    assert!(matches!(e, Error::NotACatalog { .. }), "{e:?}");
}

// ---------------------------------------------------------------- instances

#[test]
fn instance_crud_and_errors() {
    let (_dir, cat) = catalog();
    let b = cat
        .add_instance(&new_instance("b-vm", Backing::Volume))
        .unwrap();
    assert_eq!(b.backing, Backing::Volume);
    add_vm(&cat, "a-vm");
    assert_eq!(cat.instance("b-vm").unwrap(), b);
    let names: Vec<_> = cat
        .instances()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["a-vm", "b-vm"]);

    let e = cat
        .add_instance(&new_instance("a-vm", Backing::Image))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InstanceExists { name } if name == "a-vm"),
        "{e:?}"
    );
    let e = cat.instance("zzz").unwrap_err();
    assert!(
        matches!(&e, Error::InstanceNotFound { name } if name == "zzz"),
        "{e:?}"
    );

    cat.delete_instance("a-vm").unwrap();
    assert!(matches!(
        cat.instance("a-vm").unwrap_err(),
        Error::InstanceNotFound { .. }
    ));
    assert!(matches!(
        cat.delete_instance("a-vm").unwrap_err(),
        Error::InstanceNotFound { .. }
    ));
    assert_eq!(cat.instances().unwrap().len(), 1);
}

#[test]
fn instance_names_and_regions_are_validated() {
    let (_dir, cat) = catalog();
    let e = cat
        .add_instance(&new_instance("../etc", Backing::Image))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidName { kind, .. } if kind == "instance"),
        "{e:?}"
    );
    let mut bad_region = new_instance("vm", Backing::Image);
    bad_region.home_region = "IT 1".into();
    let e = cat.add_instance(&bad_region).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidName { kind, .. } if kind == "region"),
        "{e:?}"
    );
    assert!(cat.instances().unwrap().is_empty());
}

#[test]
fn delete_instance_is_refused_while_snapshots_reference_it() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    let a = add_snap(&cat, "vm", "one");
    let b = add_snap(&cat, "vm", "two");
    cat.set_snapshot_state(&b, SnapshotState::Failed, Some("disk full"))
        .unwrap();
    let e = cat.delete_instance("vm").unwrap_err();
    assert!(
        matches!(&e, Error::InstanceHasSnapshots { name, count: 2 } if name == "vm"),
        "{e:?}"
    );
    cat.delete_snapshot(&a).unwrap();
    cat.delete_snapshot(&b).unwrap();
    cat.delete_instance("vm").unwrap();
}

// ---------------------------------------------------------------- snapshots

#[test]
fn add_snapshot_copies_the_instance_and_queues() {
    let (_dir, cat) = catalog();
    let mut vol = new_instance("db", Backing::Volume);
    vol.home_region = "de-1".into();
    cat.add_instance(&vol).unwrap();
    let new = new_snapshot("db", "before-upgrade", "0", T0);
    let s = cat.add_snapshot(&new).unwrap();
    assert_eq!(s.backing, Backing::Volume);
    assert_eq!(s.home_region, "de-1");
    assert_eq!(s.state, SnapshotState::Queued);
    assert_eq!(s.retention, Retention::Forever);
    assert_eq!(s.completed_at, None);
    assert_eq!(cat.snapshot(&new.id).unwrap(), s);

    let e = cat
        .add_snapshot(&new_snapshot("ghost", "x", "1", T0))
        .unwrap_err();
    assert!(matches!(e, Error::InstanceNotFound { .. }), "{e:?}");
    let e = cat
        .add_snapshot(&new_snapshot("db", "a/b", "1", T0))
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidName { kind, .. } if kind == "snapshot"),
        "{e:?}"
    );
    let mut same_id = new_snapshot("db", "other", "1", T0);
    same_id.id = new.id;
    let e = cat.add_snapshot(&same_id).unwrap_err();
    assert!(matches!(e, Error::SnapshotIdExists { .. }), "{e:?}");
}

#[test]
fn find_by_id_prefix_and_name() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    let s = add_snap(&cat, "vm", "nightly");
    let other = add_snap(&cat, "vm", "weekly");
    let hex = s.to_hex();

    assert_eq!(cat.find_snapshot(&hex).unwrap().id, s);
    assert_eq!(cat.find_snapshot(&hex.to_uppercase()).unwrap().id, s);
    assert_eq!(cat.find_snapshot("nightly").unwrap().id, s);
    assert_eq!(cat.find_snapshot("vm/weekly").unwrap().id, other);
    assert!(matches!(
        cat.find_snapshot("vm/monthly").unwrap_err(),
        Error::SnapshotNotFound { .. }
    ));

    // UUIDv7 ids made a moment apart share their leading timestamp digits, so use ids
    // that differ early to test prefixes.
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    for (hex, name) in [
        ("abcdef00000000000000000000000001", "p1"),
        ("abcdef00000000000000000000000002", "p2"),
        ("abc12300000000000000000000000003", "p3"),
    ] {
        let mut n = new_snapshot("vm", name, "1", T0);
        n.id = id(hex);
        cat.add_snapshot(&n).unwrap();
    }
    assert_eq!(cat.find_snapshot("abc123").unwrap().name, "p3");
    assert_eq!(cat.find_snapshot("ABC1230").unwrap().name, "p3");
    assert_eq!(
        cat.find_snapshot("abcdef00000000000000000000000002")
            .unwrap()
            .name,
        "p2"
    );
    let e = cat.find_snapshot("abcdef").unwrap_err();
    let Error::AmbiguousSnapshot { key, candidates } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(key, "abcdef");
    assert_eq!(
        candidates,
        &[
            "vm/p1 (abcdef00000000000000000000000001)",
            "vm/p2 (abcdef00000000000000000000000002)"
        ]
    );
    // Too short to be taken for a prefix.
    let e = cat.find_snapshot("abc12").unwrap_err();
    assert!(
        matches!(&e, Error::SnapshotNotFound { key } if key == "abc12"),
        "{e:?}"
    );
    assert!(matches!(
        cat.find_snapshot("").unwrap_err(),
        Error::SnapshotNotFound { .. }
    ));
    assert!(matches!(
        cat.find_snapshot("ffffffff").unwrap_err(),
        Error::SnapshotNotFound { .. }
    ));
}

#[test]
fn a_name_used_on_two_instances_is_ambiguous() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "web-1");
    add_vm(&cat, "web-2");
    let a = add_snap(&cat, "web-1", "nightly");
    let b = add_snap(&cat, "web-2", "nightly");
    let e = cat.find_snapshot("nightly").unwrap_err();
    let Error::AmbiguousSnapshot { candidates, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        candidates,
        &[
            format!("web-1/nightly ({a})"),
            format!("web-2/nightly ({b})")
        ]
    );
    assert!(e.to_string().contains("web-2/nightly"), "{e}");
    assert_eq!(cat.find_snapshot("web-2/nightly").unwrap().id, b);
    assert_eq!(cat.find_snapshot(&a.to_hex()).unwrap().id, a);
}

#[test]
fn duplicate_names_are_refused_until_the_holder_failed() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    add_vm(&cat, "vm2");
    let first = add_snap(&cat, "vm", "nightly");
    for state in [
        SnapshotState::Queued,
        SnapshotState::Running,
        SnapshotState::Available,
        SnapshotState::Degraded,
    ] {
        cat.set_snapshot_state(&first, state, None).unwrap();
        let e = cat
            .add_snapshot(&new_snapshot("vm", "nightly", "1", T0 + 1))
            .unwrap_err();
        assert!(
            matches!(&e, Error::SnapshotExists { instance, name } if instance == "vm" && name == "nightly"),
            "{state}: {e:?}"
        );
    }
    // The same name on another instance is fine.
    add_snap(&cat, "vm2", "nightly");

    cat.set_snapshot_state(&first, SnapshotState::Failed, Some("region it-1 down"))
        .unwrap();
    cat.set_replica(&first, "it-1", ReplicaState::Failed)
        .unwrap();
    let failed = cat.snapshot(&first).unwrap();
    assert_eq!(failed.error.as_deref(), Some("region it-1 down"));

    let retry = add_snap(&cat, "vm", "nightly");
    assert_ne!(retry, first);
    assert!(matches!(
        cat.snapshot(&first).unwrap_err(),
        Error::SnapshotNotFound { .. }
    ));
    assert_eq!(cat.find_snapshot("vm/nightly").unwrap().id, retry);
    assert_eq!(cat.snapshots(Some("vm")).unwrap().len(), 1);
}

#[test]
fn snapshots_are_listed_by_creation_time_and_filtered_by_instance() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "a");
    add_vm(&cat, "b");
    let late = cat
        .add_snapshot(&new_snapshot("a", "late", "1", T0 + 50))
        .unwrap();
    let early = cat
        .add_snapshot(&new_snapshot("b", "early", "1", T0))
        .unwrap();
    let mid = cat
        .add_snapshot(&new_snapshot("a", "mid", "1", T0 + 10))
        .unwrap();
    let all: Vec<_> = cat
        .snapshots(None)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(all, [early.id, mid.id, late.id]);
    let of_a: Vec<_> = cat
        .snapshots(Some("a"))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(of_a, [mid.id, late.id]);
    add_vm(&cat, "empty");
    assert!(cat.snapshots(Some("empty")).unwrap().is_empty());
    assert!(matches!(
        cat.snapshots(Some("ghost")).unwrap_err(),
        Error::InstanceNotFound { .. }
    ));
}

#[test]
fn state_changes_and_deletes_name_missing_snapshots() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    let s = add_snap(&cat, "vm", "n");
    cat.set_snapshot_state(&s, SnapshotState::Running, None)
        .unwrap();
    assert_eq!(cat.snapshot(&s).unwrap().state, SnapshotState::Running);
    let ghost = SnapshotId::generate();
    for e in [
        cat.set_snapshot_state(&ghost, SnapshotState::Running, None)
            .unwrap_err(),
        cat.delete_snapshot(&ghost).unwrap_err(),
        cat.snapshot(&ghost).unwrap_err(),
        cat.replicas(&ghost).unwrap_err(),
        cat.set_replica(&ghost, "it-1", ReplicaState::Written)
            .unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::SnapshotNotFound { key } if *key == ghost.to_hex()),
            "{e:?}"
        );
    }
}

#[test]
fn completion_records_stats_and_expiry() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    let week = cat
        .add_snapshot(&new_snapshot("vm", "week", "7", T0))
        .unwrap()
        .id;
    let keep = cat
        .add_snapshot(&new_snapshot("vm", "keep", "0", T0))
        .unwrap()
        .id;
    let done = T0 + 600;
    complete(&cat, &week, done);
    cat.complete_snapshot(
        &keep,
        &Completion {
            completed_at: done,
            state: SnapshotState::Degraded,
            stats: stats(),
        },
    )
    .unwrap();

    let w = cat.snapshot(&week).unwrap();
    assert_eq!(w.state, SnapshotState::Available);
    assert_eq!(w.completed_at, Some(done));
    // Expiry counts from completion, not from queueing.
    assert_eq!(w.expires_at, Some(done + 7 * DAY));
    assert_eq!(w.image_size, Some(1 << 30));
    assert_eq!(w.data_bytes, Some(300 << 20));
    assert_eq!(w.stored_bytes, Some(120 << 20));
    assert_eq!(w.chunk_count, Some(75));
    let meta = w.meta().unwrap();
    assert_eq!((meta.completed_at, meta.retention_days), (done, 7));

    let k = cat.snapshot(&keep).unwrap();
    assert_eq!(k.state, SnapshotState::Degraded);
    assert_eq!(k.expires_at, None);

    let e = cat
        .complete_snapshot(
            &week,
            &Completion {
                completed_at: done,
                state: SnapshotState::Failed,
                stats: stats(),
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidCompletion { .. }), "{e:?}");
    let e = cat
        .complete_snapshot(
            &SnapshotId::generate(),
            &Completion {
                completed_at: done,
                state: SnapshotState::Available,
                stats: stats(),
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::SnapshotNotFound { .. }), "{e:?}");
}

#[test]
fn expiry_is_inclusive_at_exactly_n_days() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    let day = cat
        .add_snapshot(&new_snapshot("vm", "day", "1", T0))
        .unwrap()
        .id;
    let forever = cat
        .add_snapshot(&new_snapshot("vm", "forever", "0", T0))
        .unwrap()
        .id;
    let queued = cat
        .add_snapshot(&new_snapshot("vm", "queued", "1", T0))
        .unwrap()
        .id;
    let done = T0 + 3_600;
    complete(&cat, &day, done);
    complete(&cat, &forever, done);
    let _ = queued;

    assert!(cat.expired(done + DAY - 1).unwrap().is_empty());
    let ids: Vec<_> = cat
        .expired(done + DAY)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [day]);
    // Forever is never expired, nor is a snapshot that never completed.
    let ids: Vec<_> = cat
        .expired(i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [day]);
    // A failed snapshot is not pruned by expiry (it is cleaned up by other means).
    cat.set_snapshot_state(&day, SnapshotState::Failed, Some("x"))
        .unwrap();
    assert!(cat.expired(i64::MAX).unwrap().is_empty());
}

#[test]
fn snapshots_serialise_with_hex_ids_and_lowercase_enums() {
    let (_dir, cat) = catalog();
    add_vm(&cat, "vm");
    let s = add_snap(&cat, "vm", "n");
    complete(&cat, &s, T0 + 10);
    let json = serde_json::to_value(cat.snapshot(&s).unwrap()).unwrap();
    assert_eq!(json["id"], s.to_hex());
    assert_eq!(json["state"], "available");
    assert_eq!(json["backing"], "image");
    assert_eq!(json["retention_days"], 7);
    assert_eq!(json["completed_at"], T0 + 10);
    assert_eq!(json["expires_at"], T0 + 10 + 7 * DAY);
    assert_eq!(json["error"], serde_json::Value::Null);

    let job = cat.enqueue(JobKind::Snapshot, Some(&s), "{}", T0).unwrap();
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(json["snapshot"], s.to_hex());
    assert_eq!(json["kind"], "snapshot");
    assert_eq!(json["state"], "queued");
}

// ---------------------------------------------------------------- replicas

#[test]
fn replicas_are_one_row_per_region_and_go_with_their_snapshot() {
    let (_dir, cat) = catalog();
    let cat = cat.with_clock(Arc::new(FixedClock(T0 + 5)));
    add_vm(&cat, "vm");
    let s = add_snap(&cat, "vm", "n");
    assert!(cat.replicas(&s).unwrap().is_empty());
    for region in ["nl-1", "it-1", "de-1"] {
        cat.set_replica(&s, region, ReplicaState::Pending).unwrap();
    }
    cat.set_replica(&s, "it-1", ReplicaState::Written).unwrap();
    let reps = cat.replicas(&s).unwrap();
    let got: Vec<_> = reps.iter().map(|r| (r.region.as_str(), r.state)).collect();
    assert_eq!(
        got,
        [
            ("de-1", ReplicaState::Pending),
            ("it-1", ReplicaState::Written),
            ("nl-1", ReplicaState::Pending)
        ]
    );
    assert!(reps.iter().all(|r| r.updated_at == T0 + 5));
    let e = cat
        .set_replica(&s, "../x", ReplicaState::Written)
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidName { kind, .. } if kind == "region"),
        "{e:?}"
    );

    cat.delete_snapshot(&s).unwrap();
    let raw = rusqlite::Connection::open(cat.path()).unwrap();
    let left: i64 = raw
        .query_row("SELECT count(*) FROM replicas", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "replica rows outlived their snapshot");
}

// ---------------------------------------------------------------- rebuild from manifests

fn meta(id: SnapshotId, instance: &str, name: &str) -> SnapshotMeta {
    SnapshotMeta {
        id,
        instance: instance.into(),
        name: name.into(),
        backing: Backing::Volume,
        home_region: "nl-1".into(),
        created_at: T0,
        completed_at: T0 + 100,
        retention_days: 2,
    }
}

#[test]
fn upsert_from_manifest_is_idempotent() {
    let (_dir, cat) = catalog();
    let id = SnapshotId::generate();
    let m = meta(id, "rebuilt", "nightly");
    cat.upsert_from_manifest(&m, &stats(), SnapshotState::Available)
        .unwrap();
    let once = cat.snapshot(&id).unwrap();
    let instances_once = cat.instances().unwrap();
    cat.upsert_from_manifest(&m, &stats(), SnapshotState::Available)
        .unwrap();
    assert_eq!(cat.snapshot(&id).unwrap(), once);
    assert_eq!(cat.instances().unwrap(), instances_once);
    assert_eq!(cat.snapshots(None).unwrap().len(), 1);

    assert_eq!(once.meta().unwrap(), m);
    assert_eq!(once.state, SnapshotState::Available);
    assert_eq!(once.expires_at, Some(T0 + 100 + 2 * DAY));
    assert_eq!(once.chunk_count, Some(75));
    let inst = cat.instance("rebuilt").unwrap();
    assert_eq!(inst.image_path, "");
    assert_eq!(inst.backing, Backing::Volume);
    assert_eq!(inst.home_region, "nl-1");

    // A later state from another region updates the row in place.
    cat.upsert_from_manifest(&m, &stats(), SnapshotState::Degraded)
        .unwrap();
    assert_eq!(cat.snapshot(&id).unwrap().state, SnapshotState::Degraded);
}

#[test]
fn upsert_from_manifest_keeps_a_known_instance_and_respects_live_names() {
    let (_dir, cat) = catalog();
    let known = add_vm(&cat, "vm");
    let live = add_snap(&cat, "vm", "nightly");
    let other = SnapshotId::generate();
    let e = cat
        .upsert_from_manifest(
            &meta(other, "vm", "nightly"),
            &stats(),
            SnapshotState::Available,
        )
        .unwrap_err();
    assert!(matches!(e, Error::SnapshotExists { .. }), "{e:?}");

    cat.set_snapshot_state(&live, SnapshotState::Failed, Some("x"))
        .unwrap();
    cat.upsert_from_manifest(
        &meta(other, "vm", "nightly"),
        &stats(),
        SnapshotState::Available,
    )
    .unwrap();
    assert_eq!(cat.find_snapshot("vm/nightly").unwrap().id, other);
    assert_eq!(
        cat.instance("vm").unwrap(),
        known,
        "instance row was overwritten"
    );
}

// ---------------------------------------------------------------- jobs

#[test]
fn jobs_are_claimed_oldest_first_and_once() {
    let (_dir, cat) = catalog();
    let snap = SnapshotId::generate();
    let a = cat
        .enqueue(JobKind::Snapshot, Some(&snap), r#"{"n":1}"#, T0)
        .unwrap();
    let b = cat
        .enqueue(JobKind::Replicate, Some(&snap), "{}", T0)
        .unwrap();
    let c = cat.enqueue(JobKind::Prune, None, "{}", T0 + 1).unwrap();
    assert!(a.id < b.id && b.id < c.id);
    assert_eq!(a.state, JobState::Queued);
    assert_eq!((a.attempts, a.worker.as_deref()), (0, None));
    assert_eq!(a.snapshot, Some(snap));
    assert_eq!(cat.pending_jobs().unwrap(), 3);

    let first = cat.claim_job("w1", T0 + 10, 60).unwrap().unwrap();
    assert_eq!(first.id, a.id);
    assert_eq!(first.state, JobState::Running);
    assert_eq!(first.worker.as_deref(), Some("w1"));
    assert_eq!(first.heartbeat_at, Some(T0 + 10));
    assert_eq!(first.attempts, 1);
    assert_eq!(first.payload, r#"{"n":1}"#);
    // Another worker does not get the running job.
    let second = cat.claim_job("w2", T0 + 11, 60).unwrap().unwrap();
    assert_eq!(second.id, b.id);
    let third = cat.claim_job("w2", T0 + 12, 60).unwrap().unwrap();
    assert_eq!(third.id, c.id);
    assert_eq!(cat.claim_job("w3", T0 + 13, 60).unwrap(), None);
    assert_eq!(cat.pending_jobs().unwrap(), 3);

    assert!(cat.finish_job(a.id, "w1", Ok(()), T0 + 20).unwrap());
    assert!(
        cat.finish_job(b.id, "w2", Err("region de-1 down"), T0 + 21)
            .unwrap()
    );
    assert_eq!(cat.pending_jobs().unwrap(), 1);
    let done = cat.job(a.id).unwrap();
    assert_eq!((done.state, done.updated_at), (JobState::Done, T0 + 20));
    let failed = cat.job(b.id).unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error.as_deref(), Some("region de-1 down"));
    // Finished jobs are not claimed again, however old.
    assert_eq!(
        cat.claim_job("w3", T0 + 10 * DAY, 60)
            .unwrap()
            .map(|j| j.id),
        Some(c.id)
    );
    assert_eq!(cat.claim_job("w3", T0 + 10 * DAY, 60).unwrap(), None);
    let ids: Vec<_> = cat.jobs().unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(ids, [a.id, b.id, c.id]);
    assert!(matches!(
        cat.job(999).unwrap_err(),
        Error::JobNotFound { id: 999 }
    ));
}

#[test]
fn a_stale_job_is_taken_over_and_its_old_worker_told() {
    let (_dir, cat) = catalog();
    let job = cat.enqueue(JobKind::Verify, None, "{}", T0).unwrap();
    cat.claim_job("old", T0 + 100, 60).unwrap().unwrap();
    // A heartbeat keeps it alive.
    assert!(cat.heartbeat(job.id, "old", T0 + 150).unwrap());
    assert_eq!(cat.claim_job("new", T0 + 210, 60).unwrap(), None);
    // Stale only once the heartbeat is more than stale_after seconds old.
    assert_eq!(cat.claim_job("new", T0 + 150 + 60, 60).unwrap(), None);
    let taken = cat.claim_job("new", T0 + 150 + 61, 60).unwrap().unwrap();
    assert_eq!(taken.id, job.id);
    assert_eq!(taken.worker.as_deref(), Some("new"));
    assert_eq!(taken.attempts, 2);

    assert!(!cat.heartbeat(job.id, "old", T0 + 212).unwrap());
    assert!(!cat.finish_job(job.id, "old", Ok(()), T0 + 213).unwrap());
    let still = cat.job(job.id).unwrap();
    assert_eq!(still.state, JobState::Running);
    assert_eq!(still.heartbeat_at, Some(T0 + 211));

    assert!(cat.heartbeat(job.id, "new", T0 + 220).unwrap());
    assert!(cat.finish_job(job.id, "new", Ok(()), T0 + 230).unwrap());
    assert!(!cat.finish_job(job.id, "new", Ok(()), T0 + 231).unwrap());
    assert!(!cat.heartbeat(job.id, "new", T0 + 232).unwrap());
    assert!(matches!(
        cat.heartbeat(12345, "new", T0).unwrap_err(),
        Error::JobNotFound { id: 12345 }
    ));
    assert!(matches!(
        cat.finish_job(12345, "new", Ok(()), T0).unwrap_err(),
        Error::JobNotFound { .. }
    ));
}

#[test]
fn jobs_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let id = {
        let cat = Catalog::open(&path).unwrap();
        cat.enqueue(JobKind::Gc, None, "{}", T0).unwrap().id
    };
    let cat = Catalog::open_existing(&path).unwrap();
    assert_eq!(cat.claim_job("w", T0, 60).unwrap().map(|j| j.id), Some(id));
}

#[test]
fn two_processes_claiming_at_once_each_job_is_claimed_exactly_once() {
    const JOBS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.db");
    let all: BTreeSet<i64> = {
        let cat = Catalog::open(&path).unwrap();
        (0..JOBS)
            .map(|i| {
                cat.enqueue(JobKind::Verify, None, &i.to_string(), T0)
                    .unwrap()
                    .id
            })
            .collect()
    };
    let worker = |name: &'static str, path: &Path| {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            // Each thread has its own connection, as separate processes would.
            let cat = Catalog::open(&path).unwrap();
            let mut claimed = Vec::new();
            while let Some(job) = cat.claim_job(name, T0 + 1, 3_600).unwrap() {
                assert_eq!(job.worker.as_deref(), Some(name));
                assert!(cat.finish_job(job.id, name, Ok(()), T0 + 2).unwrap());
                claimed.push(job.id);
            }
            claimed
        })
    };
    let a = worker("a", &path);
    let b = worker("b", &path);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let mut union: Vec<i64> = a.iter().chain(&b).copied().collect();
    union.sort_unstable();
    let claimed: BTreeSet<i64> = union.iter().copied().collect();
    assert_eq!(
        union.len(),
        claimed.len(),
        "a job was claimed twice: {a:?} {b:?}"
    );
    assert_eq!(claimed, all);

    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.pending_jobs().unwrap(), 0);
    for job in cat.jobs().unwrap() {
        assert_eq!((job.state, job.attempts), (JobState::Done, 1), "{job:?}");
    }
}

/// A snapshot is offered for reuse only for its own instance and source, once completed,
/// the newest first, and only while a full scan of that source is recent enough.
#[test]
fn snapshots_are_found_by_source_while_a_scan_of_it_is_recent() {
    let (_d, cat) = catalog();
    add_vm(&cat, "vm");
    add_vm(&cat, "other");
    let scanned = add_snap(&cat, "vm", "scanned");
    let reused = add_snap(&cat, "vm", "reused");
    let running = add_snap(&cat, "vm", "running");
    let elsewhere = add_snap(&cat, "other", "x");
    complete(&cat, &scanned, T0 + 10);
    complete(&cat, &reused, T0 + 20);
    complete(&cat, &elsewhere, T0 + 30);
    cat.set_snapshot_source(&scanned, Some("S"), None).unwrap();
    cat.set_snapshot_source(&reused, Some("S"), Some(&scanned))
        .unwrap();
    cat.set_snapshot_source(&running, Some("S"), None).unwrap();
    cat.set_snapshot_source(&elsewhere, Some("S"), None)
        .unwrap();
    assert_eq!(cat.snapshot(&reused).unwrap().reused_from, Some(scanned));

    // The newest completed one of this instance, while the scan is recent enough.
    assert_eq!(
        cat.snapshot_from_source("vm", "S", T0 + 10).unwrap(),
        Some(reused)
    );
    // Only reuses since the cut-off: rescan.
    assert_eq!(cat.snapshot_from_source("vm", "S", T0 + 11).unwrap(), None);
    assert_eq!(cat.snapshot_from_source("vm", "T", T0).unwrap(), None);
    // Gone with its snapshot.
    cat.delete_snapshot(&scanned).unwrap();
    assert_eq!(cat.snapshot_from_source("vm", "S", T0).unwrap(), None);
    assert!(cat.set_snapshot_source(&scanned, Some("S"), None).is_err());
}

#[test]
fn checkpoints_form_one_chain_pass_to_a_retaken_snapshot_and_go_with_it() {
    let (_d, cat) = catalog();
    add_vm(&cat, "vm");
    let a = add_snap(&cat, "vm", "a");
    let visit = |id: &SnapshotId, source: &str| {
        let mut seen = Vec::new();
        let end = cat
            .visit_checkpoints(id, source, "fixed:16K", |end, e| {
                seen.push((end, e.to_vec()));
                true
            })
            .unwrap();
        (end, seen)
    };
    for (start, end) in [(0, 10), (10, 20), (20, 30)] {
        cat.add_checkpoint(&a, "stamp", "fixed:16K", start, end, &[start as u8])
            .unwrap();
    }
    assert_eq!(visit(&a, "stamp").0, 30);
    // Another stamp or chunker: nothing to resume from.
    assert_eq!(visit(&a, "other").0, 0);
    assert_eq!(
        cat.visit_checkpoints(&a, "stamp", "fixed:64K", |_, _| true)
            .unwrap(),
        0
    );
    // A retry that resumed at 10 replaces everything recorded from there on.
    cat.add_checkpoint(&a, "stamp", "fixed:16K", 10, 25, &[99])
        .unwrap();
    let (end, seen) = visit(&a, "stamp");
    assert_eq!(end, 25);
    assert_eq!(seen, vec![(10, vec![0]), (25, vec![99])]);
    // A visitor that stops: the chain ends where it stopped.
    assert_eq!(
        cat.visit_checkpoints(&a, "stamp", "fixed:16K", |_, _| false)
            .unwrap(),
        0
    );

    // Not taken over while `a` is not failed (it may still be running).
    let b = add_snap(&cat, "vm", "b");
    assert!(
        !cat.adopt_checkpoints(&b, "vm", "stamp", "fixed:16K")
            .unwrap()
    );
    cat.set_snapshot_state(&a, SnapshotState::Failed, Some("region down"))
        .unwrap();
    // Not for another stamp, then for the same one.
    assert!(
        !cat.adopt_checkpoints(&b, "vm", "other", "fixed:16K")
            .unwrap()
    );
    assert!(
        cat.adopt_checkpoints(&b, "vm", "stamp", "fixed:16K")
            .unwrap()
    );
    assert_eq!(visit(&b, "stamp").0, 25);
    assert_eq!(visit(&a, "stamp").0, 0);
    // Once it has its own, nothing more is taken over.
    assert!(
        !cat.adopt_checkpoints(&b, "vm", "stamp", "fixed:16K")
            .unwrap()
    );

    cat.set_snapshot_resumed(&b, 10).unwrap();
    assert_eq!(cat.snapshot(&b).unwrap().resumed_at, Some(10));
    cat.clear_checkpoints(&b).unwrap();
    assert_eq!(visit(&b, "stamp").0, 0);
    // Rows go with their snapshot.
    cat.add_checkpoint(&b, "stamp", "fixed:16K", 0, 5, &[1])
        .unwrap();
    cat.delete_snapshot(&b).unwrap();
    assert_eq!(visit(&b, "stamp").0, 0);

    // A snapshot taken again under a failed one's name takes its place and its rows.
    let c = add_snap(&cat, "vm", "c");
    cat.add_checkpoint(&c, "stamp", "fixed:16K", 0, 7, &[3])
        .unwrap();
    cat.set_snapshot_state(&c, SnapshotState::Failed, Some("disk full"))
        .unwrap();
    let again = add_snap(&cat, "vm", "c");
    assert!(cat.snapshot(&c).is_err());
    assert_eq!(cat.snapshot(&again).unwrap().name, "c");
    let (end, seen) = visit(&again, "stamp");
    assert_eq!((end, seen), (7, vec![(7, vec![3])]));
}

#[test]
fn a_committed_snapshot_clears_the_checkpoints_of_failed_ones_taken_before_it() {
    let (_d, cat) = catalog();
    add_vm(&cat, "vm");
    add_vm(&cat, "other");
    let chain = |id: &SnapshotId| {
        cat.visit_checkpoints(id, "stamp", "fixed:16K", |_, _| true)
            .unwrap()
    };
    let record = |id: &SnapshotId, ends: &[u64]| {
        let mut start = 0;
        for &end in ends {
            cat.add_checkpoint(id, "stamp", "fixed:16K", start, end, &[1])
                .unwrap();
            start = end;
        }
    };
    let failed = |instance: &str, name: &str, at: i64| {
        let id = cat
            .add_snapshot(&new_snapshot(instance, name, "7", at))
            .unwrap()
            .id;
        record(&id, &[10, 20]);
        cat.set_snapshot_state(&id, SnapshotState::Failed, Some("region down"))
            .unwrap();
        id
    };
    let old = failed("vm", "old", T0 - 5);
    let elsewhere = failed("other", "x", T0 - 5);
    let running = add_snap(&cat, "vm", "running");
    record(&running, &[10]);
    let done = add_snap(&cat, "vm", "done");
    complete(&cat, &done, T0 + 1);
    let later = failed("vm", "later", T0 + 100);

    assert_eq!(cat.clear_superseded_checkpoints(&done).unwrap(), 2);
    assert_eq!(chain(&old), 0, "the older failed snapshot's rows stayed");
    // Another instance's, a running snapshot's and a later failure's are kept.
    assert_eq!(chain(&elsewhere), 20);
    assert_eq!(chain(&running), 10);
    assert_eq!(chain(&later), 20);
    assert_eq!(cat.clear_superseded_checkpoints(&done).unwrap(), 0);
}
