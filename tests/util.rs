//! Shared helpers: a temporary data directory and a way to run the binary in it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use geosnap_engine::imagegen::{Profile, generate};
use serde_json::Value;

/// A fresh, initialised data directory and scratch space for images.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
}

impl Env {
    /// `geosnap init` in a new temporary directory.
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let env = Env { tmp, data };
        env.ok(&["init"]);
        env
    }

    /// A directory that is not initialised.
    pub fn bare() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        Env { tmp, data }
    }

    /// Path inside the scratch space.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The binary with `--data-dir` set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_geosnap"));
        c.arg("--data-dir").arg(&self.data).args(args);
        c.env_remove("GEOSNAP_FAILPOINT").env("NO_COLOR", "1");
        c
    }

    /// Runs and returns the output, whatever the exit.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "geosnap {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json`, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
    }

    /// Runs, asserts failure with `code`, returns stderr; checks it is one line with no
    /// panic or backtrace.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "geosnap {args:?}: expected exit {code}, stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("stack backtrace"), "{stderr}");
        stderr
    }

    /// Like `fails` with exit 1, and the error is a single line starting with "geosnap:".
    pub fn error(&self, args: &[&str]) -> String {
        let stderr = self.fails(args, 1);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "not one sentence: {stderr}");
        assert!(lines[0].starts_with("geosnap: "), "{stderr}");
        stderr
    }

    /// A generated image in the scratch space.
    pub fn image(&self, name: &str, size: u64, profile: Profile, seed: u64) -> PathBuf {
        let p = self.path(name);
        generate(&p, size, profile, seed).unwrap();
        p
    }

    /// Every file under the data directory's region stores whose path contains `part`.
    pub fn stored_files(&self, part: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for top in ["regions", "volumes"] {
            walk(&self.data.join(top), &mut out);
        }
        out.retain(|p| p.to_string_lossy().contains(part));
        out.sort();
        out
    }

    /// Files of one store (`regions/it-1`, `volumes/de-1`).
    pub fn store_files(&self, store: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.data.join(store), &mut out);
        out.sort();
        out
    }

    /// Snapshot `key` as `snapshot show --json` prints it.
    pub fn snapshot(&self, key: &str) -> Value {
        self.json(&["snapshot", "show", key])
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Whether two files hold the same bytes.
pub fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// Allocated bytes of a file.
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}
