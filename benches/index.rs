//! What a store index costs where a restore or a snapshot keeps it: sorted into a temporary
//! file (`geosnap_replication::sorted`, memory that does not grow) against a hash map in
//! memory (what both kept before; 36 B per chunk plus slack). Sized like the 8 GiB mixed
//! image held by three stores: 344,734 chunks, 1,034,202 index entries.
//! Run: `cargo bench --bench index`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use geosnap_engine::ChunkId;
use geosnap_replication::index::{Entry, FrameRef, PackId};
use geosnap_replication::sorted::{SortedIndex, SortedIndexBuilder};

const CHUNKS: u64 = 344_734;
const STORES: u64 = 3;

fn id(i: u64) -> ChunkId {
    ChunkId::of(&i.to_le_bytes())
}

/// Entries as three stores' index objects give them: each store's in its own order.
fn entries() -> impl Iterator<Item = Entry> {
    (0..STORES).flat_map(|s| {
        (0..CHUNKS).map(move |i| Entry {
            chunk: id(i),
            pack: PackId([s as u8; 16]),
            offset: (i % 1024) * 16_400,
            len: 16_400,
        })
    })
}

fn built() -> SortedIndex {
    let mut b = SortedIndexBuilder::new();
    for e in entries() {
        b.push(e).expect("push");
    }
    b.finish().expect("finish")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("store index");
    g.sample_size(10);
    g.throughput(Throughput::Elements(CHUNKS * STORES));
    g.bench_function("build: sorted file", |b| b.iter(|| black_box(built())));
    g.bench_function("build: hash map", |b| {
        b.iter(|| {
            let mut m: HashMap<ChunkId, FrameRef> = HashMap::new();
            for e in entries() {
                m.insert(e.chunk, e.frame());
            }
            black_box(m)
        })
    });

    let index = built();
    let map: HashMap<ChunkId, FrameRef> = entries().map(|e| (e.chunk, e.frame())).collect();
    // A snapshot looks chunks up in image order: ids in no order, one at a time.
    let scattered: Vec<ChunkId> = (0..CHUNKS).map(id).collect();
    // A restore plans windows of 65,536 ids sorted.
    let mut windows: Vec<Vec<ChunkId>> = scattered.chunks(1 << 16).map(<[_]>::to_vec).collect();
    for w in &mut windows {
        w.sort_unstable();
    }
    g.throughput(Throughput::Elements(CHUNKS));
    g.bench_function("lookups one by one: sorted file", |b| {
        b.iter(|| {
            for i in &scattered {
                black_box(index.get(i).expect("read"));
            }
        })
    });
    g.bench_function("lookups in sorted windows: sorted file", |b| {
        b.iter(|| {
            for w in &windows {
                index
                    .lookup_each(w, |_, e| {
                        black_box(e);
                    })
                    .expect("read");
            }
        })
    });
    g.bench_function("lookups: hash map", |b| {
        b.iter(|| {
            for i in &scattered {
                black_box(map.get(i));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    geosnap_engine::malloc::tune();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
