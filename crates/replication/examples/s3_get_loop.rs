//! The ceiling a restore from an S3 region is measured against: a plain parallel GET loop
//! of 4 MiB objects, through the same client settings geosnap uses (`geosnap_replication::s3`).
//!
//! ```sh
//! eval "$(scripts/swift-aio.sh env DIR)"
//! cargo run --release -p geosnap-replication --example s3_get_loop -- [OBJECTS [KIB [CONCURRENCY...]]]
//! ```
//! Puts OBJECTS (default 64) objects of KIB KiB (default 4096) into a fresh bucket, reads all
//! of them back three times at each CONCURRENCY (default 1 4 8 16 32), prints the best MiB/s
//! and requests/s of each, deletes the bucket. Also prints the rate of the initial PUTs.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use futures::StreamExt;
use geosnap_replication::s3::S3Config;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are whole numbers"))
        .collect();
    let objects = args.first().copied().unwrap_or(64);
    let size = args.get(1).copied().unwrap_or(4096) << 10;
    let levels = if args.len() > 2 {
        args[2..].to_vec()
    } else {
        vec![1, 4, 8, 16, 32]
    };
    let Some(options) = geosnap_replication::s3::options_from_env() else {
        eprintln!(
            "s3_get_loop: GEOSNAP_S3_ENDPOINT is not set (eval \"$(scripts/swift-aio.sh env DIR)\")"
        );
        std::process::exit(2);
    };
    let bucket = format!("geosnap-getloop-{}", std::process::id());
    let s3 = S3Config::parse("bench", &format!("s3://{bucket}"), &options).unwrap();
    s3.create_bucket().await.unwrap();
    let store = s3.open().unwrap();

    // Incompressible bytes, different per object.
    let keys: Vec<Path> = (0..objects).map(|i| Path::from(format!("o/{i}"))).collect();
    let start = Instant::now();
    futures::stream::iter(keys.iter().enumerate())
        .for_each_concurrent(8, |(i, k)| {
            let store = store.clone();
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            async move {
                store.put(k, PutPayload::from(data)).await.unwrap();
            }
        })
        .await;
    let put_secs = start.elapsed().as_secs_f64();

    println!(
        "{objects} objects of {} KiB at {}",
        size >> 10,
        s3.location()
    );
    println!(
        "put at concurrency 8: {:.0} PUT/s (including generating the data)",
        objects as f64 / put_secs
    );
    for &c in &levels {
        let mut best = 0f64;
        for _ in 0..3 {
            let start = Instant::now();
            let bytes: usize = futures::stream::iter(keys.iter())
                .map(|k| {
                    let store = store.clone();
                    async move { store.get(k).await.unwrap().bytes().await.unwrap().len() }
                })
                .buffer_unordered(c)
                .fold(0, |a, n| async move { a + n })
                .await;
            best = best.max(bytes as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "concurrency {c:>3}: {:>7.1} MiB/s, {:>6.0} GET/s (best of 3)",
            best / (1 << 20) as f64,
            best / size as f64
        );
    }
    s3.destroy_bucket().await.unwrap();
}
