//! Times the `gemm` crate on the transformer's linear-layer shapes at batch 8 (2568 tokens), with
//! its own threading and with the rows split across threads by hand (a probe, not a test).
use rayon::prelude::*;
use std::time::Instant;

unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    a: *const f32,
    b: *const f32,
    par: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, n as isize, false, a, 1, k as isize, b, 1, n as isize, 1.0, 1.0,
            false, false, false, par,
        );
    }
}

fn main() {
    for (m, k, n) in [
        (2568, 768, 3072),
        (2568, 3072, 768),
        (2568, 768, 2304),
        (321, 768, 3072),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let mut best = [f64::MAX; 3];
        for _ in 0..4 {
            let t = Instant::now();
            unsafe {
                product(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    a.as_ptr(),
                    b.as_ptr(),
                    gemm::Parallelism::Rayon(0),
                )
            };
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let half = m.div_ceil(2);
            c.par_chunks_mut(half * n)
                .zip(a.par_chunks(half * k))
                .for_each(|(c, a)| {
                    let rows = a.len() / k;
                    unsafe {
                        product(
                            rows,
                            n,
                            k,
                            c.as_mut_ptr(),
                            a.as_ptr(),
                            b.as_ptr(),
                            gemm::Parallelism::None,
                        )
                    };
                });
            best[1] = best[1].min(t.elapsed().as_secs_f64());
            // The transposed problem: out^T (n x m) = W^T (n x k) x^T (k x m), same memory.
            let t = Instant::now();
            unsafe {
                gemm::gemm(
                    n,
                    m,
                    k,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                    false,
                    b.as_ptr(),
                    n as isize,
                    1,
                    a.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                );
            }
            best[2] = best[2].min(t.elapsed().as_secs_f64());
        }
        println!(
            "{m}x{k}x{n}: gemm threads {:.0} GFLOP/s, rows split {:.0} GFLOP/s, transposed {:.0}",
            flops / best[0] / 1e9,
            flops / best[1] / 1e9,
            flops / best[2] / 1e9
        );
    }
}
