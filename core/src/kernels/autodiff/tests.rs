//! The recorded operations' values and gradients against burn's own operations.

use super::*;
use crate::kernels::conv::{SameConv as ConvOperands, same_conv, weight_gradient_gemm};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Distribution, Tolerance};

/// Gradients of `sum(conv(x) * r)` for a fixed random `r`, through this operation and
/// through burn's own convolution.
#[test]
fn convolution_gradients_match_burn() {
    for (c, o, k, h, w, bias) in [
        (3, 4, 3, 6, 7, true),
        (5, 2, 1, 4, 4, false),
        (2, 3, 5, 6, 5, true),
        // More channels than one 6-channel tile, rows wider than one 16-wide tile.
        (8, 13, 3, 9, 17, true),
    ] {
        let ad = Device::flex().autodiff();
        let pad = (k - 1) / 2;
        let conv = Conv2dConfig::new([c, o], [k, k])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .init(&ad);
        let x =
            Tensor::<4>::random([2, c, h, w], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let r = Tensor::<4>::random([2, o, h, w], Distribution::Normal(0.0, 1.0), &ad);

        let fast = conv2d(&conv, &x).expect("fast path on Autodiff<Flex>");
        let loss = (fast.clone() * r.clone()).sum();
        let g = loss.backward();
        let (gx, gw) = (x.grad(&g).unwrap(), conv.weight.grad(&g).unwrap());
        let gb = conv.bias.as_ref().map(|b| b.grad(&g).unwrap());

        // burn's own convolution (`Conv2d::forward` does not take this path), on a copy of x.
        let x2 = x.clone().detach().require_grad();
        let slow = conv.forward(x2.clone());
        let g2 = (slow.clone() * r).sum().backward();
        let conv2 = &conv;
        let tol = Tolerance::absolute(2e-4);
        fast.inner()
            .into_data()
            .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
        gx.into_data()
            .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
        gw.into_data()
            .assert_approx_eq::<f32>(&conv2.weight.grad(&g2).unwrap().into_data(), tol);
        if let Some(gb) = gb {
            let gb2 = conv2.bias.as_ref().unwrap().grad(&g2).unwrap();
            gb.into_data()
                .assert_approx_eq::<f32>(&gb2.into_data(), tol);
        }
    }
}

#[test]
fn layer_norm_gradients_match_burn() {
    for (rows, width) in [(7, 5), (40, 128), (3, 1)] {
        let ad = Device::flex().autodiff();
        let eps = 1e-5;
        let mut norm = burn::nn::LayerNormConfig::new(width)
            .with_epsilon(eps)
            .init(&ad);
        // Non-trivial affine parameters.
        norm.gamma = burn::module::Param::from_tensor(Tensor::random(
            [width],
            Distribution::Normal(1.0, 0.5),
            &ad,
        ));
        norm.beta = Some(burn::module::Param::from_tensor(Tensor::random(
            [width],
            Distribution::Normal(0.0, 0.5),
            &ad,
        )));
        let x = Tensor::<3>::random([2, rows, width], Distribution::Normal(0.5, 2.0), &ad)
            .require_grad();
        let r = Tensor::<3>::random([2, rows, width], Distribution::Normal(0.0, 1.0), &ad);
        let fast = layer_norm(&norm, &x, eps).expect("Autodiff<Flex> path");
        let g = (fast.clone() * r.clone()).sum().backward();
        let x2 = x.clone().detach().require_grad();
        let slow = norm.forward(x2.clone());
        let g2 = (slow.clone() * r).sum().backward();
        let tol = Tolerance::absolute(1e-4);
        fast.inner()
            .into_data()
            .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
        x.grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
        let beta = norm.beta.as_ref().unwrap();
        for (a, b) in [
            (norm.gamma.grad(&g), norm.gamma.grad(&g2)),
            (beta.grad(&g), beta.grad(&g2)),
        ] {
            a.unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&b.unwrap().into_data(), tol);
        }
    }
}

#[test]
fn cross_entropy_gradients_match_burn() {
    let ad = Device::flex().autodiff();
    let (b, n, v) = (3, 5, 37);
    let logits = Tensor::<3>::random([b, n, v], Distribution::Normal(0.0, 4.0), &ad).require_grad();
    let targets: Vec<i64> = (0..b * n).map(|i| (i * 7 % v) as i64).collect();
    let ids = |values: Vec<i64>| {
        Tensor::<2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(values, [b, n]),
            &ad,
        )
    };
    let r = Tensor::<2>::random([b, n], Distribution::Normal(0.0, 1.0), &ad);
    let fast: Tensor<2> =
        cross_entropy_rows(&logits, &ids(targets.clone())).expect("Autodiff<Flex> path");
    let g = (fast.clone() * r.clone()).sum().backward();
    let l2 = logits.clone().detach().require_grad();
    let t = ids(targets).reshape([b, n, 1]);
    let slow = burn::tensor::activation::log_softmax(l2.clone(), 2)
        .gather(2, t)
        .reshape([b, n])
        .neg();
    let g2 = (slow.clone() * r).sum().backward();
    let tol = Tolerance::absolute(1e-5);
    fast.inner()
        .into_data()
        .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
    logits
        .grad(&g)
        .unwrap()
        .into_data()
        .assert_approx_eq::<f32>(&l2.grad(&g2).unwrap().into_data(), tol);
    // A target out of range is not this path's.
    assert!(cross_entropy_rows::<3, 2>(&logits, &ids(vec![v as i64; b * n])).is_none());
}

#[test]
fn resampling_gradients_match_burn() {
    let ad = Device::flex().autodiff();
    let x = Tensor::<4>::random([2, 3, 4, 6], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let [b, c, h, w] = x.dims();
    let r_up = Tensor::<4>::random([b, c, 2 * h, 2 * w], Distribution::Normal(0.0, 1.0), &ad);
    let r_down = Tensor::<4>::random([b, c, h / 2, w / 2], Distribution::Normal(0.0, 1.0), &ad);
    let tol = Tolerance::absolute(1e-5);
    let up = upsample_nearest_2x(&x).expect("Autodiff<Flex> path");
    let down = avg_pool_2x2(&x).expect("Autodiff<Flex> path");
    let g = ((up.clone() * r_up.clone()).sum() + (down.clone() * r_down.clone()).sum()).backward();
    let x2 = x.clone().detach().require_grad();
    let up2 = x2
        .clone()
        .reshape([b * c * h, 1, w, 1])
        .expand([b * c * h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w]);
    let down2 = x2
        .clone()
        .reshape([b * c * (h / 2), 2, w / 2, 2])
        .sum_dim(3)
        .sum_dim(1)
        .mul_scalar(0.25)
        .reshape([b, c, h / 2, w / 2]);
    let g2 = ((up2.clone() * r_up).sum() + (down2.clone() * r_down).sum()).backward();
    up.inner()
        .into_data()
        .assert_approx_eq::<f32>(&up2.inner().into_data(), tol);
    down.inner()
        .into_data()
        .assert_approx_eq::<f32>(&down2.inner().into_data(), tol);
    x.grad(&g)
        .unwrap()
        .into_data()
        .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
    // Odd planes are not the pooling's.
    let odd = Tensor::<4>::zeros([1, 1, 3, 4], &ad);
    assert!(avg_pool_2x2(&odd).is_none());
}

#[test]
fn linear_gradients_match_burn() {
    for (rows, d_in, d_out, bias) in [(7, 5, 3, true), (4, 9, 11, false), (130, 64, 96, true)] {
        let ad = Device::flex().autodiff();
        let layer = burn::nn::LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .init(&ad);
        let x = Tensor::<3>::random([2, rows, d_in], Distribution::Normal(0.0, 1.0), &ad)
            .require_grad();
        let r = Tensor::<3>::random([2, rows, d_out], Distribution::Normal(0.0, 1.0), &ad);
        let b = layer.bias.as_ref().map(|b| b.val());
        let fast = linear(&x, &layer.weight.val(), b.as_ref()).expect("Autodiff<Flex> path");
        let g = (fast.clone() * r.clone()).sum().backward();
        let x2 = x.clone().detach().require_grad();
        let slow = layer.forward(x2.clone());
        let g2 = (slow.clone() * r).sum().backward();
        let tol = Tolerance::absolute(2e-4);
        fast.inner()
            .into_data()
            .assert_approx_eq::<f32>(&slow.inner().into_data(), tol);
        x.grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
        layer
            .weight
            .grad(&g)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&layer.weight.grad(&g2).unwrap().into_data(), tol);
        if let Some(bias) = &layer.bias {
            bias.grad(&g)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&bias.grad(&g2).unwrap().into_data(), tol);
        }
    }
}

#[test]
fn silu_gelu_and_tanh_gradients_match_burn() {
    let ad = Device::flex().autodiff();
    let x = Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 3.0), &ad).require_grad();
    let r = Tensor::<3>::random([2, 5, 300], Distribution::Normal(0.0, 1.0), &ad);
    type Fast = fn(&Tensor<3>) -> Option<Tensor<3>>;
    type Slow = fn(Tensor<3>) -> Tensor<3>;
    let cases: [(Fast, Slow); 3] = [
        (silu, burn::tensor::activation::silu),
        (gelu, burn::tensor::activation::gelu),
        (tanh, |x| x.tanh()),
    ];
    for (fast, slow) in cases {
        let y = fast(&x).expect("fast path on Autodiff<Flex>");
        let gx = x.grad(&(y.clone() * r.clone()).sum().backward()).unwrap();
        let x2 = x.clone().detach().require_grad();
        let y2 = slow(x2.clone());
        let gx2 = x2.grad(&(y2.clone() * r.clone()).sum().backward()).unwrap();
        let tol = Tolerance::absolute(1e-5);
        y.inner()
            .into_data()
            .assert_approx_eq::<f32>(&y2.inner().into_data(), tol);
        gx.into_data()
            .assert_approx_eq::<f32>(&gx2.into_data(), tol);
    }
    // Plain tensors are not this path's.
    assert!(silu(&x.inner()).is_none());
}

#[test]
fn group_norm_silu_gradients_match_burn() {
    let ad = Device::flex().autodiff();
    let mut norm = burn::nn::GroupNormConfig::new(3, 6)
        .with_epsilon(1e-6)
        .init(&ad);
    norm.gamma = norm.gamma.map(|g| {
        g.map(|_| Tensor::random([6], Distribution::Normal(1.0, 0.5), &ad).require_grad())
    });
    norm.beta = norm.beta.map(|b| {
        b.map(|_| Tensor::random([6], Distribution::Normal(0.0, 0.5), &ad).require_grad())
    });
    let x = Tensor::<4>::random([2, 6, 5, 4], Distribution::Normal(1.0, 2.0), &ad).require_grad();
    let r = Tensor::<4>::random([2, 6, 5, 4], Distribution::Normal(0.0, 1.0), &ad);
    let y = group_norm_silu(&norm, &x).expect("fast path on Autodiff<Flex>");
    let g = (y.clone() * r.clone()).sum().backward();
    let x2 = x.clone().detach().require_grad();
    let y2 = burn::tensor::activation::silu(norm.forward(x2.clone()));
    let g2 = (y2.clone() * r).sum().backward();
    let tol = Tolerance::absolute(2e-5);
    y.inner()
        .into_data()
        .assert_approx_eq::<f32>(&y2.inner().into_data(), tol);
    x.grad(&g)
        .unwrap()
        .into_data()
        .assert_approx_eq::<f32>(&x2.grad(&g2).unwrap().into_data(), tol);
    let (gamma, beta) = (norm.gamma.as_ref().unwrap(), norm.beta.as_ref().unwrap());
    gamma
        .grad(&g)
        .unwrap()
        .into_data()
        .assert_approx_eq::<f32>(&gamma.grad(&g2).unwrap().into_data(), tol);
    beta.grad(&g)
        .unwrap()
        .into_data()
        .assert_approx_eq::<f32>(&beta.grad(&g2).unwrap().into_data(), tol);
}

#[test]
fn attention_gradients_match_burn() {
    let ad = Device::flex().autodiff();
    let (b, s, heads, hd) = (2, 7, 3, 4);
    let w = heads * hd;
    let qkv =
        Tensor::<3>::random([b, s, 3 * w], Distribution::Normal(0.0, 1.5), &ad).require_grad();
    let r = Tensor::<3>::random([b, s, w], Distribution::Normal(0.0, 1.0), &ad);
    let y = attention(&qkv, heads).expect("fast path on Autodiff<Flex>");
    let g = (y.clone() * r.clone()).sum().backward();
    let x = qkv.clone().detach().require_grad();
    let split = |t: Tensor<3>| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
    let q = split(x.clone().narrow(2, 0, w));
    let k = split(x.clone().narrow(2, w, w));
    let v = split(x.clone().narrow(2, 2 * w, w));
    let p = burn::tensor::activation::softmax(
        q.matmul(k.swap_dims(2, 3))
            .mul_scalar((hd as f64).powf(-0.5)),
        3,
    );
    let y2 = p.matmul(v).swap_dims(1, 2).reshape([b, s, w]);
    let g2 = (y2.clone() * r).sum().backward();
    let tol = Tolerance::absolute(1e-5);
    y.inner()
        .into_data()
        .assert_approx_eq::<f32>(&y2.inner().into_data(), tol);
    qkv.grad(&g)
        .unwrap()
        .into_data()
        .assert_approx_eq::<f32>(&x.grad(&g2).unwrap().into_data(), tol);
}

/// Times the three parts of a training convolution (forward, input gradient, weight
/// gradient) at the demo teacher's 3x3 sizes, batch 16, best of 7, both threads; the same
/// table on the PyTorch side: `bench/pytorch_conv.py`.
/// `cargo test --release --workspace --lib conv_training_parts -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark, not a test"]
fn benchmark_conv_training_parts() {
    use crate::kernels::conv::direct::tests::values;
    let batch = 16;
    for (c, o, hw) in [
        (3, 32, 64),
        (32, 32, 64),
        (64, 64, 64),
        (64, 32, 64),
        (32, 3, 64),
        (32, 64, 32),
        (64, 64, 32),
        (64, 64, 16),
        (64, 128, 8),
        (128, 128, 8),
        (128, 32, 8),
    ] {
        let x = values(batch * c * hw * hw, 1);
        let wt = values(o * c * 9, 2);
        let g = values(batch * o * hw * hw, 3);
        let flipped = values(o * c * 9, 4);
        let best = |f: &dyn Fn() -> Vec<f32>| {
            std::hint::black_box(f());
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(f());
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let conv = |x: &[f32], c: usize, w: &[f32], o: usize| {
            same_conv(ConvOperands {
                x,
                dims: [batch, c, hw, hw],
                weight: w,
                out_channels: o,
                k: 3,
                bias: None,
                residual: None,
            })
        };
        let times = [
            best(&|| conv(&x, c, &wt, o)),
            best(&|| conv(&g, o, &flipped, c)),
            best(&|| {
                crate::kernels::conv::weight_grad::weight_gradient(&x, &g, [batch, c, hw, hw], o, 3)
            }),
            best(&|| weight_gradient_gemm(&x, &g, [batch, c, hw, hw], o, 3)),
        ];
        let flops = 2.0 * (batch * c * o * 9 * hw * hw) as f64;
        let [f, d, w, wg] = times.map(|t| format!("{:7.2} ({:4.0})", t * 1e3, flops / t / 1e9));
        println!(
            "{c:4}->{o:4} @{hw:3}: fwd {f}  bwd-data {d}  bwd-weight {w}  (GEMMs: {wg})   ms (GFLOP/s)"
        );
    }
}
