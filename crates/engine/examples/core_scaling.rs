//! Whether a stage runs as fast on each core when both cores work at once: SHA-256 and
//! zstd-1 of 16 KiB chunks (text-like data, 256 KiB frames), alone and in pairs. The
//! pipeline's ceiling assumes single-core rates add up over the cores.
//!
//! `cargo run --release -p geosnap-engine --example core_scaling`

use std::sync::Barrier;
use std::time::Instant;

use geosnap_engine::ChunkId;
use geosnap_engine::codec::Encoder;
use geosnap_engine::imagegen::{Profile, generate};

type Stage = fn(&mut Encoder, &[u8]) -> Result<(), geosnap_engine::Error>;

fn sha(_: &mut Encoder, frame: &[u8]) -> Result<(), geosnap_engine::Error> {
    for c in frame.chunks(16 << 10) {
        std::hint::black_box(ChunkId::of(c));
    }
    Ok(())
}

fn zstd(enc: &mut Encoder, frame: &[u8]) -> Result<(), geosnap_engine::Error> {
    let chunks: Vec<_> = frame
        .chunks(16 << 10)
        .map(|c| (ChunkId([0; 32]), c))
        .collect();
    std::hint::black_box(enc.encode(&chunks)?);
    Ok(())
}

/// GiB/s of `stage` over `data` for three seconds.
fn run(stage: Stage, data: &[u8]) -> Result<f64, geosnap_engine::Error> {
    let mut enc = Encoder::new(1)?;
    let t = Instant::now();
    let mut bytes = 0usize;
    while t.elapsed().as_secs_f64() < 3.0 {
        for frame in data.chunks(256 << 10) {
            stage(&mut enc, frame)?;
            bytes += frame.len();
        }
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / f64::from(1u32 << 30))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("text");
    generate(&path, 8 << 20, Profile::Text, 1)?;
    let text = std::fs::read(&path)?;
    type Named = (&'static str, Stage);
    let runs: [(&str, Stage, Option<Named>); 5] = [
        ("sha256", sha, None),
        ("zstd-1", zstd, None),
        ("sha256", sha, Some(("sha256", sha))),
        ("zstd-1", zstd, Some(("zstd-1", zstd))),
        ("zstd-1", zstd, Some(("sha256", sha))),
    ];
    for (name, stage, other) in runs {
        let barrier = Barrier::new(1 + usize::from(other.is_some()));
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                barrier.wait();
                run(stage, &text)
            });
            let b = other.map(|(_, stage)| {
                let (barrier, text) = (&barrier, &text);
                s.spawn(move || {
                    barrier.wait();
                    run(stage, text)
                })
            });
            (a.join(), b.map(|b| b.join()))
        });
        let a = a.map_err(|_| "a stage panicked")??;
        match (other, b) {
            (Some((other, _)), Some(b)) => {
                let b = b.map_err(|_| "a stage panicked")??;
                println!(
                    "{name} {a:.3} GiB/s while {other} runs on the other core at {b:.3} GiB/s"
                );
            }
            _ => println!("{name} {a:.3} GiB/s alone"),
        }
    }
    Ok(())
}
