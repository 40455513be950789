//! A "same" convolution computed directly with AVX2 + FMA register tiles, without any GEMM call.
//!
//! Why: the shifted-GEMM convolution of [`super::same_conv`] calls a GEMM per kernel
//! tap, each with an inner dimension of only `c` (the input channels), so the `gemm` crate packs
//! both operands and reloads the output block k*k times per convolution; on small planes with few
//! channels (a training-size model's) that ran at 35-86 GFLOP/s on this 2-core machine, against
//! 107-159 for large planes (BENCHMARKS.md). Here one register tile of
//! 6 output channels x 16 positions accumulates over all `c * k * k` products before it is
//! written once: the inputs are read straight from the zero-padded planes (no packing), the
//! weights are repacked once per call so that the six of one (channel, tap) are adjacent, and each
//! step is 2 vector loads + 6 broadcasts for 12 FMAs.
//!
//! Positions run over the same "padded-width grid" as the GEMM version: output (y, x) of a block
//! of rows is grid position `r * wp + x`, and the input under tap (ky, kx) is at the constant
//! offset `ky * wp + kx` from it in the padded plane. The k-1 junk columns of each grid row and the
//! tail of the last 16-wide tile are computed and dropped, so any width works.

use rayon::prelude::*;

use super::shape::SameConv;
use crate::kernels::buffers::{unwritten, write_padded, written};

/// The register tile: output channels x grid positions (two vectors of the instruction set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tiling {
    pub channels: usize,
    pub positions: usize,
}

/// AVX2: 6 channels x 16 positions, 12 of the 16 vector registers as accumulators.
pub(crate) const AVX2_TILING: Tiling = Tiling {
    channels: 6,
    positions: 16,
};
/// AVX-512: 8 channels x 32 positions, 16 of the 32 registers as accumulators (each step: 2
/// loads and 8 broadcasts for 16 FMAs, against 2 + 6 for 12 with AVX2).
pub(crate) const AVX512_TILING: Tiling = Tiling {
    channels: 8,
    positions: 32,
};

/// Whether [`same_conv`] can run here (AVX2 and FMA present).
pub(crate) fn available() -> bool {
    crate::kernels::simd::has_avx2()
}

/// The tiling of the widest instruction set the kernels may use.
pub(crate) fn tiling() -> Tiling {
    if crate::kernels::simd::has_avx512() {
        AVX512_TILING
    } else {
        AVX2_TILING
    }
}

/// Whether this kernel beats the `gemm`-crate path for a `k x k` kernel over `c` input channels
/// on `h x w` planes.
///
/// Measured here (`benchmark_against_gemm_path` below, 2 threads): for 3x3 kernels the direct
/// kernel is 1.3-3x faster on the small planes and few channels of training-size models (16
/// images of 32-128 channels at 8-64 px) and 1.2x at 512 channels on 16x16, but up to 12 % slower
/// from 32x32 planes up when there are 128 or more channels, where each of the GEMMs is large
/// enough for the `gemm` crate's packing to pay off. A 1x1 convolution is a single GEMM, which
/// the `gemm` crate does better (1.5-2x at 256-768 channels): one tap leaves the direct tile
/// too few products per input load.
pub(crate) fn preferred(c: usize, h: usize, w: usize, k: usize) -> bool {
    k > 1 && (c < 128 || h * w < 32 * 32)
}

/// The convolution of [`super::same_conv`] (same arguments, same result up to float
/// rounding order). Callers check [`available`] first.
#[cfg(target_arch = "x86_64")]
pub(crate) fn same_conv(conv: SameConv<'_>) -> Vec<f32> {
    same_conv_tiled(conv, tiling())
}

/// [`same_conv`] with a given tiling (the tests run both on a CPU that has AVX-512).
#[cfg(target_arch = "x86_64")]
pub(crate) fn same_conv_tiled(conv: SameConv<'_>, tiling: Tiling) -> Vec<f32> {
    let SameConv { x, weight, k, .. } = conv;
    let Tiling {
        channels: tile_channels,
        positions: tile_positions,
    } = tiling;
    let ([batch, c, h, w], o) = (conv.dims, conv.out_channels);
    let (bias, residual) = (conv.bias, conv.residual);
    assert!(available(), "direct_conv::same_conv needs AVX2 and FMA");
    assert!(
        tiling == AVX2_TILING || (tiling == AVX512_TILING && crate::kernels::simd::has_avx512()),
        "direct_conv: the {tiling:?} tiling needs its instruction set"
    );
    let pad = (k - 1) / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let plane = hp * wp;
    let taps = k * k;
    if batch * o * h * w == 0 {
        return Vec::new();
    }
    // Every value is written by exactly one task below.
    let mut out = unwritten(batch * o * h * w);

    // Every image padded once; the last tile of the last image reads up to k + (tile positions)
    // values past its plane (see the module comment), hence the slack.
    let image_len = c * plane;
    let mut padded = unwritten(batch * image_len + k + tile_positions);
    let (images, slack) = padded.split_at_mut(batch * image_len);
    slack.fill(std::mem::MaybeUninit::new(0.0));
    images
        .par_chunks_mut(image_len)
        .zip(x.par_chunks(c * h * w))
        .for_each(|(dst, src)| write_padded(dst, src, [h, w], pad));
    // SAFETY: write_padded wrote every value of the images, the slack is zeros.
    let padded = unsafe { written(padded) };

    let packed = pack_weights(weight, o, c, taps, tile_channels);
    let offsets: Vec<usize> = (0..taps).map(|t| (t / k) * wp + t % k).collect();

    // Rows per block: about 256 KiB of one chunk's input rows (with their halo) so that they stay
    // in the L2 cache while a channel tile sweeps over them.
    let rows = ((1usize << 16) / (chunk_channels(taps, tile_channels).min(c) * wp).max(1))
        .saturating_sub(k - 1)
        .clamp(1, h);
    let row_blocks = h.div_ceil(rows);
    let channel_tiles = o.div_ceil(tile_channels);
    // Channel tiles per task: enough tasks for both threads and for load balance, few enough
    // that each task reuses its input rows over several tiles.
    let threads = rayon::current_num_threads().max(1);
    let per_task = channel_tiles
        .div_ceil((4 * threads).div_ceil(batch * row_blocks).max(1))
        .max(1);
    let tile_groups = channel_tiles.div_ceil(per_task);

    let out_addr = out.as_mut_ptr() as usize;
    let ctx = Ctx {
        padded: &padded,
        packed: &packed,
        offsets: &offsets,
        bias,
        residual,
        dims: [c, h, w],
        o,
        wp,
        plane,
        tiling,
    };
    (0..batch * row_blocks * tile_groups)
        .into_par_iter()
        .for_each(|task| {
            let group = task % tile_groups;
            let block = (task / tile_groups) % row_blocks;
            let image = task / (tile_groups * row_blocks);
            let y0 = block * rows;
            let nrows = rows.min(h - y0);
            let tiles = group * per_task..((group + 1) * per_task).min(channel_tiles);
            // SAFETY: each task writes output rows y0..y0+nrows of the channels of its tiles in
            // its own image, a region no other task writes; `out` outlives the parallel loop.
            unsafe { ctx.block(out_addr as *mut f32, image, y0, nrows, tiles) };
        });
    // SAFETY: the tasks cover every image, row block and channel tile, and `block` writes every
    // value of its rows and channels.
    unsafe { written(out) }
}

/// The weights reordered as `[tile][c][tap][tc]` (`tc` channels per tile) with zero channels
/// past `o`, so that the values broadcast at each step of a tile are adjacent and the whole
/// tile's weights are read in order.
fn pack_weights(weight: &[f32], o: usize, c: usize, taps: usize, tc: usize) -> Vec<f32> {
    let tiles = o.div_ceil(tc);
    let mut packed = vec![0.0f32; tiles * c * taps * tc];
    packed
        .par_chunks_mut(c * taps * tc)
        .enumerate()
        .for_each(|(tile, dst)| {
            for j in 0..tc {
                let oc = tile * tc + j;
                if oc >= o {
                    break;
                }
                for ic in 0..c {
                    for t in 0..taps {
                        dst[(ic * taps + t) * tc + j] = weight[(oc * c + ic) * taps + t];
                    }
                }
            }
        });
    packed
}

/// What every task reads.
struct Ctx<'a> {
    padded: &'a [f32],
    packed: &'a [f32],
    offsets: &'a [usize],
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    dims: [usize; 3],
    o: usize,
    wp: usize,
    plane: usize,
    tiling: Tiling,
}

impl Ctx<'_> {
    /// Output rows `y0..y0 + nrows` of `image` for the channel tiles `tiles`.
    ///
    /// Loop order, for the caches: per channel tile, per chunk of input channels (whose weights,
    /// about 16 KiB, stay in L1 while the chunk's input rows, sized by the caller to about
    /// 256 KiB, stream from L2), every 16-wide tile of positions; partial sums wait in a small
    /// grid between chunks.
    ///
    /// # Safety
    /// `out` points to the `batch x o x h x w` output; the caller guarantees exclusive access to
    /// the rows and channels written here.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block(
        &self,
        out: *mut f32,
        image: usize,
        y0: usize,
        nrows: usize,
        tiles: std::ops::Range<usize>,
    ) {
        let [c, h, w] = self.dims;
        let (o, wp) = (self.o, self.wp);
        let taps = self.offsets.len();
        let Tiling {
            channels: tc,
            positions: tp,
        } = self.tiling;
        let tile_len = c * taps * tc;
        let n = nrows * wp;
        let stride = n.next_multiple_of(tp);
        let src = &self.padded[image * c * self.plane + y0 * wp..];
        let chunk = chunk_channels(taps, tc);
        let mut grid = vec![0.0f32; tc * stride];
        for tile in tiles {
            for c0 in (0..c).step_by(chunk) {
                let cc = chunk.min(c - c0);
                let weights = &self.packed[tile * tile_len + c0 * taps * tc..];
                for p0 in (0..n).step_by(tp) {
                    let args = (
                        // SAFETY: reads at src[ci * plane + offset + p0 + 0..tp] for ci < c stay
                        // inside `padded`: the largest is below image_len + k + tp past the
                        // image's start (module comment), which the slack covers.
                        unsafe { src.as_ptr().add(c0 * self.plane + p0) },
                        self.plane,
                        cc,
                        self.offsets,
                        weights.as_ptr(),
                        // SAFETY: p0 < n <= stride, inside the grid's first row.
                        unsafe { grid.as_mut_ptr().add(p0) },
                        stride,
                        c0 > 0,
                    );
                    // SAFETY: `weights` holds the cc * taps * tc values from channel c0 on; the
                    // grid's tc rows hold `stride` values each; the tiling's instruction set was
                    // checked by `same_conv_tiled`.
                    unsafe {
                        if tc == AVX512_TILING.channels {
                            tile_8x32(args)
                        } else {
                            tile_6x16(args)
                        }
                    };
                }
            }
            for (j, lane) in grid.chunks_exact(stride).enumerate() {
                let oc = tile * tc + j;
                if oc >= o {
                    break;
                }
                let add = self.bias.map_or(0.0, |b| b[oc]);
                let plane_start = (image * o + oc) * h * w;
                for r in 0..nrows {
                    let at = plane_start + (y0 + r) * w;
                    let row = &lane[r * wp..r * wp + w];
                    // SAFETY: this row of this channel is in this task's region of the output,
                    // which may not have been written yet: written through the pointer only.
                    let dst = unsafe { out.add(at) };
                    match self.residual {
                        Some(res) => {
                            for (i, (&g, &r)) in row.iter().zip(&res[at..at + w]).enumerate() {
                                // SAFETY: i < w, inside this row.
                                unsafe { dst.add(i).write(g + add + r) };
                            }
                        }
                        None => {
                            for (i, &g) in row.iter().enumerate() {
                                // SAFETY: i < w, inside this row.
                                unsafe { dst.add(i).write(g + add) };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Input channels per chunk: about 16 KiB of one tile's weights.
fn chunk_channels(taps: usize, tile_channels: usize) -> usize {
    (4096 / (taps * tile_channels)).max(1)
}

/// The arguments of a register tile: `src`, `plane`, `c`, `offsets`, `weights`, `grid`,
/// `stride`, `accumulate`.
type TileArgs<'a> = (
    *const f32,
    usize,
    usize,
    &'a [usize],
    *const f32,
    *mut f32,
    usize,
    bool,
);

/// One register tile: `grid[j * stride + i] (+)= sum over ci < c, tap of w[ci][tap][j] *
/// src[ci * plane + offsets[tap] + i]` for 6 channels j and 16 positions i, added to what the
/// grid holds when `accumulate`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `src` is readable at every `ci * plane + offsets[tap] + 0..16`,
/// `weights` at `0..c * offsets.len() * 6` and `grid` writable at `j * stride + 0..16`, j < 6.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_6x16((src, plane, c, offsets, weights, grid, stride, accumulate): TileArgs<'_>) {
    use std::arch::x86_64::*;
    const TILE_CHANNELS: usize = 6;
    // SAFETY: (whole body) all pointers stay inside the ranges the caller vouches for.
    unsafe {
        let mut a = [_mm256_setzero_ps(); 12];
        if accumulate {
            for j in 0..TILE_CHANNELS {
                a[2 * j] = _mm256_loadu_ps(grid.add(j * stride));
                a[2 * j + 1] = _mm256_loadu_ps(grid.add(j * stride + 8));
            }
        }
        let mut wptr = weights;
        for ci in 0..c {
            let base = src.add(ci * plane);
            for &off in offsets {
                let p = base.add(off);
                let x0 = _mm256_loadu_ps(p);
                let x1 = _mm256_loadu_ps(p.add(8));
                // Unrolled by the compiler (constant bounds); `a` stays in registers.
                for j in 0..TILE_CHANNELS {
                    let wj = _mm256_broadcast_ss(&*wptr.add(j));
                    a[2 * j] = _mm256_fmadd_ps(wj, x0, a[2 * j]);
                    a[2 * j + 1] = _mm256_fmadd_ps(wj, x1, a[2 * j + 1]);
                }
                wptr = wptr.add(TILE_CHANNELS);
            }
        }
        for j in 0..TILE_CHANNELS {
            _mm256_storeu_ps(grid.add(j * stride), a[2 * j]);
            _mm256_storeu_ps(grid.add(j * stride + 8), a[2 * j + 1]);
        }
    }
}

/// [`tile_6x16`] with AVX-512: 8 channels j and 32 positions i (two 16-lane vectors).
///
/// # Safety
/// The CPU has AVX-512 F and FMA; `src` is readable at every `ci * plane + offsets[tap] +
/// 0..32`, `weights` at `0..c * offsets.len() * 8` and `grid` writable at `j * stride + 0..32`,
/// j < 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn tile_8x32((src, plane, c, offsets, weights, grid, stride, accumulate): TileArgs<'_>) {
    use std::arch::x86_64::*;
    const TILE_CHANNELS: usize = 8;
    // SAFETY: (whole body) all pointers stay inside the ranges the caller vouches for.
    unsafe {
        let mut a = [_mm512_setzero_ps(); 16];
        if accumulate {
            for j in 0..TILE_CHANNELS {
                a[2 * j] = _mm512_loadu_ps(grid.add(j * stride));
                a[2 * j + 1] = _mm512_loadu_ps(grid.add(j * stride + 16));
            }
        }
        let mut wptr = weights;
        for ci in 0..c {
            let base = src.add(ci * plane);
            for &off in offsets {
                let p = base.add(off);
                let x0 = _mm512_loadu_ps(p);
                let x1 = _mm512_loadu_ps(p.add(16));
                for j in 0..TILE_CHANNELS {
                    let wj = _mm512_set1_ps(*wptr.add(j));
                    a[2 * j] = _mm512_fmadd_ps(wj, x0, a[2 * j]);
                    a[2 * j + 1] = _mm512_fmadd_ps(wj, x1, a[2 * j + 1]);
                }
                wptr = wptr.add(TILE_CHANNELS);
            }
        }
        for j in 0..TILE_CHANNELS {
            _mm512_storeu_ps(grid.add(j * stride), a[2 * j]);
            _mm512_storeu_ps(grid.add(j * stride + 16), a[2 * j + 1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn same_conv(_: SameConv<'_>) -> Vec<f32> {
    unreachable!("direct_conv::available() is false off x86-64")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The convolution by its definition, in f64.
    fn naive(conv: SameConv<'_>) -> Vec<f32> {
        let SameConv { x, weight, k, .. } = conv;
        let ([batch, c, h, w], o) = (conv.dims, conv.out_channels);
        let (bias, residual) = (conv.bias, conv.residual);
        let pad = (k - 1) as isize / 2;
        let mut out = vec![0.0f32; batch * o * h * w];
        for b in 0..batch {
            for oc in 0..o {
                for y in 0..h {
                    for xx in 0..w {
                        let mut s = bias.map_or(0.0, |b| b[oc] as f64);
                        for ic in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = y as isize + ky as isize - pad;
                                    let ix = xx as isize + kx as isize - pad;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * c + ic) * h + iy as usize) * w + ix as usize];
                                    let wv = weight[((oc * c + ic) * k + ky) * k + kx];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let at = ((b * o + oc) * h + y) * w + xx;
                        out[at] = (s + residual.map_or(0.0, |r| r[at] as f64)) as f32;
                    }
                }
            }
        }
        out
    }

    /// The tilings this CPU runs (AVX2's always, AVX-512's where the kernels may use it), said
    /// aloud so that a run shows which paths it checked.
    fn tilings() -> Vec<Tiling> {
        let mut t = vec![AVX2_TILING];
        if crate::kernels::simd::has_avx512() {
            t.push(AVX512_TILING);
        } else {
            eprintln!("AVX-512 tiling not checked: the kernels do not use AVX-512 here");
        }
        t
    }

    /// Deterministic pseudo-random values in [-1, 1] (xorshift), one sequence per seed; also
    /// used by the BLAS tests.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_for_odd_sizes() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA on this CPU");
            return;
        }
        // Channel counts around the 6- and 8-channel tiles, widths around the 16- and 32-wide
        // tiles, 1x1 to 5x5.
        for (batch, c, o, k, h, w) in [
            (2, 5, 17, 3, 9, 37),
            (1, 9, 8, 3, 31, 30),
            (1, 3, 5, 3, 7, 9),
            (2, 4, 6, 1, 6, 5),
            (3, 6, 13, 5, 8, 8),
            (1, 8, 16, 3, 1, 1),
            (2, 7, 3, 3, 17, 18),
            (1, 16, 7, 3, 33, 2),
        ] {
            let x = values(batch * c * h * w, 1);
            let wt = values(o * c * k * k, 2);
            let bias = values(o, 3);
            let res = values(batch * o * h * w, 4);
            for (b, r) in [(None, None), (Some(&bias[..]), Some(&res[..]))] {
                let conv = SameConv {
                    x: &x,
                    dims: [batch, c, h, w],
                    weight: &wt,
                    out_channels: o,
                    k,
                    bias: b,
                    residual: r,
                };
                let want = naive(conv);
                for tiling in tilings() {
                    let got = same_conv_tiled(conv, tiling);
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        worst < 1e-4,
                        "{tiling:?} batch {batch} c {c} o {o} k {k} {h}x{w}: max error {worst}"
                    );
                }
            }
        }
    }

    /// Times this kernel against the `gemm`-crate path at the model's sizes (min of 5, both
    /// threads): `cargo test --release --workspace --lib conv::direct -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark, not a test"]
    fn benchmark_against_gemm_path() {
        if !available() {
            return;
        }
        // The official pixel decoder's sizes at batch 1, the demo teacher's at batch 16, then
        // 1x1 convolutions (the channel changes' shortcuts; the decoder's logit head).
        for (b, c, hw, k) in [
            (1, 512, 16, 3),
            (1, 512, 32, 3),
            (1, 256, 64, 3),
            (1, 256, 128, 3),
            (1, 128, 128, 3),
            (1, 128, 256, 3),
            (16, 32, 64, 3),
            (16, 64, 32, 3),
            (16, 64, 16, 3),
            (16, 128, 8, 3),
            (1, 768, 16, 1),
            (1, 256, 64, 1),
            (16, 64, 16, 1),
            (16, 32, 64, 1),
        ] {
            let x = values(b * c * hw * hw, 1);
            let wt = values(c * c * k * k, 2);
            let flops = 2.0 * (b * c * c * k * k * hw * hw) as f64;
            let mut best = [f64::MAX; 3];
            for _ in 0..5 {
                for (i, best) in best.iter_mut().enumerate() {
                    if i == 2 && !crate::kernels::simd::has_avx512() {
                        continue;
                    }
                    let t = std::time::Instant::now();
                    let conv = SameConv {
                        x: &x,
                        dims: [b, c, hw, hw],
                        weight: &wt,
                        out_channels: c,
                        k,
                        bias: None,
                        residual: None,
                    };
                    let out = match i {
                        0 => same_conv_tiled(conv, AVX2_TILING),
                        1 => super::super::shifted_gemm::same_conv_gemm(conv),
                        _ => same_conv_tiled(conv, AVX512_TILING),
                    };
                    std::hint::black_box(out);
                    *best = best.min(t.elapsed().as_secs_f64());
                }
            }
            println!(
                "conv{k}x{k} batch {b} {c}->{c} @{hw}^2: direct AVX2 {:.1} ms ({:.0} GFLOP/s), direct AVX-512 {:.1} ms ({:.0} GFLOP/s), gemm {:.1} ms ({:.0} GFLOP/s)",
                best[0] * 1e3,
                flops / best[0] / 1e9,
                best[2] * 1e3,
                flops / best[2] / 1e9,
                best[1] * 1e3,
                flops / best[1] / 1e9
            );
        }
    }
}
