//! The process-wide keeping of freed slabs (`geosnap_engine::slab::keep_freed`): alone in
//! its own test binary, because what is kept is shared by every thread of the process.

use geosnap_engine::slab::{SLAB, Slabs, keep_freed, kept};

#[test]
fn freed_slabs_are_kept_up_to_the_limit_and_reused_with_only_their_new_bytes() {
    assert_eq!(kept(), 0, "nothing is kept before it is asked for");
    let old = vec![0xAA; SLAB];

    // Nothing kept by default: freed slabs go back to the kernel.
    let store = Slabs::new();
    let full = store.copy(SLAB, [&old[..]]);
    drop((full, store));
    assert_eq!(kept(), 0);

    // Three full slabs freed with room for two kept.
    keep_freed(2 * SLAB);
    let store = Slabs::new();
    let mut copies: Vec<_> = (0..3).map(|_| store.copy(SLAB, [&old[..]])).collect();
    let bases: Vec<*const u8> = copies.iter().map(|c| c.as_ptr()).collect();
    let last = copies.pop();
    drop(copies);
    assert_eq!(kept(), 2 * SLAB);
    drop(last);
    assert_eq!(kept(), 2 * SLAB, "more was kept than the limit");

    // A new store takes a kept slab: its copies hold what they were given, not the bytes
    // the slab held before, including a copy from two parts and the space after it.
    let store = Slabs::new();
    let a = store.copy(5, [&b"fresh"[..]]);
    assert!(bases.contains(&a.as_ptr()), "a kept slab was not reused");
    assert_eq!(kept(), SLAB);
    let b = store.copy(7, [&b"two"[..], &b" part"[..]]);
    assert_eq!(&a[..], b"fresh");
    assert_eq!(&b[..], b"two par");
    assert_eq!(
        b.as_ptr(),
        a.as_ptr().wrapping_add(5),
        "copies fill a slab in turn"
    );

    // A slab is kept only once its last copy and its store are gone.
    drop((a, store));
    assert_eq!(kept(), SLAB);
    drop(b);
    assert_eq!(kept(), 2 * SLAB);

    // A large copy (a pack) takes a block of its own, its size rounded up to 2 MiB, not
    // a slab half of which it would leave empty; freed, it serves a copy of about its
    // size, and not one much smaller.
    keep_freed(4 * SLAB);
    let pack = vec![7u8; (16 << 20) + 5];
    let big = Slabs::new().copy(pack.len(), [&pack[..]]);
    let big_base = big.as_ptr();
    assert!(big[..] == pack[..]);
    let before = kept();
    drop(big);
    assert_eq!(kept(), before + (18 << 20));
    let store = Slabs::new();
    let other = store.copy(17 << 20, [&pack[..], &pack[..]]);
    assert_eq!(
        other.as_ptr(),
        big_base,
        "a kept block of the right size was not reused"
    );
    assert_eq!(other.len(), 17 << 20);
    assert!(other.iter().all(|&b| b == 7));
    let small = store.copy(9 << 20, [&pack[..]]);
    assert_ne!(small.as_ptr(), big_base);
    drop((other, small, store));

    // Lowering the limit frees what is kept beyond it.
    keep_freed(SLAB);
    assert_eq!(kept(), SLAB);
    keep_freed(0);
    assert_eq!(kept(), 0);
}
