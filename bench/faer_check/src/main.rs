//! tr(sqrt(S1 S2)) at Inception's 2048 dimensions: the project's pivoted Cholesky + own
//! symmetric eigensolver (core/src/eval/frechet.rs, included as is) against faer 0.23.
#[allow(dead_code)]
#[path = "../../../core/src/eval/frechet.rs"]
mod frechet;

use faer::{Mat, Side};
use std::time::Instant;

/// Covariance of `samples` random feature vectors of dimension n (low-rank mixing plus noise),
/// row-major.
fn covariance(n: usize, samples: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let x: Vec<f64> = (0..samples * n).map(|_| rnd()).collect();
    let mut c = vec![0.0; n * n];
    let mean: Vec<f64> = (0..n).map(|j| (0..samples).map(|i| x[i * n + j]).sum::<f64>() / samples as f64).collect();
    let xm = Mat::<f64>::from_fn(samples, n, |i, j| x[i * n + j] - mean[j]);
    let cov = xm.transpose() * &xm;
    for i in 0..n {
        for j in 0..n {
            c[i * n + j] = cov[(i, j)] / (samples - 1) as f64;
        }
    }
    c
}

fn faer_trace_sqrt(s1: &[f64], s2: &[f64], n: usize) -> f64 {
    let a = Mat::<f64>::from_fn(n, n, |i, j| s1[i * n + j]);
    let b = Mat::<f64>::from_fn(n, n, |i, j| s2[i * n + j]);
    let e = a.self_adjoint_eigen(Side::Lower).expect("eigen");
    let (u, s) = (e.U(), e.S());
    let half = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    let root = &half * u.transpose();
    let m = &root * &b * &root;
    let ev = m.self_adjoint_eigenvalues(Side::Lower).expect("eigenvalues");
    ev.iter().map(|&l| l.max(0.0).sqrt()).sum()
}

/// As the project's method, with faer's (unpivoted) Cholesky: F F^T = S1, eigenvalues of
/// F^T S2 F. `None` when S1 is not positive definite (rank-deficient).
fn faer_cholesky_trace_sqrt(s1: &[f64], s2: &[f64], n: usize) -> Option<f64> {
    let a = Mat::<f64>::from_fn(n, n, |i, j| s1[i * n + j]);
    let b = Mat::<f64>::from_fn(n, n, |i, j| s2[i * n + j]);
    let llt = a.llt(Side::Lower).ok()?;
    let f = llt.L();
    let m = f.transpose() * &b * f;
    let ev = m.self_adjoint_eigenvalues(Side::Lower).ok()?;
    Some(ev.iter().map(|&l| l.max(0.0).sqrt()).sum())
}

fn main() {
    let n = 2048;
    for (samples_a, samples_b) in [(5000, 5000), (1000, 5000), (21, 5000)] {
        let s1 = covariance(n, samples_a, 1);
        let s2 = covariance(n, samples_b, 2);
        let t = Instant::now();
        let ours = frechet::trace_sqrt_product(&s1, &s2, n).unwrap();
        let t_ours = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let theirs = faer_trace_sqrt(&s1, &s2, n);
        let t_faer = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let chol = faer_cholesky_trace_sqrt(&s2, &s1, n);
        let t_chol = t.elapsed().as_secs_f64();
        println!("  faer Cholesky route (factoring the full-rank one): {chol:?} in {t_chol:.2} s");
        println!(
            "n {n}, samples {samples_a}/{samples_b}: ours {ours:.9} in {t_ours:.2} s; faer {theirs:.9} in {t_faer:.2} s; relative difference {:.2e}",
            (ours - theirs).abs() / ours.abs()
        );
    }
}
