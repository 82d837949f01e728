//! A store's index entries sorted by chunk id in a temporary file, found through one fence
//! per block kept in memory: what a restore knows of where its chunks are, in memory that
//! does not grow with the image (8 bytes per 32 entries instead of 36 bytes per entry).
//!
//! Entries arrive in any order, the later of two for one chunk winning (index objects are
//! read oldest first, and a repair's entry shadows the damaged copy). They are sorted in
//! runs of [`RUN_ENTRIES`], each run written to a temporary file, and the runs merged
//! into one file of [`Entry::ENCODED_LEN`]-byte records in id order, at most [`FAN_IN`]
//! runs at a time. If everything fits in one run, the sorted run stays in memory and no
//! file is written.
//!
//! Lookups come sorted (a restore plans a window's chunks in id order), so neighbouring
//! ids share block reads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use geosnap_engine::ChunkId;

use crate::index::{Entry, FrameRef};

/// Entries sorted in memory before a run is written: 2 MiB of entries.
pub const RUN_ENTRIES: usize = 32 << 10;
/// Runs merged at once; each is read through a 64 KiB buffer.
pub const FAN_IN: usize = 64;
/// Entries per block; one fence (the first 8 bytes of the block's first id) per block.
pub const BLOCK_ENTRIES: usize = 32;
const RECORD: usize = Entry::ENCODED_LEN;
const BLOCK_BYTES: usize = BLOCK_ENTRIES * RECORD;
const MERGE_BUFFER: usize = 64 << 10;

/// Collects entries; [`SortedIndexBuilder::finish`] sorts them.
#[derive(Debug)]
pub struct SortedIndexBuilder {
    /// The current run, in arrival order.
    run: Vec<Entry>,
    /// Runs written so far, oldest first, each sorted with one entry per chunk.
    runs: Vec<File>,
    run_entries: usize,
    fan_in: usize,
}

impl Default for SortedIndexBuilder {
    fn default() -> Self {
        SortedIndexBuilder::with_limits(RUN_ENTRIES, FAN_IN)
    }
}

impl SortedIndexBuilder {
    /// An empty builder.
    pub fn new() -> SortedIndexBuilder {
        SortedIndexBuilder::default()
    }

    /// An empty builder that sorts `run_entries` entries in memory at a time and merges
    /// `fan_in` runs at once (tests use small ones to reach every path quickly).
    pub fn with_limits(run_entries: usize, fan_in: usize) -> SortedIndexBuilder {
        SortedIndexBuilder {
            run: Vec::new(),
            runs: Vec::new(),
            run_entries: run_entries.max(1),
            fan_in: fan_in.max(2),
        }
    }

    /// Adds an entry; it shadows any earlier one for the same chunk.
    pub fn push(&mut self, entry: Entry) -> io::Result<()> {
        self.run.push(entry);
        if self.run.len() >= self.run_entries {
            let run = sorted_run(std::mem::take(&mut self.run));
            self.runs.push(write_run(&run)?);
            self.run = run;
            self.run.clear();
        }
        Ok(())
    }

    /// Sorts what was pushed into a [`SortedIndex`].
    pub fn finish(mut self) -> io::Result<SortedIndex> {
        let last = sorted_run(std::mem::take(&mut self.run));
        if self.runs.is_empty() {
            return Ok(SortedIndex {
                storage: Storage::Memory(last),
                fences: Vec::new(),
            });
        }
        if !last.is_empty() {
            self.runs.push(write_run(&last)?);
        }
        drop(last);
        let (mut runs, fan_in) = (self.runs, self.fan_in);
        while runs.len() > fan_in {
            let mut merged = Vec::with_capacity(runs.len().div_ceil(fan_in));
            let mut rest = runs.into_iter();
            loop {
                let group: Vec<File> = rest.by_ref().take(fan_in).collect();
                if group.is_empty() {
                    break;
                }
                let mut out = BufWriter::with_capacity(MERGE_BUFFER, tempfile::tempfile()?);
                merge(group, |r| out.write_all(r))?;
                merged.push(rewound(out)?);
            }
            runs = merged;
        }
        let mut out = BufWriter::with_capacity(MERGE_BUFFER, tempfile::tempfile()?);
        let mut fences = Vec::new();
        let mut count = 0u64;
        merge(runs, |r| {
            if count.is_multiple_of(BLOCK_ENTRIES as u64) {
                fences.push(fence(r));
            }
            count += 1;
            out.write_all(r)
        })?;
        let file = rewound(out)?;
        Ok(SortedIndex {
            storage: Storage::File { file, count },
            fences,
        })
    }
}

/// Entries sorted by id, one per chunk: the last pushed for each.
fn sorted_run(mut run: Vec<Entry>) -> Vec<Entry> {
    // Stable: entries for one chunk stay in arrival order, and the last of them is kept.
    run.sort_by_key(|e| e.chunk);
    let mut out: Vec<Entry> = Vec::with_capacity(run.len());
    for e in run {
        match out.last_mut() {
            Some(last) if last.chunk == e.chunk => *last = e,
            _ => out.push(e),
        }
    }
    out
}

fn write_run(run: &[Entry]) -> io::Result<File> {
    let mut out = BufWriter::with_capacity(MERGE_BUFFER, tempfile::tempfile()?);
    for e in run {
        out.write_all(&e.to_bytes())?;
    }
    rewound(out)
}

/// The file behind `out`, flushed and rewound.
fn rewound(out: BufWriter<File>) -> io::Result<File> {
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Merges sorted runs (oldest first) into `emit`, one record per chunk: of records for the
/// same chunk, the one from the newest run.
fn merge(runs: Vec<File>, mut emit: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut readers: Vec<BufReader<File>> = runs
        .into_iter()
        .map(|f| BufReader::with_capacity(MERGE_BUFFER, f))
        .collect();
    let mut heads: Vec<[u8; RECORD]> = vec![[0; RECORD]; readers.len()];
    // Min-heap of (id, newest run first): the first record popped for an id is the winner.
    let mut heap: BinaryHeap<Reverse<([u8; 32], Reverse<usize>)>> = BinaryHeap::new();
    for (n, r) in readers.iter_mut().enumerate() {
        if read_record(r, &mut heads[n])? {
            heap.push(Reverse((id_of(&heads[n]), Reverse(n))));
        }
    }
    let mut last: Option<[u8; 32]> = None;
    while let Some(Reverse((id, Reverse(n)))) = heap.pop() {
        if last != Some(id) {
            emit(&heads[n])?;
            last = Some(id);
        }
        if read_record(&mut readers[n], &mut heads[n])? {
            heap.push(Reverse((id_of(&heads[n]), Reverse(n))));
        }
    }
    Ok(())
}

/// Reads one record; false at the end of the run.
fn read_record(r: &mut impl Read, buf: &mut [u8; RECORD]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn id_of(record: &[u8]) -> [u8; 32] {
    let mut id = [0u8; 32];
    id.copy_from_slice(&record[..32]);
    id
}

fn fence(record: &[u8]) -> u64 {
    prefix(&record[..8])
}

fn prefix(id: &[u8]) -> u64 {
    u64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
}

enum Storage {
    /// Everything fitted in one run.
    Memory(Vec<Entry>),
    /// Sorted records in a temporary file.
    File { file: File, count: u64 },
}

/// Chunk → frame for the entries a [`SortedIndexBuilder`] was given.
pub struct SortedIndex {
    storage: Storage,
    /// First 8 bytes of the first id of each block of the file.
    fences: Vec<u64>,
}

impl std::fmt::Debug for SortedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedIndex")
            .field("len", &self.len())
            .field("in_memory", &matches!(self.storage, Storage::Memory(_)))
            .finish()
    }
}

impl SortedIndex {
    /// Chunks indexed.
    pub fn len(&self) -> u64 {
        match &self.storage {
            Storage::Memory(v) => v.len() as u64,
            Storage::File { count, .. } => *count,
        }
    }

    /// Whether no chunk is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the index holds beyond its file.
    pub fn memory(&self) -> usize {
        match &self.storage {
            Storage::Memory(v) => v.capacity() * size_of::<Entry>(),
            Storage::File { .. } => self.fences.capacity() * 8,
        }
    }

    /// The frame of each of `ids`, in their order. Sorted ids are found with one read per
    /// block they touch; unsorted ones cost a read each.
    pub fn lookup(&self, ids: &[ChunkId]) -> io::Result<Vec<Option<FrameRef>>> {
        match &self.storage {
            Storage::Memory(v) => Ok(ids
                .iter()
                .map(|id| {
                    v.binary_search_by(|e| e.chunk.cmp(id))
                        .ok()
                        .map(|i| v[i].frame())
                })
                .collect()),
            Storage::File { file, count } => {
                let mut blocks = Blocks {
                    file,
                    count: *count,
                    first: 0,
                    bytes: Vec::new(),
                };
                ids.iter()
                    .map(|id| {
                        let Some(range) = self.blocks_of(id) else {
                            return Ok(None);
                        };
                        let records = blocks.load(range)?;
                        Ok(find(records, id))
                    })
                    .collect()
            }
        }
    }

    /// Blocks that may hold `id` (usually one): from the last block starting below its
    /// prefix to the last starting at or below it.
    fn blocks_of(&self, id: &ChunkId) -> Option<(usize, usize)> {
        let p = prefix(id.as_bytes());
        let end = self.fences.partition_point(|f| *f <= p);
        if end == 0 {
            return None;
        }
        let start = self.fences.partition_point(|f| *f < p).saturating_sub(1);
        Some((start, end))
    }
}

/// The blocks last read from the file.
struct Blocks<'a> {
    file: &'a File,
    count: u64,
    first: usize,
    bytes: Vec<u8>,
}

impl Blocks<'_> {
    /// The records of blocks `start..end`, read unless they were the last ones read.
    fn load(&mut self, (start, end): (usize, usize)) -> io::Result<&[u8]> {
        let held = self.bytes.len().div_ceil(BLOCK_BYTES);
        if start < self.first || end > self.first + held {
            let from = (start * BLOCK_BYTES) as u64;
            let to = ((end * BLOCK_BYTES) as u64).min(self.count * RECORD as u64);
            self.bytes.resize((to - from) as usize, 0);
            self.file.read_exact_at(&mut self.bytes, from)?;
            self.first = start;
        }
        let at = (start - self.first) * BLOCK_BYTES;
        let len = ((end - start) * BLOCK_BYTES).min(self.bytes.len() - at);
        Ok(&self.bytes[at..at + len])
    }
}

/// Binary search of `id` among sorted records.
fn find(records: &[u8], id: &ChunkId) -> Option<FrameRef> {
    let n = records.len() / RECORD;
    let at = |i: usize| &records[i * RECORD..(i + 1) * RECORD];
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid)[..32].cmp(id.as_bytes()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(Entry::from_bytes(at(mid)).frame()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::index::PackId;

    fn entry(id: ChunkId, version: u32) -> Entry {
        Entry {
            chunk: id,
            pack: PackId([version as u8; 16]),
            offset: u64::from(version) * 7,
            len: version + 1,
        }
    }

    /// Builds an index of `pushes` with `builder` and checks every pushed id, and every
    /// id of `absent`, against a map of the newest entries, in sorted and in reverse order.
    fn check(mut builder: SortedIndexBuilder, pushes: &[Entry], absent: &[ChunkId]) -> SortedIndex {
        let mut newest: HashMap<ChunkId, FrameRef> = HashMap::new();
        for e in pushes {
            builder.push(*e).unwrap();
            newest.insert(e.chunk, e.frame());
        }
        let index = builder.finish().unwrap();
        assert_eq!(index.len(), newest.len() as u64);
        let mut ids: Vec<ChunkId> = newest.keys().chain(absent).copied().collect();
        ids.sort();
        let sorted = index.lookup(&ids).unwrap();
        let reversed: Vec<ChunkId> = ids.iter().rev().copied().collect();
        let mut unsorted = index.lookup(&reversed).unwrap();
        unsorted.reverse();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                sorted[i],
                newest.get(id).copied(),
                "sorted lookup of {}",
                id.short()
            );
            assert_eq!(
                unsorted[i],
                sorted[i],
                "reverse-order lookup of {}",
                id.short()
            );
        }
        index
    }

    fn id(i: u64) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    #[test]
    fn newest_entries_win_across_runs_and_merge_passes() {
        // At the real sizes: more runs than one merge takes, so an intermediate pass runs
        // too; every id is pushed three times, a run apart or more.
        let n = (RUN_ENTRIES * (FAN_IN + 3) / 3 + 17) as u64;
        let mut pushes = Vec::with_capacity(3 * n as usize);
        for version in 0..3u32 {
            pushes.extend((0..n).map(|i| entry(id(i), version * 10 + (i % 5) as u32)));
        }
        assert!(pushes.len() / RUN_ENTRIES > FAN_IN);
        let absent: Vec<ChunkId> = (n..n + 1000).map(id).collect();
        let index = check(SortedIndexBuilder::new(), &pushes, &absent);
        // What stays in memory: a fence of 8 bytes per block.
        assert!(
            index.memory() <= (n as usize / BLOCK_ENTRIES + 1) * 8 * 2,
            "{} bytes",
            index.memory()
        );
        assert!(!matches!(index.storage, Storage::Memory(_)));
    }

    #[test]
    fn a_single_run_stays_in_memory() {
        let pushes: Vec<Entry> = (0..1000).map(|i| entry(id(i % 700), i as u32)).collect();
        let index = check(SortedIndexBuilder::new(), &pushes, &[id(5000)]);
        assert!(matches!(index.storage, Storage::Memory(_)));
        let empty = check(SortedIndexBuilder::new(), &[], &[id(1)]);
        assert!(empty.is_empty());
    }

    #[test]
    fn ids_sharing_their_first_eight_bytes_are_found_across_blocks() {
        // Fences keep 8 bytes of an id: a run of ids equal in those, three blocks long.
        let same: Vec<ChunkId> = (0..(BLOCK_ENTRIES * 3) as u8)
            .map(|i| {
                let mut id = [7u8; 32];
                id[31] = i;
                ChunkId(id)
            })
            .collect();
        let mut pushes: Vec<Entry> = (0..5000).map(|i| entry(id(i), 1)).collect();
        pushes.extend(same.iter().map(|id| entry(*id, 3)));
        let mut absent = [7u8; 32];
        absent[30] = 1;
        let absent = [ChunkId(absent), ChunkId([0; 32]), ChunkId([0xff; 32])];
        check(SortedIndexBuilder::with_limits(300, 4), &pushes, &absent);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn lookups_match_a_map_of_the_newest_entries(
            picks in prop::collection::vec((0u64..3000, 0u32..4), 0..4000),
            run in 1usize..400,
            fan_in in 2usize..6,
        ) {
            let pushes: Vec<Entry> = picks.iter().map(|(i, v)| entry(id(*i), *v)).collect();
            let absent: Vec<ChunkId> = (3000..3050).map(id).collect();
            check(SortedIndexBuilder::with_limits(run, fan_in), &pushes, &absent);
        }
    }
}
