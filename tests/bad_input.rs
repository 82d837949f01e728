use geosnap_engine::imagegen::Profile;

use crate::util::Env;

fn with_instance() -> (Env, String) {
    let env = Env::new();
    let img = env.image("a.img", 1 << 20, Profile::Random, 1);
    let img = img.to_str().unwrap().to_string();
    env.ok(&["instance", "create", "vm", "--image", &img]);
    (env, img)
}

#[test]
fn uninitialised_and_newer_data_dirs_are_refused() {
    let env = Env::bare();
    let err = env.error(&["snapshot", "list"]);
    assert!(err.contains("geosnap init"), "{err}");
    assert!(!env.data.join("catalog.db").exists());

    let env = Env::new();
    env.error(&["init"])
        .contains("already initialised")
        .then_some(())
        .unwrap();
    let db = env.data.join("catalog.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let err = env.error(&["instance", "list"]);
    assert!(err.contains("newer"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn unknown_things_are_named() {
    let (env, img) = with_instance();
    let err = env.error(&["snapshot", "take", "nosuch", "--name", "x"]);
    assert!(err.contains("instance 'nosuch' not found"), "{err}");
    let err = env.error(&[
        "instance", "create", "b", "--image", &img, "--region", "xx-9",
    ]);
    assert!(
        err.contains("unknown region 'xx-9'") && err.contains("it-1"),
        "{err}"
    );
    let err = env.error(&["restore", "nosuch", "--to", "/tmp/x"]);
    assert!(err.contains("snapshot 'nosuch' not found"), "{err}");
    let err = env.error(&["region", "fail", "xx-9", "--mode", "down"]);
    assert!(err.contains("unknown region"), "{err}");
    let err = env.error(&["region", "fail", "de-1", "--mode", "sideways"]);
    assert!(err.contains("not a fault mode"), "{err}");
    env.ok(&["snapshot", "take", "vm", "--name", "s"]);
    let out = env.path("out.img");
    let err = env.error(&[
        "restore",
        "vm/s",
        "--to",
        out.to_str().unwrap(),
        "--region",
        "mars-1",
    ]);
    assert!(
        err.contains("unknown region 'mars-1'") && err.contains("nl-1"),
        "{err}"
    );
    assert!(!out.exists());
    let err = env.error(&["instance", "delete", "vm"]);
    assert!(err.contains("--with-snapshots"), "{err}");
}

#[test]
fn ambiguous_snapshot_names_list_the_candidates() {
    let (env, img) = with_instance();
    env.ok(&["instance", "create", "vm2", "--image", &img]);
    env.ok(&["snapshot", "take", "vm", "--name", "nightly"]);
    env.ok(&["snapshot", "take", "vm2", "--name", "nightly"]);
    let err = env.error(&["snapshot", "show", "nightly"]);
    assert!(
        err.contains("ambiguous") && err.contains("vm/nightly") && err.contains("vm2/nightly"),
        "{err}"
    );
    env.ok(&["snapshot", "show", "vm2/nightly"]);
    let err = env.error(&["snapshot", "take", "vm", "--name", "nightly"]);
    assert!(
        err.contains("already has a snapshot named 'nightly'"),
        "{err}"
    );
}

#[test]
fn bad_images_are_refused_before_anything_changes() {
    let env = Env::new();
    let missing = env.path("missing.img");
    let err = env.error(&[
        "instance",
        "create",
        "a",
        "--image",
        missing.to_str().unwrap(),
    ]);
    assert!(
        err.contains("cannot read image") && err.contains("No such file"),
        "{err}"
    );
    let err = env.error(&[
        "instance",
        "create",
        "a",
        "--image",
        env.tmp.path().to_str().unwrap(),
    ]);
    assert!(err.contains("is a directory"), "{err}");
    assert_eq!(env.json(&["instance", "list"]), serde_json::json!([]));

    // An image that disappears after registration fails at snapshot time, changing nothing.
    let img = env.image("gone.img", 1 << 20, Profile::Random, 1);
    env.ok(&["instance", "create", "a", "--image", img.to_str().unwrap()]);
    std::fs::remove_file(&img).unwrap();
    let err = env.error(&["snapshot", "take", "a", "--name", "s"]);
    assert!(err.contains("cannot read image"), "{err}");
    assert_eq!(env.json(&["snapshot", "list"]), serde_json::json!([]));
    assert_eq!(env.json(&["jobs"]), serde_json::json!([]));
}

#[test]
fn retention_must_be_a_sane_whole_number_of_days() {
    let (env, _) = with_instance();
    for (input, says) in [
        ("-1", "negative"),
        ("1.5", "whole number"),
        ("abc", "retention"),
        ("99999999999", "100 years"),
        ("36501", "100 years"),
        ("", "retention"),
    ] {
        let err = env.error(&[
            "snapshot",
            "take",
            "vm",
            "--name",
            "s",
            "--retention-days",
            input,
        ]);
        assert!(err.contains(says), "{input}: {err}");
    }
    assert_eq!(env.json(&["snapshot", "list"]), serde_json::json!([]));
}

#[test]
fn hostile_names_are_refused() {
    let (env, img) = with_instance();
    let long = "x".repeat(256);
    for name in [
        "",
        "../etc",
        "a/b",
        "..",
        "tab\there",
        "-rf",
        &long,
        " lead",
        "bell\u{7}",
    ] {
        let err = env.error(&["instance", "create", "--image", &img, "--", name]);
        assert!(err.contains("invalid instance name"), "{name:?}: {err}");
        let err = env.error(&["snapshot", "take", "vm", &format!("--name={name}")]);
        assert!(err.contains("invalid snapshot name"), "{name:?}: {err}");
    }
    let err = env.error(&["instance", "create", "vm", "--image", &img]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(env.json(&["instance", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(env.json(&["snapshot", "list"]), serde_json::json!([]));
    // Look-alikes are just characters; they never reach a path or an object key.
    env.ok(&["instance", "create", "a\u{2215}b%2e%2e", "--image", &img]);
    env.ok(&[
        "snapshot",
        "take",
        "a\u{2215}b%2e%2e",
        "--name",
        "\u{ff0f}x%2e%2e",
    ]);
    assert!(env.stored_files("%2e").is_empty());
    assert!(!env.tmp.path().join("etc").exists());
}

#[test]
fn restore_targets_are_checked_first() {
    let (env, _) = with_instance();
    env.ok(&["snapshot", "take", "vm", "--name", "s"]);
    let taken = env.path("taken.img");
    std::fs::write(&taken, b"precious").unwrap();
    let err = env.error(&["restore", "s", "--to", taken.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"precious");
    env.ok(&["restore", "s", "--to", taken.to_str().unwrap(), "--force"]);
    assert_ne!(std::fs::read(&taken).unwrap(), b"precious");
    let nowhere = env.path("no/such/dir/x.img");
    let err = env.error(&["restore", "s", "--to", nowhere.to_str().unwrap()]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    env.fails(&["snapshot", "take", "vm"], 2);
    env.fails(&["frobnicate"], 2);
}

#[test]
fn an_unwritable_temporary_directory_fails_the_snapshot_in_one_sentence() {
    // The extents of a snapshot go to a temporary file; where none can be made (a full or
    // missing TMPDIR), the snapshot fails cleanly and a later one works.
    let (env, _) = with_instance();
    let out = env
        .cmd(&["snapshot", "take", "vm", "--name", "s"])
        .env("TMPDIR", env.path("no-such-dir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the manifest's temporary file") && err.contains("no-such-dir"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    env.ok(&["snapshot", "take", "vm", "--name", "s2"]);
    assert_eq!(env.snapshot("vm/s2")["state"], "available");
}

/// With manifests kept in temporary files, a missing TMPDIR fails verify, restore and gc in
/// one sentence naming it, and is never taken for damage in the region: no manifest is
/// reported corrupt or "repaired", and everything works again with a usable TMPDIR.
#[test]
fn a_missing_temporary_directory_is_not_reported_as_a_damaged_manifest() {
    let (env, img) = with_instance();
    let mut config = geosnap_ops::config::Config::load(&env.data).unwrap();
    config.manifest_memory = Some("0".into());
    config.save(&env.data).unwrap();
    env.ok(&["snapshot", "take", "vm", "--name", "s"]);
    let out_img = env.path("out.img");
    let no_tmp = env.path("no-such-dir");
    for args in [
        vec!["verify", "--region", "it-1", "--repair"],
        vec!["restore", "vm/s", "--to", out_img.to_str().unwrap()],
        vec!["gc"],
    ] {
        let out = env.cmd(&args).env("TMPDIR", &no_tmp).output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("cannot write the manifest's temporary file")
                && text.contains("no-such-dir"),
            "{args:?}: {text}"
        );
        assert!(
            !text.contains("panicked") && !text.contains("corrupt"),
            "{args:?}: {text}"
        );
    }
    assert!(!out_img.exists());
    env.ok(&["verify", "--region", "it-1"]);
    env.ok(&["restore", "vm/s", "--to", out_img.to_str().unwrap()]);
    assert!(crate::util::same(&out_img, std::path::Path::new(&img)));
}

#[test]
fn bad_tuning_in_the_config_is_one_sentence_naming_the_setting() {
    let env = Env::new();
    let cfg = env.data.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    for (setting, value) in [
        ("checkpoint_every", "\"-5\""),
        ("checkpoint_every", "\"100K\""),
        ("checkpoint_every", "\"soon\""),
        ("stripe_below", "\"fast\""),
        ("pack_size", "\"2G\""),
    ] {
        let bad = text.replace(
            "stale_after_secs = 30",
            &format!("stale_after_secs = 30\n{setting} = {value}"),
        );
        std::fs::write(&cfg, bad).unwrap();
        let e = env.error(&["snapshot", "list"]);
        assert!(e.contains(setting), "{setting} = {value}: {e}");
    }
    // A setting appended after the [[region]] tables lands in the last region's table:
    // refused there, naming it, rather than silently ignored.
    std::fs::write(&cfg, format!("{text}\ncheckpoint_every = \"8M\"\n")).unwrap();
    let e = env.error(&["snapshot", "list"]);
    assert!(
        e.contains("checkpoint_every") && e.contains("region"),
        "{e}"
    );
    // or after a [region.options] table: options of a file:// region mean nothing.
    std::fs::write(
        &cfg,
        format!("{text}\n[region.options]\ncheckpoint_every = \"8M\"\n"),
    )
    .unwrap();
    let e = env.error(&["snapshot", "list"]);
    assert!(e.contains("option 'checkpoint_every'"), "{e}");
    // And with a good value the same command runs.
    std::fs::write(
        &cfg,
        text.replace(
            "stale_after_secs = 30",
            "stale_after_secs = 30\ncheckpoint_every = \"0\"",
        ),
    )
    .unwrap();
    env.ok(&["snapshot", "list"]);
}
