//! The real CPU work of a request: a cheap hash over a small buffer, a fixed number of rounds.
//!
//! The point is to cost CPU time proportional to `cpu_iterations`, the same on every run, so
//! that throughput is bounded by cores as a real service's would be.

/// FNV-1a's 64-bit prime and offset basis.
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Runs `iterations` rounds of xorshift-and-FNV over a 64-byte buffer; returns the hash so that
/// the compiler cannot drop the work (and `black_box` keeps it from folding the loop).
pub(crate) fn burn(iterations: u64) -> u64 {
    let mut buf = [0u8; 64];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut hash = FNV_OFFSET;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = (i % 64) as usize;
        buf[slot] ^= x as u8;
        hash = (hash ^ u64::from(buf[slot])).wrapping_mul(FNV_PRIME);
        hash = std::hint::black_box(hash);
    }
    std::hint::black_box(hash)
}

#[cfg(test)]
mod tests {
    use super::burn;

    #[test]
    fn work_is_deterministic_and_depends_on_the_rounds() {
        assert_eq!(burn(0), super::FNV_OFFSET);
        assert_eq!(burn(1000), burn(1000));
        assert_ne!(burn(1000), burn(1001));
    }
}
