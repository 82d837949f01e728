//! Engine stage and pipeline throughput. Run: `cargo bench --bench engine`.
//! Results and the ceiling arithmetic are recorded in `docs/benchmarks.md`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use geosnap_engine::chunker::ChunkerParams;
use geosnap_engine::codec::{Decoder, Encoder};
use geosnap_engine::image::Image;
use geosnap_engine::imagegen::{Profile, generate};
use geosnap_engine::scanner::scan_bytes;
use geosnap_engine::snapshot::{SnapshotOptions, snapshot_image};
use geosnap_engine::store::MemStore;
use geosnap_engine::zero::is_zero;
use geosnap_engine::{ChunkId, NoProgress};

/// Reads a generated image of `profile` into memory.
fn sample(profile: Profile, size: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("img");
    generate(&p, size, profile, 1).expect("generate");
    std::fs::read(&p).expect("read")
}

fn zero(c: &mut Criterion) {
    // Written zeros: a fresh calloc'd buffer maps every page to the one zero page.
    let mut buf = vec![1u8; 8 << 20];
    buf.fill(0);
    let mut g = c.benchmark_group("zero");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("is_zero/8MiB", |b| b.iter(|| is_zero(black_box(&buf))));
    g.finish();
}

fn read(c: &mut Criterion) {
    // Page-cache-warm reads of a dense image in 8 MiB windows, as the scanner does them.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("random.img");
    generate(&path, 256 << 20, Profile::Random, 1).expect("generate");
    let image = Image::open(&path).expect("open");
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(image.size()));
    let mut buf = Vec::with_capacity(8 << 20);
    g.bench_function("image/8MiB-windows", |b| {
        b.iter(|| {
            let mut pos = 0;
            while pos < image.size() {
                buf.clear();
                image.read_into(pos, 8 << 20, &mut buf).expect("read");
                pos += 8 << 20;
            }
            black_box(&buf);
        })
    });
    g.finish();
}

fn sha256(c: &mut Criterion) {
    let data = sample(Profile::Random, 4 << 20);
    let mut g = c.benchmark_group("sha256");
    // 16 KiB is the default chunk: the rate the pipeline's ceiling uses.
    for size in [16 << 10, 64 << 10, 256 << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter(|| {
                for chunk in data.chunks(size) {
                    black_box(ChunkId::of(chunk));
                }
            })
        });
    }
    g.finish();
}

/// Frames as the pipeline builds them: 256 KiB of 16 KiB chunks, compressed together.
fn frames_of(data: &[u8]) -> Vec<Vec<(ChunkId, &[u8])>> {
    data.chunks(256 << 10)
        .map(|f| f.chunks(16 << 10).map(|c| (ChunkId::of(c), c)).collect())
        .collect()
}

fn zstd(c: &mut Criterion) {
    let text = sample(Profile::Text, 4 << 20);
    let random = sample(Profile::Random, 4 << 20);
    let mut g = c.benchmark_group("zstd");
    for (name, data) in [("text", &text), ("random", &random)] {
        let frames = frames_of(data);
        g.throughput(Throughput::Bytes(data.len() as u64));
        for level in [-5, -1, 1, 3] {
            let mut enc = Encoder::new(level).expect("encoder");
            g.bench_function(format!("encode/{name}/level{level}"), |b| {
                b.iter(|| {
                    for f in &frames {
                        black_box(enc.encode(f).expect("encode"));
                    }
                })
            });
        }
        let mut enc = Encoder::new(1).expect("encoder");
        let encoded: Vec<_> = frames
            .iter()
            .map(|f| enc.encode(f).expect("encode"))
            .collect();
        let mut dec = Decoder::new().expect("decoder");
        g.bench_function(format!("decode+verify/{name}/level1"), |b| {
            b.iter(|| {
                for f in &encoded {
                    black_box(dec.decode_verified(&f.bytes).expect("decode"));
                }
            })
        });
    }
    g.finish();
}

fn chunkers(c: &mut Criterion) {
    let data = sample(Profile::Random, 64 << 20);
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for p in [
        "fixed:16K",
        "fixed:256K",
        "fixed:1M",
        "cdc:64K:256K:1M",
        "cdc:256K:1M:4M",
    ] {
        let params: ChunkerParams = p.parse().expect("chunker");
        g.bench_function(p, |b| {
            b.iter(|| black_box(scan_bytes(params, &data, 8 << 20)))
        });
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mixed.img");
    generate(&path, 512 << 20, Profile::Mixed, 1).expect("generate");
    let image = Image::open(&path).expect("open");
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(image.size()));
    for p in ["fixed:16K", "fixed:256K", "cdc:64K:256K:1M"] {
        let opts = SnapshotOptions {
            chunker: p.parse().expect("chunker"),
            ..Default::default()
        };
        g.bench_function(format!("snapshot/mixed-512MiB/{p}"), |b| {
            // The store and what it holds are dropped outside the timing: freeing half a
            // GiB of frames is not part of a snapshot.
            b.iter_with_large_drop(|| {
                let store = MemStore::new();
                let scanned = snapshot_image(&image, &opts, &store, &NoProgress).expect("snapshot");
                (store, scanned)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, zero, read, sha256, zstd, chunkers, pipeline);
fn main() {
    // The allocator settings the binary runs with, so the pipeline is measured as it runs.
    geosnap_engine::malloc::tune();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
