//! The boundary between the engine and whatever keeps chunks: [`ChunkSink`] receives them
//! during a snapshot, [`ChunkSource`] hands them back for a restore. The replication crate
//! implements both over object stores; [`DirStore`] and [`MemStore`] serve tests and
//! benchmarks.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::{ChunkId, Error};

/// Where a snapshot's new chunks go.
pub trait ChunkSink: Sync {
    /// Claims `id`: `true` if the caller must encode and [`ChunkSink::put`] it, `false` if
    /// the store holds it already or another worker is storing it. Lets known chunks skip
    /// compression.
    fn claim(&self, id: &ChunkId) -> bool;

    /// Stores an encoded chunk object (see [`crate::codec`]). May block to apply
    /// backpressure; must be idempotent.
    fn put(&self, id: ChunkId, object: Bytes) -> Result<(), Error>;
}

/// Where a restore's chunks come from.
pub trait ChunkSource: Sync {
    /// The stored object for `id`. `attempt` is 0 first and grows each time the object of an
    /// earlier attempt was missing or failed verification, so a source can turn to another
    /// replica; `Ok(None)` means no other copy is available.
    fn fetch(&self, id: &ChunkId, attempt: u32) -> Result<Option<Bytes>, Error>;

    /// Called with the object that verified when `attempt > 0`, so the source can repair
    /// the copies that failed.
    fn recovered(&self, _id: &ChunkId, _attempt: u32, _object: &Bytes) {}
}

/// Path of a chunk object under a store root: `chunks/<2 hex>/<64 hex>`.
pub fn chunk_key(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("chunks/{}/{}", &hex[..2], hex)
}

/// Chunks in a local directory, one file per chunk, written through a temporary name.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    claimed: Mutex<HashSet<ChunkId>>,
}

impl DirStore {
    /// A store rooted at `root` (created if missing).
    pub fn new(root: &Path) -> io::Result<DirStore> {
        fs::create_dir_all(root.join("chunks"))?;
        Ok(DirStore {
            root: root.to_path_buf(),
            claimed: Mutex::default(),
        })
    }

    /// File holding chunk `id`.
    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        self.root.join(chunk_key(id))
    }

    fn io(&self, e: io::Error) -> Error {
        Error::store(io::Error::new(
            e.kind(),
            format!("{}: {e}", self.root.display()),
        ))
    }
}

impl ChunkSink for DirStore {
    fn claim(&self, id: &ChunkId) -> bool {
        let fresh = self
            .claimed
            .lock()
            .map(|mut c| c.insert(*id))
            .unwrap_or(true);
        fresh && !self.path_of(id).exists()
    }

    fn put(&self, id: ChunkId, object: Bytes) -> Result<(), Error> {
        let path = self.path_of(&id);
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.io(e))?;
        tmp.write_all(&object).map_err(|e| self.io(e))?;
        tmp.persist(&path).map_err(|e| self.io(e.error))?;
        Ok(())
    }
}

impl ChunkSource for DirStore {
    fn fetch(&self, id: &ChunkId, attempt: u32) -> Result<Option<Bytes>, Error> {
        if attempt > 0 {
            return Ok(None);
        }
        match fs::read(self.path_of(id)) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::ChunkMissing { id: *id }),
            Err(e) => Err(self.io(e)),
        }
    }
}

/// Chunks in memory, for benchmarks and tests.
#[derive(Debug, Default)]
pub struct MemStore {
    chunks: Mutex<HashMap<ChunkId, Bytes>>,
    claimed: Mutex<HashSet<ChunkId>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.chunks.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no chunk is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total size of the stored objects.
    pub fn stored_bytes(&self) -> u64 {
        self.chunks
            .lock()
            .map(|c| c.values().map(|b| b.len() as u64).sum())
            .unwrap_or(0)
    }

    /// Replaces the object of `id` (to simulate damage in tests).
    pub fn replace(&self, id: ChunkId, object: Bytes) {
        if let Ok(mut c) = self.chunks.lock() {
            c.insert(id, object);
        }
    }
}

impl ChunkSink for MemStore {
    fn claim(&self, id: &ChunkId) -> bool {
        let fresh = self
            .claimed
            .lock()
            .map(|mut c| c.insert(*id))
            .unwrap_or(true);
        fresh
            && !self
                .chunks
                .lock()
                .map(|c| c.contains_key(id))
                .unwrap_or(false)
    }

    fn put(&self, id: ChunkId, object: Bytes) -> Result<(), Error> {
        if let Ok(mut c) = self.chunks.lock() {
            c.insert(id, object);
        }
        Ok(())
    }
}

impl ChunkSource for MemStore {
    fn fetch(&self, id: &ChunkId, attempt: u32) -> Result<Option<Bytes>, Error> {
        if attempt > 0 {
            return Ok(None);
        }
        let found = self.chunks.lock().ok().and_then(|c| c.get(id).cloned());
        found.map(Some).ok_or(Error::ChunkMissing { id: *id })
    }
}
