//! The region simulator: an [`ObjectStore`] wrapper that adds latency, a bandwidth cap,
//! outages, transient errors and silent corruption on read, all changeable at run time
//! through a shared [`FaultConfig`], plus helpers that lose or damage stored objects.
//!
//! Composes like object_store's own `ThrottledStore`: `FaultyStore<T> { inner: T, .. }`
//! forwards every trait method (checked by `#[deny(clippy::missing_trait_methods)]`).

use std::fmt;
use std::io;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// A region's simulated condition. The default is a healthy region.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultConfig {
    /// Every call fails with "region X is unavailable".
    pub down: bool,
    /// Added to every request.
    pub latency_ms: u64,
    /// Bytes per second shared by all transfers; 0 is unlimited.
    pub bandwidth: u64,
    /// Probability that a call fails with a transient error.
    pub error_rate: f64,
    /// Probability that an object read comes back with one bit flipped.
    pub corrupt_rate: f64,
    /// Seed of the error and corruption draws.
    pub seed: u64,
    /// Bytes this process may write to the region before every write fails as on a full
    /// disk; 0 is no limit.
    pub full_after: u64,
}

impl FaultConfig {
    /// Whether the simulator changes nothing.
    pub fn is_healthy(&self) -> bool {
        *self
            == FaultConfig {
                seed: self.seed,
                ..FaultConfig::default()
            }
    }

    /// Applies a `--mode` from the command line on top of this state.
    pub fn apply(&mut self, mode: FaultMode) {
        match mode {
            FaultMode::Down => self.down = true,
            FaultMode::Flaky(rate) => self.error_rate = rate,
            FaultMode::Corrupt(rate) => self.corrupt_rate = rate,
            FaultMode::Full(bytes) => self.full_after = bytes.max(1),
            FaultMode::Slow {
                latency_ms,
                bandwidth,
            } => {
                self.latency_ms = latency_ms;
                self.bandwidth = bandwidth;
            }
        }
    }
}

impl fmt::Display for FaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.down {
            parts.push("down".to_string());
        }
        if self.error_rate > 0.0 {
            parts.push(format!("flaky:{}", self.error_rate));
        }
        if self.corrupt_rate > 0.0 {
            parts.push(format!("corrupt:{}", self.corrupt_rate));
        }
        if self.latency_ms > 0 || self.bandwidth > 0 {
            parts.push(format!("slow:{},{}", self.latency_ms, self.bandwidth));
        }
        if self.full_after > 0 {
            parts.push(format!(
                "full:{}",
                geosnap_engine::chunker::format_size(self.full_after)
            ));
        }
        if parts.is_empty() {
            f.write_str("healthy")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// One simulated failure, as typed after `geosnap region fail R --mode`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultMode {
    /// `down`
    Down,
    /// `flaky:RATE`
    Flaky(f64),
    /// `corrupt:RATE`
    Corrupt(f64),
    /// `full:SIZE`: writes fail as on a full disk once this process has written SIZE
    /// bytes to the region.
    Full(u64),
    /// `slow:LATENCY_MS,BYTES_PER_S`
    Slow {
        /// Latency per request.
        latency_ms: u64,
        /// Bandwidth cap (0 = none).
        bandwidth: u64,
    },
}

impl FromStr for FaultMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!(
                "'{s}' is not a fault mode; use down, flaky:RATE, corrupt:RATE (RATE from 0 to 1), \
                 slow:LATENCY_MS,BYTES_PER_S or full:SIZE"
            )
        };
        let rate = |r: &str| -> Result<f64, String> {
            match r.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
                _ => Err(usage()),
            }
        };
        match s.split_once(':') {
            None if s == "down" => Ok(FaultMode::Down),
            Some(("flaky", r)) => Ok(FaultMode::Flaky(rate(r)?)),
            Some(("corrupt", r)) => Ok(FaultMode::Corrupt(rate(r)?)),
            Some(("full", size)) => match geosnap_engine::chunker::parse_size(size) {
                Some(bytes) if bytes > 0 => Ok(FaultMode::Full(bytes)),
                _ => Err(usage()),
            },
            Some(("slow", args)) => {
                let (l, b) = args.split_once(',').ok_or_else(usage)?;
                let latency_ms = l.trim().parse().map_err(|_| usage())?;
                let bandwidth = geosnap_engine::chunker::parse_size(b).ok_or_else(usage)?;
                Ok(FaultMode::Slow {
                    latency_ms,
                    bandwidth,
                })
            }
            _ => Err(usage()),
        }
    }
}

/// How far behind its clock a shaped link may run before a transfer waits.
const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Shared, changeable simulator state of one region.
#[derive(Debug)]
pub struct Faults {
    region: String,
    config: Mutex<FaultConfig>,
    rng: Mutex<Xoshiro256PlusPlus>,
    /// When the simulated link is next free (bandwidth shaping).
    link_free_at: Mutex<Instant>,
    /// Bytes written to the region through this process (`full_after`).
    written: std::sync::atomic::AtomicU64,
}

impl Faults {
    /// State for `region`, starting from `config`.
    pub fn new(region: &str, config: FaultConfig) -> Arc<Faults> {
        Arc::new(Faults {
            region: region.to_string(),
            rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(config.seed)),
            config: Mutex::new(config),
            link_free_at: Mutex::new(Instant::now()),
            written: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The current settings.
    pub fn config(&self) -> FaultConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces the settings (and reseeds the draws).
    pub fn set(&self, config: FaultConfig) {
        if let Ok(mut r) = self.rng.lock() {
            *r = Xoshiro256PlusPlus::seed_from_u64(config.seed);
        }
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
        // A region failed as full again starts empty.
        self.written.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    fn draw(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .map(|mut r| r.random::<f64>() < p)
                .unwrap_or(false)
    }

    fn unavailable(&self) -> object_store::Error {
        object_store::Error::Generic {
            store: "simulator",
            source: Box::new(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "simulated outage".to_string(),
            )),
        }
    }

    /// Fails the call if the region is down or a transient error is drawn; then waits
    /// the request latency.
    async fn enter(&self) -> object_store::Result<()> {
        let c = self.config();
        if c.down {
            return Err(self.unavailable());
        }
        if self.draw(c.error_rate) {
            return Err(object_store::Error::Generic {
                store: "simulator",
                source: Box::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("region {}: simulated transient failure", self.region),
                )),
            });
        }
        if c.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(c.latency_ms)).await;
        }
        Ok(())
    }

    /// Fails a write of `bytes` as a full disk would (`ErrorKind::StorageFull`, which
    /// retries treat as permanent) if it would take what this process wrote to the region
    /// past `full_after`; else counts it as written.
    fn reserve(&self, bytes: usize) -> object_store::Result<()> {
        use std::sync::atomic::Ordering;
        let limit = self.config().full_after;
        let bytes = bytes as u64;
        let taken = self
            .written
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (limit == 0 || w.saturating_add(bytes) <= limit).then(|| w.saturating_add(bytes))
            });
        match taken {
            Ok(_) => Ok(()),
            Err(_) => Err(object_store::Error::Generic {
                store: "simulator",
                source: Box::new(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "simulated full disk: {} written",
                        geosnap_engine::chunker::format_size(limit)
                    ),
                )),
            }),
        }
    }

    /// Waits for `bytes` to cross the shaped link.
    async fn transfer(&self, bytes: usize) {
        let bw = self.config().bandwidth;
        if bw == 0 || bytes == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / bw as f64);
        let done = match self.link_free_at.lock() {
            Ok(mut free) => {
                let start = (*free).max(Instant::now());
                *free = start + cost;
                *free
            }
            Err(_) => return,
        };
        // The timer's resolution is a millisecond or more: sleeping for every small piece
        // of a stream would cap each stream far below the link (8 KiB pieces of a local
        // file at one per tick: about 16 MiB/s against a 100 MiB/s link). Pieces ride on
        // credit until the link is behind by more than `TIMER_SLACK`; the link's clock keeps
        // every byte, so the average rate is the one asked for.
        if done > Instant::now() + TIMER_SLACK {
            tokio::time::sleep_until(done.into()).await;
        }
    }

    fn maybe_corrupt(&self, data: Bytes) -> Bytes {
        let p = self.config().corrupt_rate;
        if data.is_empty() || !self.draw(p) {
            return data;
        }
        self.flip_a_bit(data)
    }

    fn flip_a_bit(&self, data: Bytes) -> Bytes {
        if data.is_empty() {
            return data;
        }
        let mut v = data.to_vec();
        if let Ok(mut r) = self.rng.lock() {
            let i = r.random_range(0..v.len());
            v[i] ^= 1 << r.random_range(0..8u32);
        }
        Bytes::from(v)
    }
}

/// A multipart upload through the simulated network: every part and the completion can
/// meet an outage or a transient error, and parts cross the shaped link. Aborts are
/// passed through (a real abort may fail too; here it cleans up what tests leave).
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    faults: Arc<Faults>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        let faults = self.faults.clone();
        let len = data.content_length();
        // Refused before the inner store sees the part (it may keep parts as they come).
        if let Err(e) = faults.reserve(len) {
            return Box::pin(async move { Err(e) });
        }
        let part = self.inner.put_part(data);
        Box::pin(async move {
            faults.enter().await?;
            faults.transfer(len).await;
            part.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.faults.enter().await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// An [`ObjectStore`] seen through a simulated network.
#[derive(Debug)]
pub struct FaultyStore<T> {
    inner: T,
    faults: Arc<Faults>,
}

impl<T> FaultyStore<T> {
    /// Wraps `inner` with the shared `faults`.
    pub fn new(inner: T, faults: Arc<Faults>) -> Self {
        FaultyStore { inner, faults }
    }
}

impl<T: ObjectStore> fmt::Display for FaultyStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: ObjectStore> ObjectStore for FaultyStore<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.faults.enter().await?;
        self.faults.reserve(payload.content_length())?;
        self.faults.transfer(payload.content_length()).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.faults.enter().await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.faults.enter().await?;
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if head {
            return Ok(result);
        }
        let meta = result.meta.clone();
        let range = result.range.clone();
        let attributes = result.attributes.clone();
        let extensions = result.extensions.clone();
        // One draw per object; a corrupted one is read whole to flip a bit in it. Without a
        // bandwidth to shape, anything else is handed back as the store gave it (a local
        // file stays a file, read in one go by `bytes()` or streamed by the caller); with
        // one, it streams through piece by piece, each piece crossing the shaped link (a
        // large manifest is never held whole either way).
        let corrupt = self.faults.draw(self.faults.config().corrupt_rate);
        if !corrupt && self.faults.config().bandwidth == 0 {
            return Ok(result);
        }
        let payload = if corrupt {
            let data = result.bytes().await?;
            self.faults.transfer(data.len()).await;
            let data = self.faults.flip_a_bit(data);
            stream::once(async move { Ok(data) }).boxed()
        } else {
            let faults = self.faults.clone();
            result
                .into_stream()
                .then(move |piece| {
                    let faults = faults.clone();
                    async move {
                        let piece = piece?;
                        faults.transfer(piece.len()).await;
                        Ok(piece)
                    }
                })
                .boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.faults.enter().await?;
        let parts = self.inner.get_ranges(location, ranges).await?;
        let total = parts.iter().map(Bytes::len).sum();
        self.faults.transfer(total).await;
        Ok(parts
            .into_iter()
            .map(|b| self.faults.maybe_corrupt(b))
            .collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if self.faults.config().down {
            let err = self.faults.unavailable().to_string();
            return locations
                .map(move |_| {
                    Err(object_store::Error::Generic {
                        store: "simulator",
                        source: err.clone().into(),
                    })
                })
                .boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if self.faults.config().down {
            return stream::once(futures::future::ready(Err(self.faults.unavailable()))).boxed();
        }
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if self.faults.config().down {
            return stream::once(futures::future::ready(Err(self.faults.unavailable()))).boxed();
        }
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.faults.enter().await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.faults.enter().await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.faults.enter().await?;
        self.inner.rename_opts(from, to, options).await
    }
}

/// Deletes a seeded random `fraction` of the objects under `prefix`; returns their keys.
pub async fn lose_objects(
    store: &dyn ObjectStore,
    prefix: &Path,
    fraction: f64,
    seed: u64,
) -> object_store::Result<Vec<Path>> {
    let victims = pick(store, prefix, fraction, seed).await?;
    for key in &victims {
        store.delete(key).await?;
    }
    Ok(victims)
}

/// Flips one bit in a seeded random `fraction` of the objects under `prefix` (damage at
/// rest, as a failing disk would do); returns their keys.
pub async fn corrupt_objects(
    store: &dyn ObjectStore,
    prefix: &Path,
    fraction: f64,
    seed: u64,
) -> object_store::Result<Vec<Path>> {
    let victims = pick(store, prefix, fraction, seed ^ 0x5bd1e995).await?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for key in &victims {
        let mut data = store.get(key).await?.bytes().await?.to_vec();
        if data.is_empty() {
            continue;
        }
        let i = rng.random_range(0..data.len());
        data[i] ^= 1 << rng.random_range(0..8u32);
        store.put(key, PutPayload::from(data)).await?;
    }
    Ok(victims)
}

async fn pick(
    store: &dyn ObjectStore,
    prefix: &Path,
    fraction: f64,
    seed: u64,
) -> object_store::Result<Vec<Path>> {
    let mut keys: Vec<Path> = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    keys.sort();
    let n = ((keys.len() as f64) * fraction).round() as usize;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for i in 0..n.min(keys.len()) {
        let j = rng.random_range(i..keys.len());
        keys.swap(i, j);
    }
    keys.truncate(n);
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn store(config: FaultConfig) -> (FaultyStore<InMemory>, Arc<Faults>) {
        let faults = Faults::new("de-1", config);
        (FaultyStore::new(InMemory::new(), faults.clone()), faults)
    }

    /// Reads stream through piece by piece (a large manifest is never held whole), and a
    /// multipart upload meets the simulated network part by part: an outage that starts in
    /// the middle of one fails its next part.
    #[tokio::test]
    async fn reads_stream_and_multipart_uploads_meet_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new("de-1", FaultConfig::default());
        let s = FaultyStore::new(
            crate::direct::DirectFs::new(dir.path()).unwrap(),
            faults.clone(),
        );
        let key = Path::from("big");
        let data = Bytes::from(vec![7u8; 20 << 20]);
        s.put(&key, data.clone().into()).await.unwrap();
        let pieces: Vec<Bytes> = s
            .get(&key)
            .await
            .unwrap()
            .into_stream()
            .try_collect()
            .await
            .unwrap();
        assert!(pieces.len() > 1, "{} piece(s)", pieces.len());
        assert!(pieces.iter().all(|p| p.len() <= 1 << 20));
        assert_eq!(pieces.concat(), data);

        let mut up = s.put_multipart(&Path::from("parts")).await.unwrap();
        up.put_part(Bytes::from(vec![1u8; 1 << 20]).into())
            .await
            .unwrap();
        faults.set(FaultConfig {
            down: true,
            ..Default::default()
        });
        let e = up
            .put_part(Bytes::from(vec![2u8; 1 << 20]).into())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("simulated outage"), "{e}");
        assert!(up.complete().await.is_err());
        up.abort().await.unwrap();
    }

    #[tokio::test]
    async fn outage_fails_every_call_with_the_region_name_and_heals() {
        let (s, faults) = store(FaultConfig::default());
        let key = Path::from("a");
        s.put(&key, PutPayload::from_static(b"x")).await.unwrap();
        faults.set(FaultConfig {
            down: true,
            ..Default::default()
        });
        let err = s.get(&key).await.unwrap_err().to_string();
        assert!(err.contains("simulated outage"), "{err}");
        assert!(s.put(&key, PutPayload::from_static(b"y")).await.is_err());
        assert!(s.list(None).try_collect::<Vec<_>>().await.is_err());
        faults.set(FaultConfig::default());
        assert_eq!(s.get(&key).await.unwrap().bytes().await.unwrap(), "x");
    }

    #[tokio::test]
    async fn error_rate_and_corruption_are_seeded_and_close_to_the_rate() {
        let (s, _) = store(FaultConfig {
            error_rate: 0.1,
            seed: 1,
            ..Default::default()
        });
        let mut failures = 0;
        for i in 0..2000 {
            if s.put(&Path::from(format!("k{i}")), PutPayload::from_static(b"v"))
                .await
                .is_err()
            {
                failures += 1;
            }
        }
        assert!((120..=280).contains(&failures), "{failures}");

        let (s, _) = store(FaultConfig::default());
        let key = Path::from("k");
        s.put(&key, PutPayload::from(vec![0u8; 100])).await.unwrap();
        let faults = Faults::new(
            "de-1",
            FaultConfig {
                corrupt_rate: 1.0,
                seed: 2,
                ..Default::default()
            },
        );
        let bad = FaultyStore::new(s, faults);
        let data = bad.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(data.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_is_shared_by_concurrent_transfers() {
        let (s, _) = store(FaultConfig {
            bandwidth: 1_000_000,
            ..Default::default()
        });
        let start = tokio::time::Instant::now();
        let puts = (0..4).map(|i| {
            let s = &s;
            async move {
                s.put(
                    &Path::from(format!("k{i}")),
                    PutPayload::from(vec![1u8; 500_000]),
                )
                .await
            }
        });
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
        // 2 MB over a 1 MB/s link takes two seconds however it is split.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took < Duration::from_millis(2100), "{took:?}");
    }

    #[test]
    fn modes_parse_and_bad_ones_are_explained() {
        assert_eq!("down".parse::<FaultMode>().unwrap(), FaultMode::Down);
        assert_eq!(
            "flaky:0.1".parse::<FaultMode>().unwrap(),
            FaultMode::Flaky(0.1)
        );
        assert_eq!(
            "slow:20,200M".parse::<FaultMode>().unwrap(),
            FaultMode::Slow {
                latency_ms: 20,
                bandwidth: 200 << 20
            }
        );
        assert_eq!(
            "full:8M".parse::<FaultMode>().unwrap(),
            FaultMode::Full(8 << 20)
        );
        for bad in [
            "up",
            "flaky:2",
            "flaky:-0.1",
            "slow:20",
            "corrupt:x",
            "",
            "full:0",
            "full:-1",
            "full:",
        ] {
            let err = bad.parse::<FaultMode>().unwrap_err();
            assert!(err.contains("fault mode"), "{err}");
        }
        let mut c = FaultConfig::default();
        assert!(c.is_healthy());
        c.apply(FaultMode::Down);
        assert_eq!(c.to_string(), "down");
        c.apply(FaultMode::Full(100));
        assert_eq!(c.to_string(), "down full:100");
        c.apply(FaultMode::Full(3 << 30));
        assert_eq!(c.to_string(), "down full:3G");
    }

    /// A full region refuses the write that would take it past its size, as a full disk
    /// (permanent: not retried), and still takes smaller ones that fit, and every read.
    #[tokio::test]
    async fn a_full_region_refuses_what_does_not_fit_as_a_full_disk() {
        let (s, faults) = store(FaultConfig {
            full_after: 100,
            ..Default::default()
        });
        s.put(&Path::from("a"), Bytes::from(vec![1u8; 60]).into())
            .await
            .unwrap();
        let e = s
            .put(&Path::from("b"), Bytes::from(vec![2u8; 50]).into())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("simulated full disk: 100 written"),
            "{e}"
        );
        assert!(!crate::retry::is_transient(&e), "{e}");
        s.put(&Path::from("c"), Bytes::from(vec![3u8; 40]).into())
            .await
            .unwrap();
        let mut up = s.put_multipart(&Path::from("d")).await.unwrap();
        assert!(up.put_part(Bytes::from(vec![4u8; 1]).into()).await.is_err());
        up.abort().await.unwrap();
        assert_eq!(
            s.get(&Path::from("a"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            60
        );
        assert!(
            s.head(&Path::from("b")).await.is_err(),
            "a refused object was stored"
        );
        // Healed: writes go through again.
        faults.set(FaultConfig::default());
        s.put(&Path::from("b"), Bytes::from(vec![2u8; 50]).into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn lose_and_corrupt_objects_touch_the_asked_fraction() {
        let s = InMemory::new();
        for i in 0..200 {
            s.put(
                &Path::from(format!("chunks/{i:03}")),
                PutPayload::from(vec![0u8; 10]),
            )
            .await
            .unwrap();
        }
        let lost = lose_objects(&s, &Path::from("chunks"), 0.05, 1)
            .await
            .unwrap();
        assert_eq!(lost.len(), 10);
        let left: Vec<_> = s.list(None).try_collect().await.unwrap();
        assert_eq!(left.len(), 190);
        let bad = corrupt_objects(&s, &Path::from("chunks"), 0.1, 1)
            .await
            .unwrap();
        assert_eq!(bad.len(), 19);
        for k in bad {
            let d = s.get(&k).await.unwrap().bytes().await.unwrap();
            assert_ne!(d.as_ref(), &[0u8; 10]);
        }
    }
}
