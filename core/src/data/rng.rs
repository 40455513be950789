//! The pipeline's own small random number generator.
//!
//! `rand`'s `StdRng` and `shuffle` may change their output between versions. A checkpoint's
//! data position must mean the same batches after a dependency update, so the data order and
//! the crops use `SplitMix64` (a fixed, published algorithm) and a plain Fisher-Yates shuffle.

/// Separates the random streams so that, e.g., epoch 3's order and item 3's crop are unrelated.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Order = 1,
    Item = 2,
}

/// `SplitMix64` (Steele, Lea, Flood 2014): 64 bits of state, good statistical quality, and any
/// seed (including 0) is fine.
pub(crate) struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// `SplitMix64`'s output function: a bijection on u64 that scrambles every bit.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator for one purpose (`stream`) at one place of the run (`epoch`, `position`).
    /// Drawing from it gives the same numbers whichever thread does it, whenever.
    pub(crate) fn derive(seed: u64, stream: Stream, epoch: u64, position: u64) -> SplitMix64 {
        let mut h = finalize(seed ^ GOLDEN_GAMMA.wrapping_mul(stream as u64));
        h = finalize(h ^ epoch.wrapping_add(GOLDEN_GAMMA));
        h = finalize(h ^ position.wrapping_add(GOLDEN_GAMMA.rotate_left(17)));
        SplitMix64 { state: h }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        finalize(self.state)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject). `n` must be > 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A fair coin.
    pub(crate) fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

/// The order in which epoch `epoch` visits `n` items: a seeded Fisher-Yates permutation.
pub(crate) fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64::derive(seed, Stream::Order, epoch, 0);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // First outputs of the reference C implementation seeded with 1234567.
        let mut rng = SplitMix64 { state: 1234567 };
        assert_eq!(rng.next_u64(), 6457827717110365317);
        assert_eq!(rng.next_u64(), 3203168211198807973);
    }

    #[test]
    fn permutations_are_seeded_and_complete() {
        let a = permutation(100, 7, 0);
        assert_eq!(a, permutation(100, 7, 0));
        assert_ne!(a, permutation(100, 7, 1));
        assert_ne!(a, permutation(100, 8, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::derive(1, Stream::Item, 2, 3);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        let u = rng.unit();
        assert!((0.0..1.0).contains(&u));
    }
}
