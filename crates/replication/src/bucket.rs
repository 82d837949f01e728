//! A bucket is one store of one region (its main store or its volume store), with the
//! object operations replication needs, each retried and each error naming the region.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use geosnap_engine::{ChunkId, SnapshotId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::layout;
use crate::retry::{RetryPolicy, is_transient, retry};
use crate::{Error, Result};

/// Which store of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// The region's object store: image-backed snapshots.
    Main,
    /// The region's volume store: volume-backed snapshots, never replicated.
    Volume,
}

/// One store of one region.
#[derive(Clone)]
pub struct Bucket {
    /// Region name.
    pub region: String,
    /// Main or volume store.
    pub kind: StoreKind,
    /// The store itself; replication never asks what backs it.
    pub store: Arc<dyn ObjectStore>,
    /// A local directory whose filesystem is flushed (`syncfs`) before a manifest is
    /// written, when the store is a directory; stores that are durable on success have none.
    pub sync_root: Option<PathBuf>,
    /// Retry policy for transient errors.
    pub retry: RetryPolicy,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bucket({})", self)
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StoreKind::Main => f.write_str(&self.region),
            StoreKind::Volume => write!(f, "{} volume store", self.region),
        }
    }
}

impl Bucket {
    /// Maps a store error to ours, naming this bucket.
    pub fn err(&self, e: object_store::Error) -> Error {
        if is_transient(&e) {
            // object_store wraps the cause as "Generic <store> error: <cause>"; keep the cause.
            let reason = match &e {
                object_store::Error::Generic { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            Error::RegionUnavailable {
                region: self.to_string(),
                reason,
            }
        } else {
            Error::Store {
                region: self.to_string(),
                source: e,
            }
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &Path) -> Result<Bytes> {
        retry(self.retry, || async {
            self.store.get(key).await?.bytes().await
        })
        .await
        .map_err(|e| self.err(e))
    }

    /// Writes a whole object (atomically, as every object_store put is).
    pub async fn put(&self, key: &Path, data: Bytes) -> Result<()> {
        retry(self.retry, || {
            let payload = PutPayload::from(data.clone());
            async move { self.store.put(key, payload).await.map(|_| ()) }
        })
        .await
        .map_err(|e| self.err(e))
    }

    /// Deletes an object; deleting what is not there is not an error.
    pub async fn delete(&self, key: &Path) -> Result<()> {
        match retry(self.retry, || self.store.delete(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &Path) -> Result<bool> {
        match retry(self.retry, || self.store.head(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Every object under `prefix` with its size and time.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        retry(self.retry, || {
            self.store.list(Some(prefix)).try_collect::<Vec<_>>()
        })
        .await
        .map_err(|e| self.err(e))
    }

    /// The ids of every chunk the bucket holds (one listing, not one request per chunk).
    pub async fn chunk_ids(&self) -> Result<HashSet<ChunkId>> {
        Ok(self
            .list(&layout::chunks_prefix())
            .await?
            .iter()
            .filter_map(|m| layout::parse_chunk(&m.location))
            .collect())
    }

    /// The ids of every snapshot with a manifest in the bucket.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        let mut ids: Vec<SnapshotId> = self
            .list(&layout::snapshots_prefix())
            .await?
            .iter()
            .filter_map(|m| layout::parse_manifest(&m.location))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// A chunk object, or `ChunkMissing` naming this bucket.
    pub async fn get_chunk(&self, id: &ChunkId) -> Result<Bytes> {
        match self.get(&layout::chunk(id)).await {
            Err(Error::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Err(Error::ChunkMissing {
                id: *id,
                region: self.to_string(),
            }),
            other => other,
        }
    }

    /// A manifest's bytes, or `SnapshotNotInRegion`.
    pub async fn get_manifest(&self, id: &SnapshotId) -> Result<Bytes> {
        match self.get(&layout::manifest(id)).await {
            Err(Error::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Err(Error::SnapshotNotInRegion {
                id: *id,
                region: self.to_string(),
            }),
            other => other,
        }
    }

    /// Makes everything written so far durable before a manifest refers to it: `syncfs` on
    /// a directory-backed store, nothing for stores whose puts are durable on success.
    pub async fn sync(&self) -> Result<()> {
        let Some(root) = self.sync_root.clone() else {
            return Ok(());
        };
        let region = self.to_string();
        tokio::task::spawn_blocking(move || syncfs(&root))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(|e| Error::RegionUnavailable {
                region,
                reason: format!("cannot flush to disk: {e}"),
            })
    }
}

fn syncfs(root: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(root)?;
    // SAFETY: syncfs on a descriptor we own for the duration of the call.
    let r = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
