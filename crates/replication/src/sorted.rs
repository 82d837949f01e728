//! Records keyed by chunk id, sorted into a temporary file and found through one fence per
//! block kept in memory: what a restore knows of where its chunks are, and what a snapshot
//! knows of which chunks the stores hold, in memory that does not grow with the image
//! (8 bytes per 32 records instead of 36 or more bytes per record in a hash table).
//!
//! Records arrive in any order; two for one chunk are folded into one
//! ([`Record::absorb`]: for index entries the later wins, since index objects are read
//! oldest first and a repair's entry shadows the damaged copy). They are sorted in runs of
//! [`RUN_ENTRIES`], each run written to a temporary file, and the runs merged into one file
//! of fixed-size records in id order, at most [`FAN_IN`] runs at a time. If everything
//! fits in one run, the sorted run stays in memory and no file is written.
//!
//! Sorted lookups (a restore plans a window's chunks in id order) share block reads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use geosnap_engine::ChunkId;

use crate::index::Entry;

/// Bytes of records sorted in memory before a run is written, by default
/// ([`crate::Tuning::index_memory`]).
pub const RUN_MEMORY: usize = 2 << 20;
/// Index entries sorted in memory before a run is written, by default.
pub const RUN_ENTRIES: usize = RUN_MEMORY / size_of::<Entry>();
/// Runs merged at once; each is read through a 64 KiB buffer.
pub const FAN_IN: usize = 64;
/// Records per block; one fence (the first 8 bytes of the block's first id) per block.
pub const BLOCK_ENTRIES: usize = 32;
/// Bytes a dense batch of lookups reads at once (most blocks hold an id it asks for).
const READ_AHEAD: usize = 16 << 10;
const MERGE_BUFFER: usize = 64 << 10;
/// Longest record: a lookup reads a block or two into a buffer on the stack.
const MAX_RECORD: usize = 64;

/// A fixed-size record about one chunk.
pub trait Record: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// Bytes of the encoding, at most 64; the first 32 are the chunk id.
    const LEN: usize;

    /// The chunk the record is about.
    fn chunk(&self) -> &ChunkId;

    /// Writes the encoding into `out` (`LEN` bytes, starting with the chunk id).
    fn encode(&self, out: &mut [u8]);

    /// Reads an encoding written by [`Record::encode`].
    fn decode(bytes: &[u8]) -> Self;

    /// Folds `newer`, a later record for the same chunk, into this one.
    fn absorb(&mut self, newer: Self);
}

impl Record for Entry {
    const LEN: usize = Entry::ENCODED_LEN;

    fn chunk(&self) -> &ChunkId {
        &self.chunk
    }

    fn encode(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_bytes());
    }

    fn decode(bytes: &[u8]) -> Self {
        Entry::from_bytes(bytes)
    }

    /// The later entry wins: a repair's shadows the damaged copy.
    fn absorb(&mut self, newer: Self) {
        *self = newer;
    }
}

/// Collects records; [`SortedIndexBuilder::finish`] sorts them.
#[derive(Debug)]
pub struct SortedIndexBuilder<R: Record = Entry> {
    /// The current run, in arrival order.
    run: Vec<R>,
    /// Runs written so far, oldest first, each sorted with one entry per chunk.
    runs: Vec<File>,
    run_entries: usize,
    fan_in: usize,
}

impl<R: Record> Default for SortedIndexBuilder<R> {
    fn default() -> Self {
        SortedIndexBuilder::with_limits(RUN_ENTRIES, FAN_IN)
    }
}

impl<R: Record> SortedIndexBuilder<R> {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder that sorts `bytes` of records in memory at a time.
    pub fn with_memory(bytes: usize) -> Self {
        Self::with_limits(bytes / size_of::<R>(), FAN_IN)
    }

    /// An empty builder that sorts `run_entries` records in memory at a time and merges
    /// `fan_in` runs at once (tests use small ones to reach every path quickly).
    pub fn with_limits(run_entries: usize, fan_in: usize) -> Self {
        const { assert!(R::LEN >= 32 && R::LEN <= MAX_RECORD) };
        SortedIndexBuilder {
            run: Vec::new(),
            runs: Vec::new(),
            run_entries: run_entries.max(1),
            fan_in: fan_in.max(2),
        }
    }

    /// Adds a record; an earlier one for the same chunk absorbs it.
    pub fn push(&mut self, record: R) -> io::Result<()> {
        self.run.push(record);
        if self.run.len() >= self.run_entries {
            let run = sorted_run(std::mem::take(&mut self.run));
            self.runs.push(write_run(&run)?);
            self.run = run;
            self.run.clear();
        }
        Ok(())
    }

    /// Sorts what was pushed into a [`SortedIndex`].
    pub fn finish(mut self) -> io::Result<SortedIndex<R>> {
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
                merge::<R>(group, |r| out.write_all(r))?;
                merged.push(rewound(out)?);
            }
            runs = merged;
        }
        let mut out = BufWriter::with_capacity(MERGE_BUFFER, tempfile::tempfile()?);
        let mut fences = Vec::new();
        let mut count = 0u64;
        merge::<R>(runs, |r| {
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

/// Id order, decided by the first 8 bytes as an integer nearly always (ids are hashes):
/// sorting and merging a snapshot's view of its stores spent a fifth of its time in
/// `memcmp` of whole ids.
fn cmp_ids(a: &ChunkId, b: &ChunkId) -> std::cmp::Ordering {
    prefix(a.as_bytes())
        .cmp(&prefix(b.as_bytes()))
        .then_with(|| a.cmp(b))
}

/// Records sorted by id, one per chunk: those pushed for it folded in arrival order.
fn sorted_run<R: Record>(mut run: Vec<R>) -> Vec<R> {
    // Stable: records for one chunk stay in arrival order.
    run.sort_by(|a, b| cmp_ids(a.chunk(), b.chunk()));
    let mut out: Vec<R> = Vec::with_capacity(run.len());
    for r in run {
        match out.last_mut() {
            Some(last) if last.chunk() == r.chunk() => last.absorb(r),
            _ => out.push(r),
        }
    }
    out
}

fn write_run<R: Record>(run: &[R]) -> io::Result<File> {
    let mut out = BufWriter::with_capacity(MERGE_BUFFER, tempfile::tempfile()?);
    let mut buf = [0u8; MAX_RECORD];
    for r in run {
        r.encode(&mut buf[..R::LEN]);
        out.write_all(&buf[..R::LEN])?;
    }
    rewound(out)
}

/// The file behind `out`, flushed and rewound.
fn rewound(out: BufWriter<File>) -> io::Result<File> {
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Merges sorted runs (oldest first) into `emit`, one record per chunk: the records for
/// one chunk folded oldest run first.
fn merge<R: Record>(
    runs: Vec<File>,
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut readers: Vec<BufReader<File>> = runs
        .into_iter()
        .map(|f| BufReader::with_capacity(MERGE_BUFFER, f))
        .collect();
    let mut heads: Vec<[u8; MAX_RECORD]> = vec![[0; MAX_RECORD]; readers.len()];
    // Min-heap of (id, oldest run first), the id's first 8 bytes compared first.
    let mut heap: BinaryHeap<Reverse<(u64, [u8; 32], usize)>> = BinaryHeap::new();
    for (n, r) in readers.iter_mut().enumerate() {
        if read_record(r, &mut heads[n][..R::LEN])? {
            heap.push(Reverse((fence(&heads[n]), id_of(&heads[n]), n)));
        }
    }
    let mut folded: Option<R> = None;
    let mut out = [0u8; MAX_RECORD];
    while let Some(Reverse((_, id, n))) = heap.pop() {
        let record = R::decode(&heads[n][..R::LEN]);
        folded = match folded {
            Some(mut f) if f.chunk().0 == id => {
                f.absorb(record);
                Some(f)
            }
            Some(f) => {
                f.encode(&mut out[..R::LEN]);
                emit(&out[..R::LEN])?;
                Some(record)
            }
            None => Some(record),
        };
        if read_record(&mut readers[n], &mut heads[n][..R::LEN])? {
            heap.push(Reverse((fence(&heads[n]), id_of(&heads[n]), n)));
        }
    }
    if let Some(f) = folded {
        f.encode(&mut out[..R::LEN]);
        emit(&out[..R::LEN])?;
    }
    Ok(())
}

/// Reads one record; false at the end of the run.
fn read_record(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
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

enum Storage<R> {
    /// Everything fitted in one run.
    Memory(Vec<R>),
    /// Sorted records in a temporary file.
    File { file: File, count: u64 },
}

/// Chunk → record, for the records a [`SortedIndexBuilder`] was given.
pub struct SortedIndex<R: Record = Entry> {
    storage: Storage<R>,
    /// First 8 bytes of the first id of each block of the file.
    fences: Vec<u64>,
}

impl<R: Record> std::fmt::Debug for SortedIndex<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedIndex")
            .field("len", &self.len())
            .field("in_memory", &matches!(self.storage, Storage::Memory(_)))
            .finish()
    }
}

impl<R: Record> SortedIndex<R> {
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
            Storage::Memory(v) => v.capacity() * size_of::<R>(),
            Storage::File { .. } => self.fences.capacity() * 8,
        }
    }

    /// The record of each of `ids`, in their order. Sorted ids are found with one read per
    /// block they touch; unsorted ones cost a read each.
    pub fn lookup(&self, ids: &[ChunkId]) -> io::Result<Vec<Option<R>>> {
        let mut out = Vec::with_capacity(ids.len());
        self.lookup_each(ids, |_, r| out.push(r))?;
        Ok(out)
    }

    /// Hands `f` the index in `ids` and the record of each of `ids`, in their order,
    /// without collecting them.
    pub fn lookup_each(
        &self,
        ids: &[ChunkId],
        mut f: impl FnMut(usize, Option<R>),
    ) -> io::Result<()> {
        match &self.storage {
            Storage::Memory(v) => {
                for (i, id) in ids.iter().enumerate() {
                    f(
                        i,
                        v.binary_search_by(|r| r.chunk().cmp(id)).ok().map(|n| v[n]),
                    );
                }
                Ok(())
            }
            Storage::File { file, count } => {
                // Dense: on average an id or more per block; then blocks are read 16 KiB at
                // a time.
                let dense = ids.len() >= self.fences.len();
                let mut blocks = Blocks {
                    file,
                    record: R::LEN,
                    ahead: if dense {
                        READ_AHEAD / (BLOCK_ENTRIES * R::LEN)
                    } else {
                        1
                    },
                    count: *count,
                    first: 0,
                    bytes: Vec::new(),
                };
                for (i, id) in ids.iter().enumerate() {
                    let found = match self.blocks_of(id) {
                        Some(range) => find::<R>(blocks.load(range)?, id),
                        None => None,
                    };
                    f(i, found);
                }
                Ok(())
            }
        }
    }

    /// The record of `id`, with one read (two if its block starts with ids that share its
    /// first 8 bytes, which only crafted ids do).
    pub fn get(&self, id: &ChunkId) -> io::Result<Option<R>> {
        match &self.storage {
            Storage::Memory(v) => Ok(v.binary_search_by(|r| r.chunk().cmp(id)).ok().map(|i| v[i])),
            Storage::File { file, count } => {
                let Some((start, end)) = self.blocks_of(id) else {
                    return Ok(None);
                };
                let block = BLOCK_ENTRIES * R::LEN;
                let from = (start * block) as u64;
                let to = ((end * block) as u64).min(*count * R::LEN as u64);
                let len = (to - from) as usize;
                let mut stack = [0u8; 2 * BLOCK_ENTRIES * MAX_RECORD];
                let mut heap = Vec::new();
                let buf = if len <= stack.len() {
                    &mut stack[..len]
                } else {
                    heap.resize(len, 0);
                    &mut heap[..]
                };
                file.read_exact_at(buf, from)?;
                Ok(find::<R>(buf, id))
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
    record: usize,
    /// Blocks read at once at least.
    ahead: usize,
    count: u64,
    first: usize,
    bytes: Vec<u8>,
}

impl Blocks<'_> {
    /// The records of blocks `start..end`, read unless they were the last ones read.
    fn load(&mut self, (start, end): (usize, usize)) -> io::Result<&[u8]> {
        let block = BLOCK_ENTRIES * self.record;
        let held = self.bytes.len().div_ceil(block);
        if start < self.first || end > self.first + held {
            let from = (start * block) as u64;
            let to =
                ((end.max(start + self.ahead) * block) as u64).min(self.count * self.record as u64);
            self.bytes.resize((to - from) as usize, 0);
            self.file.read_exact_at(&mut self.bytes, from)?;
            self.first = start;
        }
        let at = (start - self.first) * block;
        let len = ((end - start) * block).min(self.bytes.len() - at);
        Ok(&self.bytes[at..at + len])
    }
}

/// Binary search of `id` among sorted records.
fn find<R: Record>(records: &[u8], id: &ChunkId) -> Option<R> {
    let n = records.len() / R::LEN;
    let at = |i: usize| &records[i * R::LEN..(i + 1) * R::LEN];
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid)[..32].cmp(id.as_bytes()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(R::decode(at(mid))),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::index::{FrameRef, PackId};

    fn entry(id: ChunkId, version: u32) -> Entry {
        Entry {
            chunk: id,
            pack: PackId([version as u8; 16]),
            offset: u64::from(version) * 7,
            len: version + 1,
        }
    }

    /// Builds an index of `pushes` with `builder` and checks every pushed id, and every
    /// id of `absent`, against a map of the newest entries, in sorted and in reverse order
    /// and one by one.
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
        let sorted: Vec<Option<FrameRef>> = frames(index.lookup(&ids).unwrap());
        let reversed: Vec<ChunkId> = ids.iter().rev().copied().collect();
        let mut unsorted = frames(index.lookup(&reversed).unwrap());
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

    fn frames(found: Vec<Option<Entry>>) -> Vec<Option<FrameRef>> {
        found.into_iter().map(|e| e.map(|e| e.frame())).collect()
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
