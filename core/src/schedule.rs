//! Mask schedules (MaskGIT / MUSE "arccos").

use std::f64::consts::FRAC_PI_2;

/// `arccos(r) / (pi / 2)`: the fraction of tokens still masked after a fraction `r` of the steps.
pub fn arccos_mask_ratio(r: f64) -> f64 {
    r.clamp(-1.0, 1.0).acos() / FRAC_PI_2
}

/// The official `mask_len` at step `step` (0-based) of `steps`, for `num_codes` tokens of which
/// `masked_now` are still masked in the reference row: `floor(N * arccos(r) / (pi/2))` in
/// float64, clamped to `[1, masked_now - 1]` (the lower bound wins).
pub fn mask_len(num_codes: usize, step: usize, steps: usize, masked_now: usize) -> usize {
    let ratio = (step + 1) as f64 / steps as f64;
    let len = (num_codes as f64 * arccos_mask_ratio(ratio)).floor() as i64;
    len.min(masked_now as i64 - 1).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_full_size_schedule() {
        // parity/README.md: N = 256, T = 8 gives 235, 214, 193, 170, 145, 117, 82.
        let mut masked = 256;
        let mut lens = Vec::new();
        for s in 0..7 {
            let l = mask_len(256, s, 8, masked);
            lens.push(l);
            masked = l;
        }
        assert_eq!(lens, [235, 214, 193, 170, 145, 117, 82]);
    }
}
