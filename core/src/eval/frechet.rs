//! The Fréchet distance between two Gaussians fitted to feature sets: the "F" of FID and rFID.
//!
//! `d² = |μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr(√(Σ₁ Σ₂))`, with the statistics pytorch-fid uses:
//! the feature mean and the unbiased (`n − 1`) covariance of `np.cov(rowvar=False)`.
//!
//! pytorch-fid takes `scipy.linalg.sqrtm` of the non-symmetric `Σ₁ Σ₂`, which can come back
//! complex or non-finite (it then retries with `εI` added). Here the trace is the sum of the
//! square roots of the eigenvalues of the symmetric positive semi-definite `√Σ₁ Σ₂ √Σ₁`, which has
//! the same eigenvalues as `Σ₁ Σ₂`: the eigenvalues are real, negative ones are rounding noise and
//! are clamped to zero, and rank-deficient covariances (fewer images than feature dimensions,
//! the usual case for a small evaluation set) need no special case.
//!
//! Everything is f64 and hand-written (Householder tridiagonalisation and implicit QL, as in
//! EISPACK's `tred2`/`tql2`; packed matrix products on all cores), with no linear-algebra crate,
//! and takes a few seconds for Inception's 2048 dimensions.

use std::num::NonZeroUsize;

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub mean: Vec<f64>,
    /// Unbiased covariance, row-major `dim × dim`.
    pub cov: Vec<f64>,
    /// Number of feature vectors the statistics were computed from.
    pub count: usize,
}

impl FeatureStats {
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Statistics of `rows`, a row-major `count × dim` matrix.
    pub fn from_rows(rows: &[f32], dim: usize) -> Result<Self, String> {
        let mut acc = FeatureAccumulator::new(dim);
        acc.push_rows(rows)?;
        acc.stats()
    }

    /// Checks that the fields agree with each other and hold finite numbers.
    fn validate(&self, which: &str) -> Result<(), String> {
        let d = self.dim();
        if d == 0 {
            return Err(format!("the {which} statistics are empty"));
        }
        if self.cov.len() != d * d {
            return Err(format!(
                "the {which} covariance has {} values, expected {d}×{d}",
                self.cov.len()
            ));
        }
        if self.mean.iter().chain(&self.cov).any(|v| !v.is_finite()) {
            return Err(format!("the {which} statistics contain NaN or infinite values"));
        }
        Ok(())
    }
}

/// Rows buffered before they are folded into the cross products: a rank-k update reads the
/// `dim × dim` sum once per block instead of once per row.
const BLOCK_ROWS: usize = 64;

/// Builds [`FeatureStats`] from feature rows that arrive batch by batch.
///
/// Sums are f64 and taken of `x − x₀`, `x₀` being the first row: shifting by a typical value
/// keeps `Σ(x − x₀)(x − x₀)ᵀ − n·m mᵀ` free of the cancellation the raw second moment has when
/// the mean is large next to the spread.
#[derive(Debug, Clone)]
pub struct FeatureAccumulator {
    dim: usize,
    count: usize,
    shift: Vec<f64>,
    sum: Vec<f64>,
    /// Upper triangle (row-major `dim × dim`) of `Σ(x − x₀)(x − x₀)ᵀ` over the flushed rows.
    cross: Vec<f64>,
    /// Shifted rows not yet in `cross`, column-major: `pending[i * BLOCK_ROWS + r]`.
    pending: Vec<f64>,
    pending_rows: usize,
}

impl FeatureAccumulator {
    pub fn new(dim: usize) -> Self {
        FeatureAccumulator {
            dim,
            count: 0,
            shift: Vec::new(),
            sum: vec![0.0; dim],
            cross: vec![0.0; dim * dim],
            pending: vec![0.0; dim * BLOCK_ROWS],
            pending_rows: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds the rows of a row-major `rows.len() / dim × dim` matrix. A NaN or infinite value
    /// would silently poison every statistic, so it is refused, as is a partial row.
    pub fn push_rows(&mut self, rows: &[f32]) -> Result<(), String> {
        let d = self.dim;
        if d == 0 {
            return Err("feature dimension is 0".into());
        }
        if rows.len() % d != 0 {
            return Err(format!(
                "{} values do not make whole feature rows of {d}",
                rows.len()
            ));
        }
        if let Some(bad) = rows.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "feature row {} has a NaN or infinite value (at dimension {})",
                self.count + bad / d,
                bad % d
            ));
        }
        for row in rows.chunks_exact(d) {
            if self.count == 0 {
                self.shift = row.iter().map(|&v| f64::from(v)).collect();
            }
            let r = self.pending_rows;
            for (i, (&v, s)) in row.iter().zip(&self.shift).enumerate() {
                let y = f64::from(v) - s;
                self.sum[i] += y;
                self.pending[i * BLOCK_ROWS + r] = y;
            }
            self.pending_rows += 1;
            self.count += 1;
            if self.pending_rows == BLOCK_ROWS {
                self.flush();
            }
        }
        Ok(())
    }

    /// Folds the pending rows into the upper triangle of `cross`, in parallel over its rows.
    fn flush(&mut self) {
        let (d, p) = (self.dim, self.pending_rows);
        if p == 0 {
            return;
        }
        let pending = &self.pending;
        let column = |i: usize| &pending[i * BLOCK_ROWS..i * BLOCK_ROWS + p];
        // Row i of the upper triangle holds d − i products: split rows by work, not by count.
        par_row_ranges(&mut self.cross, d, d, triangle_splits, |first, rows| {
            for (o, out) in rows.chunks_exact_mut(d).enumerate() {
                let i = first + o;
                let yi = column(i);
                for (j, c) in out.iter_mut().enumerate().skip(i) {
                    *c += dot(yi, column(j));
                }
            }
        });
        self.pending_rows = 0;
    }

    /// The statistics of the rows so far (at least two: the covariance divides by `n − 1`).
    pub fn stats(&mut self) -> Result<FeatureStats, String> {
        let (d, n) = (self.dim, self.count);
        if n < 2 {
            return Err(format!(
                "feature statistics need at least 2 rows, got {n}"
            ));
        }
        self.flush();
        let nf = n as f64;
        let mean: Vec<f64> = self
            .shift
            .iter()
            .zip(&self.sum)
            .map(|(s, t)| s + t / nf)
            .collect();
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in i..d {
                let c = (self.cross[i * d + j] - self.sum[i] * self.sum[j] / nf) / (nf - 1.0);
                cov[i * d + j] = c;
                cov[j * d + i] = c;
            }
        }
        Ok(FeatureStats {
            mean,
            cov,
            count: n,
        })
    }
}

/// The squared Fréchet distance between the Gaussians `(μ₁, Σ₁)` and `(μ₂, Σ₂)`: the FID when
/// the statistics are of Inception pool features.
///
/// Rounding can push a distance that is truly 0 slightly below it; the result is clamped at 0.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, String> {
    a.validate("first")?;
    b.validate("second")?;
    let d = a.dim();
    if b.dim() != d {
        return Err(format!(
            "the statistics have different dimensions: {d} and {}",
            b.dim()
        ));
    }
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    let cross = trace_sqrt_product(&a.cov, &b.cov, d)?;
    Ok((mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * cross).max(0.0))
}

/// `tr(√(S₁ S₂))` for symmetric positive semi-definite `S₁`, `S₂` (row-major `n × n`).
///
/// With `S₁ = V Λ Vᵀ` and `C = V Λ^½` (so `C Cᵀ = S₁`), `Cᵀ S₂ C` is symmetric PSD and has the
/// eigenvalues of `√S₁ S₂ √S₁`, hence of `S₁ S₂`. Columns of `C` for eigenvalues ≤ 0 are zero
/// and dropped, which also makes the products smaller for rank-deficient `S₁`.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], n: usize) -> Result<f64, String> {
    let eig = sym_eigen(s1, n)?;
    // Rows of Cᵀ: √λ_r times eigenvector r, for the positive eigenvalues.
    let mut ct = Vec::with_capacity(n * n);
    let mut rank = 0;
    for (r, &lambda) in eig.values.iter().enumerate() {
        if lambda > 0.0 {
            let scale = lambda.sqrt();
            ct.extend(eig.vectors[r * n..(r + 1) * n].iter().map(|v| v * scale));
            rank += 1;
        }
    }
    if rank == 0 {
        return Ok(0.0);
    }
    // Cᵀ S₂ = Cᵀ S₂ᵀ, then (Cᵀ S₂) C = (Cᵀ S₂)(Cᵀ)ᵀ: both are A·Bᵀ products.
    let ct_s2 = matmul_abt(&ct, s2, rank, n, n);
    let mut m = matmul_abt(&ct_s2, &ct, rank, rank, n);
    symmetrize(&mut m, rank);
    let values = sym_eigenvalues(&m, rank)?;
    Ok(values.iter().map(|&v| v.max(0.0).sqrt()).sum())
}

/// `(M + Mᵀ) / 2`: removes the asymmetry rounding leaves in a product that is symmetric in exact
/// arithmetic, since the eigensolver reads only one triangle.
fn symmetrize(m: &mut [f64], n: usize) {
    for i in 0..n {
        for j in i + 1..n {
            let v = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = v;
            m[j * n + i] = v;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Symmetric eigensolver.
//
// EISPACK's tred2/tql2 (as in JAMA), on the transpose of the usual working array: the input is
// symmetric, and with it every inner loop runs along a row, contiguous in memory, so that it
// vectorises and streams, and the eigenvectors come out as rows.
// ---------------------------------------------------------------------------------------------

/// Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric matrix.
#[derive(Debug, Clone)]
pub struct SymEigen {
    pub values: Vec<f64>,
    /// Row-major `n × n`; row `r` is the eigenvector of `values[r]`.
    pub vectors: Vec<f64>,
}

/// Eigen-decomposition of the symmetric row-major `n × n` matrix `a` (its lower triangle is
/// what is read).
pub fn sym_eigen(a: &[f64], n: usize) -> Result<SymEigen, String> {
    check_square(a, n)?;
    let mut w = a.to_vec();
    let (mut d, mut e) = tridiagonalize(&mut w, n, true);
    tridiagonal_ql(&mut d, &mut e, Some(&mut w))?;
    // Sort ascending, moving the vectors along.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| d[x].total_cmp(&d[y]));
    let values = order.iter().map(|&r| d[r]).collect();
    let mut vectors = Vec::with_capacity(n * n);
    for &r in &order {
        vectors.extend_from_slice(&w[r * n..(r + 1) * n]);
    }
    Ok(SymEigen { values, vectors })
}

/// Eigenvalues (ascending) of the symmetric row-major `n × n` matrix `a`, without the cost of
/// the eigenvectors.
pub fn sym_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>, String> {
    check_square(a, n)?;
    let mut w = a.to_vec();
    let (mut d, mut e) = tridiagonalize(&mut w, n, false);
    tridiagonal_ql(&mut d, &mut e, None)?;
    d.sort_by(f64::total_cmp);
    Ok(d)
}

fn check_square(a: &[f64], n: usize) -> Result<(), String> {
    if a.len() != n * n {
        return Err(format!("expected a {n}×{n} matrix, got {} values", a.len()));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err("the matrix contains NaN or infinite values".into());
    }
    Ok(())
}

/// Householder reduction to tridiagonal form (`tred2`). Returns the diagonal and the
/// sub-diagonal (`e[0] = 0`, `e[i]` couples `i − 1` and `i`). With `accumulate`, `w` ends up
/// holding the orthogonal transformation `Q` transposed (row `j` = column `j` of `Q`); without,
/// `w` is scratch.
///
/// `w[j][k]` here is `V[k][j]` of JAMA's code.
fn tridiagonalize(w: &mut [f64], n: usize, accumulate: bool) -> (Vec<f64>, Vec<f64>) {
    let mut d: Vec<f64> = (0..n).map(|j| w[j * n + n - 1]).collect();
    let mut e = vec![0.0; n];
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|v| v.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = w[j * n + i - 1];
                w[j * n + i] = 0.0;
                w[i * n + j] = 0.0;
            }
        } else {
            for v in &mut d[..i] {
                *v /= scale;
                h += *v * *v;
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].fill(0.0);
            // e = A u (A symmetric, its upper triangle in the rows of w), one row at a time.
            for j in 0..i {
                let f = d[j];
                w[i * n + j] = f;
                let row = &w[j * n + j..j * n + i];
                e[j] += dot(row, &d[j..i]);
                axpy(f, &row[1..], &mut e[j + 1..i]);
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            // A -= u pᵀ + p uᵀ, upper triangle.
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                let row = &mut w[j * n + j..j * n + i];
                for ((x, &ek), &dk) in row.iter_mut().zip(&e[j..i]).zip(&d[j..i]) {
                    *x -= f * ek + g * dk;
                }
                d[j] = w[j * n + i - 1];
                w[j * n + i] = 0.0;
            }
        }
        d[i] = h;
    }
    if accumulate {
        accumulate_householder(w, n, &mut d);
    } else {
        // The reduced diagonal is left on the diagonal of `w`.
        for (j, dj) in d.iter_mut().enumerate() {
            *dj = w[j * n + j];
        }
    }
    e[0] = 0.0;
    (d, e)
}

/// Second half of `tred2`: forms `Q` from the stored Householder vectors. `d[i + 1]` holds the
/// `h` of step `i + 1` on entry, the diagonal of the tridiagonal matrix on exit.
fn accumulate_householder(w: &mut [f64], n: usize, d: &mut [f64]) {
    for i in 0..n.saturating_sub(1) {
        w[i * n + n - 1] = w[i * n + i];
        w[i * n + i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            let (head, tail) = w.split_at_mut((i + 1) * n);
            let u = &tail[..=i];
            for (dk, &uk) in d[..=i].iter_mut().zip(u) {
                *dk = uk / h;
            }
            for j in 0..=i {
                let row = &mut head[j * n..j * n + i + 1];
                let g = dot(u, row);
                axpy(-g, &d[..=i], row);
            }
        }
        w[(i + 1) * n..(i + 1) * n + i + 1].fill(0.0);
    }
    for j in 0..n {
        d[j] = w[j * n + n - 1];
        w[j * n + n - 1] = 0.0;
    }
    w[n * n - 1] = 1.0;
}

/// Implicit QL on a symmetric tridiagonal matrix (`tql2`): `d` becomes the eigenvalues
/// (unsorted); with `vectors`, its rows are rotated along, turning `Qᵀ` into the eigenvectors.
fn tridiagonal_ql(d: &mut [f64], e: &mut [f64], mut vectors: Option<&mut [f64]>) -> Result<(), String> {
    let n = d.len();
    if n == 0 {
        return Ok(());
    }
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let eps = f64::EPSILON;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > 60 {
                    return Err(format!(
                        "the eigenvalue solver did not converge (eigenvalue {l} of {n})"
                    ));
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for v in &mut d[l + 2..] {
                    *v -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    if let Some(w) = vectors.as_deref_mut() {
                        rotate_rows(w, n, i, c, s);
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

/// Applies the plane rotation `(c, s)` to rows `i` and `i + 1` of `w`.
fn rotate_rows(w: &mut [f64], n: usize, i: usize, c: f64, s: f64) {
    let (a, b) = w[i * n..(i + 2) * n].split_at_mut(n);
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        let h = *y;
        *y = s * *x + c * h;
        *x = c * *x - s * h;
    }
}

// ---------------------------------------------------------------------------------------------
// Dense kernels.
// ---------------------------------------------------------------------------------------------

/// Dot product with four independent partial sums, so that it vectorises (a single running sum
/// fixes the order of additions and cannot).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4
        .remainder()
        .iter()
        .zip(b4.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a4.zip(b4) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `y += alpha x`.
fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Height and width of the register tile of [`matmul_abt`].
const TILE: usize = 4;
/// Depth of one packed block: a `TILE × KC` panel (8 KiB) stays in L1.
const KC: usize = 256;
/// Rows of `B` per pass over the rows of `A`: their `NC × KC` blocks (128 KiB) stay in L2.
const NC: usize = 64;

/// `A Bᵀ` for row-major `A` (`m × k`) and `B` (`n × k`), on all cores.
///
/// Both operands are packed into `TILE`-row panels, interleaved along `k`, so that the 4×4
/// kernel reads two contiguous streams and keeps its 16 sums in registers.
fn matmul_abt(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    let packed_b = pack_panels(b, n, k);
    let packed_a = pack_panels(a, m, k);
    let panels_k = k.div_ceil(KC);
    // Threads take whole row panels of C.
    par_row_ranges(&mut c, m, n, even_splits(TILE), |first, rows| {
        let end = first + rows.len() / n;
        for kb in 0..panels_k {
            let depth = KC.min(k - kb * KC);
            for jb in (0..n).step_by(NC) {
                for ip in (first..end).step_by(TILE) {
                    let pa = panel(&packed_a, ip / TILE, kb, k, depth);
                    for jp in (jb..n.min(jb + NC)).step_by(TILE) {
                        let pb = panel(&packed_b, jp / TILE, kb, k, depth);
                        let acc = kernel(pa, pb);
                        for (r, acc_row) in acc.iter().enumerate().take((end - ip).min(TILE)) {
                            let out = &mut rows[(ip - first + r) * n + jp..];
                            for (o, v) in out.iter_mut().zip(acc_row).take((n - jp).min(TILE)) {
                                *o += v;
                            }
                        }
                    }
                }
            }
        }
    });
    c
}

/// The `TILE × TILE` block `Σ_k pa[k] pbᵀ[k]` of two packed panels of equal depth.
fn kernel(pa: &[f64], pb: &[f64]) -> [[f64; TILE]; TILE] {
    let mut acc = [[0.0; TILE]; TILE];
    for (x, y) in pa.chunks_exact(TILE).zip(pb.chunks_exact(TILE)) {
        for r in 0..TILE {
            for (a, &yc) in acc[r].iter_mut().zip(y) {
                *a += x[r] * yc;
            }
        }
    }
    acc
}

/// Packs row-major `rows × k` into panels of `TILE` rows (zero-padded), each stored as
/// consecutive `KC`-deep blocks in which the `TILE` values of one column are adjacent.
fn pack_panels(x: &[f64], rows: usize, k: usize) -> Vec<f64> {
    let panels = rows.div_ceil(TILE);
    let mut out = vec![0.0; panels * TILE * k];
    for p in 0..panels {
        let base = p * TILE * k;
        for kb in 0..k.div_ceil(KC) {
            let depth = KC.min(k - kb * KC);
            let block = base + kb * KC * TILE;
            for r in 0..TILE.min(rows - p * TILE) {
                let src = &x[(p * TILE + r) * k + kb * KC..][..depth];
                for (t, &v) in src.iter().enumerate() {
                    out[block + t * TILE + r] = v;
                }
            }
        }
    }
    out
}

/// Block `kb` (of depth `depth`) of panel `p` in a [`pack_panels`] buffer.
fn panel(packed: &[f64], p: usize, kb: usize, k: usize, depth: usize) -> &[f64] {
    let start = p * TILE * k + kb * KC * TILE;
    &packed[start..start + depth * TILE]
}

/// Runs `work(first_row, rows)` on disjoint row ranges of the row-major `rows × width` matrix
/// `out`, one range per core, with boundaries from `split(rows, parts)`.
fn par_row_ranges<F>(
    out: &mut [f64],
    rows: usize,
    width: usize,
    split: impl Fn(usize, usize) -> Vec<usize>,
    work: F,
) where
    F: Fn(usize, &mut [f64]) + Sync,
{
    let parts = std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
        .min(rows.max(1));
    let bounds = split(rows, parts);
    if bounds.len() <= 2 {
        work(0, out);
        return;
    }
    std::thread::scope(|scope| {
        let mut rest = out;
        for pair in bounds.windows(2) {
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut((pair[1] - pair[0]) * width);
            rest = tail;
            let work = &work;
            let first = pair[0];
            scope.spawn(move || work(first, chunk));
        }
    });
}

/// Boundaries `0 = b₀ < … < b_p = rows` of `parts` nearly equal ranges, multiples of `align`.
fn even_splits(align: usize) -> impl Fn(usize, usize) -> Vec<usize> {
    move |rows, parts| {
        let units = rows.div_ceil(align);
        let mut bounds: Vec<usize> = (0..=parts).map(|t| (units * t / parts * align).min(rows)).collect();
        bounds.dedup();
        bounds
    }
}

/// Boundaries splitting the rows of an upper triangle (row `i` has `rows − i` entries) into
/// `parts` ranges of nearly equal work.
fn triangle_splits(rows: usize, parts: usize) -> Vec<usize> {
    let total = (rows * (rows + 1) / 2) as f64;
    let mut bounds = vec![0];
    let mut done = 0.0;
    for i in 0..rows {
        done += (rows - i) as f64;
        if done >= total * bounds.len() as f64 / parts as f64 && bounds.len() < parts {
            bounds.push(i + 1);
        }
    }
    bounds.push(rows);
    bounds.dedup();
    bounds
}
