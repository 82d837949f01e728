//! One store conformance suite, run on every kind of store a region can sit on: memory,
//! local directory, the simulator with faults off, and an S3 bucket on the loopback
//! OpenStack Swift that `.ci/run` starts (`scripts/swift-aio.sh`) when `GEOSNAP_S3_ENDPOINT`
//! is set.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use geosnap_replication::s3::S3Config;
use geosnap_replication::simulator::{FaultConfig, Faults, FaultyStore};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// What geosnap needs of a store.
pub async fn conformance(store: Arc<dyn ObjectStore>) {
    let key = Path::from("chunks/ab/abcdef");
    let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());

    // Missing objects are NotFound, not some other error.
    let err = store.get(&key).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");

    // Put, get, range get, head.
    store
        .put(&key, PutPayload::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), data);
    assert_eq!(
        store.get_range(&key, 10..20).await.unwrap(),
        data.slice(10..20)
    );
    assert_eq!(store.head(&key).await.unwrap().size, data.len() as u64);

    // Overwrite replaces the whole object.
    store
        .put(&key, PutPayload::from_static(b"short"))
        .await
        .unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().bytes().await.unwrap(),
        "short"
    );

    // Listing is recursive under a prefix and sees only that prefix.
    store
        .put(&Path::from("chunks/cd/x"), PutPayload::from_static(b"1"))
        .await
        .unwrap();
    store
        .put(
            &Path::from("snapshots/s/manifest"),
            PutPayload::from_static(b"2"),
        )
        .await
        .unwrap();
    let mut listed: Vec<String> = store
        .list(Some(&Path::from("chunks")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, vec!["chunks/ab/abcdef", "chunks/cd/x"]);

    // Multipart uploads assemble their parts in order.
    let big = Path::from("multi/obj");
    let mut up = store.put_multipart(&big).await.unwrap();
    up.put_part(PutPayload::from(vec![1u8; 5 << 20]))
        .await
        .unwrap();
    up.put_part(PutPayload::from(vec![2u8; 1000]))
        .await
        .unwrap();
    up.complete().await.unwrap();
    let got = store.get(&big).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), (5 << 20) + 1000);
    assert_eq!(got[5 << 20], 2);

    // Delete removes; deleting again is NotFound or Ok, never something else.
    store.delete(&key).await.unwrap();
    assert!(matches!(
        store.get(&key).await.unwrap_err(),
        object_store::Error::NotFound { .. }
    ));
    match store.delete(&key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => panic!("second delete: {e}"),
    }
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(Arc::new(InMemory::new())).await;
}

#[tokio::test]
async fn local_directory_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(
        LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn simulator_with_faults_off_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let inner = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let faults = Faults::new("it-1", FaultConfig::default());
    conformance(Arc::new(FaultyStore::new(inner, faults))).await;
}

/// Settings for a fresh bucket on the S3 endpoint of `GEOSNAP_S3_*`, or `None` (with a note
/// on stdout) when no endpoint is set.
fn s3_settings(test: &str) -> Option<S3Config> {
    let Some(options) = geosnap_replication::s3::options_from_env() else {
        println!(
            "{test}: skipped, GEOSNAP_S3_ENDPOINT is not set \
             (eval \"$(scripts/swift-aio.sh env DIR)\" after scripts/swift-aio.sh start DIR)"
        );
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let bucket = format!("geosnap-conf-{}-{nanos}", std::process::id());
    Some(S3Config::parse("it-1", &format!("s3://{bucket}"), &options).unwrap())
}

#[tokio::test]
async fn swift_s3_store_conforms() {
    let Some(s3) = s3_settings("swift_s3_store_conforms") else {
        return;
    };
    s3.create_bucket().await.unwrap();
    let store = s3.open().unwrap();
    conformance(store.clone()).await;
    // Leave the server as we found it.
    let keys: Vec<Path> = store
        .list(None)
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    for k in keys {
        store.delete(&k).await.unwrap();
    }
    s3.delete_bucket().await.unwrap();
}
