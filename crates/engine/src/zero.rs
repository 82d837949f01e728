//! Zero detection: the first thing every byte of an image meets, so it must be far faster
//! than hashing (see `benches/engine.rs`, group `zero`).

/// Zero runs are found in aligned blocks of this many bytes.
pub const ZERO_BLOCK: usize = 4096;

/// A run of zero blocks becomes a zero run in the manifest only from this length on;
/// shorter runs stay inside their chunk, so scattered zero pages do not split chunks.
pub const ZERO_RUN_MIN: usize = 64 * 1024;

/// Whether every byte of `buf` is zero.
///
/// OR-folds fixed 256-byte blocks, which the compiler turns into wide vector ORs, and
/// stops at the first non-zero block.
#[inline]
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(256);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_single_set_bit_anywhere() {
        let mut buf = vec![0u8; 4096 + 77];
        assert!(is_zero(&buf));
        assert!(is_zero(&[]));
        for i in [0, 1, 255, 256, 4095, 4096, 4096 + 76] {
            buf[i] = 0x10;
            assert!(!is_zero(&buf), "missed byte {i}");
            buf[i] = 0;
        }
    }
}
