use std::process::Command;

#[test]
fn the_demo_tells_the_whole_story_with_consistent_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_geosnap"))
        .args(["demo", "--json", "--size", "64M", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["data_dir"], dir.to_str().unwrap());
    let names: Vec<&str> = r["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["it-1", "de-1", "nl-1"]);
    assert!(
        r["regions"][1]["simulated"]
            .as_str()
            .unwrap()
            .starts_with("slow:")
    );

    let first = &r["first"];
    assert_eq!(first["state"], "available");
    assert_eq!(first["replicas"].as_array().unwrap().len(), 3);
    let logical = first["logical_bytes"].as_u64().unwrap();
    let stored = first["stored_bytes"].as_u64().unwrap();
    assert_eq!(logical, 64 << 20);
    assert!(stored > 0 && stored <= logical, "{first}");
    assert!(first["data_bytes"].as_u64().unwrap() <= logical);
    // Dedup and compression are reported apart, and multiply to the whole reduction.
    let (dedup, zstd, whole) = (
        first["dedup"].as_f64().unwrap(),
        first["compression"].as_f64().unwrap(),
        first["reduction"].as_f64().unwrap(),
    );
    assert!(dedup >= 1.0 && zstd > 0.0, "{first}");
    assert!((dedup * zstd - whole).abs() < 1e-6 * whole, "{first}");
    let distinct = first["distinct_bytes"].as_u64().unwrap();
    assert!(distinct > 0 && distinct <= first["data_bytes"].as_u64().unwrap());
    let second = r["second"]["stored_bytes"].as_u64().unwrap();
    assert!(second * 10 < stored, "second uploads {second} of {stored}");

    assert_eq!(r["restore"]["region"], "nl-1");
    assert_eq!(r["restore"]["identical"], true);
    assert_ne!(r["restore"]["fsck_ok"], false);
    assert_eq!(r["repair"]["identical"], true);
    // The damaged frame's chunks (at least the one hit) came from another region.
    assert!(r["repair"]["repaired_chunks"].as_u64().unwrap() >= 1);

    assert_eq!(
        r["residency"]["stores_holding"],
        serde_json::json!(["de-1 volume store"])
    );
    assert!(
        r["residency"]["refusal"]
            .as_str()
            .unwrap()
            .contains("data residency")
    );
    assert_eq!(r["retention"]["kept_at_23_59_59"], true);
    assert_eq!(r["retention"]["pruned_at_24_00_00"], true);

    // The data dir it names is a working geosnap directory.
    let list = Command::new(env!("CARGO_BIN_EXE_geosnap"))
        .args(["--json", "snapshot", "list", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(list.status.success());
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
}
