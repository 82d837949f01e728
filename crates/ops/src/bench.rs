//! `geosnap bench`: what this machine can do, stage by stage, and how close the whole
//! pipeline comes to the ceiling those stages imply.
//!
//! Stage rates are measured on one core over a sample of the image's data (at most
//! 256 MiB spread over the image, so memory stays bounded); the ceiling is the rate at which
//! all cores could read and zero-check the image's allocated bytes, hash and compress its
//! data and copy the compressed frames into one pack per region, if nothing else cost
//! anything, counting the cores as what they hash and compress together (measured: two
//! hardware threads of one core are not two cores). The pipelines write into three
//! in-memory regions, so no disk or network limits them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use geosnap_engine::chunker::ChunkerParams;
use geosnap_engine::codec::{Decoder, Encoder, FRAME_TARGET};
use geosnap_engine::image::Image;
use geosnap_engine::imagegen::{self, Profile};
use geosnap_engine::manifest::{Backing, SnapshotMeta};
use geosnap_engine::scanner::{Piece, Scanner};
use geosnap_engine::slab::{self, Slabs};
use geosnap_engine::snapshot::{SnapshotOptions, snapshot_image};
use geosnap_engine::store::MemStore;
use geosnap_engine::zero::is_zero;
use geosnap_engine::{ChunkId, NoProgress, SnapshotId};
use geosnap_replication::reader::{RestoreRequest, restore_snapshot};
use geosnap_replication::region::{Region, RegionSpec, Regions};
use geosnap_replication::retry::RetryPolicy;
use geosnap_replication::writer::{WriteRequest, write_snapshot};
use serde::Serialize;

use crate::{Error, Result};

/// Largest sample of data the stage measurements hold in memory.
const SAMPLE_MAX: usize = 256 << 20;

/// Regions a snapshot is written to.
const REGIONS: usize = 3;

/// Bytes of a pack, as regions write them by default.
const PACK_BYTES: usize = 16 << 20;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// An existing image; `None` generates one of `size` and `profile` in `scratch`.
    pub input: Option<PathBuf>,
    /// Size of a generated image.
    pub size: u64,
    /// Profile of a generated image.
    pub profile: Profile,
    /// Chunker under test.
    pub chunker: ChunkerParams,
    /// zstd level under test.
    pub level: i32,
    /// Also compare chunkers on the image.
    pub compare_chunkers: bool,
    /// Where a generated image and restored files go.
    pub scratch: PathBuf,
}

/// One stage's single-core rate.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// Stage name.
    pub name: String,
    /// Bytes processed.
    pub bytes: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// MB/s (10^6 bytes per second) on one core.
    pub mb_per_s: f64,
}

/// A whole pipeline's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Pipeline {
    /// Seconds.
    pub seconds: f64,
    /// MB/s of logical image size.
    pub mb_per_s: f64,
    /// Fraction of the ceiling reached (snapshot only).
    pub of_ceiling: Option<f64>,
}

/// The image measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchImage {
    /// Path.
    pub path: PathBuf,
    /// Logical size.
    pub size: u64,
    /// Bytes in chunks.
    pub data_bytes: u64,
    /// Bytes in zero runs.
    pub zero_bytes: u64,
    /// Whether geosnap generated it for this run.
    pub generated: bool,
}

/// One chunker's figures on the image.
#[derive(Clone, Debug, Serialize)]
pub struct ChunkerFigures {
    /// Chunker.
    pub chunker: String,
    /// Chunks cut.
    pub chunks: u64,
    /// Distinct chunks.
    pub unique: u64,
    /// Chunk sizes: (upper bound in bytes, count), powers of two.
    pub histogram: Vec<(u64, u64)>,
    /// Data bytes / distinct bytes.
    pub dedup_ratio: f64,
    /// Distinct bytes / stored (compressed) bytes.
    pub zstd_ratio: f64,
    /// Snapshot MB/s into memory (logical size).
    pub mb_per_s: f64,
}

/// Everything `geosnap bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The image.
    pub image: BenchImage,
    /// Cores used.
    pub cores: usize,
    /// How many cores' worth of hashing and compression all of them do at once: `cores`
    /// where each is a core of its own, about 1 where two threads share one core.
    pub parallel_cores: f64,
    /// The code that hashes batches of chunks on this CPU (`avx512-16`, `sha-ni`, ...).
    pub sha256: String,
    /// Chunker and zstd level.
    pub chunker: String,
    /// zstd level.
    pub level: i32,
    /// Single-core stage rates.
    pub stages: Vec<Stage>,
    /// Core-seconds per GiB of this image for read + zero check + hash + compress + packing.
    pub core_seconds_per_gib: f64,
    /// Ceiling on all cores, MB/s of logical image size.
    pub ceiling_mb_per_s: f64,
    /// Snapshot into three in-memory regions.
    pub snapshot: Pipeline,
    /// Restore from one in-memory region to a file.
    pub restore: Pipeline,
    /// `--compare-chunkers`.
    pub chunkers: Vec<ChunkerFigures>,
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        0.0
    }
}

/// Runs of each stage; its rate is the median run's. One run of a stage lasts from tens of
/// milliseconds (a pack copy) to half a second, and a single run of the shortest moved the
/// ceiling by a fifth from one hour to the next.
const STAGE_RUNS: usize = 3;

/// Runs of each whole pipeline; its time is the median run's. The first snapshot in a
/// process may pay for memory the kernel has to find and clear first (on this project's
/// virtual machine up to twice the time of the runs after it).
const PIPELINE_RUNS: usize = 3;

/// Stops keeping freed slabs, and frees those kept, however the bench ends.
struct ReleaseSlabs;

impl Drop for ReleaseSlabs {
    fn drop(&mut self) {
        slab::keep_freed(0);
    }
}

/// The median of `runs` (reordered), 0 if there are none.
fn median(runs: &mut [f64]) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs.get(runs.len() / 2).copied().unwrap_or(0.0)
}

fn stage(name: &str, bytes: u64, mut f: impl FnMut()) -> Stage {
    let mut runs = [0.0; STAGE_RUNS];
    for r in &mut runs {
        let t = Instant::now();
        f();
        *r = t.elapsed().as_secs_f64();
    }
    let seconds = median(&mut runs);
    Stage {
        name: name.into(),
        bytes,
        seconds,
        mb_per_s: mbps(bytes, seconds),
    }
}

/// Up to [`SAMPLE_MAX`] bytes of the image's data, in windows spread evenly over the image
/// (the first 256 MiB of a disk is rarely like the rest of it); all-zero windows are skipped.
fn sample(image: &Image) -> Result<Vec<u8>> {
    let window = 8u64 << 20;
    let windows = (SAMPLE_MAX as u64 / window).max(1);
    let stride = (image.size() / windows).max(window);
    let mut data = Vec::new();
    let mut at = 0u64;
    while at < image.size() && data.len() < SAMPLE_MAX {
        let Some(d) = image.next_data(at)? else {
            break;
        };
        let n = window.min(image.size() - d) as usize;
        let start = data.len();
        image.read_into(d, n, &mut data)?;
        if is_zero(&data[start..]) {
            data.truncate(start);
        }
        at = (d + n as u64).max(at + stride);
    }
    Ok(data)
}

/// Bytes of the image that are not holes.
fn allocated_bytes(image: &Image) -> Result<u64> {
    let mut total = 0;
    let mut at = 0;
    while let Some(d) = image.next_data(at)? {
        let end = image.next_hole(d)?.min(image.size());
        total += end - d;
        at = end;
        if at >= image.size() {
            break;
        }
    }
    Ok(total)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes; `None` where there is none.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether `need` bytes leave a tenth of `available` free.
fn fits_in_memory(need: u64, available: u64) -> bool {
    need <= available / 10 * 9
}

/// "1.5 GiB".
fn human(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn memory_regions() -> Result<Regions> {
    let list = ["it-1", "de-1", "nl-1"]
        .iter()
        .map(|n| {
            Region::open(
                &RegionSpec::memory(n),
                Default::default(),
                RetryPolicy::default(),
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Regions::new(list, 2)?)
}

/// Runs the benchmark.
pub fn run(opts: &BenchOptions, rt: &tokio::runtime::Handle) -> Result<BenchReport> {
    let (path, generated) = match &opts.input {
        Some(p) => (p.clone(), false),
        None => {
            let p = opts.scratch.join("bench.img");
            imagegen::generate(&p, opts.size, opts.profile, 1)
                .and_then(|()| std::fs::File::open(&p)?.sync_all())
                .map_err(|e| Error::io(format!("cannot write {}", p.display()), e))?;
            // Written back now, so that the kernel's write-back of the new image does not
            // run on the cores while the stages and pipelines are timed.
            (p, true)
        }
    };
    let image = Image::open(&path)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Stage rates on a sample, one core each, in a steady state: buffers are reused as the
    // pipeline reuses them, so no stage pays for the kernel zeroing fresh pages.
    let data = sample(&image)?;
    let sample_len = data.len() as u64;
    let mut stages = Vec::new();
    let mut buf = Vec::with_capacity(8 << 20);
    let read_len = image.size().min(1 << 30);
    let mut read_all = || {
        let mut pos = 0;
        while pos < read_len {
            buf.clear();
            let _ = image.read_into(pos, 8 << 20, &mut buf);
            pos += 8 << 20;
        }
    };
    // Once to bring the image into the page cache (as the pipelines will find it), then
    // timed.
    read_all();
    stages.push(stage("read", read_len, read_all));
    stages.push(stage("zero detection", sample_len, || {
        for w in data.chunks(4096) {
            std::hint::black_box(is_zero(w));
        }
    }));
    let chunk = |keep: bool| {
        let mut pieces = Vec::new();
        let mut s = Scanner::new(opts.chunker);
        let mut pos = 0;
        while pos < data.len() {
            let n = (8 << 20).min(data.len() - pos);
            let mut b = s.take_buffer(n);
            let carry = b.len() - n;
            b[carry..].copy_from_slice(&data[pos..pos + n]);
            pos += n;
            s.push(b, pos == data.len(), &mut |p| {
                if let Piece::Chunk { data, .. } = p {
                    if keep {
                        pieces.push(data);
                    } else {
                        std::hint::black_box(data.len());
                    }
                }
            });
        }
        pieces
    };
    stages.push(stage("chunking", sample_len, || {
        chunk(false);
    }));
    let pieces = chunk(true);
    // Hashing, compression and decoding see only the chunks, not the zero runs the scanner
    // cut out of the sample: their rates are per byte of chunk data, as the ceiling uses
    // them (per sample byte, the 1 GiB mixed image's SHA-256 read 2970 MB/s for 2080).
    let data_len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    let mut ids = Vec::with_capacity(pieces.len());
    stages.push(stage("SHA-256", data_len, || {
        // In batches as a snapshot's workers hash them: a job of up to a frame's bytes.
        let mut batch: Vec<&[u8]> = Vec::new();
        let mut bytes = 0;
        for p in &pieces {
            if bytes + p.len() > FRAME_TARGET && !batch.is_empty() {
                ids.extend(ChunkId::of_each(batch.drain(..)));
                bytes = 0;
            }
            batch.push(&p[..]);
            bytes += p.len();
        }
        ids.extend(ChunkId::of_each(batch));
    }));
    let mut enc = Encoder::new(opts.level)?;
    let mut encode = |keep: bool| {
        let mut frames = Vec::new();
        let mut group: Vec<(ChunkId, &[u8])> = Vec::new();
        let mut bytes = 0;
        let mut emit = |group: &[(ChunkId, &[u8])], frames: &mut Vec<_>| {
            if let Ok(f) = enc.encode(group) {
                if keep {
                    frames.push(f.bytes);
                } else {
                    std::hint::black_box(f.bytes.len());
                }
            }
        };
        for (id, p) in ids.iter().zip(&pieces) {
            if bytes + p.len() > FRAME_TARGET && !group.is_empty() {
                emit(&group, &mut frames);
                group.clear();
                bytes = 0;
            }
            group.push((*id, p));
            bytes += p.len();
        }
        if !group.is_empty() {
            emit(&group, &mut frames);
        }
        frames
    };
    stages.push(stage(
        &format!("zstd level {}", opts.level),
        data_len,
        || {
            encode(false);
        },
    ));
    let frames = encode(true);
    let parallel_cores = parallel_cores(cores, &pieces, opts.level)?;
    let compressed: u64 = frames.iter().map(|f| f.len() as u64).sum();
    // Stored bytes per byte of the sample (zero runs and zstd both shrink it); a sample
    // without data (an image of zeros) stores nothing.
    let stored_per_sample_byte = if sample_len == 0 {
        0.0
    } else {
        compressed as f64 / sample_len as f64
    };

    // Three in-memory regions will hold three copies of what the snapshot stores: refuse
    // before filling the machine's memory, not after. Stored bytes are estimated from the
    // sample (zero runs and zstd both shrink it), with a quarter more for safety.
    let allocated = allocated_bytes(&image)?;
    let need = (allocated as f64 * stored_per_sample_byte * REGIONS as f64 * 1.25) as u64;
    if let Some(available) = mem_available()
        && !fits_in_memory(need, available)
    {
        let image = if generated {
            let _ = std::fs::remove_file(&path);
            "the generated image".to_string()
        } else {
            path.display().to_string()
        };
        return Err(Error::BenchTooLarge {
            image,
            data: human(allocated),
            need: human(need),
            available: human(available),
        });
    }

    // The memory regions, and the pack stage standing in for them, keep the slabs that
    // one run's stores free for the next run (up to the estimate above), as a real
    // region's disk or network does not have to be found again: only the first run of
    // each pays the kernel for fresh memory (`geosnap_engine::slab`).
    slab::keep_freed(usize::try_from(need).unwrap_or(usize::MAX));
    let release = ReleaseSlabs;
    // A region writer hands each pack to its store as the frames and their lengths; a
    // memory region joins them into its slabs (`geosnap_replication::memory`): one copy
    // per region, measured on the compressed bytes it stores, slabs freed at the end. One
    // untimed run first: the first huge pages a process asks for may have to be compacted
    // and cleared by the kernel (on this project's virtual machine that made the stage read
    // 586 MB/s instead of 10 GB/s, and the ceiling fall below the pipeline).
    let lengths: Vec<[u8; 4]> = frames
        .iter()
        .map(|f| (f.len() as u32).to_le_bytes())
        .collect();
    let pack = || {
        let slabs = Slabs::new();
        let mut packs = Vec::new();
        let (mut parts, mut len): (Vec<&[u8]>, usize) = (Vec::new(), 0);
        for (f, n) in frames.iter().zip(&lengths) {
            if len + 4 + f.len() > PACK_BYTES && !parts.is_empty() {
                packs.push(slabs.copy(len, parts.drain(..)));
                len = 0;
            }
            parts.extend([&n[..], &f[..]]);
            len += 4 + f.len();
        }
        packs.push(slabs.copy(len, parts.drain(..)));
        std::hint::black_box(packs);
    };
    pack();
    stages.push(stage("pack (per region)", compressed, pack));
    let mut dec = Decoder::new()?;
    stages.push(stage("decode + verify", data_len, || {
        for f in &frames {
            std::hint::black_box(dec.decode_verified(f).ok());
        }
    }));
    // Snapshot into three in-memory regions, PIPELINE_RUNS times into fresh ones (each
    // run's regions are dropped before the next), and the median run counts. The last
    // run's regions serve the restores.
    let options = SnapshotOptions {
        chunker: opts.chunker,
        level: opts.level,
        threads: 0,
    };
    let mut snap_runs = Vec::with_capacity(PIPELINE_RUNS);
    let mut snapshot_once = || -> Result<_> {
        let regions = memory_regions()?;
        let meta = SnapshotMeta {
            id: SnapshotId::generate(),
            instance: "bench".into(),
            name: "bench".into(),
            backing: Backing::Image,
            home_region: "it-1".into(),
            created_at: 0,
            completed_at: 0,
            retention_days: 0,
        };
        let t = Instant::now();
        let out = rt.block_on(write_snapshot(
            &regions,
            WriteRequest {
                image: path.clone(),
                meta: meta.clone(),
                options,
                reuse: None,
                resume: Default::default(),
            },
            Arc::new(NoProgress),
            &|| 0,
        ))?;
        let seconds = t.elapsed().as_secs_f64();
        snap_runs.push(seconds);
        tracing::debug!(seconds, "bench snapshot run");
        Ok((regions, meta, out))
    };
    let mut last = snapshot_once()?;
    for _ in 1..PIPELINE_RUNS {
        drop(last);
        last = snapshot_once()?;
    }
    let (regions, meta, out) = last;
    let snap_secs = median(&mut snap_runs);
    let data_bytes = out.stats.data_bytes;

    // The ceiling: every data byte read, zero-checked, hashed and compressed, on all cores.
    let rate = |name: &str| {
        stages
            .iter()
            .find(|s| s.name.starts_with(name))
            // A stage that had nothing to do (no data in the sample) costs nothing.
            .filter(|s| s.bytes > 0 && s.mb_per_s > 0.0)
            .map_or(f64::INFINITY, |s| s.mb_per_s * 1e6)
    };
    // Every allocated byte is read and zero-checked (written zeros too, holes never);
    // only data is hashed, compressed and packed.
    let scan = 1.0 / rate("read") + 1.0 / rate("zero");
    let stored_per_data_byte = compressed as f64 / data_len.max(1) as f64;
    let per_data_byte = 1.0 / rate("SHA")
        + 1.0 / rate("zstd")
        + REGIONS as f64 * stored_per_data_byte / rate("pack");
    let core_secs = allocated as f64 * scan + data_bytes as f64 * per_data_byte;
    let ceiling_secs = core_secs / parallel_cores;
    let core_seconds_per_gib = core_secs / (image.size().max(1) as f64 / (1u64 << 30) as f64);
    let ceiling_mb_per_s = mbps(image.size(), ceiling_secs);
    let snapshot = Pipeline {
        seconds: snap_secs,
        mb_per_s: mbps(image.size(), snap_secs),
        of_ceiling: Some(ceiling_secs / snap_secs),
    };

    // Restore from one region to a file, PIPELINE_RUNS times; the median run counts.
    let target = opts.scratch.join("bench-restored.img");
    let mut restore_runs = Vec::with_capacity(PIPELINE_RUNS);
    for _ in 0..PIPELINE_RUNS {
        let t = Instant::now();
        let restored = rt.block_on(restore_snapshot(
            &regions,
            RestoreRequest {
                snapshot: meta.id,
                backing: Backing::Image,
                home: "it-1".into(),
                from: "it-1".into(),
                strict: true,
                target: target.clone(),
                overwrite: true,
            },
            Arc::new(NoProgress),
        ));
        let seconds = t.elapsed().as_secs_f64();
        restore_runs.push(seconds);
        tracing::debug!(seconds, "bench restore run");
        let _ = std::fs::remove_file(&target);
        restored?;
    }
    let restore_secs = median(&mut restore_runs);
    // Three copies of what the image stores: gone before the chunker comparison fills
    // memory again.
    drop(regions);
    drop(release);
    let restore = Pipeline {
        seconds: restore_secs,
        mb_per_s: mbps(image.size(), restore_secs),
        of_ceiling: None,
    };

    let chunkers = if opts.compare_chunkers {
        compare(&path, opts.level)?
    } else {
        Vec::new()
    };
    let report = BenchReport {
        image: BenchImage {
            path: path.clone(),
            size: image.size(),
            data_bytes,
            zero_bytes: out.stats.zero_bytes,
            generated,
        },
        cores,
        parallel_cores,
        sha256: ChunkId::batch_backend().to_string(),
        chunker: opts.chunker.to_string(),
        level: opts.level,
        stages,
        core_seconds_per_gib,
        ceiling_mb_per_s,
        snapshot,
        restore,
        chunkers,
    };
    if generated {
        let _ = std::fs::remove_file(&path);
    }
    Ok(report)
}

/// Bytes of chunk data the scaling measurement hashes and compresses on each thread.
const SCALING_BYTES: usize = 64 << 20;

/// How many cores' worth of work `cores` threads do together: the same hashing and
/// compression (up to [`SCALING_BYTES`] of the sample's chunks, in frame-sized jobs as a
/// snapshot's workers take them) timed on one thread, then on `cores` threads at once, each
/// doing all of it. Virtual machines often give two hardware threads of one core as two
/// CPUs; the ceiling counts what they do together, not two whole cores.
fn parallel_cores(cores: usize, pieces: &[bytes::Bytes], level: i32) -> Result<f64> {
    if cores <= 1 || pieces.is_empty() {
        return Ok(cores.max(1) as f64);
    }
    let mut jobs: Vec<Vec<&[u8]>> = vec![Vec::new()];
    let (mut job_bytes, mut total) = (0, 0);
    for p in pieces {
        if total >= SCALING_BYTES {
            break;
        }
        if job_bytes + p.len() > FRAME_TARGET && job_bytes > 0 {
            jobs.push(Vec::new());
            job_bytes = 0;
        }
        jobs.last_mut().expect("one job at least").push(&p[..]);
        job_bytes += p.len();
        total += p.len();
    }
    let work = |enc: &mut Encoder| -> Result<()> {
        for job in &jobs {
            let ids = ChunkId::of_each(job.iter().copied());
            let group: Vec<(ChunkId, &[u8])> = ids.into_iter().zip(job.iter().copied()).collect();
            std::hint::black_box(enc.encode(&group)?);
        }
        Ok(())
    };
    // Each side is the median of STAGE_RUNS runs, after one untimed run that warms the
    // encoders and the caches.
    let mut encoders = (0..cores)
        .map(|_| Encoder::new(level))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    work(&mut encoders[0])?;
    let mut alone = [0.0; STAGE_RUNS];
    for r in &mut alone {
        let t = Instant::now();
        work(&mut encoders[0])?;
        *r = t.elapsed().as_secs_f64();
    }
    let mut together = [0.0; STAGE_RUNS];
    for r in &mut together {
        let barrier = std::sync::Barrier::new(cores);
        let t = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = encoders
                .iter_mut()
                .map(|enc| {
                    let (barrier, work) = (&barrier, &work);
                    s.spawn(move || {
                        barrier.wait();
                        work(enc)
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("a scaling thread panicked"))
        })?;
        *r = t.elapsed().as_secs_f64();
    }
    let (alone, together) = (median(&mut alone), median(&mut together));
    if together <= 0.0 {
        return Ok(cores as f64);
    }
    Ok((cores as f64 * alone / together).clamp(1.0, cores as f64))
}

/// Snapshots the image once per chunker into memory and describes the chunks.
fn compare(path: &Path, level: i32) -> Result<Vec<ChunkerFigures>> {
    let image = Image::open(path)?;
    let mut out = Vec::new();
    for c in [
        "fixed:4K",
        "fixed:16K",
        "fixed:64K",
        "fixed:256K",
        "fixed:1M",
        "fixed:4M",
        "cdc:4K:16K:64K",
        "cdc:16K:64K:256K",
        "cdc:256K:1M:4M",
    ] {
        let chunker: ChunkerParams = c.parse()?;
        let store = MemStore::new();
        let t = Instant::now();
        let s = snapshot_image(
            &image,
            &SnapshotOptions {
                chunker,
                level,
                threads: 0,
            },
            &store,
            &NoProgress,
        )?;
        let secs = t.elapsed().as_secs_f64();
        let mut hist: std::collections::BTreeMap<u64, u64> = Default::default();
        for e in s.extents.into_extents()? {
            if let geosnap_engine::manifest::Extent::Chunk { len, .. } = e {
                *hist.entry(u64::from(len).next_power_of_two()).or_default() += 1;
            }
        }
        out.push(ChunkerFigures {
            chunker: c.into(),
            chunks: s.stats.chunks,
            unique: s.stats.new_chunks,
            histogram: hist.into_iter().collect(),
            dedup_ratio: s.stats.data_bytes as f64 / s.stats.new_bytes.max(1) as f64,
            zstd_ratio: s.stats.new_bytes as f64 / s.stats.stored_bytes.max(1) as f64,
            mb_per_s: mbps(image.size(), secs),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_guard_leaves_a_tenth_free() {
        assert!(fits_in_memory(9 << 30, 10 << 30));
        assert!(!fits_in_memory((9 << 30) + 1, 10 << 30));
        assert!(!fits_in_memory(u64::MAX, 24 << 30));
        // This machine reports its free memory.
        assert!(mem_available().is_some_and(|m| m > 0));
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
