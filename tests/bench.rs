use crate::util::Env;

#[test]
fn bench_reports_every_stage_the_ceiling_and_both_pipelines() {
    let env = Env::bare();
    let r = env.json(&[
        "bench",
        "--size",
        "32M",
        "--profile",
        "mixed",
        "--compare-chunkers",
    ]);
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in [
        "read",
        "zero detection",
        "chunking",
        "SHA-256",
        "zstd level 1",
        "decode + verify",
    ] {
        assert!(stages.contains(&want), "{want} missing from {stages:?}");
    }
    for s in r["stages"].as_array().unwrap() {
        assert!(s["mb_per_s"].as_f64().unwrap() > 0.0, "{s}");
    }
    // Hashing and compression are rated per byte of chunk data, not per byte of the sample:
    // the mixed image's zero runs inside its data windows are cut out before them.
    let bytes = |name: &str| {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["bytes"].as_u64().unwrap())
            .unwrap()
    };
    assert!(bytes("SHA-256") < bytes("zero detection"));
    assert_eq!(bytes("SHA-256"), bytes("zstd level 1"));
    assert_eq!(r["image"]["size"], 32 << 20);
    assert_eq!(r["image"]["generated"], true);
    let data = r["image"]["data_bytes"].as_u64().unwrap();
    assert!(data > 0 && data < 32 << 20);
    assert!(r["ceiling_mb_per_s"].as_f64().unwrap() > 0.0);
    // The ceiling counts the cores' work together, never more than all of them.
    let cores = r["cores"].as_u64().unwrap() as f64;
    let parallel = r["parallel_cores"].as_f64().unwrap();
    assert!((1.0..=cores).contains(&parallel), "{parallel} of {cores}");
    let frac = r["snapshot"]["of_ceiling"].as_f64().unwrap();
    assert!(frac > 0.0 && frac < 2.0, "{frac}");
    assert!(r["restore"]["seconds"].as_f64().unwrap() > 0.0);
    let chunkers = r["chunkers"].as_array().unwrap();
    assert!(chunkers.len() >= 5);
    for c in chunkers {
        let chunks = c["chunks"].as_u64().unwrap();
        let in_hist: u64 = c["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[1].as_u64().unwrap())
            .sum();
        assert_eq!(chunks, in_hist, "{c}");
        assert!(c["unique"].as_u64().unwrap() <= chunks);
        assert!(c["dedup_ratio"].as_f64().unwrap() >= 1.0);
    }
}

#[test]
fn bench_of_an_image_of_zeros_stores_nothing_and_still_reports() {
    let env = Env::bare();
    let r = env.json(&["bench", "--size", "16M", "--profile", "zeros"]);
    assert_eq!(r["image"]["data_bytes"], 0);
    let ceiling = r["ceiling_mb_per_s"].as_f64().unwrap();
    assert!(ceiling.is_finite() && ceiling > 0.0, "{ceiling}");
    assert!(r["snapshot"]["seconds"].as_f64().unwrap() > 0.0);
    assert!(r["restore"]["seconds"].as_f64().unwrap() > 0.0);
}
