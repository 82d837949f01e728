//! `memory://` regions: object_store's `InMemory`, with every object of several parts (a
//! pack is its frames, shared) copied into [`Slabs`] first.
//!
//! `InMemory` joins a payload's parts into a fresh allocation, under its store-wide lock; a
//! snapshot into three memory regions thus grows the heap by three times what it stores, a
//! page fault per 4 KiB on the cores that also hash and compress (`geosnap bench`'s
//! pipelines write into such regions). Here the parts are joined outside the lock into a
//! slab that asks for 2 MiB pages, and `InMemory` keeps that one part as it is. A slab is
//! freed when every object copied into it is deleted.

use std::fmt;

use geosnap_engine::slab::Slabs;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{PutOptions, PutPayload, PutResult, Result};

/// An in-memory object store whose objects live in huge-page slabs.
#[derive(Debug, Default)]
pub struct SlabMemory {
    inner: InMemory,
    slabs: Slabs,
}

impl SlabMemory {
    /// An empty store.
    pub fn new() -> SlabMemory {
        SlabMemory::default()
    }
}

impl fmt::Display for SlabMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlabMemory")
    }
}

object_store_over_inner!(SlabMemory, {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let payload = if payload.iter().count() > 1 {
            let len = payload.content_length();
            PutPayload::from_bytes(self.slabs.copy(len, payload.iter().map(|p| &p[..])))
        } else {
            payload
        };
        self.inner.put_opts(location, payload, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
});

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn objects_of_many_parts_read_back_whole_and_overwrite_cleanly() {
        let store = SlabMemory::new();
        for (round, len) in [(0u8, 3 << 20), (1, 100), (2, 5 << 20)] {
            let all: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ round).collect();
            let parts: Vec<Bytes> = all.chunks(70_001).map(Bytes::copy_from_slice).collect();
            let key = Path::from("packs/ab/obj");
            store.put(&key, parts.into_iter().collect()).await.unwrap();
            let other = Path::from(format!("packs/cd/obj-{round}"));
            store
                .put(&other, PutPayload::from_bytes(Bytes::from(all.clone())))
                .await
                .unwrap();
            for k in [&key, &other] {
                let back = store.get(k).await.unwrap().bytes().await.unwrap();
                assert!(back == all, "{k} of {len} bytes differs");
            }
            let range = store
                .get_range(&key, 7..(len as u64).min(70_010))
                .await
                .unwrap();
            assert!(range[..] == all[7..len.min(70_010)]);
        }
    }
}
