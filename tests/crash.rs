//! The crash-fault matrix: the binary is killed at each failpoint (abort, as `kill -9`
//! would), then the command is retried or the next one run, and the invariants checked.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use geosnap_engine::imagegen::{Profile, scatter_writes};

use crate::util::{Env, same};

/// An env whose stale jobs are taken over after 1 s, packs of 1 MiB, and `settings` (more
/// lines of config.toml).
fn crash_env(settings: &str) -> Env {
    let env = Env::new();
    let cfg = env.data.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "stale_after_secs = 30",
            &format!("stale_after_secs = 1\npack_size = \"1M\"\n{settings}"),
        ),
    )
    .unwrap();
    env
}

/// An env whose stale jobs are taken over after 1 s, with one committed snapshot.
fn setup() -> (Env, PathBuf, PathBuf) {
    let env = crash_env("");
    let img = env.image("a.img", 24 << 20, Profile::Mixed, 11);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    env.ok(&[
        "snapshot",
        "take",
        "vm",
        "--name",
        "committed",
        "--retention-days",
        "1",
    ]);
    let committed = env.path("committed.img");
    std::fs::copy(&img, &committed).unwrap();
    scatter_writes(&img, 0.02, 5).unwrap();
    (env, img, committed)
}

/// Runs `args` with `failpoint` armed and asserts the process died there.
fn crash(env: &Env, args: &[&str], failpoint: &str) {
    let out = env
        .cmd(args)
        .env("GEOSNAP_FAILPOINT", failpoint)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "{args:?} did not die at {failpoint}: {:?} {stderr}",
        out.status
    );
    assert!(stderr.contains(failpoint), "{stderr}");
}

fn libc_sigabrt() -> i32 {
    6
}

/// After recovery: the committed snapshot is intact, every listed snapshot restores
/// byte-identical from its home region alone, and verify finds no damage anywhere.
fn invariants(env: &Env, committed: &Path, latest: Option<(&str, &Path)>) {
    let out = env.path("check-committed.img");
    env.ok(&[
        "restore",
        "vm/committed",
        "--to",
        out.to_str().unwrap(),
        "--strict-region",
        "--force",
    ]);
    assert!(same(&out, committed));
    for s in env.json(&["snapshot", "list"]).as_array().unwrap() {
        let state = s["state"].as_str().unwrap();
        assert!(
            matches!(state, "available" | "degraded"),
            "listed snapshot in state {state}: {s}"
        );
        let key = format!(
            "{}/{}",
            s["instance"].as_str().unwrap(),
            s["name"].as_str().unwrap()
        );
        let out = env.path("check.img");
        env.ok(&[
            "restore",
            &key,
            "--to",
            out.to_str().unwrap(),
            "--strict-region",
            "--force",
        ]);
        if let Some((name, image)) = latest
            && key.ends_with(&format!("/{name}"))
        {
            assert!(same(&out, image), "{key}");
        }
    }
    env.ok(&["verify"]);
}

fn wait_stale() {
    // Heartbeats have second resolution: "older than 1 s" needs two seconds to pass.
    std::thread::sleep(Duration::from_millis(2100));
}

#[test]
fn killed_after_some_chunks_then_a_worker_finishes() {
    let (env, img, committed) = setup();
    crash(
        &env,
        &["snapshot", "take", "vm", "--name", "new"],
        "snapshot-some-chunks",
    );
    assert_eq!(env.snapshot("vm/new")["state"], "running");
    assert!(
        env.stored_files(&format!(
            "snapshots/{}",
            env.snapshot("vm/new")["id"].as_str().unwrap()
        ))
        .is_empty()
    );
    wait_stale();
    env.ok(&["worker", "--once"]);
    assert_eq!(env.snapshot("vm/new")["state"], "available");
    invariants(&env, &committed, Some(("new", img.as_path())));
}

#[test]
fn killed_before_the_manifest_then_a_worker_finishes() {
    let (env, img, committed) = setup();
    crash(
        &env,
        &["snapshot", "take", "vm", "--name", "new"],
        "snapshot-before-manifest",
    );
    let id = env.snapshot("vm/new")["id"].as_str().unwrap().to_string();
    assert!(env.stored_files(&format!("snapshots/{id}")).is_empty());
    // gc must not eat the chunks of the interrupted snapshot: its markers protect them.
    let gc = env.json(&["gc"]);
    assert!(
        gc.as_array()
            .unwrap()
            .iter()
            .any(|s| s["skipped"].is_string()),
        "{gc}"
    );
    wait_stale();
    env.ok(&["worker", "--once"]);
    assert_eq!(env.snapshot("vm/new")["state"], "available");
    assert!(env.stored_files("inflight/").is_empty());
    invariants(&env, &committed, Some(("new", img.as_path())));
}

#[test]
fn killed_after_the_manifest_before_the_catalog_adopts_it() {
    let (env, img, committed) = setup();
    crash(
        &env,
        &["snapshot", "take", "vm", "--name", "new"],
        "snapshot-before-catalog",
    );
    let id = env.snapshot("vm/new")["id"].as_str().unwrap().to_string();
    assert_eq!(
        env.stored_files(&format!("snapshots/{id}/manifest")).len(),
        3
    );
    wait_stale();
    env.ok(&["worker", "--once"]);
    let s = env.snapshot("vm/new");
    assert_eq!(s["state"], "available");
    assert_eq!(env.json(&["snapshot", "list"]).as_array().unwrap().len(), 2);
    invariants(&env, &committed, Some(("new", img.as_path())));
}

#[test]
fn killed_while_replicating_to_the_third_region() {
    let (env, img, committed) = setup();
    env.ok(&["region", "fail", "nl-1", "--mode", "down"]);
    env.ok(&["snapshot", "take", "vm", "--name", "new"]);
    assert_eq!(env.snapshot("vm/new")["state"], "degraded");
    env.ok(&["region", "heal", "nl-1"]);
    crash(&env, &["worker", "--once"], "replicate-some-chunks");
    assert_eq!(env.snapshot("vm/new")["state"], "degraded");
    wait_stale();
    env.ok(&["worker", "--once"]);
    assert_eq!(env.snapshot("vm/new")["state"], "available");
    let out = env.path("nl.img");
    env.ok(&[
        "restore",
        "vm/new",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "nl-1",
        "--strict-region",
    ]);
    assert!(same(&out, &img));
    invariants(&env, &committed, Some(("new", img.as_path())));
}

#[test]
fn killed_while_pruning_between_manifests_and_catalog() {
    let (env, img, _committed) = setup();
    env.ok(&["snapshot", "take", "vm", "--name", "keep"]);
    let daily = env.snapshot("vm/committed");
    let at = geosnap_catalog::clock::format_rfc3339(daily["expires_at"].as_i64().unwrap());
    // Keep a second 1-day snapshot's image for the invariants; prune the first.
    crash(&env, &["prune", "--now", &at], "prune-before-catalog");
    // The rerun finishes the job: the expired snapshot is gone everywhere.
    let r = env.json(&["prune", "--now", &at]);
    assert_eq!(r["pruned"][0]["snapshot"], "vm/committed");
    let id = daily["id"].as_str().unwrap();
    assert!(env.stored_files(&format!("snapshots/{id}")).is_empty());
    let list = env.json(&["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    env.ok(&["verify"]);
    // What is left still restores byte-identical from its home region alone.
    let out = env.path("keep.img");
    env.ok(&[
        "restore",
        "vm/keep",
        "--to",
        out.to_str().unwrap(),
        "--strict-region",
    ]);
    assert!(same(&out, &img));
}

#[test]
fn killed_during_the_gc_sweep() {
    let (env, img, committed) = setup();
    env.ok(&["snapshot", "take", "vm", "--name", "new"]);
    env.ok(&["snapshot", "delete", "vm/new"]);
    crash(&env, &["gc"], "gc-sweep");
    // The dead gc's marker stops no one once it is stale (a live gc refreshes it every
    // 10 s): age it by two minutes and a snapshot goes straight through.
    let markers = env.stored_files("gc/running");
    assert!(!markers.is_empty(), "the killed gc left no marker");
    for m in &markers {
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(m)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    env.ok(&["snapshot", "take", "vm", "--name", "after-dead-gc"]);
    // The rerun finishes the sweep and clears the marker.
    env.ok(&["gc"]);
    assert!(env.stored_files("gc/running").is_empty());
    env.ok(&["snapshot", "take", "vm", "--name", "again"]);
    invariants(&env, &committed, Some(("again", img.as_path())));
}

#[test]
fn killed_before_the_restore_rename() {
    let (env, _img, committed) = setup();
    let out = env.path("restored.img");
    crash(
        &env,
        &["restore", "vm/committed", "--to", out.to_str().unwrap()],
        "restore-before-rename",
    );
    assert!(!out.exists(), "a target appeared before the rename");
    // The retry completes, and cleans up the partial file the killed run left.
    env.ok(&["restore", "vm/committed", "--to", out.to_str().unwrap()]);
    assert!(same(&out, &committed));
    let partials: Vec<_> = std::fs::read_dir(env.tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".geosnap-partial")
        })
        .collect();
    assert!(partials.is_empty());
    invariants(&env, &committed, None);
}

#[test]
fn a_restore_whose_disk_fills_up_fails_in_one_sentence_and_leaves_nothing() {
    let (env, _img, committed) = setup();
    let out = env.path("restored.img");
    let run = env
        .cmd(&["restore", "vm/committed", "--to", out.to_str().unwrap()])
        .env("GEOSNAP_FAILPOINT", "restore-disk-full")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one sentence: {stderr}");
    assert!(lines[0].contains("No space left on device"), "{stderr}");
    assert!(lines[0].contains("restored.img"), "{stderr}");
    // Neither the target nor a partial file is left.
    let left: Vec<String> = std::fs::read_dir(env.tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restored.img"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    env.ok(&["restore", "vm/committed", "--to", out.to_str().unwrap()]);
    assert!(same(&out, &committed));
}

#[test]
fn killed_while_deleting_a_snapshot() {
    let (env, _img, committed) = setup();
    env.ok(&["snapshot", "take", "vm", "--name", "doomed"]);
    crash(
        &env,
        &["snapshot", "delete", "vm/doomed"],
        "delete-before-catalog",
    );
    env.ok(&["snapshot", "delete", "vm/doomed"]);
    assert!(env.json(&["snapshot", "show", "vm/committed"])["state"] == "available");
    invariants(&env, &committed, None);
}

/// gc runs again and again beside snapshots that reuse chunks gc would otherwise collect
/// (the chunks of a deleted snapshot); every snapshot then restores byte-identical.
#[test]
fn gc_beside_snapshots_never_eats_their_chunks() {
    let env = Env::new();
    let img = env.image("a.img", 16 << 20, Profile::Mixed, 21);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    for round in 0..6 {
        // Garbage that the next snapshot will want back.
        env.ok(&["snapshot", "take", "vm", "--name", &format!("bait-{round}")]);
        env.ok(&["snapshot", "delete", &format!("vm/bait-{round}")]);
        let name = format!("keep-{round}");
        let mut snap = env
            .cmd(&["snapshot", "take", "vm", "--name", &name])
            .spawn()
            .unwrap();
        let mut gcs = 0;
        while snap.try_wait().unwrap().is_none() {
            env.ok(&["gc"]);
            gcs += 1;
        }
        assert!(snap.wait().unwrap().success());
        env.ok(&["gc"]);
        let out = env.path(&format!("{name}.img"));
        env.ok(&[
            "restore",
            &format!("vm/{name}"),
            "--to",
            out.to_str().unwrap(),
            "--strict-region",
        ]);
        assert!(
            same(&out, &img),
            "round {round} after {gcs} concurrent gc runs"
        );
        scatter_writes(&img, 0.01, round).unwrap();
    }
    env.ok(&["verify"]);
}

/// An env whose stale jobs are taken over after 1 s and whose snapshots record a
/// checkpoint every 2 MiB of image, with instance `vm` on a 24 MiB random image whose file
/// has settled (its stamp can be trusted).
fn checkpointed() -> (Env, PathBuf) {
    let env = crash_env("checkpoint_every = \"2M\"");
    let img = env.image("r.img", 24 << 20, Profile::Random, 3);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(2100));
    (env, img)
}

fn restores_as(env: &Env, key: &str, image: &Path) {
    let out = env.path("resumed-check.img");
    env.ok(&[
        "restore",
        key,
        "--to",
        out.to_str().unwrap(),
        "--strict-region",
        "--force",
    ]);
    assert!(same(&out, image), "{key} differs from {}", image.display());
}

#[test]
fn killed_before_the_manifest_the_retry_resumes_from_the_last_checkpoint() {
    let (env, img) = checkpointed();
    crash(
        &env,
        &["snapshot", "take", "vm", "--name", "s"],
        "snapshot-before-manifest",
    );
    wait_stale();
    env.ok(&["worker", "--once"]);
    let s = env.snapshot("vm/s");
    assert_eq!(s["state"], "available", "{s}");
    // Every chunk was uploaded and indexed before the crash: the retry starts at the last
    // checkpoint, at most one checkpoint (2 MiB) and the tail after it from the end.
    let at = s["resumed_at"].as_u64().unwrap();
    assert!(((20 << 20)..=(24 << 20)).contains(&at), "{s}");
    // and stores nothing the first attempt had stored.
    assert_eq!(s["stored_bytes"], 0, "{s}");
    restores_as(&env, "vm/s", &img);
    env.ok(&["verify"]);
}

#[test]
fn an_image_changed_after_the_crash_is_scanned_again_from_the_start() {
    let (env, img) = checkpointed();
    crash(
        &env,
        &["snapshot", "take", "vm", "--name", "s"],
        "snapshot-before-manifest",
    );
    // Written in place, early in the image, where the checkpoints describe the old bytes.
    scatter_writes(&img, 0.05, 7).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    env.ok(&["worker", "--once"]);
    let s = env.snapshot("vm/s");
    assert_eq!(s["state"], "available", "{s}");
    assert!(s["resumed_at"].is_null(), "{s}");
    restores_as(&env, "vm/s", &img);
}

#[test]
fn checkpoints_whose_chunks_the_regions_lost_are_not_resumed_from() {
    let (env, img) = checkpointed();
    crash(
        &env,
        &["snapshot", "take", "vm", "--name", "s"],
        "snapshot-before-manifest",
    );
    // Every index object gone (as if gc had collected the interrupted attempt's packs):
    // the regions no longer say they hold any chunk the checkpoints name.
    let index = env.stored_files("/index/");
    assert!(!index.is_empty());
    for f in index {
        std::fs::remove_file(f).unwrap();
    }
    wait_stale();
    env.ok(&["worker", "--once"]);
    let s = env.snapshot("vm/s");
    assert_eq!(s["state"], "available", "{s}");
    assert!(s["resumed_at"].is_null(), "{s}");
    // Stored again in full (random data: about the image's size).
    assert!(s["stored_bytes"].as_u64().unwrap() > 20 << 20, "{s}");
    restores_as(&env, "vm/s", &img);
}

#[test]
fn killed_mid_scan_the_retry_restores_byte_identical_whatever_it_resumes_from() {
    // At the first checkpoint (nothing indexed yet, most likely) and at the first index
    // object a region's writer adds mid-snapshot (some packs indexed, the scan ahead).
    for failpoint in ["snapshot-checkpointed", "snapshot-indexed-some"] {
        let (env, img) = checkpointed();
        crash(&env, &["snapshot", "take", "vm", "--name", "s"], failpoint);
        wait_stale();
        env.ok(&["worker", "--once"]);
        let s = env.snapshot("vm/s");
        assert_eq!(s["state"], "available", "{failpoint}: {s}");
        if let Some(at) = s["resumed_at"].as_u64() {
            assert!(at > 0 && at < 24 << 20, "{failpoint}: {s}");
        }
        restores_as(&env, "vm/s", &img);
        env.ok(&["verify"]);
    }
}

#[test]
fn a_snapshot_failed_by_full_regions_is_resumed_by_the_next_once_they_have_room() {
    let (env, img) = checkpointed();
    // Two of the three regions fill up 10 MiB into the 24 MiB random image's packs.
    env.ok(&["region", "fail", "de-1", "--mode", "full:10M"]);
    env.ok(&["region", "fail", "nl-1", "--mode", "full:10M"]);
    let err = env.error(&["snapshot", "take", "vm", "--name", "s"]);
    assert!(err.contains("no space left"), "{err}");
    assert_eq!(env.snapshot("vm/s")["state"], "failed");
    assert!(env.stored_files("/manifest").is_empty());

    env.ok(&["region", "heal", "de-1"]);
    env.ok(&["region", "heal", "nl-1"]);
    let t = env.json(&["snapshot", "take", "vm", "--name", "t"]);
    assert_eq!(t["state"], "available", "{t}");
    // Resumed where every region still held the failed attempt's chunks: past the first
    // checkpoint (2 MiB), not past what the full regions took.
    let at = t["resumed_at"].as_u64().unwrap();
    assert!(((2 << 20)..=(10 << 20)).contains(&at), "{t}");
    assert!(t["stored_bytes"].as_u64().unwrap() < 24 << 20, "{t}");
    restores_as(&env, "vm/t", &img);
    env.ok(&["verify"]);
    // The failed attempt's checkpoints went once a later snapshot was committed.
    let db = rusqlite::Connection::open(env.data.join("catalog.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}
