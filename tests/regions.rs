use geosnap_engine::imagegen::Profile;

use crate::util::{Env, same};

#[test]
fn an_outage_degrades_then_heal_and_worker_make_it_available() {
    let env = Env::new();
    let img = env.image("a.img", 8 << 20, Profile::Mixed, 2);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    env.ok(&["region", "fail", "de-1", "--mode", "down"]);
    let regions = env.json(&["region", "list"]);
    assert_eq!(regions[1]["simulated"]["down"], true);
    let s = env.json(&["snapshot", "take", "vm", "--name", "s"]);
    assert_eq!(s["state"], "degraded");
    let de = s["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "de-1")
        .unwrap()
        .clone();
    assert_ne!(de["state"], "written");
    assert!(env.store_files("regions/de-1").is_empty());

    let err = env.error(&[
        "restore",
        "s",
        "--to",
        env.path("x").to_str().unwrap(),
        "--region",
        "de-1",
    ]);
    assert!(err.contains("de-1") && err.contains("unavailable"), "{err}");

    let healed = env.json(&["region", "heal", "de-1"]);
    assert_eq!(healed["replication_jobs_queued"], 1);
    env.ok(&["worker", "--once"]);
    assert_eq!(env.snapshot("s")["state"], "available");
    let out = env.path("de.img");
    env.ok(&[
        "restore",
        "s",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "de-1",
        "--strict-region",
    ]);
    assert!(same(&out, &img));
}

#[test]
fn two_regions_down_fail_the_snapshot_and_leave_nothing_listed() {
    let env = Env::new();
    let img = env.image("a.img", 4 << 20, Profile::Mixed, 2);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    env.ok(&["region", "fail", "de-1", "--mode", "down"]);
    env.ok(&["region", "fail", "nl-1", "--mode", "down"]);
    let err = env.error(&["snapshot", "take", "vm", "--name", "s"]);
    assert!(err.contains("only 1 of 2"), "{err}");
    assert_eq!(env.snapshot("s")["state"], "failed");
    assert!(env.stored_files("/manifest").is_empty());
    // The name can be used again once the regions are back.
    env.ok(&["region", "heal", "de-1"]);
    env.ok(&["region", "heal", "nl-1"]);
    let s = env.json(&["snapshot", "take", "vm", "--name", "s"]);
    assert_eq!(s["state"], "available");
}

#[test]
fn corrupt_chunks_are_found_by_verify_and_repaired() {
    let env = Env::new();
    let img = env.image("a.img", 8 << 20, Profile::Text, 2);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    env.ok(&["snapshot", "take", "vm", "--name", "s"]);
    // Rot one bit in the last frame of nl-1's pack.
    let packs = env.store_files("regions/nl-1/packs");
    assert_eq!(packs.len(), 1, "{packs:?}");
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&packs[0], &bytes).unwrap();

    let err = env.fails(&["verify", "--region", "nl-1"], 1);
    assert!(err.contains("damage"), "{err}");
    let out = env.run(&["--json", "verify", "--region", "nl-1"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut damaged: Vec<String> = report[0]["main"]["corrupt_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    damaged.sort();
    assert!(!damaged.is_empty(), "{report}");
    let clean = env.json(&["verify", "--region", "de-1"]);
    assert_eq!(clean[0]["main"]["corrupt_chunks"], serde_json::json!([]));

    let out = env.path("strict.img");
    let err = env.error(&[
        "restore",
        "s",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "nl-1",
        "--strict-region",
    ]);
    assert!(damaged.iter().any(|c| err.contains(c)), "{err}");
    assert!(!out.exists());

    let r = env.json(&[
        "restore",
        "s",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "nl-1",
    ]);
    let mut repaired: Vec<String> = r["repaired_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    repaired.sort();
    assert_eq!(repaired, damaged);
    assert!(same(&out, &img));
    // The repair holds: nl-1 alone restores it, verify is clean, and gc drops the rot.
    env.ok(&["verify", "--region", "nl-1"]);
    let again = env.path("again.img");
    env.ok(&[
        "restore",
        "s",
        "--to",
        again.to_str().unwrap(),
        "--region",
        "nl-1",
        "--strict-region",
    ]);
    assert!(same(&again, &img));
}

#[test]
fn volume_backed_snapshots_stay_home() {
    let env = Env::new();
    let img = env.image("a.img", 4 << 20, Profile::Mixed, 2);
    env.ok(&[
        "instance",
        "create",
        "vol",
        "--image",
        img.to_str().unwrap(),
        "--region",
        "de-1",
        "--volume-backed",
    ]);
    let s = env.json(&["snapshot", "take", "vol", "--name", "s"]);
    assert_eq!(s["state"], "available");
    assert_eq!(s["replicas"].as_array().unwrap().len(), 1);
    for store in [
        "regions/it-1",
        "regions/de-1",
        "regions/nl-1",
        "volumes/it-1",
        "volumes/nl-1",
    ] {
        assert!(
            env.store_files(store).is_empty(),
            "{store} holds {:?}",
            env.store_files(store)
        );
    }
    assert!(!env.store_files("volumes/de-1").is_empty());
    let out = env.path("x.img");
    let err = env.error(&[
        "restore",
        "s",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "it-1",
    ]);
    assert!(
        err.contains("data residency") && err.contains("de-1"),
        "{err}"
    );
    env.ok(&["restore", "s", "--to", out.to_str().unwrap()]);
    assert!(same(&out, &img));
}

#[test]
fn verify_one_snapshot_checks_only_its_chunks_and_repairs_them() {
    let env = Env::new();
    let a = env.image("a.img", 4 << 20, Profile::Text, 3);
    let b = env.image("b.img", 4 << 20, Profile::Random, 4);
    env.ok(&["instance", "create", "va", "--image", a.to_str().unwrap()]);
    env.ok(&["instance", "create", "vb", "--image", b.to_str().unwrap()]);
    env.ok(&["snapshot", "take", "va", "--name", "s"]);
    env.ok(&["snapshot", "take", "vb", "--name", "s"]);
    let whole = env.json(&["verify", "--region", "de-1"]);
    let one = env.json(&["verify", "--region", "de-1", "--snapshot", "va/s"]);
    let checked = |v: &serde_json::Value| v[0]["main"]["chunks_checked"].as_u64().unwrap();
    assert_eq!(one[0]["main"]["manifests"], 1);
    assert!(
        0 < checked(&one) && checked(&one) < checked(&whole),
        "{one} {whole}"
    );
    // Lose de-1's copy of va/s (its manifest): verify of that snapshot finds it, and
    // --repair brings it back from another region.
    let id = env.snapshot("va/s")["id"].as_str().unwrap().to_string();
    for f in env.store_files("regions/de-1/snapshots") {
        if f.to_string_lossy().contains(&id) {
            std::fs::remove_file(f).unwrap();
        }
    }
    let out = env.run(&["--json", "verify", "--region", "de-1", "--snapshot", "va/s"]);
    assert_eq!(out.status.code(), Some(1));
    env.ok(&[
        "verify",
        "--region",
        "de-1",
        "--snapshot",
        "va/s",
        "--repair",
    ]);
    env.ok(&["verify", "--region", "de-1", "--snapshot", "va/s"]);
    let out = env.path("va.img");
    env.ok(&[
        "restore",
        "va/s",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "de-1",
        "--strict-region",
    ]);
    assert!(same(&out, &a));
}

#[test]
fn verify_of_a_volume_backed_snapshot_looks_only_at_home() {
    let env = Env::new();
    let v = env.image("v.img", 2 << 20, Profile::Random, 5);
    env.ok(&[
        "instance",
        "create",
        "db",
        "--image",
        v.to_str().unwrap(),
        "--volume-backed",
    ]);
    env.ok(&["snapshot", "take", "db", "--name", "s"]);
    let r = env.json(&["verify", "--snapshot", "db/s"]);
    assert_eq!(r.as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r[0]["region"], "it-1");
    assert_eq!(r[0]["volume"]["manifests"], 1);
    let err = env.error(&["verify", "--snapshot", "db/s", "--region", "de-1"]);
    assert!(err.contains("home region it-1"), "{err}");
}

/// With `manifest_memory = "0"` every manifest is written from, read into and uploaded from
/// a temporary file, and with `index_memory = "1K"` every store index a snapshot or a
/// restore builds is sorted through temporary files in runs of a few dozen records, merged
/// in more than one pass (as a large image's would be): snapshots, dedup against what the
/// stores hold, replication after an outage, restores, manifest repair by restore and by
/// verify, and gc all still work, and every region holds the same manifest bytes.
#[test]
fn manifests_and_indexes_above_the_memory_limits_go_through_temporary_files() {
    let env = Env::new();
    let mut config = geosnap_ops::config::Config::load(&env.data).unwrap();
    config.manifest_memory = Some("0".into());
    config.index_memory = Some("1K".into());
    config.save(&env.data).unwrap();
    let img = env.image("a.img", 24 << 20, Profile::Mixed, 5);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    assert_eq!(
        env.json(&["snapshot", "take", "vm", "--name", "first"])["state"],
        "available"
    );
    let first_copy = env.path("first.img");
    std::fs::copy(&img, &first_copy).unwrap();
    // The same bytes under another modification time are scanned again, and every chunk
    // is found in what the stores hold; unchanged since, the manifest is reused after a
    // check that the stores hold every chunk.
    let file = std::fs::OpenOptions::new().append(true).open(&img).unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    drop(file);
    // A file changed in the last two seconds (its ctime, here) is never reused.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let again = env.json(&["snapshot", "take", "vm", "--name", "again"]);
    assert_eq!(again["state"], "available", "{again}");
    assert!(again["reused_from"].is_null(), "{again}");
    assert_eq!(again["stored_bytes"], 0, "{again}");
    let reused = env.json(&["snapshot", "take", "vm", "--name", "reused"]);
    assert_eq!(reused["reused_from"], again["id"], "{reused}");
    env.ok(&["snapshot", "delete", "vm/again"]);
    env.ok(&["snapshot", "delete", "vm/reused"]);
    env.image("a.img", 24 << 20, Profile::Mixed, 6);
    env.ok(&["region", "fail", "de-1", "--mode", "down"]);
    assert_eq!(
        env.json(&["snapshot", "take", "vm", "--name", "second"])["state"],
        "degraded"
    );
    env.ok(&["region", "heal", "de-1"]);
    env.ok(&["worker", "--once"]);
    assert_eq!(env.snapshot("vm/second")["state"], "available");

    let manifests = |region: &str| env.store_files(&format!("regions/{region}/snapshots"));
    let it = manifests("it-1");
    assert_eq!(it.len(), 2, "{it:?}");
    for region in ["de-1", "nl-1"] {
        let other = manifests(region);
        assert_eq!(other.len(), 2, "{region}: {other:?}");
        for (a, b) in it.iter().zip(&other) {
            assert!(same(a, b), "{} differs from {}", b.display(), a.display());
        }
    }

    // A manifest lost in nl-1 is fetched elsewhere and written back by a restore.
    let second = env.snapshot("vm/second");
    let second_id = second["id"].as_str().unwrap();
    let lost = manifests("nl-1")
        .into_iter()
        .find(|p| p.to_string_lossy().contains(second_id))
        .unwrap();
    std::fs::remove_file(&lost).unwrap();
    let out = env.path("second.img");
    let r = env.json(&[
        "restore",
        "vm/second",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "nl-1",
    ]);
    assert_eq!(r["repaired_manifest"], true, "{r}");
    assert!(same(&out, &img));
    let it_second = it.iter().find(|p| p.to_string_lossy().contains(second_id));
    assert!(same(&lost, it_second.unwrap()));

    // A damaged manifest in it-1 is found and repaired by verify.
    let first_id = env.snapshot("vm/first")["id"].as_str().unwrap().to_string();
    let damaged = it
        .iter()
        .find(|p| p.to_string_lossy().contains(&first_id))
        .unwrap();
    let mut bytes = std::fs::read(damaged).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(damaged, &bytes).unwrap();
    env.fails(&["verify", "--region", "it-1"], 1);
    env.ok(&["verify", "--region", "it-1", "--repair"]);
    env.ok(&["verify", "--region", "it-1"]);
    let out = env.path("first.out");
    env.ok(&[
        "restore",
        "vm/first",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "it-1",
        "--strict-region",
    ]);
    assert!(same(&out, &first_copy));

    // gc reads every manifest to know what is live: after deleting the first snapshot it
    // frees space, and the second still restores from every region.
    env.ok(&["snapshot", "delete", "vm/first"]);
    env.ok(&["gc"]);
    for region in ["it-1", "de-1", "nl-1"] {
        let out = env.path(&format!("second-{region}.img"));
        env.ok(&[
            "restore",
            "vm/second",
            "--to",
            out.to_str().unwrap(),
            "--region",
            region,
            "--strict-region",
        ]);
        assert!(same(&out, &img), "second from {region} differs");
    }
}

/// Looking for a manifest to reuse only reads: a region that missed a snapshot (down while
/// it was taken, back without `region heal`) is not handed that snapshot's manifest by the
/// next snapshot's lookup, which would name chunks the region does not hold.
#[test]
fn looking_for_a_manifest_to_reuse_writes_nothing() {
    let env = Env::new();
    let img = env.image("a.img", 4 << 20, Profile::Mixed, 2);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    env.ok(&["region", "fail", "it-1", "--mode", "down"]);
    let s1 = env.json(&["snapshot", "take", "vm", "--name", "s1"]);
    assert_eq!(s1["state"], "degraded");
    // The outage ends by itself: no replication job is queued.
    std::fs::remove_file(env.data.join("simulator.json")).unwrap();
    let s2 = env.json(&["snapshot", "take", "vm", "--name", "s2"]);
    assert!(s2["reused_from"].is_null(), "{s2}");
    let id = s1["id"].as_str().unwrap();
    let in_it = env.store_files("regions/it-1/snapshots");
    assert!(
        in_it.iter().all(|p| !p.to_string_lossy().contains(id)),
        "{in_it:?}"
    );
    let out = env.path("s2.img");
    env.ok(&[
        "restore",
        "vm/s2",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "it-1",
        "--strict-region",
    ]);
    assert!(same(&out, &img));
}

/// Frames in a directory store: every pack file under `regions/<region>/packs`.
fn damage_every_frame(env: &Env, region: &str) {
    for pack in env.store_files(&format!("regions/{region}/packs")) {
        let mut bytes = std::fs::read(&pack).unwrap();
        // One bit in every 16 KiB: raw (incompressible) frames keep decoding, so the
        // damage reaches the restore's SHA-256 check.
        for at in (4096..bytes.len()).step_by(16 << 10) {
            bytes[at] ^= 0x01;
        }
        std::fs::write(&pack, &bytes).unwrap();
    }
}

#[test]
fn a_slow_region_shares_its_restore_with_the_others() {
    let env = Env::new();
    let img = env.image("a.img", 64 << 20, Profile::Random, 3);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    env.ok(&["snapshot", "take", "vm", "--name", "s"]);
    // 64 MiB of incompressible frames over a 16 MiB/s link would take four seconds; the
    // first 16 MiB measure it.
    env.ok(&["region", "fail", "it-1", "--mode", "slow:0,16M"]);
    let out = env.path("out.img");
    let r = env.json(&["restore", "s", "--to", out.to_str().unwrap()]);
    assert!(same(&out, &img));
    assert_eq!(r["region"], "it-1");
    assert_eq!(r["repaired_chunks"], serde_json::json!([]), "{r}");
    let read: Vec<(String, u64)> = r["read_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["region"].as_str().unwrap().to_string(),
                x["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let from = |region: &str| {
        read.iter()
            .find(|(r, _)| r == region)
            .map_or(0, |(_, b)| *b)
    };
    let total: u64 = read.iter().map(|(_, b)| b).sum();
    assert!(total >= 64 << 20, "{r}");
    assert!(from("it-1") > 0, "{r}");
    assert!(
        from("it-1") < total / 2,
        "the slow region read most of it: {r}"
    );
    assert!(from("de-1") + from("nl-1") > total / 2, "{r}");
    // Said in words too.
    env.ok(&["region", "heal", "it-1"]);
    env.ok(&["region", "fail", "it-1", "--mode", "slow:0,16M"]);
    let again = env.path("again.img");
    let text = env.ok(&["restore", "s", "--to", again.to_str().unwrap()]);
    assert!(
        text.contains("from de-1") && text.contains("from it-1"),
        "{text}"
    );
    assert!(same(&again, &img));
}

#[test]
fn a_chunk_damaged_where_a_striped_restore_read_it_comes_from_the_region_asked_and_repairs_nothing()
{
    let env = Env::new();
    // Every region counts as slow: groups are striped once it-1 has read 16 MiB.
    let mut config = geosnap_ops::config::Config::load(&env.data).unwrap();
    config.stripe_below = Some("1T".into());
    config.save(&env.data).unwrap();
    let img = env.image("a.img", 48 << 20, Profile::Random, 4);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    env.ok(&["snapshot", "take", "vm", "--name", "s"]);
    damage_every_frame(&env, "de-1");
    // nl-1 fails when the restore first asks it for a group: it gets no more.
    env.ok(&["region", "fail", "nl-1", "--mode", "down"]);
    let out = env.path("out.img");
    let r = env.json(&["restore", "s", "--to", out.to_str().unwrap()]);
    assert!(same(&out, &img));
    assert!(
        r["read_from"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["region"] == "de-1"),
        "nothing was striped to de-1: {r}"
    );
    // it-1 held every chunk intact: nothing to repair there, nothing left unrepaired.
    assert_eq!(r["repaired_chunks"], serde_json::json!([]), "{r}");
    assert_eq!(r["unrepaired_chunks"], serde_json::json!([]), "{r}");
    // The damage did reach the restore's check: those chunks came back through its fallback.
    assert!(r["stats"]["recovered_chunks"].as_u64().unwrap() > 0, "{r}");
    env.ok(&["verify", "--region", "it-1"]);
}
