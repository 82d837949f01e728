//! The job runner: claims queued jobs from the catalog and runs them. A job whose worker
//! died (no heartbeat for `stale_after_secs`) is taken over; every job is safe to run
//! twice.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use geosnap_catalog::{
    Catalog, Completion, Job, JobKind, JobState, ReplicaState, SnapshotState, SnapshotStatsRow,
};
use geosnap_engine::manifest::{ManifestHeader, ManifestView};
use geosnap_engine::snapshot::SnapshotOptions;
use geosnap_replication::reader::fetch_manifest;
use geosnap_replication::writer::{ReplicaOutcome, WriteRequest, write_snapshot};
use serde::Serialize;

use crate::{Error, Geosnap, Result, Ui};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Stop when no job is runnable (instead of waiting for more).
    pub once: bool,
    /// Stop once this job has ended.
    pub until_job: Option<i64>,
    /// Also prune expired snapshots when they are due.
    pub prune: bool,
}

/// What a worker did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerReport {
    /// Jobs run, in order, with their outcome.
    pub jobs: Vec<JobRun>,
    /// Snapshots pruned along the way.
    pub pruned: Vec<String>,
}

/// One job run.
#[derive(Clone, Debug, Serialize)]
pub struct JobRun {
    /// Job id.
    pub id: i64,
    /// Kind.
    pub kind: JobKind,
    /// Snapshot, if any.
    pub snapshot: Option<String>,
    /// `done` or `failed`.
    pub state: JobState,
    /// Failure message.
    pub error: Option<String>,
}

/// This process's worker name.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Refreshes a job's heartbeat from its own connection until dropped.
struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(path: PathBuf, job: i64, worker: String, every: Duration) -> Heartbeat {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let Ok(catalog) = Catalog::open_existing(&path) else {
                return;
            };
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                let now = geosnap_catalog::SystemClock.now_secs();
                if let Err(e) = catalog.heartbeat(job, &worker, now) {
                    tracing::warn!(job, error = %e, "heartbeat failed");
                }
            }
        });
        Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl<C: geosnap_catalog::Clock> NowSecs for C {
    fn now_secs(&self) -> i64 {
        self.now()
    }
}

impl Geosnap {
    /// Runs jobs until the queue is empty (`once`), until `until_job` ends, or forever.
    pub fn work(&self, opts: &WorkerOptions, ui: &dyn Ui) -> Result<WorkerReport> {
        let worker = worker_name();
        let stale = self.config.stale_after_secs;
        let mut report = WorkerReport::default();
        loop {
            if opts.prune {
                let pruned = self.prune(None, false)?;
                report
                    .pruned
                    .extend(pruned.pruned.into_iter().map(|p| p.snapshot));
            }
            if let Some(id) = opts.until_job {
                let job = self.catalog.job(id)?;
                if matches!(job.state, JobState::Done | JobState::Failed) {
                    return Ok(report);
                }
            }
            match self.catalog.claim_job(&worker, self.now(), stale)? {
                Some(job) => {
                    let run = self.run_job(&job, &worker, ui);
                    report.jobs.push(run);
                }
                None if opts.once && opts.until_job.is_none() => return Ok(report),
                None => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Runs one claimed job to its end and records the outcome.
    fn run_job(&self, job: &Job, worker: &str, ui: &dyn Ui) -> JobRun {
        let every = Duration::from_secs((self.config.stale_after_secs / 4).max(1) as u64);
        let beat = Heartbeat::start(
            self.catalog.path().to_path_buf(),
            job.id,
            worker.to_string(),
            every,
        );
        let result = match job.kind {
            JobKind::Snapshot => self.run_snapshot_job(job, ui),
            JobKind::Replicate => self.run_replicate_job(job),
            JobKind::Prune => self.prune(None, false).map(|_| ()),
            JobKind::Gc => self.gc(&Default::default()).map(|_| ()),
            JobKind::Verify => self.verify(None, None, true).map(|_| ()),
        };
        drop(beat);
        let error = result.as_ref().err().map(|e| format!("{e}"));
        if let Some(e) = &error {
            match job.kind {
                JobKind::Replicate => ui.note(&format!(
                    "replication to {} is still owed: {e}; it is retried when the region is healed",
                    job.payload
                )),
                // A snapshot's failure is the answer of `snapshot take` itself.
                JobKind::Snapshot => {}
                kind => ui.note(&format!("job {} ({kind}) failed: {e}", job.id)),
            }
            if job.kind == JobKind::Replicate
                && let Some(id) = job.snapshot
            {
                let _ = self
                    .catalog
                    .set_replica(&id, &job.payload, ReplicaState::Failed);
            }
        }
        let outcome = match &error {
            None => Ok(()),
            Some(e) => Err(e.as_str()),
        };
        if let Err(e) = self.catalog.finish_job(job.id, worker, outcome, self.now()) {
            tracing::warn!(job = job.id, error = %e, "could not record job outcome");
        }
        JobRun {
            id: job.id,
            kind: job.kind,
            snapshot: job.snapshot.map(|s| s.to_hex()),
            state: if error.is_some() {
                JobState::Failed
            } else {
                JobState::Done
            },
            error,
        }
    }

    fn run_snapshot_job(&self, job: &Job, ui: &dyn Ui) -> Result<()> {
        let id = job
            .snapshot
            .ok_or_else(|| Error::JobFailed(format!("job {} names no snapshot", job.id)))?;
        let snap = self.catalog.snapshot(&id)?;
        if matches!(
            snap.state,
            SnapshotState::Available | SnapshotState::Degraded
        ) {
            return Ok(());
        }
        let result = self.take_snapshot(&snap, ui);
        if let Err(e) = &result {
            self.catalog
                .set_snapshot_state(&id, SnapshotState::Failed, Some(&e.to_string()))?;
        }
        result
    }

    fn take_snapshot(&self, snap: &geosnap_catalog::Snapshot, ui: &dyn Ui) -> Result<()> {
        let id = snap.id;
        let inst = self.catalog.instance(&snap.instance)?;
        self.catalog
            .set_snapshot_state(&id, SnapshotState::Running, None)?;
        let (targets, _) = self.regions.targets(snap.backing, &snap.home_region)?;
        for t in &targets {
            self.catalog
                .set_replica(&id, &t.region, ReplicaState::Pending)?;
        }
        // A previous attempt may have committed the manifest before it died: adopt it.
        let adopted = self.block_on(async {
            let mut holders = Vec::new();
            for t in &targets {
                if t.exists(&geosnap_replication::layout::manifest(&id))
                    .await
                    .unwrap_or(false)
                {
                    holders.push(t.clone());
                }
            }
            if holders.is_empty() {
                return None;
            }
            let m = fetch_manifest(&holders, &id, self.regions.tuning.manifest_memory)
                .await
                .ok()?;
            Some((m.0.header().clone(), holders))
        });
        let (header, replicas, stored, source) = match adopted {
            Some((m, holders)) => {
                let replicas = targets
                    .iter()
                    .map(|t| {
                        let written = holders.iter().any(|h| h.region == t.region);
                        let outcome = if written {
                            ReplicaOutcome::Written
                        } else {
                            ReplicaOutcome::Owed {
                                reason: "missed by an interrupted attempt".into(),
                            }
                        };
                        (t.region.clone(), outcome)
                    })
                    .collect::<Vec<_>>();
                (m, replicas, 0, None)
            }
            None => {
                let image = PathBuf::from(&inst.image_path);
                // Taken before the image is read: a write during the scan changes it.
                let source = source_stamp(&image);
                let reuse = match &source {
                    Some(s) => self.reusable(&snap.instance, s, &targets)?,
                    None => None,
                };
                let options = SnapshotOptions {
                    chunker: self.config.chunker_params()?,
                    level: self.config.zstd_level,
                    threads: 0,
                };
                let meta = geosnap_engine::manifest::SnapshotMeta {
                    completed_at: 0,
                    ..snap_meta(snap)
                };
                let req = WriteRequest {
                    image,
                    meta,
                    options,
                    reuse,
                };
                let progress = ui.progress(&format!("snapshot {}/{}", snap.instance, snap.name));
                let clock = self.clock.clone();
                let now = move || clock.now();
                let out = self.block_on(write_snapshot(&self.regions, req, progress, &now))?;
                let reused = out.reused;
                (
                    out.header,
                    out.replicas,
                    out.stats.stored_bytes,
                    Some((source, reused)),
                )
            }
        };
        geosnap_engine::failpoint::hit("snapshot-before-catalog");
        self.commit_snapshot(&header, &replicas, stored)?;
        if let Some((source, reused)) = source {
            self.catalog
                .set_snapshot_source(&id, source.as_deref(), reused.as_ref())?;
        }
        Ok(())
    }

    /// The manifest of the newest snapshot of `instance` taken from the same, unchanged
    /// image file (`source`), read from the first target store that has it; `None` if there
    /// is none or no store answers (the snapshot then scans the image).
    fn reusable(
        &self,
        instance: &str,
        source: &str,
        targets: &[geosnap_replication::Bucket],
    ) -> Result<Option<geosnap_engine::manifest::EncodedManifest>> {
        let Some(previous) = self.catalog.snapshot_from_source(instance, source)? else {
            return Ok(None);
        };
        let memory = self.regions.tuning.manifest_memory;
        Ok(self
            .block_on(fetch_manifest(targets, &previous, memory))
            .ok()
            .map(|(m, _)| m))
    }

    /// Records a written snapshot: completion, replicas, and replication jobs for the
    /// regions it still owes.
    fn commit_snapshot(
        &self,
        h: &ManifestHeader,
        replicas: &[(String, ReplicaOutcome)],
        stored_bytes: u64,
    ) -> Result<()> {
        let id = h.meta.id;
        let all_written = replicas.iter().all(|(_, r)| *r == ReplicaOutcome::Written);
        for (region, outcome) in replicas {
            let state = match outcome {
                ReplicaOutcome::Written => ReplicaState::Written,
                ReplicaOutcome::Owed { .. } => ReplicaState::Pending,
            };
            self.catalog.set_replica(&id, region, state)?;
        }
        self.catalog.complete_snapshot(
            &id,
            &Completion {
                completed_at: h.meta.completed_at,
                state: if all_written {
                    SnapshotState::Available
                } else {
                    SnapshotState::Degraded
                },
                stats: SnapshotStatsRow {
                    image_size: h.image_size,
                    data_bytes: h.data_bytes,
                    stored_bytes,
                    chunk_count: h.chunk_count,
                },
            },
        )?;
        for (region, outcome) in replicas {
            if let ReplicaOutcome::Owed { .. } = outcome {
                self.catalog
                    .enqueue(JobKind::Replicate, Some(&id), region, self.now())?;
            }
        }
        Ok(())
    }

    fn run_replicate_job(&self, job: &Job) -> Result<()> {
        let id = job
            .snapshot
            .ok_or_else(|| Error::JobFailed(format!("job {} names no snapshot", job.id)))?;
        let region = job.payload.as_str();
        let snap = match self.catalog.snapshot(&id) {
            Ok(s) => s,
            // Deleted meanwhile: nothing is owed any more.
            Err(geosnap_catalog::Error::SnapshotNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.block_on(geosnap_replication::repair::replicate_snapshot(
            &self.regions,
            &id,
            region,
        ))?;
        self.catalog
            .set_replica(&id, region, ReplicaState::Written)?;
        self.refresh_state(&snap)
    }

    /// Marks a degraded snapshot available once every replica is written.
    pub(crate) fn refresh_state(&self, snap: &geosnap_catalog::Snapshot) -> Result<()> {
        let replicas = self.catalog.replicas(&snap.id)?;
        if snap.state == SnapshotState::Degraded
            && !replicas.is_empty()
            && replicas.iter().all(|r| r.state == ReplicaState::Written)
        {
            self.catalog
                .set_snapshot_state(&snap.id, SnapshotState::Available, None)?;
        }
        Ok(())
    }
}

/// The manifest metadata of a catalog row (before completion).
pub(crate) fn snap_meta(s: &geosnap_catalog::Snapshot) -> geosnap_engine::manifest::SnapshotMeta {
    geosnap_engine::manifest::SnapshotMeta {
        id: s.id,
        instance: s.instance.clone(),
        name: s.name.clone(),
        backing: s.backing,
        home_region: s.home_region.clone(),
        created_at: s.created_at,
        completed_at: s.completed_at.unwrap_or(0),
        retention_days: s.retention.days(),
    }
}

/// How long before a snapshot an image file must have last changed for its times to be
/// trusted: a write within the same clock tick as the `stat` (coarse on some filesystems,
/// two seconds on FAT) could leave them as they were.
const SOURCE_SETTLED_NS: i128 = 2_000_000_000;

/// The identity, size and times of a regular image file (device, inode, size, mtime and
/// ctime in nanoseconds), if they can be trusted to change when its content does: `None`
/// for block devices and other non-files, and for a file changed in the last two seconds.
/// ctime cannot be set back by `touch` or `utimensat`, so content written with its mtime
/// restored still changes the stamp.
pub fn source_stamp(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let (mtime, ctime) = (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    if now - mtime.max(ctime) < SOURCE_SETTLED_NS {
        return None;
    }
    Some(format!(
        "{}:{}:{}:{mtime}:{ctime}",
        m.dev(),
        m.ino(),
        m.size()
    ))
}
