use geosnap_engine::imagegen::{Profile, scatter_writes};

use crate::util::{Env, allocated, same};

#[test]
fn the_life_of_an_instance() {
    let env = Env::new();
    let img = env.image("web.img", 48 << 20, Profile::Sparse, 1);
    let created = env.json(&[
        "instance",
        "create",
        "web-1",
        "--image",
        img.to_str().unwrap(),
    ]);
    assert_eq!(created["home_region"], "it-1");
    assert_eq!(created["backing"], "image");

    let first = env.json(&["snapshot", "take", "web-1", "--name", "first"]);
    assert_eq!(first["state"], "available");
    assert_eq!(first["replicas"].as_array().unwrap().len(), 3);
    let first_stored = first["stored_bytes"].as_u64().unwrap();
    assert!(first_stored > 0 && first_stored < 48 << 20);

    // A second snapshot after scattered writes stores a fraction of the first.
    let copy = env.path("first-copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let blocks = scatter_writes(&img, 0.01, 2).unwrap();
    let second = env.json(&["snapshot", "take", "web-1", "--name", "second"]);
    let second_stored = second["stored_bytes"].as_u64().unwrap();
    assert!(second_stored > 0);
    assert!(
        second_stored <= blocks * (256 << 10),
        "{second_stored} for {blocks} blocks"
    );

    let list = env.json(&["snapshot", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "second"]);
    for s in list.as_array().unwrap() {
        assert_eq!(s["instance"], "web-1");
        assert_eq!(s["state"], "available");
        assert_eq!(s["image_size"], 48 << 20);
        assert!(s["completed_at"].as_i64().unwrap() >= s["created_at"].as_i64().unwrap());
        assert!(s["expires_at"].is_null());
        for r in s["replicas"].as_array().unwrap() {
            assert_eq!(r["state"], "written");
        }
    }

    for region in ["it-1", "de-1", "nl-1"] {
        let out = env.path(&format!("first-{region}.img"));
        let r = env.json(&[
            "restore",
            "web-1/first",
            "--to",
            out.to_str().unwrap(),
            "--region",
            region,
            "--strict-region",
        ]);
        assert_eq!(r["region"], region);
        assert!(same(&out, &copy), "first from {region} differs");
        assert!(allocated(&out) <= allocated(&copy) + (1 << 20));
        let out = env.path(&format!("second-{region}.img"));
        env.ok(&[
            "restore",
            "second",
            "--to",
            out.to_str().unwrap(),
            "--region",
            region,
        ]);
        assert!(same(&out, &img), "second from {region} differs");
    }

    // Deleting an instance with snapshots needs --with-snapshots.
    let err = env.error(&["instance", "delete", "web-1"]);
    assert!(err.contains("still has 2 snapshot(s)"), "{err}");
    env.ok(&["instance", "delete", "web-1", "--with-snapshots"]);
    assert_eq!(env.json(&["instance", "list"]), serde_json::json!([]));
    assert!(env.stored_files("/snapshots/").is_empty());
}

#[test]
fn human_output_names_what_matters() {
    let env = Env::new();
    let img = env.image("a.img", 4 << 20, Profile::Mixed, 3);
    env.ok(&["instance", "create", "db", "--image", img.to_str().unwrap()]);
    let out = env.ok(&[
        "snapshot",
        "take",
        "db",
        "--name",
        "n1",
        "--retention-days",
        "1",
    ]);
    assert!(out.contains("db/n1") && out.contains("available"), "{out}");
    assert!(out.contains("it-1:written"), "{out}");
    let list = env.ok(&["snapshot", "list"]);
    assert!(list.starts_with("ID"), "{list}");
    assert!(list.contains("n1") && list.contains("available"), "{list}");
    let regions = env.ok(&["region", "list"]);
    assert!(
        regions.contains("Italy") && regions.contains("healthy"),
        "{regions}"
    );
    // --quiet prints nothing on success.
    assert_eq!(env.ok(&["--quiet", "snapshot", "list"]), "");
}

/// An image file whose identity, size and times have not changed since its last snapshot
/// is not scanned again: the new snapshot reuses that manifest (after sampling chunks).
/// Content written with its mtime put back still changes the ctime, and a file written in
/// the last two seconds is never trusted, so neither is ever reused.
#[test]
fn unchanged_images_reuse_the_last_manifest_and_changed_ones_are_scanned() {
    let env = Env::new();
    let img = env.image("vm.img", 16 << 20, Profile::Mixed, 4);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    let settle = || std::thread::sleep(std::time::Duration::from_millis(2100));
    settle();
    let take = |name: &str| env.json(&["snapshot", "take", "vm", "--name", name]);
    let s1 = take("s1");
    assert!(s1["reused_from"].is_null(), "{s1}");
    let s2 = take("s2");
    assert_eq!(s2["reused_from"], s1["id"], "{s2}");
    assert_eq!(s2["stored_bytes"], 0);
    assert_eq!(s2["chunk_count"], s1["chunk_count"]);
    let original = env.path("original.img");
    std::fs::copy(&img, &original).unwrap();

    // Rewrite a block and put the mtime back, as a careless tool might.
    let mtime = std::fs::metadata(&img).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0xAB; 4096], 5 << 20).unwrap();
        f.set_modified(mtime).unwrap();
    }
    // Taken at once after the write: not trusted, scanned, and not offered for reuse.
    let s3 = take("s3");
    assert!(s3["reused_from"].is_null(), "{s3}");
    assert!(s3["stored_bytes"].as_u64().unwrap() > 0);
    let s4 = take("s4");
    assert!(s4["reused_from"].is_null(), "{s4}");
    settle();
    let s5 = take("s5");
    assert!(s5["reused_from"].is_null(), "{s5}");
    let s6 = take("s6");
    assert_eq!(s6["reused_from"], s5["id"], "{s6}");

    for (snap, want) in [("vm/s2", &original), ("vm/s3", &img), ("vm/s6", &img)] {
        let out = env.path(&format!("{}.out", snap.replace('/', "-")));
        env.ok(&["restore", snap, "--to", out.to_str().unwrap()]);
        assert!(same(&out, want), "{snap} differs");
    }
    let human = env.ok(&["snapshot", "take", "vm", "--name", "s7"]);
    assert!(human.contains("image unchanged since snapshot"), "{human}");

    // While any process holds the file open for writing (a running VM), it is scanned:
    // writes through a shared mapping or still in flight need not change its times yet.
    let writer = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    let s8 = take("s8");
    assert!(s8["reused_from"].is_null(), "{s8}");
    drop(writer);
    let s9 = take("s9");
    assert!(!s9["reused_from"].is_null(), "{s9}");
}
