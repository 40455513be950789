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
    // As the `sftok` binary does (why: the doc of `keep_freed_memory`).
    sftok_core::device::keep_freed_memory();
    let d = Device::flex();
    if std::env::args().any(|a| a == "--pixel-decoder") {
        let cfg = sftok_core::config::SftokConfig::sftok_b();
        let dec = sftok_core::model::vqgan::VqganDecoder::new(&cfg.vqgan, &d);
        let z = Tensor::<4>::random([1, cfg.vqgan.z_channels, 16, 16], Distribution::Default, &d);
        time("pixel decoder (SFTok-B), batch 1", 0.0, &|| {
            dec.forward(z.clone()).into_data().num_elements()
        });
        for (c, o, hw) in [
            (512, 512, 16),
            (512, 512, 32),
            (256, 256, 64),
            (256, 256, 128),
            (128, 128, 128),
            (128, 128, 256),
        ] {
            let conv = burn::nn::conv::Conv2dConfig::new([c, o], [3, 3])
                .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&d);
            let x = Tensor::<4>::random([1, c, hw, hw], Distribution::Default, &d);
            let flops = 2.0 * (c * o * 9 * hw * hw) as f64;
            time(
                &format!("cpu_kernels conv {c}->{o} @{hw}^2"),
                flops,
                &|| {
                    sftok_core::kernels::conv2d(&conv, x.clone(), None)
                        .into_data()
                        .num_elements()
                },
            );
        }
        let gn = burn::nn::GroupNormConfig::new(32, 128).init(&d);
        let x = Tensor::<4>::random([1, 128, 256, 256], Distribution::Default, &d);
        time("cpu_kernels group norm + silu 128 @256^2", 0.0, &|| {
            sftok_core::kernels::group_norm_silu(&gn, x.clone())
                .into_data()
                .num_elements()
        });
        return;
    }
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
    let gn = burn::nn::GroupNormConfig::new(32, 128).init(&d);
    time("group norm 32 groups, 128 ch @256^2", 0.0, &|| {
        gn.forward(x.clone()).into_data().num_elements()
    });
    time("silu 128 ch @256^2", 0.0, &|| {
        burn::tensor::activation::silu(x.clone())
            .into_data()
            .num_elements()
    });
    let small = Tensor::<4>::random([1, 128, 128, 128], Distribution::Default, &d);
    time("nearest upsample x2 128 ch 128^2 -> 256^2", 0.0, &|| {
        sftok_core::model::vqgan::upsample_nearest_2x(small.clone())
            .into_data()
            .num_elements()
    });
    time("add 128 ch @256^2", 0.0, &|| {
        (x.clone() + x.clone()).into_data().num_elements()
    });
    time(
        "round trip into_data + from_data 128 ch @256^2",
        0.0,
        &|| {
            let v = x.clone().into_data();
            Tensor::<4>::from_data(v, &d).dims()[0]
        },
    );
    let h = Tensor::<3>::random([1, 321, 3072], Distribution::Default, &d);
    time("gelu 321x3072", 0.0, &|| {
        burn::tensor::activation::gelu(h.clone())
            .into_data()
            .num_elements()
    });
    let ln = burn::nn::LayerNormConfig::new(768).init(&d);
    let hs = Tensor::<3>::random([1, 321, 768], Distribution::Default, &d);
    time("layer norm 321x768", 0.0, &|| {
        ln.forward(hs.clone()).into_data().num_elements()
    });
    let sc = Tensor::<4>::random([1, 12, 321, 321], Distribution::Default, &d);
    time("softmax 12x321x321", 0.0, &|| {
        burn::tensor::activation::softmax(sc.clone(), 3)
            .into_data()
            .num_elements()
    });
    let xl = Tensor::<2>::random([321, 768], Distribution::Default, &d);
    let wl = Tensor::<2>::random([768, 3072], Distribution::Default, &d);
    time("linear 321x768x3072", 2.0 * 321.0 * 768.0 * 3072.0, &|| {
        xl.clone().matmul(wl.clone()).into_data().num_elements()
    });
}
