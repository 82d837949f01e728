//! geosnap-replication: regions, replicated snapshot writes, fallback reads, the fault
//! simulator, volume stores and repair.
//!
//! A region is a name plus two [`object_store::ObjectStore`]s (main and volume), each seen
//! through the [`simulator`]. Nothing here asks what backs a store: a local directory,
//! memory or an S3 bucket behave the same.
//!
//! Invariants:
//! - a manifest is written to a store only after every chunk it names is durable there,
//!   and only when the write quorum of stores is reached; a failed snapshot leaves no
//!   manifest anywhere;
//! - volume-backed snapshots touch only their home region's volume store, and are never
//!   read from anywhere else;
//! - every chunk read is verified against its SHA-256 before it is used or copied;
//! - deletions leave tombstones, so repair never resurrects a deleted snapshot.

/// `impl ObjectStore for $ty` from its own `put_opts` and `get_opts`, every other method
/// passed unchanged to `self.inner`: the wrapping stores ([`direct::DirectFs`],
/// [`memory::SlabMemory`]) differ only in how they put (and DirectFs in how it reads a
/// range).
macro_rules! object_store_over_inner {
    ($ty:ty, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl object_store::ObjectStore for $ty {
            $($own)*

            async fn put_multipart_opts(
                &self,
                location: &object_store::path::Path,
                opts: object_store::PutMultipartOptions,
            ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
                self.inner.put_multipart_opts(location, opts).await
            }

            async fn get_ranges(
                &self,
                location: &object_store::path::Path,
                ranges: &[std::ops::Range<u64>],
            ) -> object_store::Result<Vec<bytes::Bytes>> {
                self.inner.get_ranges(location, ranges).await
            }

            fn delete_stream(
                &self,
                locations: futures::stream::BoxStream<
                    'static,
                    object_store::Result<object_store::path::Path>,
                >,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
            {
                self.inner.delete_stream(locations)
            }

            fn list(
                &self,
                prefix: Option<&object_store::path::Path>,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
            {
                self.inner.list(prefix)
            }

            fn list_with_offset(
                &self,
                prefix: Option<&object_store::path::Path>,
                offset: &object_store::path::Path,
            ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
            {
                self.inner.list_with_offset(prefix, offset)
            }

            async fn list_with_delimiter(
                &self,
                prefix: Option<&object_store::path::Path>,
            ) -> object_store::Result<object_store::ListResult> {
                self.inner.list_with_delimiter(prefix).await
            }

            async fn copy_opts(
                &self,
                from: &object_store::path::Path,
                to: &object_store::path::Path,
                options: object_store::CopyOptions,
            ) -> object_store::Result<()> {
                self.inner.copy_opts(from, to, options).await
            }

            async fn rename_opts(
                &self,
                from: &object_store::path::Path,
                to: &object_store::path::Path,
                options: object_store::RenameOptions,
            ) -> object_store::Result<()> {
                self.inner.rename_opts(from, to, options).await
            }
        }
    };
}

mod error;

pub mod bucket;
pub mod direct;
pub mod gc;
pub mod index;
pub mod layout;
pub mod memory;
pub mod pack;
pub mod reader;
pub mod region;
pub mod repair;
pub mod retry;
pub mod s3;
pub mod simulator;
pub mod sorted;
pub mod writer;

pub use bucket::{Bucket, StoreKind};
pub use error::Error;
pub use region::{Region, RegionSpec, Regions, Tuning};

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
