//! The job runner: claims queued jobs from the catalog and runs them. A job whose worker
//! died (no heartbeat for `stale_after_secs`) is taken over; every job is safe to run
//! twice.

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use geosnap_catalog::{
    Catalog, Completion, Job, JobKind, JobState, ReplicaState, SnapshotState, SnapshotStatsRow,
};
use geosnap_engine::SnapshotId;
use geosnap_engine::manifest::{ManifestHeader, ManifestView};
use geosnap_engine::snapshot::SnapshotOptions;
use geosnap_replication::reader::fetch_manifest;
use geosnap_replication::writer::{ReplicaOutcome, Resume, WriteRequest, write_snapshot};
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
                return Ok(None);
            }
            // Some store holds it but cannot hand it over now (unreachable, or no room for
            // the temporary file): fail this attempt and let the job be retried rather
            // than write the snapshot again under the same id. Copies that are all damaged
            // are written over by a new attempt.
            match fetch_manifest(&holders, &id, self.regions.tuning.manifest_memory).await {
                Ok((m, _)) => Ok(Some((m.header().clone(), holders))),
                Err(e)
                    if e.is_local()
                        || matches!(e, geosnap_replication::Error::RegionUnavailable { .. }) =>
                {
                    Err(Error::from(e))
                }
                Err(_) => Ok(None),
            }
        })?;
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
                    Some(s) => self.reusable(&snap.instance, s, &targets),
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
                let resume = self.resume(
                    &id,
                    &snap.instance,
                    source.as_deref(),
                    &options.chunker.to_string(),
                );
                let req = WriteRequest {
                    image: image.clone(),
                    meta,
                    options,
                    reuse,
                    resume,
                };
                let progress = ui.progress(&format!("snapshot {}/{}", snap.instance, snap.name));
                let clock = self.clock.clone();
                let now = move || clock.now();
                let out = self.block_on(write_snapshot(&self.regions, req, progress, &now))?;
                let reused = out.reused;
                // Recorded only if the file is still the one stamped, unchanged.
                let source = source.filter(|s| source_stamp(&image).as_ref() == Some(s));
                (
                    out.header,
                    out.replicas,
                    out.stats.stored_bytes,
                    Some((source, reused, out.resumed_at)),
                )
            }
        };
        geosnap_engine::failpoint::hit("snapshot-before-catalog");
        self.commit_snapshot(&header, &replicas, stored)?;
        // Only an optimisation and a note from here: the snapshot is committed whatever
        // becomes of them.
        if let Some((source, reused, resumed_at)) = source {
            if let Err(e) =
                self.catalog
                    .set_snapshot_source(&id, source.as_deref(), reused.as_ref())
            {
                tracing::warn!(snapshot = %id, error = %e, "could not record the snapshot's source");
            }
            if resumed_at > 0
                && let Err(e) = self.catalog.set_snapshot_resumed(&id, resumed_at)
            {
                tracing::warn!(snapshot = %id, error = %e, "could not record where the snapshot resumed");
            }
        }
        if let Err(e) = self.catalog.clear_checkpoints(&id) {
            tracing::warn!(snapshot = %id, error = %e, "could not clear the snapshot's checkpoints");
        }
        if let Err(e) = self.catalog.clear_superseded_checkpoints(&id) {
            tracing::warn!(snapshot = %id, error = %e, "could not clear failed snapshots' checkpoints");
        }
        Ok(())
    }

    /// What an attempt at snapshot `id` resumes from and where its checkpoints go: the
    /// extents earlier attempts recorded while scanning the same, unchanged image file
    /// (`source`) with the same `chunker` — this snapshot's, or else those of the newest
    /// failed snapshot of `instance` — copied into a temporary file, and a second catalog
    /// connection that records this attempt's checkpoints. Without a trustworthy stamp, or
    /// with checkpoints turned off, there is nothing to resume from or record, and
    /// checkpoints of another stamp are forgotten. Never fails the snapshot: whatever goes
    /// wrong here only costs the resume (the scan starts from 0) or the checkpoints.
    fn resume(
        &self,
        id: &SnapshotId,
        instance: &str,
        source: Option<&str>,
        chunker: &str,
    ) -> Resume {
        let every = self.config.checkpoint_bytes().unwrap_or(0);
        let Some(source) = source.filter(|_| every > 0) else {
            if let Err(e) = self.catalog.clear_checkpoints(id) {
                tracing::warn!(snapshot = %id, error = %e, "could not clear old checkpoints");
            }
            return Resume::default();
        };
        let mut resume = Resume {
            every,
            ..Resume::default()
        };
        match self.earlier_extents(id, instance, source, chunker) {
            Ok(Some((file, boundaries))) => {
                resume.extents = Some(Arc::new(file));
                resume.boundaries = boundaries;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(snapshot = %id, error = %e, "cannot resume from the earlier attempt's checkpoints; scanning from the start")
            }
        }
        let catalog = match Catalog::open_existing(self.catalog.path()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(snapshot = %id, error = %e, "cannot record checkpoints");
                return resume;
            }
        };
        let (id, source, chunker) = (*id, source.to_string(), chunker.to_string());
        let record = move |c: &geosnap_engine::snapshot::Checkpoint<'_>| {
            let added = catalog.add_checkpoint(&id, &source, &chunker, c.start, c.end, c.extents);
            if let Err(e) = added {
                tracing::warn!(snapshot = %id, error = %e, "could not record a checkpoint");
            }
            geosnap_engine::failpoint::hit("snapshot-checkpointed");
        };
        resume.journal = Some(Arc::new(std::sync::Mutex::new(record)));
        resume
    }

    /// The chain of checkpoints [`Geosnap::resume`] resumes from, in an anonymous temporary
    /// file, with the image offsets where its rows end; `None` if there is none (and then
    /// `id`'s rows of other stamps are forgotten).
    fn earlier_extents(
        &self,
        id: &SnapshotId,
        instance: &str,
        source: &str,
        chunker: &str,
    ) -> Result<Option<(std::fs::File, Vec<u64>)>> {
        if self
            .catalog
            .adopt_checkpoints(id, instance, source, chunker)?
        {
            tracing::info!(snapshot = %id, "taking over a failed snapshot's checkpoints");
        }
        // The extents recorded so far, in a file: a large image's would not fit in memory.
        let spill = |e| {
            Error::io(
                "cannot write the earlier attempt's extents to a temporary file",
                e,
            )
        };
        let file = tempfile::tempfile().map_err(spill)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
        let mut failed = None;
        let mut boundaries = Vec::new();
        let end =
            self.catalog
                .visit_checkpoints(id, source, chunker, |end, extents| {
                    match std::io::Write::write_all(&mut out, extents) {
                        Ok(()) => {
                            boundaries.push(end);
                            true
                        }
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                })?;
        std::io::Write::flush(&mut out).map_err(spill)?;
        drop(out);
        if let Some(e) = failed {
            return Err(spill(e));
        }
        if end == 0 {
            self.catalog.clear_checkpoints(id)?;
            return Ok(None);
        }
        Ok(Some((file, boundaries)))
    }

    /// The manifest of the newest snapshot of `instance` taken from the same, unchanged
    /// image file (`source`), if a full scan of it was taken in the last
    /// [`RESCAN_AFTER_SECS`], read from the first target store that has a good copy
    /// (read only: nothing is repaired from here); `None` if there is none, or anything
    /// fails (the snapshot then scans the image).
    fn reusable(
        &self,
        instance: &str,
        source: &str,
        targets: &[geosnap_replication::Bucket],
    ) -> Option<geosnap_engine::manifest::EncodedManifest> {
        let since = self.now() - RESCAN_AFTER_SECS;
        let previous = match self.catalog.snapshot_from_source(instance, source, since) {
            Ok(p) => p?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for a snapshot to reuse; scanning");
                return None;
            }
        };
        let memory = self.regions.tuning.manifest_memory;
        self.block_on(async {
            for t in targets {
                if let Ok(m) = t.read_manifest(&previous, memory).await
                    && m.header().meta.id == previous
                {
                    return Some(m);
                }
            }
            None
        })
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
/// trusted: a write within the same clock tick as the `stat` (coarse on some filesystems)
/// could leave them as they were.
const SOURCE_SETTLED_NS: i128 = 2_000_000_000;

/// A snapshot reuses an earlier manifest only if the same file was fully scanned within
/// this long: whatever a stamp misses, a day's snapshots at most repeat it.
pub const RESCAN_AFTER_SECS: i64 = 24 * 3600;

/// Filesystems whose inode change time is kept by the kernel and cannot be set from user
/// space (ext2/3/4, XFS, Btrfs, ZFS, F2FS, tmpfs). Elsewhere (FAT, network and FUSE
/// filesystems, whose times may come from another clock or not exist) a file is always
/// scanned.
const TRUSTED_FILESYSTEMS: [i64; 6] = [
    0xEF53,
    0x5846_5342,
    0x9123_683E,
    0x2FC1_2FC1,
    0xF2F5_2010,
    0x0102_1994,
];

/// The identity, size and times of an image file, with this boot's id (device, inode,
/// size, mtime and ctime in nanoseconds), if they can be trusted to change when its
/// content does: `None` for block devices and other non-files, for files on other
/// filesystems than [`TRUSTED_FILESYSTEMS`], for a file some process on this host has open
/// for writing (a running VM: writes through a shared mapping, or still in flight, need
/// not touch the times at once), and for a file changed in the last two seconds. ctime
/// cannot be set back by `touch` or `utimensat`, so content written with its mtime
/// restored still changes the stamp; the boot id makes every stamp new after a reboot,
/// since a crash can lose a time update whose data was already durable.
pub fn source_stamp(path: &std::path::Path) -> Option<String> {
    // Asked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let m = file.metadata().ok()?;
    if !m.is_file() || !trusted_filesystem(&file) || open_for_writing(&file) {
        return None;
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    stamp(&m, boot.trim(), now)
}

/// [`source_stamp`]'s text for metadata `m` read at `now` (ns) during boot `boot`.
fn stamp(m: &impl std::os::unix::fs::MetadataExt, boot: &str, now: i128) -> Option<String> {
    let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let (mtime, ctime) = (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()));
    if boot.is_empty() || now - mtime.max(ctime) < SOURCE_SETTLED_NS {
        return None;
    }
    Some(format!(
        "{boot}:{}:{}:{}:{mtime}:{ctime}",
        m.dev(),
        m.ino(),
        m.size()
    ))
}

fn trusted_filesystem(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs writes one statfs into `s` for a descriptor that is open.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut s) } != 0 {
        return false;
    }
    TRUSTED_FILESYSTEMS.contains(&(s.f_type as i64))
}

/// Whether any process on this host may have the file open for writing: a read lease is
/// refused (EAGAIN) while one does. Taken and dropped at once; where leases cannot be
/// taken at all (not the file's owner, leases disabled) the answer is yes.
fn open_for_writing(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_SETLEASE on a descriptor that is open; the lease is dropped before the
    // descriptor closes.
    unsafe {
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
            return true;
        }
        libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp names the boot, so a file whose time update a crash lost is not trusted
    /// after the reboot; a file changed less than two seconds ago is not trusted at all.
    #[test]
    fn stamps_change_with_the_boot_and_wait_for_the_file_to_settle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, b"data").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        let changed = {
            use std::os::unix::fs::MetadataExt;
            i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
        };
        assert_eq!(stamp(&m, "boot-a", changed + 1_999_999_999), None);
        let a = stamp(&m, "boot-a", changed + SOURCE_SETTLED_NS).unwrap();
        let b = stamp(&m, "boot-b", changed + SOURCE_SETTLED_NS).unwrap();
        assert_ne!(a, b);
        assert_eq!(stamp(&m, "", changed + SOURCE_SETTLED_NS), None);
        // Fresh from the write: no stamp from the real function either.
        assert_eq!(source_stamp(&path), None);
        assert_eq!(source_stamp(dir.path()), None);
    }
}
