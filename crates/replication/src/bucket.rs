//! A bucket is one store of one region (its main store or its volume store), with the
//! object operations replication needs, each retried and each error naming the region.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use geosnap_engine::manifest::{EncodedManifest, ManifestBytes, Spool};
use geosnap_engine::{ChunkId, SnapshotId};
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::layout;
use crate::retry::{RetryPolicy, is_transient, retry};
use crate::s3::{S3Location, root_cause, s3_error_code};
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
    /// Endpoint and bucket when the store is an S3 bucket, so that errors say where.
    pub remote: Option<S3Location>,
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
    /// Maps a store error to ours, naming this bucket (and, for an S3 bucket, its endpoint
    /// and bucket name when the cause is the connection, the credentials or the bucket).
    pub fn err(&self, e: object_store::Error) -> Error {
        if let Some(mapped) = self.remote.as_ref().and_then(|r| self.remote_err(r, &e)) {
            return mapped;
        }
        if let Some(reason) = crate::retry::out_of_space(&e) {
            return Error::RegionFull {
                region: self.to_string(),
                reason,
            };
        }
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

    /// What an S3 client error means, said in one sentence: unreachable, access denied,
    /// no such bucket, or a server error; `None` for anything else (not found, simulator).
    fn remote_err(&self, remote: &S3Location, e: &object_store::Error) -> Option<Error> {
        let here = format!("{self} ({remote})");
        if let Some(kind) = transport_failure(e) {
            let what = match kind {
                object_store::client::HttpErrorKind::Connect => "unreachable",
                object_store::client::HttpErrorKind::Timeout => "not answering (timed out)",
                _ => "failing",
            };
            return Some(Error::RegionUnavailable {
                region: here,
                reason: format!("{what}: {}", root_cause(e)),
            });
        }
        // Which calls come back as which object_store variant differs (a denied list is
        // `Generic`, a denied get `PermissionDenied`): decide by the HTTP status and S3 code.
        let text = e.to_string();
        let status = text
            .split_once("status code: ")
            .map(|(_, rest)| rest.split(':').next().unwrap_or(rest).trim().to_string());
        let code = s3_error_code(&text);
        let detail = code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default();
        let denied = matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || status
            .as_deref()
            .is_some_and(|s| s.starts_with("401") || s.starts_with("403"));
        if code
            .as_deref()
            .is_some_and(|c| c.starts_with("NoSuchBucket"))
        {
            Some(Error::Config {
                region: self.to_string(),
                reason: format!(
                    "bucket {} does not exist in region {} (at {}); create it or fix the URL",
                    remote.bucket, self.region, remote.endpoint
                ),
            })
        } else if denied {
            Some(Error::Config {
                region: self.to_string(),
                reason: format!(
                    "access denied by {remote}{detail}; check access_key_id and the secret"
                ),
            })
        } else if let Some(reason) = crate::retry::out_of_space(e) {
            Some(Error::RegionFull {
                region: here,
                reason: format!("{reason}{detail}"),
            })
        } else if let (object_store::Error::Generic { .. }, Some(status)) = (e, status) {
            Some(Error::RegionUnavailable {
                region: here,
                reason: format!("HTTP {status}{detail}"),
            })
        } else {
            None
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
            // On S3 a NotFound can also mean the bucket itself is missing: say so.
            Err(e @ object_store::Error::NotFound { .. })
                if self.remote.is_some() && e.to_string().contains("NoSuchBucket") =>
            {
                Err(self.err(e))
            }
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
    pub async fn chunk_ids(&self) -> Result<geosnap_engine::IdSet> {
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

    /// A manifest's bytes, or `SnapshotNotInRegion`: in memory if it is at most `memory`
    /// bytes long, otherwise streamed into an anonymous temporary file.
    pub async fn get_manifest(&self, id: &SnapshotId, memory: u64) -> Result<ManifestBytes> {
        let key = layout::manifest(id);
        // The outer result is the store's (retried); the inner one the temporary file's.
        let got = retry(self.retry, || async {
            let r = self.store.get(&key).await?;
            if r.meta.size <= memory {
                return Ok(Ok(ManifestBytes::Memory(r.bytes().await?)));
            }
            let mut spool = match Spool::new() {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let range = r.range.clone();
            if let GetResultPayload::File(file, _) = r.payload {
                // A local store's file: copied in 1 MiB reads on a blocking thread, not the
                // 8 KiB pieces of its stream.
                return tokio::task::spawn_blocking(move || spool_file(file, range, spool))
                    .await
                    .map_err(|e| object_store::Error::JoinError { source: e })?;
            }
            let mut body = r.into_stream();
            while let Some(part) = body.try_next().await? {
                if let Err(e) = spool.write(&part) {
                    return Ok(Err(e));
                }
            }
            Ok(spool.finish())
        })
        .await;
        match got.map_err(|e| self.err(e)) {
            Ok(spooled) => Ok(spooled?),
            Err(Error::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Err(Error::SnapshotNotInRegion {
                id: *id,
                region: self.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// A manifest, read as [`Bucket::get_manifest`] does and checked: a damaged one is an
    /// engine error, a temporary file that fails a local one ([`Error::is_local`]). One kept
    /// in a file is checked off the async threads (that reads it whole).
    pub async fn read_manifest(&self, id: &SnapshotId, memory: u64) -> Result<EncodedManifest> {
        let bytes = self.get_manifest(id, memory).await?;
        if bytes.as_memory().is_some() {
            return Ok(EncodedManifest::parse(bytes)?);
        }
        tokio::task::spawn_blocking(move || EncodedManifest::parse(bytes))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
            .map_err(Error::Engine)
    }

    /// Writes a manifest: in one put from memory, or from its temporary file as a
    /// multipart upload of [`MANIFEST_PART`]-byte parts ([`LOCAL_MANIFEST_PART`] to a
    /// local directory), the next part read while the last one is sent, so that a manifest
    /// of any size passes through two parts of memory.
    pub async fn put_manifest(&self, id: &SnapshotId, bytes: &ManifestBytes) -> Result<()> {
        let key = layout::manifest(id);
        if let Some(b) = bytes.as_memory() {
            return self.put(&key, b.clone()).await;
        }
        let got = retry(self.retry, || async {
            let upload = self.store.put_multipart(&key).await?;
            let part_size = match self.remote {
                Some(_) => MANIFEST_PART,
                None => LOCAL_MANIFEST_PART,
            };
            let mut w = WriteMultipart::new_with_chunk_size(upload, part_size);
            let mut offset = 0;
            while offset < bytes.len() {
                let n = (bytes.len() - offset).min(part_size as u64) as usize;
                let mut part = vec![0u8; n];
                if let Err(e) = bytes.read_exact_at(&mut part, offset) {
                    self.abort_upload(w, &key).await;
                    return Ok(Err(e));
                }
                if let Err(e) = w.wait_for_capacity(1).await {
                    self.abort_upload(w, &key).await;
                    return Err(e);
                }
                w.put(Bytes::from(part));
                offset += n as u64;
            }
            w.finish().await.map(|_| Ok(()))
        })
        .await
        .map_err(|e| self.err(e))?;
        Ok(got?)
    }

    /// Gives up a multipart upload; a store that cannot be told (it is down) keeps the
    /// parts until its own clean-up (an S3 lifecycle rule, `docs/deploy.md`).
    async fn abort_upload(&self, w: WriteMultipart, key: &Path) {
        if let Err(e) = w.abort().await {
            tracing::warn!(store = %self, %key, error = %e, "could not abort a multipart upload");
        }
    }
}

/// Copies `range` of a local store's file into `spool`: the outer error is the store's (its
/// file could not be read), the inner one the temporary file's.
fn spool_file(
    mut file: std::fs::File,
    range: std::ops::Range<u64>,
    mut spool: Spool,
) -> object_store::Result<std::result::Result<ManifestBytes, geosnap_engine::Error>> {
    use std::io::{Read, Seek};
    let store_err = |e: std::io::Error| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    };
    file.seek(std::io::SeekFrom::Start(range.start))
        .map_err(store_err)?;
    let mut left = range.end - range.start;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        file.read_exact(&mut buf[..want]).map_err(store_err)?;
        if let Err(e) = spool.write(&buf[..want]) {
            return Ok(Err(e));
        }
        left -= want as u64;
    }
    Ok(spool.finish())
}

/// Size of one part of a manifest's multipart upload (S3 wants at least 5 MiB but the last).
pub const MANIFEST_PART: usize = 8 << 20;

/// Size of one part of a manifest written to a local directory, which has no minimum:
/// with three regions, a manifest through its file costs 6 MiB of parts in memory at most.
pub const LOCAL_MANIFEST_PART: usize = 1 << 20;

/// The kind of transport failure (connect, timeout, ...) behind an S3 client error, if any.
fn transport_failure(e: &object_store::Error) -> Option<object_store::client::HttpErrorKind> {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(h) = cur.downcast_ref::<object_store::client::HttpError>() {
            return Some(h.kind());
        }
        cur = cur.source()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::DirectFs;

    fn bucket(store: Arc<dyn ObjectStore>) -> Bucket {
        Bucket {
            region: "it-1".into(),
            kind: StoreKind::Main,
            store,
            remote: None,
            retry: RetryPolicy::default(),
        }
    }

    fn all(b: &ManifestBytes) -> Vec<u8> {
        let mut v = vec![0; b.len() as usize];
        b.read_exact_at(&mut v, 0).unwrap();
        v
    }

    /// A manifest kept in a file goes up in parts and comes back whole, into memory or into
    /// a file, from a directory store and from an in-memory one.
    #[tokio::test]
    async fn spooled_manifests_go_up_in_parts_and_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let stores: [Arc<dyn ObjectStore>; 2] = [
            Arc::new(DirectFs::new(dir.path()).unwrap()),
            Arc::new(object_store::memory::InMemory::new()),
        ];
        // Two whole parts and a short one.
        let data: Vec<u8> = (0..2 * LOCAL_MANIFEST_PART as u64 + 12_345)
            .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8)
            .collect();
        let mut spool = Spool::new().unwrap();
        for piece in data.chunks(1 << 20) {
            spool.write(piece).unwrap();
        }
        let spooled = spool.finish().unwrap();
        assert!(spooled.as_memory().is_none());
        let id = SnapshotId([3; 16]);
        for store in stores {
            let b = bucket(store);
            let missing = b.get_manifest(&id, 0).await.unwrap_err();
            assert!(
                matches!(missing, Error::SnapshotNotInRegion { .. }),
                "{missing}"
            );
            b.put_manifest(&id, &spooled).await.unwrap();
            let to_file = b.get_manifest(&id, data.len() as u64 - 1).await.unwrap();
            assert!(to_file.as_memory().is_none());
            assert!(all(&to_file) == data);
            let to_memory = b.get_manifest(&id, data.len() as u64).await.unwrap();
            assert!(to_memory.as_memory().is_some_and(|m| m[..] == data[..]));
            // No staging file is left beside the manifest.
            let listed = b.list(&layout::snapshots_prefix()).await.unwrap();
            assert_eq!(listed.len(), 1, "{listed:?}");
        }
        let on_disk = std::fs::read(dir.path().join(layout::manifest(&id).as_ref())).unwrap();
        assert!(on_disk == data);
    }

    /// Through a flaky simulated network (one call in ten fails), a manifest's multipart
    /// upload is retried whole until it lands, leaves no staging file behind, and reads
    /// back the same; a store that is down fails it in one error naming the region.
    #[tokio::test]
    async fn spooled_manifests_survive_transient_errors_and_name_an_outage() {
        use crate::simulator::{FaultConfig, Faults, FaultyStore};
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new(
            "it-1",
            FaultConfig {
                error_rate: 0.1,
                seed: 5,
                ..Default::default()
            },
        );
        let store = FaultyStore::new(DirectFs::new(dir.path()).unwrap(), faults.clone());
        let mut b = bucket(Arc::new(store));
        b.retry = RetryPolicy {
            attempts: 12,
            base: std::time::Duration::from_millis(1),
            max: std::time::Duration::from_millis(5),
        };
        let data: Vec<u8> = (0..3 * LOCAL_MANIFEST_PART + 99)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut spool = Spool::new().unwrap();
        spool.write(&data).unwrap();
        let spooled = spool.finish().unwrap();
        let id = SnapshotId([4; 16]);
        b.put_manifest(&id, &spooled).await.unwrap();
        assert!(all(&b.get_manifest(&id, 0).await.unwrap()) == data);
        let path = dir.path().join(layout::manifest(&id).as_ref());
        let beside: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside.len(), 1, "{beside:?}");

        faults.set(FaultConfig {
            down: true,
            ..Default::default()
        });
        let e = b
            .put_manifest(&SnapshotId([5; 16]), &spooled)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::RegionUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("it-1"), "{e}");
    }
}
