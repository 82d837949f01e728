//! `geosnap demo`: the whole product in under a minute, offline, with figures measured in
//! the run. Each step checks what it shows; the demo fails if any check does not hold.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use geosnap_catalog::{Retention, SnapshotState};
use geosnap_engine::imagegen::{self, Profile};
use geosnap_engine::manifest::{Extent, ManifestView};
use geosnap_replication::StoreKind;
use geosnap_replication::layout;
use geosnap_replication::simulator::FaultMode;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::jobs::WorkerOptions;
use crate::restore::RestoreOptions;
use crate::{Error, Geosnap, Result, Ui};

/// What the demo tells as it goes.
pub trait Story: Ui {
    /// A new step.
    fn step(&self, n: usize, title: &str);
    /// A line of figures within a step.
    fn line(&self, text: &str);
}

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Data directory to use (created fresh).
    pub dir: PathBuf,
    /// Size of the sample disk.
    pub disk_size: u64,
}

/// Every figure the demo measured, as `--json` prints it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoReport {
    /// Where the demo's data lives.
    pub data_dir: PathBuf,
    /// Step 1: regions and their simulated links.
    pub regions: Vec<DemoRegion>,
    /// Step 2: the sample disk.
    pub disk: DemoDisk,
    /// Step 3: first snapshot.
    pub first: DemoSnapshot,
    /// Step 4: second snapshot after a change.
    pub second: DemoSnapshot,
    /// Step 5: restore with a region down.
    pub restore: DemoRestore,
    /// Step 6: restore over a corrupt chunk.
    pub repair: DemoRestore,
    /// Step 7: data residency.
    pub residency: DemoResidency,
    /// Step 8: retention.
    pub retention: DemoRetention,
    /// Every check held.
    pub ok: bool,
}

/// A region in the demo.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoRegion {
    /// Name.
    pub name: String,
    /// Country.
    pub country: String,
    /// Simulated condition.
    pub simulated: String,
}

/// The sample disk.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoDisk {
    /// Image file.
    pub path: PathBuf,
    /// "ext4" (built with mke2fs -d) or "generated".
    pub kind: String,
    /// Logical size.
    pub size: u64,
    /// Bytes allocated on disk (it is sparse).
    pub allocated: u64,
}

/// A snapshot's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoSnapshot {
    /// Snapshot id.
    pub id: String,
    /// State after the take.
    pub state: String,
    /// Regions holding it.
    pub replicas: Vec<String>,
    /// Logical image size.
    pub logical_bytes: u64,
    /// Bytes in chunks (the rest is zeros and holes).
    pub data_bytes: u64,
    /// Compressed bytes this snapshot added to each region.
    pub stored_bytes: u64,
    /// data / stored.
    pub reduction: f64,
    /// Bytes of the distinct chunks (first snapshot only; 0 otherwise).
    pub distinct_bytes: u64,
    /// data / distinct: what deduplication saved (first snapshot only).
    pub dedup: f64,
    /// distinct / stored: what zstd saved (first snapshot only).
    pub compression: f64,
    /// Wall time.
    pub seconds: f64,
    /// Logical bytes per second.
    pub logical_mb_per_s: f64,
}

/// A restore's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoRestore {
    /// Region read from.
    pub region: String,
    /// Restored bytes equal the source (SHA-256 of both files).
    pub identical: bool,
    /// e2fsck -fn passed (None when not an ext4 image or e2fsck is missing).
    pub fsck_ok: Option<bool>,
    /// Wall time.
    pub seconds: f64,
    /// Chunks fetched elsewhere and repaired in the region.
    pub repaired_chunks: usize,
    /// Compressed bytes read from each region (more than one when the region was slow
    /// and the others shared its work).
    pub read_from: Vec<(String, u64)>,
}

/// Residency figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoResidency {
    /// Stores holding the volume-backed snapshot's manifest.
    pub stores_holding: Vec<String>,
    /// The refusal when restoring elsewhere.
    pub refusal: String,
}

/// Retention figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoRetention {
    /// Completion time of the 1-day snapshot.
    pub completed_at: i64,
    /// Still listed after prune at +23:59:59.
    pub kept_at_23_59_59: bool,
    /// Gone after prune at +24:00:00.
    pub pruned_at_24_00_00: bool,
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::JobFailed(format!("demo check failed: {what}")))
    }
}

fn sha256_file(p: &Path) -> Result<[u8; 32]> {
    let mut f =
        std::fs::File::open(p).map_err(|e| Error::io(format!("open {}", p.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read {}", p.display()), e))?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-V")
        .output()
        .map(|o| o.status.success() || !o.stderr.is_empty())
        .unwrap_or(false)
}

fn fsck(p: &Path) -> Option<bool> {
    let out = Command::new("e2fsck").arg("-fn").arg(p).output().ok()?;
    Some(out.status.success())
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Builds the sample disk: ext4 with generated logs, random "media" and some system files
/// when mke2fs is there, otherwise a generated mixed, sparse image.
fn build_disk(dir: &Path, size: u64) -> Result<DemoDisk> {
    let img = dir.join("web-1.img");
    let io = |what: &str, e| Error::io(what.to_string(), e);
    if have("mke2fs") {
        let files = dir.join("files");
        std::fs::create_dir_all(files.join("var/log")).map_err(|e| io("mkdir", e))?;
        std::fs::create_dir_all(files.join("srv/media")).map_err(|e| io("mkdir", e))?;
        let budget = size / 8;
        imagegen::generate(&files.join("var/log/app.log"), budget, Profile::Text, 1)
            .map_err(|e| io("generate logs", e))?;
        imagegen::generate(
            &files.join("srv/media/video.bin"),
            budget / 2,
            Profile::Random,
            2,
        )
        .map_err(|e| io("generate media", e))?;
        copy_some(
            Path::new("/usr/share/doc"),
            &files.join("usr/share/doc"),
            budget,
        );
        let status = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&files)
            .arg(&img)
            .arg(format!("{}k", size / 1024))
            .output()
            .map_err(|e| io("mke2fs", e))?
            .status;
        let _ = std::fs::remove_dir_all(&files);
        if status.success() {
            return Ok(DemoDisk {
                allocated: allocated(&img),
                path: img,
                kind: "ext4".into(),
                size,
            });
        }
    }
    imagegen::generate(&img, size, Profile::Sparse, 1).map_err(|e| io("generate image", e))?;
    Ok(DemoDisk {
        allocated: allocated(&img),
        path: img,
        kind: "generated".into(),
        size,
    })
}

/// Copies regular files from `from` into `to` until `budget` bytes.
fn copy_some(from: &Path, to: &Path, mut budget: u64) {
    let mut stack = vec![from.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.len() <= budget {
                let Ok(rel) = p.strip_prefix(from) else {
                    continue;
                };
                let dest = to.join(rel);
                if let Some(parent) = dest.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                if std::fs::copy(&p, &dest).is_ok() {
                    budget -= m.len();
                }
            }
            if budget < 4096 {
                return;
            }
        }
    }
}

/// Changes the disk as a running VM would: a new file and a rewritten one (debugfs on
/// ext4), or 1 % of blocks rewritten in place.
fn change_disk(disk: &DemoDisk, dir: &Path) -> Result<String> {
    if disk.kind == "ext4" && have("debugfs") {
        let newfile = dir.join("new.log");
        imagegen::generate(&newfile, disk.size / 200, Profile::Text, 99)
            .map_err(|e| Error::io("generate", e))?;
        let status = Command::new("debugfs")
            .args(["-w", "-R"])
            .arg(format!("write {} var/log/app.log.1", newfile.display()))
            .arg(&disk.path)
            .output()
            .map_err(|e| Error::io("debugfs", e))?;
        let _ = std::fs::remove_file(&newfile);
        if status.status.success() {
            return Ok(format!(
                "wrote a new {} log file into the filesystem (debugfs)",
                crate::demo::mib(disk.size / 200)
            ));
        }
    }
    let n = imagegen::scatter_writes(&disk.path, 0.01, 7).map_err(|e| Error::io("rewrite", e))?;
    Ok(format!("rewrote {n} scattered 4 KiB blocks (1 %)"))
}

pub(crate) fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        0.0
    }
}

/// Runs the demo in a fresh data directory.
pub fn run(
    opts: &DemoOptions,
    rt: tokio::runtime::Handle,
    story: &dyn Story,
) -> Result<DemoReport> {
    let dir = &opts.dir;
    let mut report = DemoReport {
        data_dir: dir.clone(),
        ..Default::default()
    };

    story.step(1, "three regions, two of them remote");
    Geosnap::init(dir)?;
    let g = Geosnap::open(dir, rt.clone())?;
    g.region_fail(
        "de-1",
        FaultMode::Slow {
            latency_ms: 15,
            bandwidth: 400_000_000,
        },
    )?;
    g.region_fail(
        "nl-1",
        FaultMode::Slow {
            latency_ms: 25,
            bandwidth: 250_000_000,
        },
    )?;
    for r in g.region_list()? {
        story.line(&format!(
            "{} ({}): {}",
            r.name,
            r.country,
            describe(&r.simulated)
        ));
        report.regions.push(DemoRegion {
            name: r.name,
            country: r.country,
            simulated: r.simulated.to_string(),
        });
    }

    story.step(2, "a sample instance disk");
    let scratch = dir.join("demo");
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io("mkdir", e))?;
    let disk = build_disk(&scratch, opts.disk_size)?;
    story.line(&format!(
        "{} image {}: {} logical, {} allocated (sparse)",
        disk.kind,
        disk.path.display(),
        mib(disk.size),
        mib(disk.allocated)
    ));
    report.disk = disk.clone();
    g.create_instance("web-1", &disk.path, Some("it-1"), false)?;

    story.step(3, "snapshot the image-backed instance web-1");
    let first_sum = sha256_file(&disk.path)?;
    let pristine = scratch.join("web-1.first.sha256");
    let _ = std::fs::write(&pristine, hex(&first_sum));
    report.first = take(&g, "web-1", "first", Retention::Forever, story)?;
    let distinct = distinct_bytes(&g, &report.first.id)?;
    let f = &mut report.first;
    f.distinct_bytes = distinct;
    f.dedup = f.data_bytes as f64 / distinct.max(1) as f64;
    f.compression = distinct as f64 / f.stored_bytes.max(1) as f64;
    story.line(&format!(
        "{} in {:.2} s ({:.0} MB/s logical); data {} of {}, stored {} per region ({:.1}x smaller)",
        f.state,
        f.seconds,
        f.logical_mb_per_s,
        mib(f.data_bytes),
        mib(f.logical_bytes),
        mib(f.stored_bytes),
        f.reduction
    ));
    story.line(&format!(
        "holes and zeros skipped: {}; dedup {:.2}x ({} distinct); zstd {:.2}x ({} stored)",
        mib(f.logical_bytes - f.data_bytes),
        f.dedup,
        mib(distinct),
        f.compression,
        mib(f.stored_bytes)
    ));
    let f = &report.first;
    story.line(&format!("replicas: {}", f.replicas.join(", ")));
    check(
        f.state == "available" && f.replicas.len() == 3,
        "first snapshot in every region",
    )?;
    check(f.stored_bytes <= f.logical_bytes, "stored <= logical")?;

    story.step(4, "change the disk, snapshot again");
    let change = change_disk(&disk, &scratch)?;
    story.line(&change);
    report.second = take(&g, "web-1", "second", Retention::Forever, story)?;
    let s = &report.second;
    story.line(&format!(
        "{} in {:.2} s; uploaded only {} ({:.1} % of the first snapshot's {})",
        s.state,
        s.seconds,
        mib(s.stored_bytes),
        100.0 * s.stored_bytes as f64 / report.first.stored_bytes.max(1) as f64,
        mib(report.first.stored_bytes)
    ));
    check(
        s.stored_bytes * 10 < report.first.stored_bytes,
        "second snapshot uploads < 10 % of the first",
    )?;

    story.step(5, "de-1 goes down; restore the first snapshot from nl-1");
    g.region_fail("de-1", FaultMode::Down)?;
    story.line("de-1 is down (simulated outage)");
    let out = scratch.join("restored-first.img");
    report.restore = restore(
        &g,
        "web-1/first",
        &out,
        "nl-1",
        &first_sum,
        disk.kind == "ext4",
        story,
    )?;
    let r = &report.restore;
    story.line(&format!(
        "restored {} from nl-1 in {:.2} s; SHA-256 {}{}",
        mib(disk.size),
        r.seconds,
        if r.identical {
            "identical to the original"
        } else {
            "DIFFERS"
        },
        match r.fsck_ok {
            Some(true) => ", e2fsck -fn clean",
            Some(false) => ", e2fsck -fn FAILED",
            None => "",
        }
    ));
    if r.read_from.iter().any(|(region, _)| region != "nl-1") {
        let parts: Vec<String> = r
            .read_from
            .iter()
            .map(|(region, bytes)| format!("{} from {region}", mib(*bytes)))
            .collect();
        story.line(&format!(
            "nl-1 read slower than 128 MiB/s, so the other regions shared its work: {}",
            parts.join(", ")
        ));
    }
    check(
        r.identical && r.fsck_ok != Some(false),
        "restore from nl-1 is byte-identical",
    )?;

    // it-1 is local and fast, so it reads every chunk itself (a slow region would share
    // its groups with the others and might never read the damaged one).
    story.step(6, "a chunk rots in it-1; restore from it-1");
    let victim = corrupt_one_chunk(&g, &report.first.id, "it-1")?;
    story.line(&format!(
        "flipped a bit in chunk {}… in it-1",
        &victim[..12]
    ));
    let _ = std::fs::remove_file(&out);
    report.repair = restore(&g, "web-1/first", &out, "it-1", &first_sum, false, story)?;
    let r = &report.repair;
    story.line(&format!(
        "the SHA-256 check caught it: the damaged frame's {} chunk(s) came from another region and were written back to it-1; restore identical: {}",
        r.repaired_chunks, r.identical
    ));
    check(r.identical && r.repaired_chunks >= 1, "fallback and repair")?;
    let _ = std::fs::remove_file(&out);

    story.step(7, "a volume-backed instance keeps its data at home");
    let vol_img = scratch.join("db-1.img");
    imagegen::generate(&vol_img, 32 << 20, Profile::Mixed, 5)
        .map_err(|e| Error::io("generate", e))?;
    g.create_instance("db-1", &vol_img, Some("de-1"), true)?;
    g.region_heal("de-1")?;
    g.region_fail(
        "de-1",
        FaultMode::Slow {
            latency_ms: 15,
            bandwidth: 400_000_000,
        },
    )?;
    let v = take(&g, "db-1", "nightly", Retention::Forever, story)?;
    let holding = stores_holding(&g, &v.id)?;
    story.line(&format!(
        "snapshot db-1/nightly is held by: {}",
        holding.join(", ")
    ));
    let refusal = match g.restore(
        "db-1/nightly",
        &scratch.join("db.img"),
        &RestoreOptions {
            region: Some("it-1".into()),
            ..Default::default()
        },
        story,
    ) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    story.line(&format!("restore from it-1 refused: {refusal}"));
    check(
        holding == ["de-1 volume store"],
        "volume snapshot in exactly one store",
    )?;
    check(refusal.contains("data residency"), "residency refusal")?;
    report.residency = DemoResidency {
        stores_holding: holding,
        refusal,
    };

    story.step(8, "retention: 1 day means exactly 24 h after completion");
    let t = take(&g, "web-1", "daily", Retention::Days(nonzero(1)), story)?;
    let snap = g.catalog.find_snapshot("web-1/daily")?;
    let completed = snap.completed_at.unwrap_or_default();
    let kept = g.prune(Some(completed + 86_399), false)?.pruned.is_empty();
    let gone = !g.prune(Some(completed + 86_400), false)?.pruned.is_empty()
        && g.catalog.find_snapshot("web-1/daily").is_err();
    story.line(&format!(
        "completed {}; prune at +23:59:59 keeps it: {kept}; prune at +24:00:00 deletes it: {gone}",
        geosnap_catalog::clock::format_rfc3339(completed)
    ));
    check(kept && gone && !t.id.is_empty(), "retention instants")?;
    report.retention = DemoRetention {
        completed_at: completed,
        kept_at_23_59_59: kept,
        pruned_at_24_00_00: gone,
    };

    for r in ["de-1", "nl-1"] {
        g.region_heal(r)?;
    }
    report.ok = true;
    Ok(report)
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

fn describe(c: &geosnap_replication::simulator::FaultConfig) -> String {
    if c.is_healthy() {
        "local, unthrottled".into()
    } else if c.latency_ms > 0 || c.bandwidth > 0 {
        format!(
            "remote: {} ms per request, {:.0} MB/s",
            c.latency_ms,
            c.bandwidth as f64 / 1e6
        )
    } else {
        c.to_string()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn take(
    g: &Geosnap,
    instance: &str,
    name: &str,
    retention: Retention,
    ui: &dyn Ui,
) -> Result<DemoSnapshot> {
    let t = Instant::now();
    let (snap, job) = g.queue_snapshot(instance, name, retention)?;
    g.work(
        &WorkerOptions {
            once: false,
            until_job: Some(job.id),
            prune: false,
        },
        ui,
    )?;
    let seconds = t.elapsed().as_secs_f64();
    let v = g.snapshot(&snap.id.to_hex())?;
    let s = &v.snapshot;
    if s.state == SnapshotState::Failed {
        return Err(Error::JobFailed(format!(
            "snapshot {instance}/{name} failed: {}",
            s.error.clone().unwrap_or_default()
        )));
    }
    let data = s.data_bytes.unwrap_or(0);
    let stored = s.stored_bytes.unwrap_or(0);
    let logical = s.image_size.unwrap_or(0);
    Ok(DemoSnapshot {
        id: s.id.to_hex(),
        state: s.state.to_string(),
        replicas: v
            .replicas
            .iter()
            .filter(|r| r.state == geosnap_catalog::ReplicaState::Written)
            .map(|r| r.region.clone())
            .collect(),
        logical_bytes: logical,
        data_bytes: data,
        stored_bytes: stored,
        reduction: data as f64 / stored.max(1) as f64,
        distinct_bytes: 0,
        dedup: 0.0,
        compression: 0.0,
        seconds,
        logical_mb_per_s: mbps(logical, seconds),
    })
}

fn restore(
    g: &Geosnap,
    key: &str,
    out: &Path,
    region: &str,
    want: &[u8; 32],
    ext4: bool,
    ui: &dyn Ui,
) -> Result<DemoRestore> {
    let t = Instant::now();
    let r = g.restore(
        key,
        out,
        &RestoreOptions {
            region: Some(region.into()),
            strict: false,
            force: true,
        },
        ui,
    )?;
    let seconds = t.elapsed().as_secs_f64();
    Ok(DemoRestore {
        region: region.into(),
        identical: sha256_file(out)? == *want,
        fsck_ok: if ext4 && have("e2fsck") {
            fsck(out)
        } else {
            None
        },
        seconds,
        repaired_chunks: r.repaired_chunks.len(),
        read_from: r
            .read_from
            .iter()
            .map(|read| (read.region.clone(), read.bytes))
            .collect(),
    })
}

/// Bytes of the distinct chunks of a snapshot, from its manifest in it-1.
fn distinct_bytes(g: &Geosnap, snapshot: &str) -> Result<u64> {
    let id: geosnap_engine::SnapshotId = snapshot
        .parse()
        .map_err(|e: geosnap_engine::ParseIdError| Error::JobFailed(e.to_string()))?;
    let it = g.regions.get("it-1")?.bucket(StoreKind::Main).clone();
    let manifest = g.block_on(it.read_manifest(&id, g.regions.tuning.manifest_memory))?;
    let mut seen = geosnap_engine::IdSet::default();
    let mut total = 0u64;
    for e in manifest.extents() {
        if let Extent::Chunk { id, len, .. } = e?
            && seen.insert(id)
        {
            total += u64::from(len);
        }
    }
    Ok(total)
}

/// Flips a bit inside the frame that holds the snapshot's first chunk in nl-1's pack.
fn corrupt_one_chunk(g: &Geosnap, snapshot: &str, region: &str) -> Result<String> {
    let id: geosnap_engine::SnapshotId = snapshot
        .parse()
        .map_err(|e: geosnap_engine::ParseIdError| Error::JobFailed(e.to_string()))?;
    let nl = g.regions.get(region)?.bucket(StoreKind::Main).clone();
    g.block_on(async {
        let manifest = nl
            .read_manifest(&id, g.regions.tuning.manifest_memory)
            .await?;
        let chunk = manifest
            .chunk_ids()
            .map_err(geosnap_replication::Error::Engine)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::JobFailed("snapshot has no chunks".into()))?;
        let index = geosnap_replication::index::StoreIndex::load(&nl).await?;
        let frame = index
            .chunks
            .get(&chunk)
            .ok_or_else(|| Error::JobFailed(format!("chunk not indexed in {region}")))?;
        let key = geosnap_replication::pack::key(&frame.pack);
        let mut pack = nl.get(&key).await?.to_vec();
        let last = (frame.offset + u64::from(frame.len) - 1) as usize;
        pack[last] ^= 0x10;
        nl.put(&key, Bytes::from(pack)).await?;
        Ok(chunk.to_hex())
    })
}

fn stores_holding(g: &Geosnap, snapshot: &str) -> Result<Vec<String>> {
    let id: geosnap_engine::SnapshotId = snapshot
        .parse()
        .map_err(|e: geosnap_engine::ParseIdError| Error::JobFailed(e.to_string()))?;
    let mut out = Vec::new();
    for r in g.regions.iter() {
        for kind in [StoreKind::Main, StoreKind::Volume] {
            let b = r.bucket(kind);
            let listed = g.block_on(b.list(&object_store::path::Path::from("")))?;
            if listed.iter().any(|m| m.location == layout::manifest(&id)) {
                out.push(b.to_string());
            }
        }
    }
    Ok(out)
}
