//! Identifiers: [`ChunkId`] names a chunk by its content, [`SnapshotId`] names a snapshot.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// SHA-256 of a chunk's uncompressed bytes: the chunk's name in every store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChunkId(pub [u8; 32]);

/// The bytes' order (as `[u8; 32]` compares), decided by the first eight bytes read as one
/// big-endian number where they differ, which for SHA-256 ids is nearly always: restores
/// and snapshots binary-search sorted ids for every chunk, and the derived order went
/// through a `memcmp` call each time.
impl Ord for ChunkId {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let head = |id: &ChunkId| {
            u64::from_be_bytes([
                id.0[0], id.0[1], id.0[2], id.0[3], id.0[4], id.0[5], id.0[6], id.0[7],
            ])
        };
        head(self)
            .cmp(&head(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for ChunkId {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Hashes as its first 8 bytes: a SHA-256 is already uniformly spread, so hashing all 32
/// bytes again (and SipHash's rounds, see [`IdHasher`]) buys nothing in the hash tables that
/// a restore or a snapshot consults once per chunk.
impl std::hash::Hash for ChunkId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7],
        ]));
    }
}

/// A hasher for keys that are already uniform hashes ([`ChunkId`]): passes their 64 bits
/// through. Equal ids still land together; a crafted image could at worst make a table
/// slower (colliding 64-bit SHA-256 prefixes), never give a wrong answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached by keys other than ChunkId; fold them in so they still work.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// Builds [`IdHasher`]s.
pub type IdBuild = std::hash::BuildHasherDefault<IdHasher>;

/// A map keyed by chunk id.
pub type IdMap<V> = std::collections::HashMap<ChunkId, V, IdBuild>;

/// A set of chunk ids.
pub type IdSet = std::collections::HashSet<ChunkId, IdBuild>;

/// A Bloom filter of chunk ids: 16 bits and four probes per id (about 0.24 % false
/// positives), never a false negative. A restore loads from a store's index only the
/// chunks its manifest may name, so what it holds grows with the image restored, not with
/// everything the store keeps for other instances. The probes are taken from the id
/// itself: a SHA-256 is already uniform, and a crafted id can only cost a false positive.
#[derive(Clone, Debug)]
pub struct ChunkFilter {
    bits: Vec<u64>,
    mask: u64,
}

impl ChunkFilter {
    const PROBES: u64 = 4;

    /// An empty filter sized for `n` ids.
    pub fn with_capacity(n: u64) -> ChunkFilter {
        let bits = n.max(64).saturating_mul(16).next_power_of_two();
        ChunkFilter {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
        }
    }

    fn probes(id: &ChunkId) -> impl Iterator<Item = u64> {
        let word = |i: usize| u64::from_le_bytes(id.0[i..i + 8].try_into().unwrap_or([0; 8]));
        let (h1, h2) = (word(8), word(16) | 1);
        (0..Self::PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)))
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: &ChunkId) {
        for p in Self::probes(id) {
            let bit = p & self.mask;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// Whether `id` may have been added (always true if it was).
    pub fn may_contain(&self, id: &ChunkId) -> bool {
        Self::probes(id).all(|p| {
            let bit = p & self.mask;
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    /// Bytes the filter holds.
    pub fn size(&self) -> usize {
        self.bits.len() * 8
    }
}

/// The chunk ids a snapshot has claimed, remembered in a fixed amount of memory: a table
/// of 8-way buckets sized once from the image, at most [`RecentIds::MAX_BYTES`], each id
/// with two candidate buckets. While the image's chunks fit (load at most one half) every
/// id stays; beyond that, an id whose two buckets are full takes the place of an older one.
///
/// Forgetting is safe, remembering wrongly is not: a forgotten id only makes a later copy of
/// the same chunk in the image be stored again (dedup inside one image gets weaker), while
/// an id reported as seen and never stored would be lost. So [`RecentIds::insert`] compares
/// whole ids and answers `false` only for an id it holds. An exact set would grow with the
/// image: 48 to 96 bytes per chunk, 3 to 6 GiB for the first snapshot of a 1 TiB image.
#[derive(Clone, Debug)]
pub struct RecentIds {
    /// `WAYS` slots per bucket; the all-zero id marks an empty slot.
    slots: Vec<ChunkId>,
    /// Whether the all-zero id itself was inserted (it cannot be stored in a slot).
    zero: bool,
    forgotten: u64,
}

// Bucket indexes are masked, so the most slots must be a power of two.
const _: () = assert!((RecentIds::MAX_BYTES / std::mem::size_of::<ChunkId>()).is_power_of_two());

impl RecentIds {
    const WAYS: usize = 8;
    const EMPTY: ChunkId = ChunkId([0; 32]);
    /// Most memory a table takes: 262,144 slots, so every id of up to 131,072 distinct
    /// chunks (2 GiB of 16 KiB chunks) at half load, and most of up to 262,144.
    pub const MAX_BYTES: usize = 8 << 20;

    /// A table for about `chunks` ids: twice that many slots (a power of two, at least one
    /// bucket), capped at [`RecentIds::MAX_BYTES`].
    pub fn for_chunks(chunks: u64) -> RecentIds {
        let most = (Self::MAX_BYTES / std::mem::size_of::<ChunkId>()) as u64;
        let slots = chunks
            .saturating_mul(2)
            .clamp(Self::WAYS as u64, most)
            .next_power_of_two()
            .min(most);
        RecentIds {
            slots: vec![Self::EMPTY; slots as usize],
            zero: false,
            forgotten: 0,
        }
    }

    /// Adds `id`; `false` if it was already there (then it surely was inserted before),
    /// `true` if it is new or was forgotten.
    pub fn insert(&mut self, id: ChunkId) -> bool {
        if id == Self::EMPTY {
            return !std::mem::replace(&mut self.zero, true);
        }
        let (b1, b2) = self.buckets(&id);
        let (one, two) = (
            &self.slots[b1..b1 + Self::WAYS],
            &self.slots[b2..b2 + Self::WAYS],
        );
        if one.contains(&id) || two.contains(&id) {
            return false;
        }
        let free = |bucket: &[ChunkId]| bucket.iter().filter(|s| **s == Self::EMPTY).count();
        let b = if free(two) > free(one) { b2 } else { b1 };
        let bucket = &mut self.slots[b..b + Self::WAYS];
        match bucket.iter_mut().find(|s| **s == Self::EMPTY) {
            Some(slot) => *slot = id,
            None => {
                // Both full: a byte of the id picks the slot it takes.
                bucket[id.0[8] as usize % Self::WAYS] = id;
                self.forgotten += 1;
            }
        }
        true
    }

    /// Whether `id` is held (inserted and not forgotten since).
    pub fn contains(&self, id: &ChunkId) -> bool {
        if *id == Self::EMPTY {
            return self.zero;
        }
        let (b1, b2) = self.buckets(id);
        self.slots[b1..b1 + Self::WAYS].contains(id) || self.slots[b2..b2 + Self::WAYS].contains(id)
    }

    /// The first slots of `id`'s two candidate buckets (the emptier one takes a new id):
    /// with two choices a bucket overflows only when the table is nearly full, not by bad
    /// luck at half load.
    fn buckets(&self, id: &ChunkId) -> (usize, usize) {
        let mask = self.slots.len() / Self::WAYS - 1;
        let word = |i: usize| u64::from_le_bytes(id.0[i..i + 8].try_into().unwrap_or([0; 8]));
        (
            (word(0) as usize & mask) * Self::WAYS,
            (word(16) as usize & mask) * Self::WAYS,
        )
    }

    /// Ids pushed out of a full bucket so far.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Bytes the table holds.
    pub fn size(&self) -> usize {
        self.slots.len() * std::mem::size_of::<ChunkId>()
    }
}

impl ChunkId {
    /// Hashes `data` (SHA-NI where the CPU has it).
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(data).into())
    }

    /// Hashes each of `pieces`, many at once: independent messages go through SHA-256 in
    /// lockstep, one per vector lane (`tape_sha256`, which picks 16 AVX-512 lanes, 8 AVX2
    /// lanes, SHA-NI or portable code for the CPU it runs on). On a CPU without SHA-NI
    /// this is what makes hashing cheap: 16 KiB chunks hashed at 2.3 GB/s per core in
    /// AVX-512 lanes against 188 MB/s one at a time (`docs/benchmarks.md`, "Seventh stop:
    /// a machine without SHA-NI"). Pass a batch of at least [`ChunkId::lanes`] pieces.
    pub fn of_each<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<ChunkId> {
        let pieces: Vec<&[u8]> = pieces.into_iter().collect();
        let mut out = vec![[0u8; 32]; pieces.len()];
        tape_sha256::hash_many(&pieces, &mut out);
        out.into_iter().map(ChunkId).collect()
    }

    /// Pieces [`ChunkId::of_each`] hashes in one pass on this CPU.
    pub fn lanes() -> usize {
        tape_sha256::lane_width()
    }

    /// The name of the code [`ChunkId::of_each`] runs on this CPU (`avx512-16`, ...).
    pub fn batch_backend() -> &'static str {
        tape_sha256::backend()
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The first `n` hex characters, for messages.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

/// A string that is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a valid {what}")]
pub struct ParseIdError {
    input: String,
    what: &'static str,
}

impl FromStr for ChunkId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError {
            input: s.chars().take(80).collect(),
            what: "chunk id (64 hex digits)",
        };
        let mut out = [0u8; 32];
        unhex(s, &mut out).ok_or_else(err)?;
        Ok(ChunkId(out))
    }
}

/// A snapshot's identity: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// A new, time-ordered, random id.
    pub fn generate() -> SnapshotId {
        SnapshotId(*uuid::Uuid::now_v7().as_bytes())
    }

    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({})", self.to_hex())
    }
}

impl FromStr for SnapshotId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        unhex(s, &mut out).ok_or_else(|| ParseIdError {
            input: s.chars().take(80).collect(),
            what: "snapshot id (32 hex digits)",
        })?;
        Ok(SnapshotId(out))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Ids order as their bytes do, whichever byte first differs.
        #[test]
        fn ids_order_as_their_bytes(
            a in proptest::array::uniform32(0u8..4),
            b in proptest::array::uniform32(0u8..4),
        ) {
            proptest::prop_assert_eq!(ChunkId(a).cmp(&ChunkId(b)), a.cmp(&b));
            proptest::prop_assert_eq!(ChunkId(a) == ChunkId(b), a == b);
        }

        /// Batches of pieces of every length around SHA-256's block and padding edges,
        /// mixed in one batch (lanes finish at different blocks), hash to what sha2 gives
        /// one at a time.
        #[test]
        fn batches_hash_as_one_at_a_time(
            lens in proptest::collection::vec(
                proptest::prop_oneof![0usize..200, 16_300usize..16_500, 0usize..70_000],
                0..40,
            ),
            seed in 0u8..255,
        ) {
            let pieces: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (j as u8) ^ seed ^ (i as u8)).collect())
                .collect();
            let batch = ChunkId::of_each(pieces.iter().map(|p| &p[..]));
            proptest::prop_assert_eq!(batch.len(), pieces.len());
            for (p, id) in pieces.iter().zip(&batch) {
                proptest::prop_assert_eq!(*id, ChunkId(Sha256::digest(p).into()));
            }
        }
        /// Against an exact set of everything inserted: the table never holds an id that
        /// was not inserted, `insert` answers "seen" only for such an id, and what it
        /// forgot is counted. Small ids (a few distinct values) make repeats common.
        #[test]
        fn recent_ids_only_forget(
            sized_for in 0u64..64,
            ops in proptest::collection::vec(0u16..300, 0..600),
        ) {
            let mut r = RecentIds::for_chunks(sized_for);
            let mut inserted = std::collections::HashSet::new();
            let mut evictions = 0;
            for op in ops {
                let id = if op == 0 { ChunkId([0; 32]) } else { ChunkId::of(&op.to_le_bytes()) };
                let before = r.forgotten();
                let fresh = r.insert(id);
                proptest::prop_assert!(fresh || inserted.contains(&id));
                proptest::prop_assert!(r.contains(&id));
                evictions += r.forgotten() - before;
                inserted.insert(id);
            }
            for op in 0u16..300 {
                let id = if op == 0 { ChunkId([0; 32]) } else { ChunkId::of(&op.to_le_bytes()) };
                proptest::prop_assert!(!r.contains(&id) || inserted.contains(&id));
            }
            // Every id inserted is held or was pushed out by an eviction.
            let held = inserted.iter().filter(|id| r.contains(id)).count() as u64;
            proptest::prop_assert!(held + evictions >= inserted.len() as u64);
            proptest::prop_assert_eq!(evictions, r.forgotten());
        }
    }

    #[test]
    fn recent_ids_never_claim_to_hold_an_id_they_were_not_given() {
        let ids = |from: u32, to: u32| (from..to).map(|i| ChunkId::of(&i.to_le_bytes()));
        // Sized for 1,000 chunks: all of them stay.
        let mut r = RecentIds::for_chunks(1_000);
        assert_eq!(r.size(), 2048 * 32);
        assert!(ids(0, 1_000).all(|id| r.insert(id)));
        assert!(ids(0, 1_000).all(|id| !r.insert(id)));
        assert_eq!(r.forgotten(), 0);
        let mut big = RecentIds::for_chunks(120_000);
        assert!(ids(0, 120_000).all(|id| big.insert(id)));
        assert!(ids(0, 120_000).all(|id| big.contains(&id)));
        assert_eq!(big.forgotten(), 0);
        // Ten times more than it was sized for: the table does not grow, it forgets, and
        // never answers "seen" for an id it was not given.
        let before = r.size();
        assert!(ids(1_000, 20_000).all(|id| r.insert(id)));
        assert_eq!(r.size(), before);
        assert!(r.forgotten() > 10_000);
        assert!(ids(20_000, 40_000).all(|id| r.insert(id)));
        // What it still holds is exactly what it says it holds: the last ids inserted
        // into each bucket.
        let held = ids(0, 40_000).filter(|id| r.contains(id)).count();
        assert!(held > 1_900 && held <= 2048, "{held}");
        assert!(ids(40_000, 60_000).all(|id| !r.contains(&id)));
        // The all-zero id, the table's empty mark, is remembered too.
        assert!(r.insert(ChunkId([0; 32])));
        assert!(!r.insert(ChunkId([0; 32])));
        // The cap.
        assert_eq!(RecentIds::for_chunks(u64::MAX).size(), RecentIds::MAX_BYTES);
        assert_eq!(RecentIds::for_chunks(0).size(), 8 * 32);
    }

    #[test]
    fn a_chunk_filter_has_no_false_negatives_and_few_false_positives() {
        let ids = |from: u32, to: u32| (from..to).map(|i| ChunkId::of(&i.to_le_bytes()));
        let mut f = ChunkFilter::with_capacity(100_000);
        for id in ids(0, 100_000) {
            f.insert(&id);
        }
        assert!(ids(0, 100_000).all(|id| f.may_contain(&id)));
        let false_positives = ids(100_000, 300_000).filter(|id| f.may_contain(id)).count();
        // 16 bits and four probes per id: about 0.24 % in theory.
        assert!(false_positives < 1_000, "{false_positives} of 200,000");
        assert!(f.size() <= 100_000 * 4, "{} bytes", f.size());
        // An empty filter passes nothing.
        let empty = ChunkFilter::with_capacity(0);
        assert!(ids(0, 1_000).all(|id| !empty.may_contain(&id)));
    }

    #[test]
    fn known_answer_sha256() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            ChunkId::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            ChunkId::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let id = ChunkId::of(b"geosnap");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("xyz".parse::<ChunkId>().is_err());
        assert!(id.to_hex()[..63].parse::<ChunkId>().is_err());
        let mut bad = id.to_hex();
        bad.replace_range(0..1, "g");
        assert!(bad.parse::<ChunkId>().is_err());
    }

    #[test]
    fn snapshot_ids_are_unique_and_ordered() {
        let a = SnapshotId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = SnapshotId::generate();
        assert_ne!(a, b);
        assert!(a < b);
        assert_eq!(a.to_hex().parse::<SnapshotId>().unwrap(), a);
    }
}
