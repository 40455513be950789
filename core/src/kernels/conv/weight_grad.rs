//! The weight gradient of a "same" convolution with AVX2 + FMA register tiles, on position-major
//! copies of its two operands.
//!
//! `dL/dw[o][c][ky][kx] = sum over images and positions p of g[o][p] * xpad[c][p + (ky, kx)]`.
//!
//! Why not a GEMM per kernel tap (what [`super::weight_gradient_gemm`] does where AVX2 is missing): both
//! operands are channel-major, so a GEMM library packs them transposed, and it packs the same
//! output gradient again for each of the k*k taps; that packing was 5-7 % of a teacher training
//! step and the products ran at 55-100 GFLOP/s on this 2-core machine (BENCHMARKS.md). Here both
//! operands are transposed once, position-major (`[position][channel]`), so that for every
//! position a tile reads 16 adjacent input channels as two vectors and 6 adjacent output channels
//! as broadcasts, with no further packing: the tile is the direct convolution's 6 x 16 tile with
//! positions as its inner dimension.
//!
//! Only the `h x w` positions are visited (the output gradient is kept compact); the input's copy
//! keeps its zero border, so the input under tap (ky, kx) of position (y, x) is row
//! `(y + ky) * wp + x + kx` of its padded plane.

#[cfg(target_arch = "x86_64")]
use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::kernels::buffers::{unwritten, written};

/// The register tile: output channels (broadcast) x vectors of input channels, and the lanes of
/// a vector.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tiling {
    out: usize,
    vectors: usize,
    lanes: usize,
}

/// AVX2: 6 output channels x 2 vectors of 8 input channels (12 accumulators of 16 registers).
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX2_TILING: Tiling = Tiling {
    out: 6,
    vectors: 2,
    lanes: 8,
};
/// AVX-512: 8 output channels x 2 vectors of 16 input channels (16 accumulators of 32).
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512_TILING: Tiling = Tiling {
    out: 8,
    vectors: 2,
    lanes: 16,
};
/// Positions per cache block: the 16 input channels of one tap over this many positions are
/// 16 KiB, which stay in L1 while every output-channel tile of the tap sweeps over them.
#[cfg(target_arch = "x86_64")]
const BLOCK_POSITIONS: usize = 256;

/// Whether [`weight_gradient`] can run here (AVX2 and FMA present).
pub(crate) fn available() -> bool {
    crate::kernels::simd::has_avx2()
}

/// `dL/dw`, `[o][c][k][k]`, of a "same" convolution of `x` (`[batch, c, h, w]`) whose output
/// gradient is `g` (`[batch, o, h, w]`). Callers check [`available`] first.
#[cfg(target_arch = "x86_64")]
pub(crate) fn weight_gradient(
    x: &[f32],
    g: &[f32],
    dims: [usize; 4],
    o: usize,
    k: usize,
) -> Vec<f32> {
    let tiling = if crate::kernels::simd::has_avx512() {
        AVX512_TILING
    } else {
        AVX2_TILING
    };
    weight_gradient_tiled(x, g, dims, o, k, tiling)
}

/// [`weight_gradient`] with a given tiling (the tests run both on a CPU that has AVX-512).
#[cfg(target_arch = "x86_64")]
pub(crate) fn weight_gradient_tiled(
    x: &[f32],
    g: &[f32],
    [batch, c, h, w]: [usize; 4],
    o: usize,
    k: usize,
    tiling: Tiling,
) -> Vec<f32> {
    assert!(
        available(),
        "weight_grad::weight_gradient needs AVX2 and FMA"
    );
    assert!(
        tiling == AVX2_TILING || (tiling == AVX512_TILING && crate::kernels::simd::has_avx512()),
        "weight_grad: the {tiling:?} tiling needs its instruction set"
    );
    let tile_in = tiling.vectors * tiling.lanes;
    let taps = k * k;
    if batch * c * h * w * o == 0 {
        return vec![0.0; o * c * taps];
    }
    let pad = (k - 1) / 2;
    let geometry = Geometry {
        w,
        h,
        wp: w + 2 * pad,
        plane: (h + 2 * pad) * (w + 2 * pad),
    };
    let cpad = c.next_multiple_of(tiling.lanes);
    let xt = position_major(x, [batch, c, h, w], cpad, pad);
    let gt = position_major(g, [batch, o, h, w], o, 0);
    let offsets: Vec<usize> = (0..taps).map(|t| (t / k) * geometry.wp + t % k).collect();

    // Tasks: (part of the image rows, block of 16 input channels); each part sums into its own
    // partial gradient, each block writes its own columns of it. Parts only as many as needed
    // for 8 tasks per thread (every part is one more gradient to add up at the end): with 4, a
    // thread that finished first waited for up to a quarter of a thread's share.
    let rows = batch * h;
    let in_blocks = cpad.div_ceil(tile_in);
    let threads = rayon::current_num_threads().max(1);
    let parts = (8 * threads).div_ceil(in_blocks).clamp(1, rows);
    let rows_per_part = rows.div_ceil(parts);
    let parts = rows.div_ceil(rows_per_part);
    let block_rows = (BLOCK_POSITIONS / w).max(1);
    let partial_len = taps * o * cpad;
    let mut partial = vec![0.0f32; parts * partial_len];
    let partial_addr = partial.as_mut_ptr() as usize;
    (0..parts * in_blocks).into_par_iter().for_each(|task| {
        let (part, block) = (task / in_blocks, task % in_blocks);
        let ci0 = block * tile_in;
        let vectors = (cpad - ci0).min(tile_in) / tiling.lanes;
        let part_rows = part * rows_per_part..((part + 1) * rows_per_part).min(rows);
        for r0 in part_rows.clone().step_by(block_rows) {
            let nrows = block_rows.min(part_rows.end - r0);
            let (image, y0) = (r0 / h, r0 % h);
            for (tap, &offset) in offsets.iter().enumerate() {
                for o0 in (0..o).step_by(tiling.out) {
                    let out_rows = tiling.out.min(o - o0);
                    // SAFETY: gt holds rows*w positions of o values, from position r0*w on the
                    // tile reads nrows*w of them at channels o0..o0+out_rows; xt holds
                    // batch*plane positions of cpad values, and every position read (row
                    // (y + ky) * wp + x + kx of a plane, y < h, x < w) is inside its image's
                    // plane, at channels ci0..ci0+lanes*vectors <= cpad; the partial gradient of
                    // this part is taps x o x cpad, and only this task writes its columns
                    // ci0..ci0+tile_in of it; the tiling's instruction set was checked above.
                    unsafe {
                        tile(
                            TileShape {
                                out_rows,
                                vectors,
                                wide: tiling.lanes == 16,
                            },
                            gt.as_ptr().add(r0 * w * o + o0),
                            o,
                            xt.as_ptr().add(
                                (image * geometry.plane + y0 * geometry.wp + offset) * cpad + ci0,
                            ),
                            cpad,
                            (geometry, y0, nrows),
                            (partial_addr as *mut f32)
                                .add(part * partial_len + (tap * o + o0) * cpad + ci0),
                            cpad,
                        )
                    };
                }
            }
        }
    });

    // The parts summed, laid out as the weight: [o][c][tap].
    let mut out = vec![0.0f32; o * c * taps];
    out.par_chunks_mut(c * taps)
        .enumerate()
        .for_each(|(oc, dst)| {
            for (i, v) in dst.iter_mut().enumerate() {
                let (ic, tap) = (i / taps, i % taps);
                let at = (tap * o + oc) * cpad + ic;
                *v = (0..parts).map(|p| partial[p * partial_len + at]).sum();
            }
        });
    out
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn weight_gradient(_: &[f32], _: &[f32], _: [usize; 4], _: usize, _: usize) -> Vec<f32> {
    unreachable!("weight_grad::available() is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
/// The plane sizes a tile walks: `h x w` positions on planes of `wp`-wide rows, `plane` values
/// apart.
#[derive(Clone, Copy)]
struct Geometry {
    w: usize,
    h: usize,
    wp: usize,
    plane: usize,
}

#[cfg(target_arch = "x86_64")]
/// Output channels (1-6, or 1-8 when wide) and vectors of 8 (16 when wide) input channels
/// (1-2) of a tile.
#[derive(Clone, Copy)]
struct TileShape {
    out_rows: usize,
    vectors: usize,
    wide: bool,
}

#[cfg(target_arch = "x86_64")]
/// `values` (`[batch, ch, h, w]`) as `[image][h + 2 pad][w + 2 pad][chpad]`: channels last,
/// with a zero border of `pad` positions and zero channels from `ch` to `chpad`. Every value is
/// written (8 x 8 blocks transposed in registers).
fn position_major(
    values: &[f32],
    [batch, ch, h, w]: [usize; 4],
    chpad: usize,
    pad: usize,
) -> Vec<f32> {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut out = unwritten(batch * hp * wp * chpad);
    let zero = MaybeUninit::new(0.0f32);
    out.par_chunks_mut(wp * chpad)
        .enumerate()
        .for_each(|(row, dst)| {
            let (image, yy) = (row / hp, row % hp);
            if yy < pad || yy >= h + pad {
                dst.fill(zero);
                return;
            }
            let y = yy - pad;
            dst[..pad * chpad].fill(zero);
            dst[(pad + w) * chpad..].fill(zero);
            let src = &values[(image * ch * h + y) * w..];
            let plane = h * w;
            let dst = &mut dst[pad * chpad..(pad + w) * chpad];
            let (full_x, full_c) = (w - w % 8, ch - ch % 8);
            for x0 in (0..full_x).step_by(8) {
                for c0 in (0..full_c).step_by(8) {
                    // SAFETY: 8 channels c0.. of 8 positions x0.. are inside `src` (channel
                    // stride h*w) and inside `dst` (position stride chpad); AVX2 was checked by
                    // the caller.
                    unsafe {
                        transpose_8x8(
                            src.as_ptr().add(c0 * plane + x0),
                            plane,
                            dst.as_mut_ptr().add(x0 * chpad + c0).cast::<f32>(),
                            chpad,
                        )
                    };
                }
            }
            // What the 8 x 8 blocks leave: the last channels of every position, the last
            // positions, the zero channels.
            for x in 0..w {
                let from = if x < full_x { full_c } else { 0 };
                for c in from..ch {
                    dst[x * chpad + c] = MaybeUninit::new(src[c * plane + x]);
                }
                dst[x * chpad + ch..(x + 1) * chpad].fill(zero);
            }
        });
    // SAFETY: every row was written: border rows with zeros, the others border, transposed
    // blocks, remainders and zero channels.
    unsafe { written(out) }
}

/// `dst[j * dst_stride + i] = src[i * src_stride + j]` for an 8 x 8 block.
///
/// # Safety
/// AVX2 is present; 8 rows of 8 values are readable at `src` and writable at `dst` with those
/// strides.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_8x8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: (whole body) the reads and writes stay in the rows the caller vouches for.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let rows = [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ];
        for (i, row) in rows.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * dst_stride), *row);
        }
    }
}

/// One register tile over `nrows` image rows from row `y0` of an image: `out[j * out_stride +
/// i] += sum over positions of a[j] * b[i]` for the tile's output channels j and input channels
/// i, where `a` steps `a_stride` per position (compact rows) and `b` steps `b_stride` per
/// position, skips the border at each row's end and moves to the next image's plane after row
/// `h - 1`.
///
/// # Safety
/// AVX2 + FMA are present; every position's reads and the tile's `out` rows are inside the
/// caller's buffers.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    shape: TileShape,
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    b_stride: usize,
    walk: (Geometry, usize, usize),
    out: *mut f32,
    out_stride: usize,
) {
    macro_rules! dispatch {
        ($f:ident: $($rows:literal $vectors:literal),*) => {
            match (shape.out_rows, shape.vectors) {
                // SAFETY: forwarded from the caller (the instruction set included).
                $(($rows, $vectors) => unsafe {
                    $f::<$rows, $vectors>(a, a_stride, b, b_stride, walk, out, out_stride)
                },)*
                _ => unreachable!("tiles have 1-8 output channels and 1-2 vectors"),
            }
        };
    }
    if shape.wide {
        dispatch!(tile_fixed_avx512: 1 1, 2 1, 3 1, 4 1, 5 1, 6 1, 7 1, 8 1, 1 2, 2 2, 3 2, 4 2, 5 2, 6 2, 7 2, 8 2)
    } else {
        dispatch!(tile_fixed: 1 1, 2 1, 3 1, 4 1, 5 1, 6 1, 1 2, 2 2, 3 2, 4 2, 5 2, 6 2)
    }
}

/// [`tile`] with its shape known at compile time, so that the accumulators stay in registers.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_fixed<const ROWS: usize, const VECTORS: usize>(
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    b_stride: usize,
    (geometry, y0, nrows): (Geometry, usize, usize),
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: (whole body) all pointers stay inside the ranges the caller vouches for.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); VECTORS]; ROWS];
        let mut a = a;
        let mut row_start = b;
        let mut y = y0;
        for _ in 0..nrows {
            let mut b = row_start;
            for _ in 0..geometry.w {
                let bv: [__m256; VECTORS] = std::array::from_fn(|v| _mm256_loadu_ps(b.add(8 * v)));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(j));
                    for v in 0..VECTORS {
                        acc[v] = _mm256_fmadd_ps(av, bv[v], acc[v]);
                    }
                }
                // Wrapping: after the last position these point past the buffers, unread.
                a = a.wrapping_add(a_stride);
                b = b.wrapping_add(b_stride);
            }
            y += 1;
            row_start = if y == geometry.h {
                y = 0;
                row_start.wrapping_add((geometry.plane - (geometry.h - 1) * geometry.wp) * b_stride)
            } else {
                row_start.wrapping_add(geometry.wp * b_stride)
            };
        }
        for (j, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let p = out.add(j * out_stride + 8 * v);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *acc));
            }
        }
    }
}

/// [`tile_fixed`] with AVX-512: vectors of 16 input channels.
///
/// # Safety
/// As [`tile`]; the CPU has AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn tile_fixed_avx512<const ROWS: usize, const VECTORS: usize>(
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    b_stride: usize,
    (geometry, y0, nrows): (Geometry, usize, usize),
    out: *mut f32,
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: (whole body) all pointers stay inside the ranges the caller vouches for.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; ROWS];
        let mut a = a;
        let mut row_start = b;
        let mut y = y0;
        for _ in 0..nrows {
            let mut b = row_start;
            for _ in 0..geometry.w {
                let bv: [__m512; VECTORS] = std::array::from_fn(|v| _mm512_loadu_ps(b.add(16 * v)));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(j));
                    for v in 0..VECTORS {
                        acc[v] = _mm512_fmadd_ps(av, bv[v], acc[v]);
                    }
                }
                // Wrapping: after the last position these point past the buffers, unread.
                a = a.wrapping_add(a_stride);
                b = b.wrapping_add(b_stride);
            }
            y += 1;
            row_start = if y == geometry.h {
                y = 0;
                row_start.wrapping_add((geometry.plane - (geometry.h - 1) * geometry.wp) * b_stride)
            } else {
                row_start.wrapping_add(geometry.wp * b_stride)
            };
        }
        for (j, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                let p = out.add(j * out_stride + 16 * v);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *acc));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::direct::tests::values;

    /// The gradient by its definition, in f64.
    fn naive(x: &[f32], g: &[f32], [batch, c, h, w]: [usize; 4], o: usize, k: usize) -> Vec<f32> {
        let pad = (k - 1) as isize / 2;
        let mut out = vec![0.0f32; o * c * k * k];
        for oc in 0..o {
            for ic in 0..c {
                for ky in 0..k {
                    for kx in 0..k {
                        let mut s = 0.0f64;
                        for b in 0..batch {
                            for y in 0..h {
                                for xx in 0..w {
                                    let iy = y as isize + ky as isize - pad;
                                    let ix = xx as isize + kx as isize - pad;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let gv = g[((b * o + oc) * h + y) * w + xx] as f64;
                                    let xv = x[((b * c + ic) * h + iy as usize) * w + ix as usize];
                                    s += gv * xv as f64;
                                }
                            }
                        }
                        out[((oc * c + ic) * k + ky) * k + kx] = s as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_for_odd_sizes() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA on this CPU");
            return;
        }
        // Channel counts around the 8- and 16-wide blocks and the 6-channel tile, widths around
        // the 8 x 8 transposes, images spanning several position blocks, 3x3 and 5x5.
        for (batch, c, o, k, h, w) in [
            (2, 3, 5, 3, 7, 9),
            (1, 8, 6, 3, 8, 8),
            (3, 17, 13, 3, 9, 16),
            (2, 24, 7, 5, 6, 5),
            (1, 32, 12, 3, 1, 1),
            (5, 9, 3, 3, 11, 70),
            (2, 4, 2, 3, 40, 12),
            (2, 40, 9, 3, 9, 17),
            (1, 33, 17, 3, 8, 8),
        ] {
            let x = values(batch * c * h * w, 1);
            let g = values(batch * o * h * w, 2);
            let want = naive(&x, &g, [batch, c, h, w], o, k);
            let mut tilings = vec![AVX2_TILING];
            if crate::kernels::simd::has_avx512() {
                tilings.push(AVX512_TILING);
            } else {
                eprintln!("AVX-512 tiling not checked: the kernels do not use AVX-512 here");
            }
            for tiling in tilings {
                let got = weight_gradient_tiled(&x, &g, [batch, c, h, w], o, k, tiling);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 1e-4,
                    "{tiling:?} batch {batch} c {c} o {o} k {k} {h}x{w}: max relative error {worst}"
                );
            }
        }
    }
}
