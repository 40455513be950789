//! The Fréchet distance between two Gaussians fitted to feature sets: the "F" of FID and rFID.
//!
//! `d² = |μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr(√(Σ₁ Σ₂))`, with the statistics pytorch-fid uses:
//! the feature mean and the unbiased (`n − 1`) covariance of `np.cov(rowvar=False)`.
//!
//! pytorch-fid takes `scipy.linalg.sqrtm` of the non-symmetric `Σ₁ Σ₂`, which can come back
//! complex or non-finite (it then retries with `εI` added), and takes about 40 s at 2048
//! dimensions on a small machine. Here the trace is the sum of the square roots of the
//! eigenvalues of a symmetric positive semi-definite matrix with the eigenvalues of
//! `√Σ₁ Σ₂ √Σ₁`, hence of `Σ₁ Σ₂` (see [`trace_sqrt_product`]): the eigenvalues are real,
//! negative ones are rounding noise and are clamped to zero, and rank-deficient covariances
//! (fewer images than feature dimensions, the usual case for a small evaluation set) need no
//! special case.
//!
//! Everything is f64 and hand-written, with no linear-algebra crate: a pivoted Cholesky
//! factorisation, packed matrix products on all cores, and a symmetric eigensolver (Householder
//! tridiagonalisation and implicit QL, as EISPACK's `tred2`/`tql2`). The distance takes a few
//! seconds at Inception's 2048 dimensions.

/// What is wrong with feature statistics or a matrix given to the Fréchet distance.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrechetError {
    #[error("the {which} statistics are empty")]
    Empty { which: &'static str },
    #[error("the {which} covariance has {values} values, expected {dim}×{dim}")]
    CovarianceSize {
        which: &'static str,
        values: usize,
        dim: usize,
    },
    #[error("the {which} statistics contain NaN or infinite values")]
    NonFiniteStatistics { which: &'static str },
    #[error("the feature dimension is 0")]
    ZeroDimension,
    #[error("{values} values do not make whole feature rows of {dim}")]
    PartialRow { values: usize, dim: usize },
    #[error("feature row {row} has a NaN or infinite value (at dimension {dimension})")]
    NonFiniteFeature { row: usize, dimension: usize },
    #[error("feature statistics need at least 2 rows, got {rows}")]
    TooFewRows { rows: usize },
    #[error("the statistics have different dimensions: {first} and {second}")]
    DimensionMismatch { first: usize, second: usize },
    #[error("expected a {n}×{n} matrix, got {values} values")]
    NotSquare { n: usize, values: usize },
    #[error("the matrix contains NaN or infinite values")]
    NonFiniteMatrix,
    #[error("the eigenvalue solver did not converge (eigenvalue {index} of {n})")]
    NoConvergence { index: usize, n: usize },
}

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
    pub fn from_rows(rows: &[f32], dim: usize) -> Result<Self, FrechetError> {
        let mut acc = FeatureAccumulator::new(dim);
        acc.push_rows(rows)?;
        acc.stats()
    }

    /// Checks that the fields agree with each other and hold finite numbers.
    fn validate(&self, which: &'static str) -> Result<(), FrechetError> {
        let d = self.dim();
        if d == 0 {
            return Err(FrechetError::Empty { which });
        }
        if self.cov.len() != d * d {
            return Err(FrechetError::CovarianceSize {
                which,
                values: self.cov.len(),
                dim: d,
            });
        }
        if self.mean.iter().chain(&self.cov).any(|v| !v.is_finite()) {
            return Err(FrechetError::NonFiniteStatistics { which });
        }
        Ok(())
    }
}

/// Rows buffered before they are folded into the cross products: a rank-k update reads the
/// `dim × dim` sum once per block instead of once per row.
const BLOCK_ROWS: usize = 256;

/// Builds [`FeatureStats`] from feature rows that arrive batch by batch.
///
/// Sums are f64 and taken of `y = x − x₀`, `x₀` being the first row: shifting by a typical
/// value keeps `Σ y yᵀ − (Σ y)(Σ y)ᵀ / n` free of the cancellation the raw second moment has
/// when the mean is large next to the spread.
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
    pub fn push_rows(&mut self, rows: &[f32]) -> Result<(), FrechetError> {
        let d = self.dim;
        if d == 0 {
            return Err(FrechetError::ZeroDimension);
        }
        if !rows.len().is_multiple_of(d) {
            return Err(FrechetError::PartialRow {
                values: rows.len(),
                dim: d,
            });
        }
        if let Some(bad) = rows.iter().position(|v| !v.is_finite()) {
            return Err(FrechetError::NonFiniteFeature {
                row: self.count + bad / d,
                dimension: bad % d,
            });
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

    /// Folds the pending rows into the upper triangle of `cross`: `cross += Yᵀ Y` for the
    /// pending rows `Y`, as one matrix product (rows past `pending_rows` are zeroed first).
    fn flush(&mut self) {
        let (d, p) = (self.dim, self.pending_rows);
        if p == 0 {
            return;
        }
        if p < BLOCK_ROWS {
            for column in self.pending.chunks_exact_mut(BLOCK_ROWS) {
                column[p..].fill(0.0);
            }
        }
        let yt = &self.pending;
        let cross = Strided {
            data: &mut self.cross,
            stride: d,
        };
        matmul_abt(cross, yt, yt, (d, d, BLOCK_ROWS), Structure::UPPER);
        self.pending_rows = 0;
    }

    /// The statistics of the rows so far (at least two: the covariance divides by `n − 1`).
    pub fn stats(&mut self) -> Result<FeatureStats, FrechetError> {
        let (d, n) = (self.dim, self.count);
        if n < 2 {
            return Err(FrechetError::TooFewRows { rows: n });
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
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64, FrechetError> {
    a.validate("first")?;
    b.validate("second")?;
    let d = a.dim();
    if b.dim() != d {
        return Err(FrechetError::DimensionMismatch {
            first: d,
            second: b.dim(),
        });
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
/// With any factor `F` of `S₁ = F Fᵀ`, `Fᵀ S₂ F` is symmetric PSD and has the non-zero
/// eigenvalues of `√S₁ S₂ √S₁`, hence of `S₁ S₂`. `F` comes from a pivoted Cholesky
/// factorisation, which stops at the numerical rank (a rank-deficient covariance gives a smaller
/// problem, not a breakdown). Taking `F = V Λ^½` from an eigendecomposition gives the same
/// eigenvalues, but its eigenvectors cost several times more at Inception's 2048 dimensions.
///
/// The trace is symmetric in `S₁` and `S₂`, so the covariance of lower rank is the one factored:
/// `Fᵀ S₂ F` then has full rank, whereas every eigenvalue that is zero in exact arithmetic
/// comes out as rounding noise `δ` and would add a spurious `√δ` to the sum.
pub fn trace_sqrt_product(s1: &[f64], s2: &[f64], n: usize) -> Result<f64, FrechetError> {
    check_square(s1, n)?;
    check_square(s2, n)?;
    let (f1, f2) = (pivoted_cholesky(s1, n), pivoted_cholesky(s2, n));
    let (factor, middle) = if f2.rank < f1.rank {
        (f2, s1)
    } else {
        (f1, s2)
    };
    let r = factor.rank;
    if r == 0 {
        return Ok(0.0);
    }
    // Work in pivot order, where row t of Fᵀ is zero before column t: the products skip those
    // blocks of zeros.
    let perm = &factor.perm;
    let middle: Vec<f64> = perm
        .iter()
        .flat_map(|&a| perm.iter().map(move |&b| middle[a * n + b]))
        .collect();
    let ft = &factor.rows;
    // Fᵀ S (S is symmetric, so this is Fᵀ Sᵀ), then (Fᵀ S) F.
    let mut ft_s = vec![0.0; r * n];
    let out = Strided {
        data: &mut ft_s,
        stride: n,
    };
    matmul_abt(out, ft, &middle, (r, n, n), Structure::A_TRAPEZOIDAL);
    let mut m = vec![0.0; r * r];
    let out = Strided {
        data: &mut m,
        stride: r,
    };
    matmul_abt(out, &ft_s, ft, (r, r, n), Structure::UPPER_B_TRAPEZOIDAL);
    mirror_upper(&mut m, r);
    let values = sym_eigenvalues(&m, r)?;
    Ok(values.iter().map(|&v| v.max(0.0).sqrt()).sum())
}

/// `S ≈ F Fᵀ` for a symmetric PSD `S`, with `F` of the numerical rank of `S`.
struct Factor {
    rank: usize,
    /// Pivot order: position `i` holds variable `perm[i]`.
    perm: Vec<usize>,
    /// `Fᵀ` in pivot order, row-major `rank × n`; row `t` is zero before column `t`.
    rows: Vec<f64>,
}

/// Columns per panel of [`pivoted_cholesky`]: the trailing update is a product of depth `PANEL`.
const PANEL: usize = 64;

/// Cholesky factorisation with diagonal pivoting, blocked as LAPACK's `dpstrf`: each step takes
/// the largest remaining diagonal, and the factorisation stops once that is at most
/// `n ε max(diag)`, where what is left is rounding noise of a semi-definite matrix.
///
/// Columns are computed a panel at a time against the Schur complement as it was at the start
/// of the panel (only the panel's own columns are subtracted, and the remaining diagonal is kept
/// exact for the pivot choice); the rest of the matrix is then updated once per panel, as a
/// matrix product, instead of being streamed through once per column.
fn pivoted_cholesky(s: &[f64], n: usize) -> Factor {
    // The Schur complement, in pivot order; only its upper triangle is kept up to date.
    let mut w = s.to_vec();
    let mut perm: Vec<usize> = (0..n).collect();
    let mut diag: Vec<f64> = (0..n).map(|i| s[i * n + i]).collect();
    let max_diag = diag.iter().copied().fold(0.0, f64::max);
    let tol = n as f64 * f64::EPSILON * max_diag;
    // Row i: the factor's entries for the variable at position i (its first `rank` columns).
    let mut l = vec![0.0; n * n];
    let mut rank = 0;
    'panels: while rank < n {
        let start = rank;
        for j in start..(start + PANEL).min(n) {
            let p = (j..n)
                .max_by(|&a, &b| diag[a].total_cmp(&diag[b]))
                .unwrap_or(j);
            if diag[p] <= tol {
                break 'panels;
            }
            if p != j {
                swap_symmetric_upper(&mut w, n, start, j, p);
                perm.swap(j, p);
                diag.swap(j, p);
                let (head, tail) = l.split_at_mut(p * n);
                head[j * n..j * n + j].swap_with_slice(&mut tail[..j]);
            }
            let ljj = diag[j].sqrt();
            l[j * n + j] = ljj;
            let (head, tail) = l.split_at_mut((j + 1) * n);
            let lj = &head[j * n + start..j * n + j];
            let wj = &w[j * n..(j + 1) * n];
            for (o, row) in tail.chunks_exact_mut(n).enumerate() {
                let i = j + 1 + o;
                let v = (wj[i] - dot(&row[start..j], lj)) / ljj;
                row[j] = v;
                diag[i] -= v * v;
            }
            rank += 1;
        }
        // W[rank.., rank..] −= L_panel L_panelᵀ (upper triangle).
        let (m, depth) = (n - rank, rank - start);
        if m > 0 {
            let panel: Vec<f64> = l[rank * n..]
                .chunks_exact(n)
                .flat_map(|row| row[start..rank].iter().copied())
                .collect();
            let negated: Vec<f64> = panel.iter().map(|v| -v).collect();
            let out = Strided {
                data: &mut w[rank * n + rank..],
                stride: n,
            };
            matmul_abt(out, &negated, &panel, (m, m, depth), Structure::UPPER);
        }
    }
    let mut rows = vec![0.0; rank * n];
    for (i, li) in l.chunks_exact(n).enumerate() {
        for (t, &v) in li[..rank.min(i + 1)].iter().enumerate() {
            rows[t * n + i] = v;
        }
    }
    Factor { rank, perm, rows }
}

/// Exchanges positions `j < p` of a symmetric matrix of which only the upper triangle of the
/// block `lo..n` is stored (LAPACK's `dsyswapr` on that block).
fn swap_symmetric_upper(w: &mut [f64], n: usize, lo: usize, j: usize, p: usize) {
    for a in lo..j {
        w.swap(a * n + j, a * n + p);
    }
    for b in j + 1..p {
        w.swap(j * n + b, b * n + p);
    }
    for b in p + 1..n {
        w.swap(j * n + b, p * n + b);
    }
    w.swap(j * n + j, p * n + p);
}

/// Copies the upper triangle of a square matrix onto its lower triangle.
fn mirror_upper(m: &mut [f64], n: usize) {
    for i in 0..n {
        for j in i + 1..n {
            m[j * n + i] = m[i * n + j];
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
pub fn sym_eigen(a: &[f64], n: usize) -> Result<SymEigen, FrechetError> {
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
pub fn sym_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>, FrechetError> {
    check_square(a, n)?;
    let mut w = a.to_vec();
    let (mut d, mut e) = tridiagonalize(&mut w, n, false);
    tridiagonal_ql(&mut d, &mut e, None)?;
    d.sort_by(f64::total_cmp);
    Ok(d)
}

fn check_square(a: &[f64], n: usize) -> Result<(), FrechetError> {
    if a.len() != n * n {
        return Err(FrechetError::NotSquare { n, values: a.len() });
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(FrechetError::NonFiniteMatrix);
    }
    Ok(())
}

/// Householder reduction to tridiagonal form (`tred2`). Returns the diagonal and the
/// sub-diagonal (`e[0] = 0`, `e[i]` couples `i − 1` and `i`). With `accumulate`, `w` ends up
/// holding the orthogonal transformation `Q` transposed (row `j` = column `j` of `Q`); without,
/// `w` is scratch. Only the upper triangle of `w` is read.
///
/// `w[j][k]` here is `V[k][j]` of JAMA's code. Unlike `tred2`, the rank-2 update of step `i` is
/// not applied in a pass of its own: it is fused with the matrix-vector product of step `i − 1`,
/// which needs only the updated column `i − 1` in advance, so each step streams the matrix once
/// instead of twice (the reduction is memory-bound at the sizes of Inception features).
fn tridiagonalize(w: &mut [f64], n: usize, accumulate: bool) -> (Vec<f64>, Vec<f64>) {
    let mut d: Vec<f64> = (0..n).map(|j| w[j * n + n - 1]).collect();
    let mut e = vec![0.0; n];
    // The update `A -= u qᵀ + q uᵀ` of the previous step, not yet applied to the rows.
    let mut pending: Option<(Vec<f64>, Vec<f64>)> = None;
    for i in (1..n).rev() {
        if let Some((u, q)) = &pending {
            // Column i after the pending update, computed exactly as the row pass will.
            for j in 0..=i {
                d[j] = w[j * n + i] - (u[j] * q[i] + q[j] * u[i]);
            }
        }
        let scale: f64 = d[..i].iter().map(|v| v.abs()).sum();
        if scale == 0.0 {
            e[i] = d[i - 1];
            if let Some((u, q)) = pending.take() {
                fused_pass(w, n, i, Some((&u, &q)), None);
            }
            for j in 0..i {
                d[j] = w[j * n + i - 1];
                w[j * n + i] = 0.0;
                w[i * n + j] = 0.0;
            }
            d[i] = 0.0;
            continue;
        }
        let mut h = 0.0;
        for v in &mut d[..i] {
            *v /= scale;
            h += *v * *v;
        }
        let f = d[i - 1];
        let g = if f > 0.0 { -h.sqrt() } else { h.sqrt() };
        e[i] = scale * g;
        h -= f * g;
        d[i - 1] = f - g;
        let u = d[..i].to_vec();
        w[i * n..i * n + i].copy_from_slice(&u);
        let pu = pending.take();
        let mut p = fused_pass(
            w,
            n,
            i,
            pu.as_ref().map(|(a, b)| (&a[..], &b[..])),
            Some(&u),
        );
        // q = p / h − (uᵀp / 2h²) u.
        let mut f = 0.0;
        for (pj, &uj) in p.iter_mut().zip(&u) {
            *pj /= h;
            f += *pj * uj;
        }
        let hh = f / (h + h);
        for (pj, &uj) in p.iter_mut().zip(&u) {
            *pj -= hh * uj;
        }
        pending = Some((u, p));
        d[i] = h;
    }
    if let Some((u, q)) = pending.take() {
        fused_pass(w, n, 0, Some((&u, &q)), None);
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

/// One pass over rows `0..=i` of the upper triangle: applies the previous step's update
/// `A -= u qᵀ + q uᵀ` (`u`, `q` of length `i + 1`; it clears column `i + 1`, which that step
/// eliminated) and returns `A u` for this step's Householder vector `u` (length `i`), each row
/// being read once, by [`update_dot_axpy`], when there are both.
///
/// It stays on one thread: splitting each of the `n` passes over the cores was slower on a
/// loaded two-core machine, where a step waits for its slowest thread.
fn fused_pass(
    w: &mut [f64],
    n: usize,
    i: usize,
    update: Option<(&[f64], &[f64])>,
    u: Option<&[f64]>,
) -> Vec<f64> {
    let mut p = vec![0.0; i];
    for (j, row) in w.chunks_exact_mut(n).take(i + 1).enumerate() {
        match (update, u.filter(|_| j < i)) {
            (Some((pu, pq)), Some(u)) => {
                let (f, g) = (pu[j], pq[j]);
                let diagonal = row[j] - (f * pq[j] + g * pu[j]);
                row[j] = diagonal;
                let (uj, (_, tail)) = (u[j], p.split_at_mut(j + 1));
                let inner = update_dot_axpy(
                    &mut row[j + 1..i],
                    (f, g, &pq[j + 1..i], &pu[j + 1..i]),
                    (uj, &u[j + 1..i]),
                    tail,
                );
                row[i] -= f * pq[i] + g * pu[i];
                row[i + 1] = 0.0;
                p[j] += diagonal * uj + inner;
            }
            (Some((pu, pq)), None) => {
                let (f, g) = (pu[j], pq[j]);
                for ((x, &qk), &uk) in row[j..=i].iter_mut().zip(&pq[j..]).zip(&pu[j..]) {
                    *x -= f * qk + g * uk;
                }
                row[i + 1] = 0.0;
            }
            (None, Some(u)) => {
                let row = &row[j..i];
                p[j] += dot(row, &u[j..]);
                axpy(u[j], &row[1..], &mut p[j + 1..]);
            }
            (None, None) => {}
        }
    }
    p
}

/// For each `k`: `x_k = row_k − (f q_k + g v_k)` is stored back, `p_k += a x_k`, and the sum of
/// `x_k u_k` is returned; one loop, four partial sums, so that it vectorises.
fn update_dot_axpy(
    row: &mut [f64],
    (f, g, q, v): (f64, f64, &[f64], &[f64]),
    (a, u): (f64, &[f64]),
    p: &mut [f64],
) -> f64 {
    let len = row.len();
    let main = len - len % 4;
    let (row, row_tail) = row.split_at_mut(main);
    let (p, p_tail) = p[..len].split_at_mut(main);
    let (q, v, u) = (&q[..len], &v[..len], &u[..len]);
    let mut acc = [0.0; 4];
    let chunks = row.chunks_exact_mut(4).zip(p.chunks_exact_mut(4)).zip(
        q.chunks_exact(4)
            .zip(v.chunks_exact(4))
            .zip(u.chunks_exact(4)),
    );
    for ((r, p4), ((q4, v4), u4)) in chunks {
        for l in 0..4 {
            let x = r[l] - (f * q4[l] + g * v4[l]);
            r[l] = x;
            acc[l] += x * u4[l];
            p4[l] += a * x;
        }
    }
    let mut tail = 0.0;
    for (k, (x, pk)) in row_tail.iter_mut().zip(p_tail.iter_mut()).enumerate() {
        let k = main + k;
        *x -= f * q[k] + g * v[k];
        tail += *x * u[k];
        *pk += a * *x;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
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
fn tridiagonal_ql(
    d: &mut [f64],
    e: &mut [f64],
    mut vectors: Option<&mut [f64]>,
) -> Result<(), FrechetError> {
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
                    return Err(FrechetError::NoConvergence { index: l, n });
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

/// What [`matmul_abt`] may skip.
#[derive(Debug, Clone, Copy, Default)]
struct Structure {
    /// Row `t` of `A` is zero before column `t` (the transposed factor of [`Factor`]).
    a_trapezoidal: bool,
    /// Row `t` of `B` is zero before column `t`.
    b_trapezoidal: bool,
    /// Only the upper triangle (`j ≥ i`) of the result is wanted; tiles below it are skipped
    /// and tiles across the diagonal may leave their lower part wrong.
    upper: bool,
}

impl Structure {
    const GENERAL: Structure = Structure {
        a_trapezoidal: false,
        b_trapezoidal: false,
        upper: false,
    };
    const UPPER: Structure = Structure {
        upper: true,
        ..Structure::GENERAL
    };
    const A_TRAPEZOIDAL: Structure = Structure {
        a_trapezoidal: true,
        ..Structure::GENERAL
    };
    const UPPER_B_TRAPEZOIDAL: Structure = Structure {
        b_trapezoidal: true,
        upper: true,
        ..Structure::GENERAL
    };

    /// Whether the packed block `kb` of the tile at row panel `ip`, column panel `jp` can hold
    /// a non-zero product.
    fn block_needed(self, ip: usize, jp: usize, kb: usize, depth: usize) -> bool {
        let k_end = kb * KC + depth;
        !(self.a_trapezoidal && k_end <= ip || self.b_trapezoidal && k_end <= jp)
    }

    /// Relative cost of output row `i` of an `m × n` result with depth `k`, for load balance.
    fn row_work(self, i: usize, n: usize, k: usize) -> f64 {
        let depth = |start: usize| k.saturating_sub(start) as f64;
        let first = if self.upper { i } else { 0 };
        match (self.a_trapezoidal, self.b_trapezoidal) {
            (true, _) => depth(i) * n.saturating_sub(first) as f64,
            // Σ_{j ≥ first} (k − j).
            (false, true) => {
                let d = depth(first);
                d * (d + 1.0) / 2.0
            }
            (false, false) => k as f64 * n.saturating_sub(first) as f64,
        }
    }
}

/// A row-major matrix (or block of one) whose row `r` starts at `data[r * stride]`.
struct Strided<'a> {
    data: &'a mut [f64],
    stride: usize,
}

/// `C += A Bᵀ` for row-major `A` (`m × k`), `B` (`n × k`) and `C` (`m × n`), on all cores,
/// with `dims = (m, n, k)`.
///
/// Both operands are packed into `TILE`-row panels, interleaved along `k`, so that the 4×4
/// kernel reads two contiguous streams and keeps its 16 sums in registers.
fn matmul_abt(
    c: Strided,
    a: &[f64],
    b: &[f64],
    (m, n, k): (usize, usize, usize),
    structure: Structure,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let packed_a = pack_panels(a, m, k);
    let packed_b = pack_panels(b, n, k);
    let bounds = balanced_splits(m, TILE, |i| structure.row_work(i, n, k));
    let ldc = c.stride;
    par_row_ranges(c, &bounds, |first, end, rows| {
        for kb in 0..k.div_ceil(KC) {
            let depth = KC.min(k - kb * KC);
            for jb in (0..n).step_by(NC) {
                for ip in (first..end).step_by(TILE) {
                    let pa = panel(&packed_a, ip / TILE, kb, k, depth);
                    let jp_start = if structure.upper {
                        jb.max(ip / TILE * TILE)
                    } else {
                        jb
                    };
                    for jp in (jp_start..n.min(jb + NC)).step_by(TILE) {
                        if !structure.block_needed(ip, jp, kb, depth) {
                            continue;
                        }
                        let pb = panel(&packed_b, jp / TILE, kb, k, depth);
                        let acc = kernel(pa, pb);
                        for (r, acc_row) in acc.iter().enumerate().take((end - ip).min(TILE)) {
                            let out = &mut rows[(ip - first + r) * ldc + jp..];
                            for (o, v) in out.iter_mut().zip(acc_row).take((n - jp).min(TILE)) {
                                *o += v;
                            }
                        }
                    }
                }
            }
        }
    });
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

/// Number of worker threads: one per core.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
}

/// Boundaries `0 = b₀ < … < b_p = rows` of one range per core with nearly equal total
/// `work(row)`, each boundary a multiple of `align`.
fn balanced_splits(rows: usize, align: usize, work: impl Fn(usize) -> f64) -> Vec<usize> {
    let parts = cores();
    let total: f64 = (0..rows).map(&work).sum();
    let mut bounds = vec![0];
    let mut done = 0.0;
    for i in 0..rows {
        done += work(i);
        let next = i + 1;
        if bounds.len() < parts
            && next.is_multiple_of(align)
            && done >= total * bounds.len() as f64 / parts as f64
        {
            bounds.push(next);
        }
    }
    bounds.push(rows);
    bounds.dedup();
    bounds
}

/// Runs `work(first_row, end_row, rows)` on the row ranges `bounds` of `out`, each on its own
/// thread, and returns the results in range order. `rows` starts at row `first_row`; the last
/// range gets the rest of `out`, which may end before a full stride.
fn par_row_ranges<R, F>(out: Strided, bounds: &[usize], work: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, usize, &mut [f64]) -> R + Sync,
{
    let Strided { data, stride } = out;
    if bounds.len() <= 2 {
        return vec![work(bounds[0], bounds[bounds.len() - 1], data)];
    }
    std::thread::scope(|scope| {
        let mut rest = data;
        let mut handles = Vec::with_capacity(bounds.len() - 1);
        for (t, pair) in bounds.windows(2).enumerate() {
            let chunk = if t + 2 == bounds.len() {
                std::mem::take(&mut rest)
            } else {
                let (chunk, tail) =
                    std::mem::take(&mut rest).split_at_mut((pair[1] - pair[0]) * stride);
                rest = tail;
                chunk
            };
            let work = &work;
            let (first, end) = (pair[0], pair[1]);
            handles.push(scope.spawn(move || work(first, end, chunk)));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A standard normal sample (Box–Muller).
    fn normal(rng: &mut StdRng) -> f64 {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn random_matrix(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<f64> {
        (0..rows * cols).map(|_| normal(rng)).collect()
    }

    fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut t = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = a[i * cols + j];
            }
        }
        t
    }

    /// `A B` for row-major `A` (`m × k`) and `B` (`k × n`), the plain way.
    fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for t in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + t] * b[t * n + j];
                }
            }
        }
        c
    }

    /// A random orthogonal matrix: the eigenvectors of a random symmetric matrix would do, but
    /// that would test the solver with itself; Gram–Schmidt on a random matrix does not.
    fn random_rotation(rng: &mut StdRng, n: usize) -> Vec<f64> {
        let mut q = random_matrix(rng, n, n);
        for i in 0..n {
            for j in 0..i {
                let proj: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                for k in 0..n {
                    q[i * n + k] -= proj * q[j * n + k];
                }
            }
            let norm = (0..n).map(|k| q[i * n + k].powi(2)).sum::<f64>().sqrt();
            for k in 0..n {
                q[i * n + k] /= norm;
            }
        }
        q
    }

    /// `Qᵀ diag(values) Q` for an orthogonal `Q` whose rows are the eigenvectors.
    fn with_spectrum(q: &[f64], values: &[f64]) -> Vec<f64> {
        let n = values.len();
        let scaled: Vec<f64> = (0..n * n).map(|x| q[x] * values[x / n]).collect();
        matmul(&transpose(q, n, n), &scaled, n, n, n)
    }

    /// A random symmetric PSD matrix of the given rank.
    fn random_psd(rng: &mut StdRng, n: usize, rank: usize) -> Vec<f64> {
        let a = random_matrix(rng, n, rank);
        matmul(&a, &transpose(&a, n, rank), n, rank, n)
    }

    fn stats(mean: Vec<f64>, cov: Vec<f64>) -> FeatureStats {
        FeatureStats {
            mean,
            cov,
            count: 1000,
        }
    }

    /// The closed form when both covariances share their eigenvectors.
    fn commuting_distance(mu1: &[f64], mu2: &[f64], a: &[f64], b: &[f64]) -> f64 {
        let mean: f64 = mu1.iter().zip(mu2).map(|(x, y)| (x - y).powi(2)).sum();
        let cov: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
            .sum();
        mean + cov
    }

    fn assert_close(got: f64, want: f64, tol: f64) {
        assert!(
            (got - want).abs() <= tol * want.abs().max(1.0),
            "got {got}, want {want} (tolerance {tol})"
        );
    }

    #[test]
    fn identical_statistics_are_at_distance_zero() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 24;
        let a = stats(random_matrix(&mut rng, 1, n), random_psd(&mut rng, n, n));
        let d = frechet_distance(&a, &a.clone()).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn diagonal_covariances_match_the_closed_form() {
        let mut rng = StdRng::seed_from_u64(2);
        let n = 16;
        let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..4.0)).collect();
        let b: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..4.0)).collect();
        let diag = |v: &[f64]| {
            let mut m = vec![0.0; n * n];
            for (i, &x) in v.iter().enumerate() {
                m[i * n + i] = x;
            }
            m
        };
        let (mu1, mu2) = (random_matrix(&mut rng, 1, n), random_matrix(&mut rng, 1, n));
        let got =
            frechet_distance(&stats(mu1.clone(), diag(&a)), &stats(mu2.clone(), diag(&b))).unwrap();
        assert_close(got, commuting_distance(&mu1, &mu2, &a, &b), 1e-10);
    }

    #[test]
    fn rotated_commuting_covariances_match_the_closed_form() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 40;
        let q = random_rotation(&mut rng, n);
        let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..3.0)).collect();
        let b: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..3.0)).collect();
        let (mu1, mu2) = (random_matrix(&mut rng, 1, n), random_matrix(&mut rng, 1, n));
        let got = frechet_distance(
            &stats(mu1.clone(), with_spectrum(&q, &a)),
            &stats(mu2.clone(), with_spectrum(&q, &b)),
        )
        .unwrap();
        assert_close(got, commuting_distance(&mu1, &mu2, &a, &b), 1e-9);
    }

    #[test]
    fn non_commuting_two_by_two_matches_the_closed_form() {
        // For 2×2, tr √M = √(tr M + 2 √det M), and S₁S₂ has the eigenvalues of √S₁ S₂ √S₁.
        let s1 = [2.0, 0.7, 0.7, 1.0];
        let s2 = [0.5, -0.3, -0.3, 1.5];
        let det = |m: &[f64; 4]| m[0] * m[3] - m[1] * m[2];
        let tr_prod = s1[0] * s2[0] + s1[1] * s2[2] + s1[2] * s2[1] + s1[3] * s2[3];
        let want = (tr_prod + 2.0 * (det(&s1) * det(&s2)).sqrt()).sqrt();
        assert_close(trace_sqrt_product(&s1, &s2, 2).unwrap(), want, 1e-12);
    }

    /// `tr √(√S₁ S₂ √S₁)` the textbook way: `√S₁` from the eigendecomposition.
    fn trace_sqrt_product_by_eigenvectors(s1: &[f64], s2: &[f64], n: usize) -> f64 {
        let eig = sym_eigen(s1, n).unwrap();
        let roots: Vec<f64> = eig.values.iter().map(|v| v.max(0.0).sqrt()).collect();
        let sqrt_s1 = with_spectrum(&eig.vectors, &roots);
        let m = matmul(&matmul(&sqrt_s1, s2, n, n, n), &sqrt_s1, n, n, n);
        let values = sym_eigenvalues(&m, n).unwrap();
        values.iter().map(|v| v.max(0.0).sqrt()).sum()
    }

    #[test]
    fn full_rank_covariances_agree_with_the_eigenvector_route() {
        let mut rng = StdRng::seed_from_u64(4);
        // 150 > PANEL: the blocked factorisation updates the trailing matrix at least twice.
        for n in [1, 3, 37, 70, 150] {
            let s1 = random_psd(&mut rng, n, n);
            let s2 = random_psd(&mut rng, n, n + 2);
            let want = trace_sqrt_product_by_eigenvectors(&s1, &s2, n);
            assert_close(trace_sqrt_product(&s1, &s2, n).unwrap(), want, 1e-9);
        }
    }

    /// `Σ √eig(Aᵀ S A)` for `S₁ = A Aᵀ` known by construction, `A` of full column rank `r`
    /// no larger than the rank of `S`: a reference that shares no factorisation with the code.
    fn trace_sqrt_product_by_known_factor(a: &[f64], r: usize, s: &[f64], n: usize) -> f64 {
        let m = matmul(&transpose(a, n, r), &matmul(s, a, n, n, r), r, n, r);
        let values = sym_eigenvalues(&m, r).unwrap();
        values.iter().map(|v| v.max(0.0).sqrt()).sum()
    }

    #[test]
    fn rank_deficient_covariances_match_a_known_factor() {
        let mut rng = StdRng::seed_from_u64(11);
        let cases = [
            (50, 12, 50),
            (33, 5, 33),
            (20, 3, 4),
            (64, 1, 20),
            (160, 90, 130),
        ];
        for (n, r_low, r_high) in cases {
            let a = random_matrix(&mut rng, n, r_low);
            let low = matmul(&a, &transpose(&a, n, r_low), n, r_low, n);
            let high = random_psd(&mut rng, n, r_high);
            let want = trace_sqrt_product_by_known_factor(&a, r_low, &high, n);
            // Either order: the trace is symmetric.
            assert_close(trace_sqrt_product(&low, &high, n).unwrap(), want, 1e-9);
            assert_close(trace_sqrt_product(&high, &low, n).unwrap(), want, 1e-9);
        }
    }

    #[test]
    fn sampled_gaussians_approach_the_closed_form() {
        let mut rng = StdRng::seed_from_u64(5);
        let (n, count) = (6, 40_000);
        let q = random_rotation(&mut rng, n);
        let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.2..2.0)).collect();
        let b: Vec<f64> = (0..n).map(|_| rng.random_range(0.2..2.0)).collect();
        let (mu1, mu2) = (random_matrix(&mut rng, 1, n), random_matrix(&mut rng, 1, n));
        // x = μ + Qᵀ diag(√λ) z has covariance Qᵀ diag(λ) Q.
        let mut sample = |mu: &[f64], lambda: &[f64]| {
            let mut acc = FeatureAccumulator::new(n);
            for _ in 0..count {
                let z: Vec<f64> = lambda.iter().map(|l| l.sqrt() * normal(&mut rng)).collect();
                let x: Vec<f32> = (0..n)
                    .map(|k| (mu[k] + (0..n).map(|r| q[r * n + k] * z[r]).sum::<f64>()) as f32)
                    .collect();
                acc.push_rows(&x).unwrap();
            }
            acc.stats().unwrap()
        };
        let (sa, sb) = (sample(&mu1, &a), sample(&mu2, &b));
        let got = frechet_distance(&sa, &sb).unwrap();
        let want = commuting_distance(&mu1, &mu2, &a, &b);
        assert!(
            (got - want).abs() < 0.03 * want + 0.01,
            "got {got}, want {want}"
        );
        assert!(frechet_distance(&sa, &sa).unwrap() < 1e-9);
    }

    #[test]
    fn fewer_samples_than_dimensions_give_a_finite_distance() {
        let mut rng = StdRng::seed_from_u64(6);
        let (n, count) = (96, 10);
        let rows = |rng: &mut StdRng, shift: f64| -> Vec<f32> {
            (0..n * count)
                .map(|_| (shift + normal(rng)).max(0.0) as f32)
                .collect()
        };
        let a = FeatureStats::from_rows(&rows(&mut rng, 0.0), n).unwrap();
        let b = FeatureStats::from_rows(&rows(&mut rng, 0.5), n).unwrap();
        let d = frechet_distance(&a, &b).unwrap();
        assert!(d.is_finite() && d > 0.0, "{d}");
        // Fully degenerate: all rows equal.
        let flat = FeatureStats::from_rows(&vec![0.25; n * 3], n).unwrap();
        assert!(flat.cov.iter().all(|&c| c == 0.0));
        let d = frechet_distance(&flat, &a).unwrap();
        assert!(d.is_finite(), "{d}");
    }

    #[test]
    fn eigensolver_reconstructs_a_random_symmetric_matrix() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in [1, 2, 5, 64, 129] {
            let r = random_matrix(&mut rng, n, n);
            let a: Vec<f64> = (0..n * n)
                .map(|x| 0.5 * (r[x] + r[(x % n) * n + x / n]))
                .collect();
            let eig = sym_eigen(&a, n).unwrap();
            assert!(eig.values.windows(2).all(|w| w[0] <= w[1]));
            let back = with_spectrum(&eig.vectors, &eig.values);
            let err = back
                .iter()
                .zip(&a)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(
                err < 1e-11 * n as f64,
                "n = {n}: reconstruction error {err}"
            );
            let gram = matmul(&eig.vectors, &transpose(&eig.vectors, n, n), n, n, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((gram[i * n + j] - want).abs() < 1e-12 * n as f64);
                }
            }
            let values = sym_eigenvalues(&a, n).unwrap();
            for (x, y) in values.iter().zip(&eig.values) {
                assert!((x - y).abs() < 1e-12 * n as f64, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn eigensolver_handles_repeated_and_zero_eigenvalues() {
        let mut rng = StdRng::seed_from_u64(8);
        let n = 30;
        let q = random_rotation(&mut rng, n);
        let values: Vec<f64> = (0..n).map(|i| [0.0, 1.0, 2.5][i % 3]).collect();
        let got = sym_eigenvalues(&with_spectrum(&q, &values), n).unwrap();
        let mut want = values;
        want.sort_by(f64::total_cmp);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
        assert!(sym_eigen(&[f64::NAN], 1).is_err());
        assert!(sym_eigen(&[1.0, 2.0], 2).is_err());
    }

    #[test]
    fn statistics_match_numpy_cov_whatever_the_batching() {
        let mut rng = StdRng::seed_from_u64(9);
        // More rows than BLOCK_ROWS, so that full and partial blocks are both folded in.
        let (n, count) = (7, 2 * BLOCK_ROWS + 37);
        // A large offset: the shifted sums must not lose the small spread to cancellation.
        let rows: Vec<f32> = (0..n * count)
            .map(|_| (1000.0 + normal(&mut rng)) as f32)
            .collect();
        let x: Vec<f64> = rows.iter().map(|&v| f64::from(v)).collect();
        let mean: Vec<f64> = (0..n)
            .map(|k| (0..count).map(|r| x[r * n + k]).sum::<f64>() / count as f64)
            .collect();
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                cov[i * n + j] = (0..count)
                    .map(|r| (x[r * n + i] - mean[i]) * (x[r * n + j] - mean[j]))
                    .sum::<f64>()
                    / (count - 1) as f64;
            }
        }
        for batch in [1, 3, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1, count] {
            let mut acc = FeatureAccumulator::new(n);
            for chunk in rows.chunks(batch * n) {
                acc.push_rows(chunk).unwrap();
            }
            assert_eq!(acc.count(), count);
            let s = acc.stats().unwrap();
            for (a, b) in s.mean.iter().zip(&mean) {
                assert!((a - b).abs() < 1e-9, "batch {batch}: mean {a} vs {b}");
            }
            for (a, b) in s.cov.iter().zip(&cov) {
                assert!((a - b).abs() < 1e-9, "batch {batch}: cov {a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let mut acc = FeatureAccumulator::new(3);
        let e = acc.push_rows(&[1.0, 2.0]).unwrap_err();
        assert_eq!(e, FrechetError::PartialRow { values: 2, dim: 3 });
        assert!(e.to_string().contains("whole feature rows"), "{e}");
        let e = acc
            .push_rows(&[1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0])
            .unwrap_err();
        assert_eq!(
            e,
            FrechetError::NonFiniteFeature {
                row: 1,
                dimension: 1
            }
        );
        assert!(e.to_string().contains("row 1") && e.to_string().contains("dimension 1"));
        acc.push_rows(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            acc.stats().unwrap_err(),
            FrechetError::TooFewRows { rows: 1 }
        );
        let a = stats(vec![0.0; 2], vec![1.0, 0.0, 0.0, 1.0]);
        let b = stats(vec![0.0; 3], vec![0.0; 9]);
        assert_eq!(
            frechet_distance(&a, &b).unwrap_err(),
            FrechetError::DimensionMismatch {
                first: 2,
                second: 3
            }
        );
        let bad = stats(vec![0.0; 2], vec![1.0; 3]);
        assert!(matches!(
            frechet_distance(&a, &bad),
            Err(FrechetError::CovarianceSize {
                which: "second",
                values: 3,
                dim: 2
            })
        ));
        assert_eq!(
            sym_eigen(&[f64::NAN], 1).unwrap_err(),
            FrechetError::NonFiniteMatrix
        );
    }

    /// Times the distance at Inception's 2048 dimensions (release build):
    /// `cargo test --release --workspace --lib -- --ignored eval::frechet --nocapture`.
    #[test]
    #[ignore = "slow: a timing run at d = 2048"]
    fn timing_at_inception_size() {
        let mut rng = StdRng::seed_from_u64(10);
        let (n, count) = (2048, 2500);
        let mut make = |shift: f32| {
            let basis: Vec<f32> = (0..64 * n).map(|_| normal(&mut rng) as f32).collect();
            let mut acc = FeatureAccumulator::new(n);
            let mut row = vec![0.0f32; n];
            for _ in 0..count {
                let z: Vec<f32> = (0..64).map(|_| normal(&mut rng) as f32).collect();
                for (k, v) in row.iter_mut().enumerate() {
                    let s: f32 = (0..64).map(|t| basis[t * n + k] * z[t]).sum();
                    *v = (shift + 0.1 * s + 0.05 * normal(&mut rng) as f32).max(0.0);
                }
                acc.push_rows(&row).unwrap();
            }
            acc.stats().unwrap()
        };
        let start = std::time::Instant::now();
        let (a, b) = (make(0.3), make(0.35));
        println!("statistics of 2 × {count} rows: {:?}", start.elapsed());
        let start = std::time::Instant::now();
        let values = sym_eigenvalues(&a.cov, n).unwrap();
        println!("sym_eigenvalues (2048): {:?}", start.elapsed());
        assert!(values[n - 1] > 0.0);
        let start = std::time::Instant::now();
        let d = frechet_distance(&a, &b).unwrap();
        println!("frechet_distance (2048): {:?} -> {d}", start.elapsed());
        assert!(d.is_finite() && d > 0.0);
    }
}
