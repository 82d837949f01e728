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
    assert_eq!(r["image"]["size"], 32 << 20);
    assert_eq!(r["image"]["generated"], true);
    let data = r["image"]["data_bytes"].as_u64().unwrap();
    assert!(data > 0 && data < 32 << 20);
    assert!(r["ceiling_mb_per_s"].as_f64().unwrap() > 0.0);
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
