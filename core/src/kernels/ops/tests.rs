//! The tensor-level kernels against burn's own operations.

use super::*;
use crate::kernels::math::{erf_f32, exp_f32};
use burn::module::Module;
use burn::nn::GroupNormConfig;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Distribution, Tolerance};

fn reference_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    // Forced onto burn's path by going through autodiff (the fast path refuses it).
    let ad = Device::flex().autodiff();
    conv.clone()
        .to_device(&ad)
        .forward(x.to_device(&ad))
        .inner()
        .to_device(&Device::flex())
}

#[test]
fn same_convolutions_match_burn() {
    let d = Device::flex();
    for (c, o, k, h, w, bias) in [
        (3, 5, 3, 7, 9, true),
        (4, 4, 1, 6, 5, false),
        (6, 2, 5, 8, 8, true),
        (8, 16, 3, 1, 1, false),
    ] {
        let pad = (k - 1) / 2;
        let conv = Conv2dConfig::new([c, o], [k, k])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .init(&d);
        let x = Tensor::<4>::random([2, c, h, w], Distribution::Normal(0.0, 1.0), &d);
        let residual = Tensor::<4>::random([2, o, h, w], Distribution::Normal(0.0, 1.0), &d);
        assert!(conv2d_fast(&conv, &x, None).is_some(), "fast path taken");
        let fast = conv2d(&conv, x.clone(), Some(residual.clone()));
        let slow = reference_conv(&conv, x) + residual;
        fast.into_data()
            .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
    }
}

#[test]
fn other_convolutions_fall_back() {
    let d = Device::flex();
    let strided = Conv2dConfig::new([3, 4], [2, 2])
        .with_stride([2, 2])
        .init(&d);
    let x = Tensor::<4>::random([1, 3, 8, 8], Distribution::Default, &d);
    assert!(conv2d_fast(&strided, &x, None).is_none());
    assert_eq!(conv2d(&strided, x, None).dims(), [1, 4, 4, 4]);
}

#[test]
fn group_norm_silu_matches_burn() {
    let d = Device::flex();
    let ad = d.clone().autodiff();
    let mut norm = GroupNormConfig::new(4, 8).with_epsilon(1e-6).init(&d);
    norm.gamma = norm
        .gamma
        .map(|g| g.map(|_| Tensor::random([8], Distribution::Normal(1.0, 0.5), &d)));
    norm.beta = norm
        .beta
        .map(|b| b.map(|_| Tensor::random([8], Distribution::Normal(0.0, 0.5), &d)));
    let x = Tensor::<4>::random([3, 8, 5, 6], Distribution::Normal(2.0, 3.0), &d);
    assert!(group_norm_silu_fast(&norm, &x).is_some());
    let fast = group_norm_silu(&norm, x.clone());
    let slow = silu(norm.clone().to_device(&ad).forward(x.to_device(&ad)))
        .inner()
        .to_device(&d);
    fast.into_data()
        .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
}

/// erf in f64 by its Taylor series (enough terms for |x| <= 4.5), for checking the f32 one.
fn erf_reference(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn exp_and_erf_are_accurate() {
    for i in -8000..=8000 {
        let x = i as f32 * 0.01;
        let exact = (x as f64).exp();
        let rel = ((exp_f32(x) as f64 - exact) / exact).abs();
        assert!(rel < 3e-7, "exp({x}): relative error {rel}");
    }
    for i in -600..=600 {
        let x = i as f32 * 0.0075;
        let exact = erf_reference(x as f64);
        let err = (erf_f32(x) as f64 - exact).abs();
        assert!(err < 3e-7, "erf({x}): error {err}");
    }
}

#[test]
fn gelu_matches_burn() {
    let d = Device::flex();
    let ad = d.clone().autodiff();
    let x = Tensor::<3>::random([2, 7, 33], Distribution::Normal(0.0, 3.0), &d);
    let slow = burn::tensor::activation::gelu(x.clone().to_device(&ad))
        .inner()
        .to_device(&d);
    gelu(x)
        .into_data()
        .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(2e-6));
}

#[test]
fn attention_matches_burn() {
    let d = Device::flex();
    let ad = d.clone().autodiff();
    let (b, s, heads, hd) = (2, 9, 3, 4);
    let w = heads * hd;
    let qkv = Tensor::<3>::random([b, s, 3 * w], Distribution::Normal(0.0, 2.0), &d);
    let fast = attention(&qkv, heads).expect("fast path");
    let x = qkv.to_device(&ad);
    let split = |t: Tensor<3>| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
    let q = split(x.clone().narrow(2, 0, w));
    let k = split(x.clone().narrow(2, w, w));
    let v = split(x.narrow(2, 2 * w, w));
    let p = burn::tensor::activation::softmax(
        q.matmul(k.swap_dims(2, 3))
            .mul_scalar((hd as f64).powf(-0.5)),
        3,
    );
    let slow = p
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, s, w])
        .inner()
        .to_device(&d);
    fast.into_data()
        .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
}

#[test]
fn linear_matches_burn_with_plain_and_transposed_weights() {
    let d = Device::flex();
    let ad = d.clone().autodiff();
    let x = Tensor::<3>::random([2, 5, 7], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<2>::random([7, 4], Distribution::Normal(0.0, 1.0), &d);
    let wt = Tensor::<2>::random([4, 7], Distribution::Normal(0.0, 1.0), &d);
    let b = Tensor::<1>::random([4], Distribution::Normal(0.0, 1.0), &d);
    for (weight, bias) in [
        (w, Some(b.clone())),
        (wt.clone().transpose(), None),
        (wt.transpose(), Some(b)),
    ] {
        assert!(linear_fast(&x, &weight, bias.as_ref()).is_some());
        let fast = linear(x.clone(), weight.clone(), bias.clone());
        let slow = burn::tensor::module::linear(
            x.clone().to_device(&ad),
            weight.to_device(&ad),
            bias.map(|b| b.to_device(&ad)),
        )
        .inner()
        .to_device(&d);
        fast.into_data()
            .assert_approx_eq::<f32>(&slow.into_data(), Tolerance::absolute(1e-5));
    }
}

#[test]
fn upsampling_matches_burn() {
    let d = Device::flex();
    let x = Tensor::<4>::random([2, 3, 4, 5], Distribution::Default, &d);
    let expected = x
        .clone()
        .reshape([24, 1, 5, 1])
        .expand([24, 2, 5, 2])
        .reshape([2, 3, 8, 10]);
    upsample_nearest_2x(x)
        .into_data()
        .assert_eq(&expected.into_data(), true);
}
