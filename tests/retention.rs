use geosnap_catalog::clock::format_rfc3339;
use geosnap_engine::imagegen::{Profile, scatter_writes};

use crate::util::Env;

fn at(t: i64) -> String {
    format_rfc3339(t)
}

#[test]
fn a_one_day_snapshot_lives_exactly_24_hours_after_completion() {
    let env = Env::new();
    let img = env.image("a.img", 8 << 20, Profile::Random, 1);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    let s = env.json(&[
        "snapshot",
        "take",
        "vm",
        "--name",
        "daily",
        "--retention-days",
        "1",
    ]);
    let completed = s["completed_at"].as_i64().unwrap();
    assert_eq!(s["expires_at"].as_i64().unwrap(), completed + 86_400);
    let forever = env.json(&[
        "snapshot",
        "take",
        "vm",
        "--name",
        "keep",
        "--retention-days",
        "0",
    ]);
    assert!(forever["expires_at"].is_null());

    // +23:59:59: kept.
    let r = env.json(&["prune", "--now", &at(completed + 86_399)]);
    assert_eq!(r["pruned"], serde_json::json!([]));
    assert_eq!(env.json(&["snapshot", "list"]).as_array().unwrap().len(), 2);

    // Dry run at +24:00:00 names it and deletes nothing.
    let r = env.json(&["prune", "--now", &at(completed + 86_400), "--dry-run"]);
    assert_eq!(r["pruned"][0]["snapshot"], "vm/daily");
    assert_eq!(env.json(&["snapshot", "list"]).as_array().unwrap().len(), 2);

    // +24:00:00: gone from the catalog and from every region.
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(env.stored_files(&format!("snapshots/{id}")).len(), 3);
    let r = env.json(&["prune", "--now", &at(completed + 86_400)]);
    assert_eq!(r["pruned"][0]["id"], id.as_str());
    let left = env.json(&["snapshot", "list"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["name"], "keep");
    assert!(env.stored_files(&format!("snapshots/{id}")).is_empty());
    // The forever snapshot is never pruned.
    let r = env.json(&["prune", "--now", &at(completed + 100 * 365 * 86_400)]);
    assert_eq!(r["pruned"], serde_json::json!([]));
}

#[test]
fn gc_after_prune_frees_exactly_the_chunks_only_the_expired_snapshot_used() {
    let env = Env::new();
    let img = env.image("a.img", 16 << 20, Profile::Random, 4);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    let indexed = |env: &Env| -> Vec<u64> {
        // A dry run reports how many chunks each store indexes, changing nothing.
        env.json(&["gc", "--dry-run"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| !s["store"].as_str().unwrap().contains("volume"))
            .map(|s| s["chunks"].as_u64().unwrap())
            .collect()
    };
    let old = env.json(&[
        "snapshot",
        "take",
        "vm",
        "--name",
        "old",
        "--retention-days",
        "1",
    ]);
    let chunks_old = indexed(&env);
    assert!(
        chunks_old.iter().all(|&n| n == chunks_old[0] && n > 0),
        "{chunks_old:?}"
    );
    let blocks = scatter_writes(&img, 0.01, 9).unwrap();
    env.ok(&["snapshot", "take", "vm", "--name", "new"]);
    let chunks_both = indexed(&env);
    let changed = chunks_both[0] - chunks_old[0];
    // Random data: every rewritten block changes its own chunk, and no chunk repeats.
    assert!(
        changed > 0 && changed <= blocks,
        "{changed} for {blocks} blocks"
    );

    // Nothing is garbage while both live.
    let r = env.json(&["gc"]);
    assert!(
        r.as_array().unwrap().iter().all(|s| s["deleted"] == 0),
        "{r}"
    );

    let completed = old["completed_at"].as_i64().unwrap();
    env.ok(&["prune", "--now", &at(completed + 86_400)]);
    let r = env.json(&["gc"]);
    for store in r.as_array().unwrap() {
        if store["store"].as_str().unwrap().contains("volume") {
            continue;
        }
        // The chunks the old snapshot alone used are exactly those the rewrite replaced.
        assert_eq!(store["deleted"].as_u64().unwrap(), changed, "{r}");
        assert!(store["deleted_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    assert_eq!(indexed(&env), chunks_old);
    // A second gc finds nothing more.
    let r = env.json(&["gc"]);
    assert!(
        r.as_array().unwrap().iter().all(|s| s["deleted"] == 0),
        "{r}"
    );
    // What is left restores the new snapshot byte for byte, from every region alone.
    for region in ["it-1", "de-1", "nl-1"] {
        let out = env.path(&format!("new-{region}.img"));
        env.ok(&[
            "restore",
            "new",
            "--to",
            out.to_str().unwrap(),
            "--region",
            region,
            "--strict-region",
        ]);
        assert!(crate::util::same(&out, &img));
    }
    env.ok(&["verify"]);
}
