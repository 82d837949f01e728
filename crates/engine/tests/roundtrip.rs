//! Snapshot and restore whole images through the engine and compare the bytes.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use geosnap_engine::chunker::ChunkerParams;
use geosnap_engine::image::Image;
use geosnap_engine::imagegen::{Profile, generate};
use geosnap_engine::manifest::{Backing, Extent, Manifest, SnapshotMeta};
use geosnap_engine::restore::{RestoreOptions, restore_image};
use geosnap_engine::snapshot::{SnapshotOptions, snapshot_image};
use geosnap_engine::store::{ChunkSource, DirStore, Fetched};
use geosnap_engine::{ChunkId, Error, NoProgress, SnapshotId};

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        id: SnapshotId::generate(),
        instance: "vm".into(),
        name: "snap".into(),
        backing: Backing::Image,
        home_region: "it-1".into(),
        created_at: 1,
        completed_at: 2,
        retention_days: 0,
    }
}

fn snapshot(image: &Path, store: &DirStore, chunker: ChunkerParams) -> Manifest {
    let img = Image::open(image).unwrap();
    let opts = SnapshotOptions {
        chunker,
        ..Default::default()
    };
    let scanned = snapshot_image(&img, &opts, store, &NoProgress).unwrap();
    // What is written is what is read back.
    let m = scanned.extents.into_manifest(meta(), img.size()).unwrap();
    assert_eq!(m.header.chunker, chunker);
    m
}

fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

fn round_trip(image: &Path, chunker: ChunkerParams) -> PathBuf {
    let dir = image.parent().unwrap();
    let store = DirStore::new(&dir.join(format!("store-{chunker}"))).unwrap();
    let m = snapshot(image, &store, chunker);
    let out = dir.join(format!(
        "{}.{}.restored",
        image.file_name().unwrap().to_string_lossy(),
        chunker.to_string().replace(':', "_")
    ));
    let stats = restore_image(&m, &store, &out, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(stats.image_size, fs::metadata(image).unwrap().len());
    assert!(
        fs::read(image).unwrap() == fs::read(&out).unwrap(),
        "{} differs after a round trip with {chunker}",
        image.display()
    );
    // Holes stay holes: the copy allocates no more than the source plus a little slack.
    assert!(
        allocated(&out) <= allocated(image) + (1 << 20),
        "{}: restored allocates {} bytes, source {}",
        image.display(),
        allocated(&out),
        allocated(image)
    );
    out
}

fn chunkers() -> [ChunkerParams; 3] {
    [
        ChunkerParams::default(),
        ChunkerParams::fixed(65536).unwrap(),
        "cdc:16K:64K:256K".parse().unwrap(),
    ]
}

#[test]
fn generated_images_of_every_profile_and_odd_sizes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, u64, Profile)] = &[
        ("empty", 0, Profile::Random),
        ("one-byte", 1, Profile::Random),
        ("odd-random", 3 * 1024 * 1024 + 7, Profile::Random),
        ("text", 5 * 1024 * 1024 + 511, Profile::Text),
        ("zeros", 9 * 1024 * 1024 + 1, Profile::Zeros),
        ("mixed", 24 * 1024 * 1024 + 4095, Profile::Mixed),
        ("sparse", 64 * 1024 * 1024 + 12345, Profile::Sparse),
    ];
    for &(name, size, profile) in cases {
        let p = dir.path().join(name);
        generate(&p, size, profile, 42).unwrap();
        for c in chunkers() {
            round_trip(&p, c);
        }
    }
}

#[test]
fn zero_runs_and_holes_are_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse");
    generate(&p, 128 << 20, Profile::Sparse, 3).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let img = Image::open(&p).unwrap();
    let s = snapshot_image(&img, &SnapshotOptions::default(), &store, &NoProgress).unwrap();
    // At least the trailing half of the image is one hole.
    assert!(s.stats.zero_bytes >= 64 << 20, "{:?}", s.stats);
    assert_eq!(s.stats.data_bytes + s.stats.zero_bytes, 128 << 20);
    let extents = s.extents.into_extents().unwrap();
    let zero_extents = extents
        .iter()
        .filter(|e| matches!(e, Extent::Zero { .. }))
        .count();
    assert!(zero_extents > 1);
    // A second snapshot of the same image stores nothing new.
    let again = snapshot_image(&img, &SnapshotOptions::default(), &store, &NoProgress).unwrap();
    assert_eq!(again.stats.new_chunks, 0);
    assert_eq!(again.extents.into_extents().unwrap(), extents);
}

#[test]
fn a_real_ext4_filesystem_survives_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    fs::create_dir_all(files.join("etc/app")).unwrap();
    for i in 0..200 {
        fs::write(
            files.join(format!("etc/app/conf-{i}.txt")),
            format!("setting_{i} = {}\n", i * 7).repeat(50 + i),
        )
        .unwrap();
    }
    generate(&files.join("blob.bin"), 3 << 20, Profile::Random, 9).unwrap();
    let img = dir.path().join("ext4.img");
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&files)
        .arg(&img)
        .arg("64M")
        .status()
        .expect("mke2fs (e2fsprogs) must be installed: .ci/run installs it");
    assert!(status.success());
    for c in chunkers() {
        let out = round_trip(&img, c);
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck failed on the restored image: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
}

#[test]
fn a_corrupt_chunk_fails_the_restore_naming_it_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    generate(&p, 4 << 20, Profile::Text, 5).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let m = snapshot(&p, &store, ChunkerParams::fixed(65536).unwrap());
    let victim = m
        .extents
        .iter()
        .find_map(|e| match e {
            Extent::Chunk { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap();
    let path = store.path_of(&victim).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let in_frame: Vec<String> = geosnap_engine::codec::parse_table(&bytes)
        .unwrap()
        .chunks
        .iter()
        .map(|c| c.0.to_hex())
        .collect();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&path, bytes).unwrap();

    let out = dir.path().join("restored");
    let err = restore_image(&m, &store, &out, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ChunkCorrupt { .. } | Error::ChunkMissing { .. } | Error::ChunkUnreadable { .. }
        ),
        "{err}"
    );
    // The error names a chunk of the damaged frame.
    assert!(
        in_frame.iter().any(|h| err.to_string().contains(h)),
        "{err}"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A missing frame names a chunk too.
    fs::remove_file(&path).unwrap();
    let err = restore_image(&m, &store, &out, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(
        in_frame.iter().any(|h| err.to_string().contains(h)),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn restore_refuses_to_clobber_and_needs_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    generate(&p, 1 << 20, Profile::Random, 5).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let m = snapshot(&p, &store, ChunkerParams::default());
    let taken = dir.path().join("taken");
    fs::write(&taken, b"precious").unwrap();
    let err = restore_image(&m, &store, &taken, &RestoreOptions::default(), &NoProgress);
    assert!(matches!(err, Err(Error::TargetExists { .. })));
    assert_eq!(fs::read(&taken).unwrap(), b"precious");
    let overwrite = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    restore_image(&m, &store, &taken, &overwrite, &NoProgress).unwrap();
    assert_eq!(fs::read(&taken).unwrap(), fs::read(&p).unwrap());
    let nowhere = dir.path().join("no/such/dir/out");
    let err = restore_image(
        &m,
        &store,
        &nowhere,
        &RestoreOptions::default(),
        &NoProgress,
    );
    assert!(matches!(err, Err(Error::TargetDirMissing { .. })));
}

#[test]
fn truncated_manifests_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    generate(&p, 2 << 20, Profile::Mixed, 5).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let bytes = snapshot(&p, &store, ChunkerParams::default())
        .encode()
        .unwrap();
    let err = Manifest::decode(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn missing_and_directory_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Image::open(&dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
    let err = Image::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn a_manifest_whose_lengths_do_not_match_its_chunks_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    generate(&p, 100 << 10, Profile::Random, 8).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let mut m = snapshot(&p, &store, ChunkerParams::fixed(65536).unwrap());
    // Shift 4 KiB from the second chunk to the first: the totals still add up, so only the
    // chunks themselves can tell.
    if let [
        Extent::Chunk { len: a, .. },
        Extent::Chunk {
            offset: b_off,
            len: b,
            ..
        },
        ..,
    ] = m.extents.as_mut_slice()
    {
        *a -= 4096;
        *b += 4096;
        *b_off -= 4096;
    } else {
        panic!("expected two chunks first");
    }
    let m = Manifest::decode(&m.encode().unwrap()).unwrap();
    let out = dir.path().join("out");
    let err = restore_image(&m, &store, &out, &RestoreOptions::default(), &NoProgress).unwrap_err();
    // The stored chunks hash right: it is the manifest that is wrong, and says so.
    assert!(matches!(err, Error::ManifestCorrupt(_)), "{err}");
    assert!(
        err.to_string().contains("but the manifest gives it"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_manifest_giving_one_chunk_two_lengths_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    // Two equal 16 KiB halves followed by a distinct 4 KiB tail: the halves share an id.
    let half: Vec<u8> = (0..16384u32).map(|i| (i * 7 % 251) as u8 + 1).collect();
    let tail: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 241) as u8 + 1).collect();
    fs::write(&p, [&half[..], &half[..], &tail[..]].concat()).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let mut m = snapshot(&p, &store, ChunkerParams::fixed(16384).unwrap());
    // Give the second extent the tail's length while it keeps the half's id, and the tail
    // the rest: every total still adds up, and the first place of the id still verifies.
    let (second, third) = match m.extents.as_mut_slice() {
        [
            _,
            Extent::Chunk { len: b, .. },
            Extent::Chunk { offset, len: c, .. },
        ] => (b, (offset, c)),
        other => panic!("expected three chunks, got {other:?}"),
    };
    *second = 4096;
    *third.0 = 16384 + 4096;
    *third.1 = 16384;
    let m = Manifest::decode(&m.encode().unwrap()).unwrap();
    let out = dir.path().join("out");
    let err = restore_image(&m, &store, &out, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::ManifestCorrupt(_)), "{err}");
    assert!(err.to_string().contains("4096 bytes"), "{err}");
    assert!(!out.exists());
    // Planned one extent at a time, the second place fails its length check instead: the
    // content is right, so the manifest is named, and no other copy is asked.
    let one = RestoreOptions {
        window: 1,
        ..Default::default()
    };
    let err = restore_image(&m, &store, &out, &one, &NoProgress).unwrap_err();
    assert!(matches!(err, Error::ManifestCorrupt(_)), "{err}");
    assert!(
        err.to_string().contains("4096 bytes at offset 16384"),
        "{err}"
    );
    assert!(!out.exists());
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "img" && n != "store")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn restore_never_replaces_a_link_or_a_device_even_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    generate(&p, 256 << 10, Profile::Random, 6).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let m = snapshot(&p, &store, ChunkerParams::default());
    let overwrite = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    let precious = dir.path().join("precious");
    fs::write(&precious, b"precious").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let err = restore_image(&m, &store, &link, &overwrite, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&precious).unwrap(), b"precious");
    // /dev/null is a character device on every Linux machine the tests run on.
    let err =
        restore_image(&m, &store, Path::new("/dev/null"), &overwrite, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("character device"), "{err}");
    assert!(
        fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn checked_in_fixtures_round_trip() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let mut seen = 0;
    for entry in fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "img") {
            continue;
        }
        // Round-trip a copy, so the restored files land in a temporary directory.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(path.file_name().unwrap());
        fs::copy(&path, &copy).unwrap();
        for c in chunkers() {
            round_trip(&copy, c);
        }
        seen += 1;
    }
    assert!(seen >= 2, "fixtures missing from {}", fixtures.display());
}

#[test]
fn a_restore_in_small_windows_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    // Data, a zero run and the same data again: chunks recur in later windows.
    let data: Vec<u8> = (0..(256u32 << 10))
        .map(|i| (i * 31 % 253) as u8 + 1)
        .collect();
    let image = [&data[..], &vec![0u8; 1 << 20], &data[..], &data[..1000]].concat();
    fs::write(&p, &image).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    let m = snapshot(&p, &store, ChunkerParams::fixed(16384).unwrap());
    assert!(m.header.chunk_count > 30, "{:?}", m.header);
    for window in [1, 3, 7] {
        let out = dir.path().join(format!("out-{window}"));
        let opts = RestoreOptions {
            window,
            ..Default::default()
        };
        let stats = restore_image(&m, &store, &out, &opts, &NoProgress).unwrap();
        assert_eq!(stats.chunks, m.header.chunk_count);
        assert_eq!(stats.data_bytes, m.header.data_bytes);
        assert!(fs::read(&out).unwrap() == image, "window {window}");
        assert!(allocated(&out) < image.len() as u64 - (512 << 10));
    }
}

/// Two copies: the first has nothing, the second everything; counts what it is told it
/// repaired.
struct SecondCopyOnly {
    chunks: std::collections::HashMap<ChunkId, bytes::Bytes>,
    recovered: std::sync::Mutex<Vec<ChunkId>>,
}

impl ChunkSource for SecondCopyOnly {
    fn fetch(&self, ids: &[ChunkId], attempt: u32) -> Result<Option<Fetched>, Error> {
        Ok(match attempt {
            0 => Some(Vec::new()),
            1 => Some(ids.iter().map(|i| (*i, self.chunks[i].clone())).collect()),
            _ => None,
        })
    }

    fn recovered(&self, id: &ChunkId, _attempt: u32, _data: &bytes::Bytes) {
        self.recovered.lock().unwrap().push(*id);
    }
}

#[test]
fn a_chunk_recurring_in_later_windows_is_recovered_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes::Bytes::from(vec![7u8; 4096]);
    let id = ChunkId::of(&data);
    let extents = (0..4u64)
        .map(|i| Extent::Chunk {
            offset: i * 4096,
            len: 4096,
            id,
        })
        .collect();
    let m = Manifest::new(
        meta(),
        ChunkerParams::fixed(4096).unwrap(),
        4 * 4096,
        extents,
    )
    .unwrap();
    let src = SecondCopyOnly {
        chunks: [(id, data)].into_iter().collect(),
        recovered: Default::default(),
    };
    let opts = RestoreOptions {
        window: 1,
        ..Default::default()
    };
    let out = dir.path().join("out");
    let stats = restore_image(&m, &src, &out, &opts, &NoProgress).unwrap();
    assert_eq!(stats.recovered_chunks, 1);
    assert_eq!(src.recovered.lock().unwrap().len(), 1);
    assert_eq!(fs::read(&out).unwrap(), vec![7u8; 4 * 4096]);
}

#[test]
fn a_scan_resumed_at_a_checkpoint_describes_the_image_as_a_whole_scan_does() {
    use geosnap_engine::manifest::{decode_extents, encode_extents};
    use geosnap_engine::snapshot::{Journal, ResumeFrom, snapshot_image_with};

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse");
    generate(&p, 48 << 20, Profile::Sparse, 9).unwrap();
    let img = Image::open(&p).unwrap();
    for chunker in ["fixed:16K", "cdc:16K:64K:256K"] {
        let opts = SnapshotOptions {
            chunker: chunker.parse().unwrap(),
            ..Default::default()
        };
        let store = DirStore::new(&dir.path().join(format!("store-{chunker}"))).unwrap();
        // A whole scan that records a checkpoint every 4 MiB of image.
        let mut checkpoints: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut record = |c: &geosnap_engine::snapshot::Checkpoint<'_>| {
            checkpoints.push((c.start, c.end, c.extents.to_vec()));
        };
        let journal = Journal {
            every: 4 << 20,
            record: &mut record,
        };
        let whole =
            snapshot_image_with(&img, &opts, &store, &NoProgress, None, Some(journal)).unwrap();
        let whole_stats = whole.stats;
        let want = whole.extents.into_extents().unwrap();
        // The checkpoints tile the image from 0, each at least 4 MiB, and hold exactly the
        // whole scan's extents.
        assert!(checkpoints.len() >= 4, "{chunker}: {}", checkpoints.len());
        let mut end = 0;
        let mut recorded = Vec::new();
        for (start, stop, bytes) in &checkpoints {
            assert_eq!(*start, end);
            assert!(stop - start >= 4 << 20);
            let got: Vec<Extent> = decode_extents(&bytes[..], *start)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got.last().map(|e| e.offset() + e.len()), Some(*stop));
            recorded.extend(got);
            end = *stop;
        }
        assert_eq!(recorded[..], want[..recorded.len()]);

        // Resumed after the first half of the checkpoints: the same extents, and none of
        // the image before the resume point is read or stored again.
        let half = checkpoints.len() / 2;
        let mut prefix = Vec::new();
        for (_, _, bytes) in &checkpoints[..half] {
            prefix.extend_from_slice(bytes);
        }
        let resumed_at = checkpoints[half - 1].1;
        let mut extents = decode_extents(&prefix[..], 0);
        let mut later = Vec::new();
        let mut record =
            |c: &geosnap_engine::snapshot::Checkpoint<'_>| later.push((c.start, c.end));
        let fresh = DirStore::new(&dir.path().join(format!("fresh-{chunker}"))).unwrap();
        let resumed = snapshot_image_with(
            &img,
            &opts,
            &fresh,
            &NoProgress,
            Some(ResumeFrom {
                extents: &mut extents,
            }),
            Some(Journal {
                every: 4 << 20,
                record: &mut record,
            }),
        )
        .unwrap();
        let stats = resumed.stats;
        assert_eq!(
            (stats.data_bytes, stats.zero_bytes, stats.chunks),
            (
                whole_stats.data_bytes,
                whole_stats.zero_bytes,
                whole_stats.chunks
            ),
            "{chunker}"
        );
        let got = resumed.extents.into_extents().unwrap();
        assert_eq!(got[..], want[..], "{chunker}");
        // Only chunks after the resume point went to the fresh store.
        assert!(stats.new_bytes <= (48 << 20) - resumed_at, "{chunker}");
        assert!(stats.new_chunks < whole_stats.new_chunks, "{chunker}");
        // Its checkpoints carry on from the resume point.
        assert_eq!(later.first().map(|c| c.0), Some(resumed_at), "{chunker}");

        // Encoding is the manifest's: what the whole scan recorded encodes back the same.
        let mut again = Vec::new();
        encode_extents(&mut again, &recorded);
        let all: Vec<u8> = checkpoints.iter().flat_map(|c| c.2.clone()).collect();
        assert_eq!(again, all);
    }
}

#[test]
fn an_incremental_with_scattered_rewrites_restores_the_same_bytes_in_any_window() {
    // The restore's writer holds the first snapshot's chunks until the rewritten ones
    // between them come (from packs of their own): every window size and thread count must
    // still write each byte once, holes included.
    let dir = tempfile::tempdir().unwrap();
    // Data and zero runs (restored as holes), then 5 % of the data's 4 KiB blocks rewritten.
    let first = dir.path().join("first");
    generate(&first, 16 << 20, Profile::Mixed, 11).unwrap();
    let second = dir.path().join("second");
    fs::copy(&first, &second).unwrap();
    let rewritten = geosnap_engine::imagegen::scatter_writes(&second, 0.05, 12).unwrap();
    assert!(rewritten > 100, "{rewritten} blocks rewritten");
    let image = fs::read(&second).unwrap();
    let store = DirStore::new(&dir.path().join("store")).unwrap();
    snapshot(&first, &store, ChunkerParams::fixed(16384).unwrap());
    let m = snapshot(&second, &store, ChunkerParams::fixed(16384).unwrap());
    for (window, threads) in [(0, 0), (0, 1), (5, 3), (64, 2), (1, 2)] {
        let out = dir.path().join(format!("out-{window}-{threads}"));
        let opts = RestoreOptions {
            window,
            threads,
            ..Default::default()
        };
        let stats = restore_image(&m, &store, &out, &opts, &NoProgress).unwrap();
        assert_eq!(stats.chunks, m.header.chunk_count);
        assert!(
            fs::read(&out).unwrap() == image,
            "window {window}, {threads} threads"
        );
        assert!(
            allocated(&out) <= allocated(&second),
            "the zero run stays a hole"
        );
    }
}
