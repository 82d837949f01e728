//! The boundary between the engine and whatever keeps chunks: [`ChunkSink`] receives
//! frames of new chunks during a snapshot, [`ChunkSource`] hands chunk bytes back for a
//! restore. The replication crate implements both over packs in object stores;
//! [`MemStore`] and [`DirStore`] serve tests and benchmarks.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::codec::{Decoder, EncodedFrame};
use crate::slab::Slabs;
use crate::{ChunkId, Error};

/// Where a snapshot's new chunks go.
pub trait ChunkSink: Sync {
    /// Claims `id`: `Some(class)` if the caller must store it, `None` if the store holds it
    /// already or another worker is storing it (known chunks skip compression). Chunks of
    /// different classes never share a frame: a sink that sends frames to several places
    /// gives each set of destinations its own class, so that a frame goes only where every
    /// chunk in it is lacking.
    fn claim(&self, id: &ChunkId) -> Option<u32>;

    /// Stores a frame of claimed chunks, all of `class` (what [`ChunkSink::claim`] returned
    /// for each of them). May block to apply backpressure; must be idempotent.
    fn put_frame(&self, frame: EncodedFrame, class: u32) -> Result<(), Error>;
}

/// Chunk bytes fetched for a restore, unverified: the engine checks every hash.
pub type Fetched = Vec<(ChunkId, Bytes)>;

/// Where a restore's chunks come from.
pub trait ChunkSource: Sync {
    /// Splits the chunks a restore needs into groups that are cheap to fetch together
    /// (a frame, a pack region). The default fetches chunk by chunk.
    fn plan(&self, ids: &[ChunkId]) -> Vec<Vec<ChunkId>> {
        ids.iter().map(|id| vec![*id]).collect()
    }

    /// The bytes of the chunks in `ids` that copy number `attempt` holds (0 is the preferred
    /// copy; a failed chunk is asked for again with a higher attempt, one id at a time).
    /// `Ok(None)` means there is no such copy. Chunks it cannot provide are left out.
    fn fetch(&self, ids: &[ChunkId], attempt: u32) -> Result<Option<Fetched>, Error>;

    /// Called with bytes that verified on `attempt > 0`, so the source can repair the
    /// copies that failed.
    fn recovered(&self, _id: &ChunkId, _attempt: u32, _data: &Bytes) {}

    /// Threads worth fetching groups at once (each holds its group's bytes until the
    /// restore's writer takes them); `None` lets the restore choose from the chunk size.
    fn parallelism(&self) -> Option<usize> {
        None
    }
}

/// Frames held in memory with a chunk → frame index.
#[derive(Debug, Default)]
struct Frames {
    frames: Vec<Bytes>,
    index: HashMap<ChunkId, usize>,
}

impl Frames {
    fn add(&mut self, frame: EncodedFrame) -> usize {
        let n = self.frames.len();
        for (id, _) in &frame.chunks {
            self.index.entry(*id).or_insert(n);
        }
        self.frames.push(frame.bytes);
        n
    }

    fn fetch(&self, ids: &[ChunkId]) -> Result<Fetched, Error> {
        let mut by_frame: HashMap<usize, Vec<ChunkId>> = HashMap::new();
        for id in ids {
            if let Some(&f) = self.index.get(id) {
                by_frame.entry(f).or_default().push(*id);
            }
        }
        let mut dec = Decoder::new()?;
        let mut out = Vec::new();
        for (f, wanted) in by_frame {
            // A frame that does not decode yields nothing: its chunks fall back.
            let Ok(d) = dec.decode(&self.frames[f]) else {
                continue;
            };
            for (id, b) in d.chunks() {
                if wanted.contains(&id) {
                    out.push((id, b));
                }
            }
        }
        Ok(out)
    }
}

/// Chunks in memory, for benchmarks and tests. Frames are kept as copies in [`Slabs`].
#[derive(Debug, Default)]
pub struct MemStore {
    frames: Mutex<Frames>,
    slabs: Slabs,
    claimed: Mutex<HashSet<ChunkId>>,
    stored: AtomicU64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.frames.lock().map(|f| f.index.len()).unwrap_or(0)
    }

    /// Whether no chunk is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total size of the stored frames.
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Replaces the frame that holds `id` with `damage(frame)` (to simulate rot in tests).
    pub fn damage(&self, id: &ChunkId, damage: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(mut f) = self.frames.lock()
            && let Some(&n) = f.index.get(id)
        {
            let mut v = f.frames[n].to_vec();
            damage(&mut v);
            f.frames[n] = Bytes::from(v);
        }
    }
}

impl ChunkSink for MemStore {
    fn claim(&self, id: &ChunkId) -> Option<u32> {
        let fresh = self
            .claimed
            .lock()
            .map(|mut c| c.insert(*id))
            .unwrap_or(true);
        let held = self
            .frames
            .lock()
            .map(|f| f.index.contains_key(id))
            .unwrap_or(false);
        (fresh && !held).then_some(0)
    }

    fn put_frame(&self, frame: EncodedFrame, _class: u32) -> Result<(), Error> {
        let len = frame.bytes.len();
        self.stored.fetch_add(len as u64, Ordering::Relaxed);
        let bytes = self.slabs.copy(len, [&frame.bytes[..]]);
        if let Ok(mut f) = self.frames.lock() {
            f.add(EncodedFrame {
                chunks: frame.chunks,
                bytes,
            });
        }
        Ok(())
    }
}

impl ChunkSource for MemStore {
    fn fetch(&self, ids: &[ChunkId], attempt: u32) -> Result<Option<Fetched>, Error> {
        if attempt > 0 {
            return Ok(None);
        }
        let frames = self
            .frames
            .lock()
            .map_err(|_| Error::Codec("store lock poisoned".into()))?;
        frames.fetch(ids).map(Some)
    }
}

/// Frames in a local directory, one file per frame, written through a temporary name; the
/// chunk → frame index lives in memory.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    index: Mutex<HashMap<ChunkId, PathBuf>>,
    claimed: Mutex<HashSet<ChunkId>>,
    next: AtomicU64,
}

impl DirStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: &Path) -> io::Result<DirStore> {
        fs::create_dir_all(root)?;
        Ok(DirStore {
            root: root.to_path_buf(),
            index: Mutex::default(),
            claimed: Mutex::default(),
            next: AtomicU64::new(0),
        })
    }

    /// File holding the frame that holds chunk `id`.
    pub fn path_of(&self, id: &ChunkId) -> Option<PathBuf> {
        self.index.lock().ok()?.get(id).cloned()
    }

    fn io(&self, e: io::Error) -> Error {
        Error::store(io::Error::new(
            e.kind(),
            format!("{}: {e}", self.root.display()),
        ))
    }
}

impl ChunkSink for DirStore {
    fn claim(&self, id: &ChunkId) -> Option<u32> {
        let fresh = self
            .claimed
            .lock()
            .map(|mut c| c.insert(*id))
            .unwrap_or(true);
        (fresh && self.path_of(id).is_none()).then_some(0)
    }

    fn put_frame(&self, frame: EncodedFrame, _class: u32) -> Result<(), Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.root.join(format!("frame-{n:08}"));
        let mut tmp = tempfile::NamedTempFile::new_in(&self.root).map_err(|e| self.io(e))?;
        tmp.write_all(&frame.bytes).map_err(|e| self.io(e))?;
        tmp.persist(&path).map_err(|e| self.io(e.error))?;
        if let Ok(mut index) = self.index.lock() {
            for (id, _) in &frame.chunks {
                index.entry(*id).or_insert_with(|| path.clone());
            }
        }
        Ok(())
    }
}

impl ChunkSource for DirStore {
    fn fetch(&self, ids: &[ChunkId], attempt: u32) -> Result<Option<Fetched>, Error> {
        if attempt > 0 {
            return Ok(None);
        }
        let mut dec = Decoder::new()?;
        let mut out = Vec::new();
        for id in ids {
            let Some(path) = self.path_of(id) else {
                continue;
            };
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(e)),
            };
            if let Ok(d) = dec.decode(&bytes)
                && let Some((_, b)) = d.chunks().find(|(c, _)| c == id)
            {
                out.push((*id, b));
            }
        }
        Ok(Some(out))
    }
}
