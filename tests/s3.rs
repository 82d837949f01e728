//! Regions on S3 buckets of the loopback OpenStack Swift that `.ci/run` starts
//! (`scripts/swift-aio.sh`): the whole journey on three Swift-backed regions, and one clear
//! error in bounded time for a wrong secret, an unreachable endpoint and a missing bucket.
//! Without `GEOSNAP_S3_ENDPOINT` each test prints that it was skipped and passes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use geosnap_engine::imagegen::Profile;
use geosnap_ops::config::Config;
use geosnap_replication::s3::S3Config;

use crate::util::{Env, same};

/// How long a bad endpoint may take to be reported.
const ERROR_BUDGET: Duration = Duration::from_secs(15);

/// The S3 endpoint and credentials from `GEOSNAP_S3_*` (`scripts/swift-aio.sh env DIR`).
struct Swift {
    /// Region options for the endpoint, secret inline.
    options: BTreeMap<String, String>,
    /// Buckets this test created, emptied and deleted on drop.
    buckets: Vec<S3Config>,
}

fn swift(test: &str) -> Option<Swift> {
    let Some(options) = geosnap_replication::s3::options_from_env() else {
        println!(
            "{test}: skipped, GEOSNAP_S3_ENDPOINT is not set \
             (eval \"$(scripts/swift-aio.sh env DIR)\" after scripts/swift-aio.sh start DIR)"
        );
        return None;
    };
    Some(Swift {
        options,
        buckets: Vec::new(),
    })
}

/// A suffix no other test or run uses: tests run in parallel threads and a developer's
/// Swift outlives test runs.
fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl Swift {
    /// Region options for this endpoint, with the secret inline.
    fn options(&self) -> BTreeMap<String, String> {
        self.options.clone()
    }

    /// Creates bucket `name` (deleted again when `self` drops).
    fn create(&mut self, name: &str) {
        let s3 = S3Config::parse("test", &format!("s3://{name}"), &self.options()).unwrap();
        block_on(s3.create_bucket()).unwrap();
        self.buckets.push(s3);
    }
}

impl Drop for Swift {
    fn drop(&mut self) {
        for b in &self.buckets {
            if let Err(e) = block_on(b.destroy_bucket()) {
                eprintln!("cannot remove test bucket {}: {e}", b.bucket);
            }
        }
    }
}

/// Points region `name` of `env`'s configuration at `url` and `volume_url` with `options`.
fn set_region(
    env: &Env,
    name: &str,
    url: &str,
    volume_url: &str,
    options: BTreeMap<String, String>,
) {
    let mut config = Config::load(&env.data).unwrap();
    let r = config.regions.iter_mut().find(|r| r.name == name).unwrap();
    r.url = url.to_string();
    r.volume_url = volume_url.to_string();
    r.options = options;
    config.save(&env.data).unwrap();
}

fn restore_same(env: &Env, snap: &str, region: &str, img: &std::path::Path) {
    let out = env.path(&format!("{}-{region}.img", snap.replace('/', "-")));
    env.ok(&[
        "restore",
        snap,
        "--to",
        out.to_str().unwrap(),
        "--region",
        region,
        "--strict-region",
    ]);
    assert!(same(&out, img), "{snap} from {region} differs");
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn the_journey_on_three_swift_backed_regions() {
    let Some(mut swift) = swift("the_journey_on_three_swift_backed_regions") else {
        return;
    };
    let env = Env::new();
    let run = unique();
    for region in ["it-1", "de-1", "nl-1"] {
        let (main, volume) = (
            format!("geosnap-{region}-{run}"),
            format!("geosnap-vol-{region}-{run}"),
        );
        swift.create(&main);
        swift.create(&volume);
        let mut options = swift.options();
        if region == "de-1" {
            // The secret may come from the environment instead of the file.
            options.remove("secret_access_key");
            options.insert(
                "secret_access_key_env".into(),
                "GEOSNAP_S3_SECRET_ACCESS_KEY".into(),
            );
        }
        set_region(
            &env,
            region,
            &format!("s3://{main}"),
            &format!("s3://{volume}"),
            options,
        );
    }

    // Every manifest goes through a temporary file and a multipart upload, as a large
    // image's would (the in-memory path is a plain put, like a pack's).
    let mut config = Config::load(&env.data).unwrap();
    config.manifest_memory = Some("0".into());
    config.save(&env.data).unwrap();

    let img = env.image("vm.img", 12 << 20, Profile::Mixed, 8);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    let first = env.json(&["snapshot", "take", "vm", "--name", "first"]);
    assert_eq!(first["state"], "available");
    for r in first["replicas"].as_array().unwrap() {
        assert_eq!(r["state"], "written", "{r}");
    }
    let list = env.json(&["snapshot", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "first");
    for region in env.json(&["region", "list"]).as_array().unwrap() {
        assert!(region["url"].as_str().unwrap().starts_with("s3://geosnap-"));
        assert!(region["objects"].as_u64().unwrap() > 2, "{region}");
        assert!(region["error"].is_null(), "{region}");
    }
    let first_copy = env.path("first.img");
    std::fs::copy(&img, &first_copy).unwrap();
    for region in ["it-1", "de-1", "nl-1"] {
        restore_same(&env, "vm/first", region, &img);
    }

    // de-1 down (the simulator wraps its S3 store): the next snapshot is degraded.
    env.image("vm.img", 12 << 20, Profile::Mixed, 9);
    env.ok(&["region", "fail", "de-1", "--mode", "down"]);
    let second = env.json(&["snapshot", "take", "vm", "--name", "second"]);
    assert_eq!(second["state"], "degraded");
    let err = env.error(&[
        "restore",
        "vm/second",
        "--to",
        env.path("x.img").to_str().unwrap(),
        "--region",
        "de-1",
    ]);
    assert!(err.contains("de-1") && err.contains("unavailable"), "{err}");

    // Healed, the worker brings de-1 up to date.
    let healed = env.json(&["region", "heal", "de-1"]);
    assert_eq!(healed["replication_jobs_queued"], 1);
    env.ok(&["worker", "--once"]);
    assert_eq!(env.snapshot("vm/second")["state"], "available");
    restore_same(&env, "vm/second", "de-1", &img);

    // A volume-backed instance keeps its snapshots in its home region's volume bucket.
    let vol_img = env.image("vol.img", 4 << 20, Profile::Text, 3);
    env.ok(&[
        "instance",
        "create",
        "db",
        "--image",
        vol_img.to_str().unwrap(),
        "--region",
        "nl-1",
        "--volume-backed",
    ]);
    assert_eq!(
        env.json(&["snapshot", "take", "db", "--name", "v"])["state"],
        "available"
    );
    restore_same(&env, "db/v", "nl-1", &vol_img);

    // Deleting the first snapshot and collecting frees its chunks; the rest still restores.
    env.ok(&["snapshot", "delete", "vm/first"]);
    let gc = env.json(&["gc"]);
    let deleted: u64 = gc
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["error"].is_null(), "{r}");
            r["deleted"].as_u64().unwrap()
        })
        .sum();
    assert!(deleted > 0, "{gc}");
    env.ok(&["verify"]);
    for region in ["it-1", "de-1", "nl-1"] {
        restore_same(&env, "vm/second", region, &img);
    }
}

/// An environment whose de-1 main store is `url` with `options` (the rest stays local),
/// holding one image-backed instance `vm`.
fn with_bad_de1(url: &str, options: BTreeMap<String, String>) -> Env {
    let env = Env::new();
    let volume = format!("file://{}", env.data.join("volumes/de-1").display());
    set_region(&env, "de-1", url, &volume, options);
    let img = env.image("vm.img", 2 << 20, Profile::Mixed, 1);
    env.ok(&["instance", "create", "vm", "--image", img.to_str().unwrap()]);
    env
}

/// Region options for a server of the test's own at `endpoint`, with made-up credentials.
fn loopback_options(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("endpoint", endpoint),
        ("access_key_id", "test:tester"),
        ("secret_access_key", "testing"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `geosnap args` expecting one-line failure within the budget; returns stderr.
fn fails_soon(env: &Env, args: &[&str]) -> String {
    let start = Instant::now();
    let err = env.error(args);
    let took = start.elapsed();
    assert!(took < ERROR_BUDGET, "geosnap {args:?} took {took:?}: {err}");
    err
}

#[test]
fn a_wrong_secret_is_access_denied_naming_the_region() {
    let Some(mut swift) = swift("a_wrong_secret_is_access_denied_naming_the_region") else {
        return;
    };
    let bucket = format!("geosnap-de-1-{}", unique());
    swift.create(&bucket);
    let mut options = swift.options();
    options.insert("secret_access_key".into(), "not-the-secret".into());
    let env = with_bad_de1(&format!("s3://{bucket}"), options);
    let err = fails_soon(&env, &["verify", "--region", "de-1"]);
    assert!(
        err.contains("region de-1") && err.contains("access denied"),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"), "secret leaked: {err}");
    // A snapshot still lands in the two good regions.
    assert_eq!(
        env.json(&["snapshot", "take", "vm", "--name", "s"])["state"],
        "degraded"
    );
}

#[test]
fn an_unreachable_endpoint_fails_in_seconds_naming_endpoint_and_bucket() {
    // No server needed: nothing listens on port 1.
    let env = with_bad_de1("s3://geosnap-de-1", loopback_options("http://127.0.0.1:1"));
    let err = fails_soon(&env, &["verify", "--region", "de-1"]);
    assert!(
        err.contains("region de-1 (http://127.0.0.1:1, bucket geosnap-de-1)")
            && err.contains("unreachable"),
        "{err}"
    );
    let start = Instant::now();
    let s = env.json(&["snapshot", "take", "vm", "--name", "s"]);
    assert_eq!(s["state"], "degraded");
    assert!(start.elapsed() < ERROR_BUDGET, "{:?}", start.elapsed());
}

#[test]
fn a_missing_bucket_is_said_plainly() {
    let Some(swift) = swift("a_missing_bucket_is_said_plainly") else {
        return;
    };
    let bucket = format!("geosnap-nope-{}", unique());
    let env = with_bad_de1(&format!("s3://{bucket}"), swift.options());
    let err = fails_soon(&env, &["verify", "--region", "de-1"]);
    assert!(
        err.contains(&format!("bucket {bucket} does not exist in region de-1")),
        "{err}"
    );
}

#[test]
fn missing_credentials_are_refused_at_start_up() {
    // No server needed: the configuration is checked before any request.
    let env = Env::new();
    let mut options = BTreeMap::new();
    options.insert("endpoint".to_string(), "http://127.0.0.1:1".to_string());
    let volume = format!("file://{}", env.data.join("volumes/de-1").display());
    set_region(&env, "de-1", "s3://geosnap-de-1", &volume, options);
    let err = env.error(&["snapshot", "list"]);
    assert!(
        err.contains(
            "region de-1: no credentials configured; set access_key_id and \
             secret_access_key (or secret_access_key_env)"
        ),
        "{err}"
    );
}

/// A server on a loopback port that answers every request with HTTP 507 "Insufficient
/// Storage" (as a full Swift or MinIO does), after reading it whole; counts requests.
fn full_server() -> (String, std::sync::Arc<AtomicU32>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(AtomicU32::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    // The request line and headers, up to the blank line.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let answer = "HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 0\r\n\r\n";
                    if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests)
}

#[test]
fn a_full_s3_region_is_said_to_be_full_and_not_retried() {
    // No Swift needed: the server is this test's own.
    let (endpoint, requests) = full_server();
    let env = with_bad_de1("s3://geosnap-de-1", loopback_options(&endpoint));
    let start = Instant::now();
    let run = env.run(&["snapshot", "take", "vm", "--name", "s"]);
    assert!(start.elapsed() < ERROR_BUDGET, "{:?}", start.elapsed());
    assert!(run.status.success());
    let out =
        String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    assert!(
        out.contains("de-1:failed it-1:written nl-1:written"),
        "{out}"
    );
    let said = format!(
        "region de-1 ({endpoint}, bucket geosnap-de-1) has no space left \
         (the server answered HTTP 507 Insufficient Storage)"
    );
    assert!(out.contains(&said), "{out}");
    // Each call is asked once more by object_store's own client (max_retries 1) and not
    // again by geosnap: 6 requests here, where retrying it as transient made 36.
    let asked = requests.load(Ordering::SeqCst);
    assert!((1..=8).contains(&asked), "{asked} requests");
}
