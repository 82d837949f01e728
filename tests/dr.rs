use geosnap_engine::imagegen::{Profile, scatter_writes};

use crate::util::{Env, same};

/// The home region and the whole data directory are gone; a fresh geosnap pointed at one
/// surviving region lists and restores every image-backed snapshot.
#[test]
fn a_fresh_geosnap_rebuilds_everything_from_one_surviving_region() {
    let old = Env::new();
    let img = old.image("web.img", 12 << 20, Profile::Mixed, 3);
    old.ok(&[
        "instance",
        "create",
        "web-1",
        "--image",
        img.to_str().unwrap(),
    ]);
    let first_copy = old.path("first.img");
    std::fs::copy(&img, &first_copy).unwrap();
    old.ok(&[
        "snapshot",
        "take",
        "web-1",
        "--name",
        "first",
        "--retention-days",
        "3",
    ]);
    scatter_writes(&img, 0.02, 1).unwrap();
    old.ok(&["snapshot", "take", "web-1", "--name", "second"]);
    let vol = old.image("vol.img", 2 << 20, Profile::Random, 4);
    old.ok(&[
        "instance",
        "create",
        "db",
        "--image",
        vol.to_str().unwrap(),
        "--volume-backed",
    ]);
    old.ok(&["snapshot", "take", "db", "--name", "local"]);
    // A deleted snapshot must not come back.
    old.ok(&["snapshot", "take", "web-1", "--name", "gone"]);
    old.ok(&["snapshot", "delete", "web-1/gone"]);
    let before = old.json(&["snapshot", "list", "--instance", "web-1"]);

    // Disaster: the data dir (catalog, config) and the home region it-1 are lost.
    let survivor = old.tmp.path().join("survivor-de-1");
    std::fs::rename(old.data.join("regions/de-1"), &survivor).unwrap();
    std::fs::remove_dir_all(&old.data).unwrap();

    let new = Env::new();
    let cfg = format!(
        "quorum = 1\nchunker = \"fixed:256K\"\nzstd_level = 1\n\n[[region]]\nname = \"de-1\"\ncountry = \"Germany\"\nurl = \"file://{}\"\nvolume_url = \"file://{}\"\n",
        survivor.display(),
        new.path("de-1-volume").display()
    );
    std::fs::write(new.data.join("config.toml"), cfg).unwrap();
    assert_eq!(new.json(&["snapshot", "list"]), serde_json::json!([]));
    let r = new.json(&["catalog", "rebuild", "--from", "de-1"]);
    assert_eq!(r["snapshots"].as_array().unwrap().len(), 2, "{r}");

    let after = new.json(&["snapshot", "list"]);
    assert_eq!(after.as_array().unwrap().len(), 2, "{after}");
    for (a, b) in before
        .as_array()
        .unwrap()
        .iter()
        .zip(after.as_array().unwrap())
    {
        for field in [
            "id",
            "instance",
            "name",
            "backing",
            "home_region",
            "created_at",
            "completed_at",
            "expires_at",
            "retention_days",
            "image_size",
            "data_bytes",
            "chunk_count",
        ] {
            assert_eq!(a[field], b[field], "{field}");
        }
        assert_eq!(b["state"], "available");
    }
    let out = new.path("first.img");
    new.ok(&[
        "restore",
        "web-1/first",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "de-1",
        "--strict-region",
    ]);
    assert!(same(&out, &first_copy));
    // Without --region, a restore reads from a configured region that holds the snapshot
    // (the home it-1 is gone from this config).
    let out = new.path("second.img");
    new.ok(&["restore", "second", "--to", out.to_str().unwrap()]);
    assert!(same(&out, &img));
    // Rebuilding again changes nothing.
    new.ok(&["catalog", "rebuild", "--from", "de-1"]);
    let again = new.json(&["snapshot", "list"]);
    let fields = |v: &serde_json::Value| -> Vec<(String, String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].to_string(),
                    s["name"].to_string(),
                    s["state"].to_string(),
                )
            })
            .collect()
    };
    assert_eq!(fields(&again), fields(&after));
    // The manifests hold no image path: a new snapshot of a rebuilt instance says so.
    let err = new.error(&["snapshot", "take", "web-1", "--name", "third"]);
    assert!(err.contains("no image path"), "{err}");
    // And the rebuilt catalog is a working one: verify finds the region whole.
    new.ok(&["verify"]);
}
