use std::process::Stdio;
use std::time::{Duration, Instant};

use geosnap_engine::imagegen::Profile;

use crate::util::{Env, same};

#[test]
fn no_wait_queues_and_worker_once_drains() {
    let env = Env::new();
    let img = env.image("a.img", 4 << 20, Profile::Mixed, 1);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    let q = env.json(&["snapshot", "take", "vm", "--name", "later", "--no-wait"]);
    assert!(q["job"].as_i64().unwrap() > 0);
    let s = env.snapshot("later");
    assert_eq!(s["state"], "queued");
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["state"], "queued");
    assert_eq!(jobs[0]["kind"], "snapshot");

    let w = env.json(&["worker", "--once"]);
    assert_eq!(w["jobs"][0]["state"], "done");
    assert_eq!(env.snapshot("later")["state"], "available");
    assert_eq!(env.json(&["jobs"])[0]["state"], "done");
    // Nothing left: a second drain does nothing.
    assert_eq!(
        env.json(&["worker", "--once"])["jobs"],
        serde_json::json!([])
    );
}

#[test]
fn a_worker_killed_mid_job_is_taken_over_without_a_duplicate() {
    let env = Env::new();
    // Take over stale jobs after 2 s instead of 30.
    let cfg = env.data.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("stale_after_secs = 30", "stale_after_secs = 2"),
    )
    .unwrap();
    let img = env.image("a.img", 64 << 20, Profile::Random, 5);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    // A slow region keeps the job running long enough to be killed in the middle.
    env.ok(&["region", "fail", "nl-1", "--mode", "slow:0,8M"]);
    env.ok(&["snapshot", "take", "vm", "--name", "s", "--no-wait"]);

    let mut child = env
        .cmd(&["worker", "--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let jobs = env.json(&["jobs"]);
        if jobs[0]["state"] == "running" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "job never ran: {jobs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(env.json(&["jobs"])[0]["state"], "running");
    assert_eq!(env.snapshot("s")["state"], "running");

    env.ok(&["region", "heal", "nl-1"]);
    // Not stale yet: a worker right now leaves it alone... after 2 s it takes over.
    std::thread::sleep(Duration::from_millis(2500));
    let w = env.json(&["worker", "--once"]);
    assert_eq!(w["jobs"][0]["id"], 1);
    assert_eq!(w["jobs"][0]["state"], "done");
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["attempts"], 2);
    let list = env.json(&["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["state"], "available");
    for region in ["it-1", "de-1", "nl-1"] {
        let out = env.path(&format!("{region}.img"));
        env.ok(&[
            "restore",
            "s",
            "--to",
            out.to_str().unwrap(),
            "--region",
            region,
            "--strict-region",
        ]);
        assert!(same(&out, &img), "{region}");
    }
    // One manifest per region, no leftover in-flight markers.
    assert_eq!(env.stored_files("/manifest").len(), 3);
    assert!(env.stored_files("inflight/").is_empty());
}
