//! Times single operations on the CPU backend (a probe for performance work, not a test).
use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

fn time(what: &str, flops: f64, f: &dyn Fn() -> usize) {
    f();
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        f();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    eprintln!(
        "{what}: {:.1} ms, {:.1} GFLOP/s",
        s * 1000.0,
        flops / s / 1e9
    );
}

fn main() {
    let d = Device::flex();
    let a = Tensor::<2>::random([1024, 1024], Distribution::Default, &d);
    let b = Tensor::<2>::random([1024, 1024], Distribution::Default, &d);
    time("matmul 1024^3", 2.0 * 1024f64.powi(3), &|| {
        a.clone().matmul(b.clone()).into_data().num_elements()
    });
    let x = Tensor::<4>::random([1, 128, 256, 256], Distribution::Default, &d);
    let w = Tensor::<4>::random([128, 128, 3, 3], Distribution::Default, &d);
    let flops = 2.0 * 128.0 * 128.0 * 9.0 * 65536.0;
    time("conv 3x3 128->128 @256^2", flops, &|| {
        conv2d(
            x.clone(),
            w.clone(),
            None,
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
        .into_data()
        .num_elements()
    });
    // The same convolution as unfold + matmul.
    time("gn-free im2col conv via unfold+matmul", flops, &|| {
        let cols = burn::tensor::module::unfold4d(
            x.clone(),
            [3, 3],
            burn::tensor::ops::UnfoldOptions::new([1, 1], [1, 1], [1, 1]),
        ); // [1, C*9, L]
        let wm = w.clone().reshape([128, 128 * 9]);
        let [_, k, l] = cols.dims();
        wm.matmul(cols.reshape([k, l])).into_data().num_elements()
    });
    let q = Tensor::<4>::random([1, 12, 321, 64], Distribution::Default, &d);
    time(
        "attention scores 12x321x321x64",
        2.0 * 12.0 * 321.0 * 321.0 * 64.0,
        &|| {
            q.clone()
                .matmul(q.clone().swap_dims(2, 3))
                .into_data()
                .num_elements()
        },
    );
    let xl = Tensor::<2>::random([321, 768], Distribution::Default, &d);
    let wl = Tensor::<2>::random([768, 3072], Distribution::Default, &d);
    time("linear 321x768x3072", 2.0 * 321.0 * 768.0 * 3072.0, &|| {
        xl.clone().matmul(wl.clone()).into_data().num_elements()
    });
}
