//! Times the parts of one transformer block at the official SFTok-B decoder size on the CPU
//! backend (a probe for performance work, not a test).
use std::time::Instant;

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::linear as linear_op;
use burn::tensor::{Device, Distribution, Tensor};
use sftok_core::config::VitConfig;
use sftok_core::model::vit::ResidualAttentionBlock;

fn time(what: &str, f: &dyn Fn() -> usize) -> f64 {
    f();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    eprintln!("{what}: {ms:.2} ms");
    ms
}

fn main() {
    // As the `sftok` binary does (why: the doc of `keep_freed_memory`).
    sftok_core::device::keep_freed_memory();
    // The batch size, first argument (default 1): at batch 8 the products are 8x taller.
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    eprintln!("batch {batch}, 321 tokens x 768");
    let d = Device::flex();
    let cfg = VitConfig {
        width: 768,
        depth: 1,
        heads: 12,
        patch_size: 16,
        mlp_ratio: 4.0,
    };
    let block = ResidualAttentionBlock::new(&cfg, 1e-5, &d);
    let x = Tensor::<3>::random([batch, 321, 768], Distribution::Normal(0.0, 1.0), &d);
    let total = time("whole block", &|| {
        block.forward(x.clone()).into_data().num_elements()
    });
    time("ln_1", &|| {
        block.ln_1.forward(x.clone()).into_data().num_elements()
    });
    time("attention (qkv, scores, softmax, out_proj)", &|| {
        block.attn.forward(x.clone()).into_data().num_elements()
    });
    time("qkv projection", &|| {
        linear_op(
            x.clone(),
            block.attn.in_proj_weight.val().transpose(),
            Some(block.attn.in_proj_bias.val()),
        )
        .into_data()
        .num_elements()
    });
    let q = Tensor::<4>::random([batch, 12, 321, 64], Distribution::Default, &d);
    time("scores + softmax + values", &|| {
        let a = softmax(q.clone().matmul(q.clone().swap_dims(2, 3)), 3);
        a.matmul(q.clone())
            .swap_dims(1, 2)
            .reshape([batch, 321, 768])
            .into_data()
            .num_elements()
    });
    time("mlp c_fc", &|| {
        block.mlp.c_fc.forward(x.clone()).into_data().num_elements()
    });
    time("mlp c_fc (cpu_kernels::linear_layer)", &|| {
        sftok_core::kernels::linear_layer(&block.mlp.c_fc, x.clone())
            .into_data()
            .num_elements()
    });
    time("mlp (cpu_kernels)", &|| {
        block.mlp.forward(x.clone()).into_data().num_elements()
    });
    let hidden = block.mlp.c_fc.forward(x.clone());
    time("gelu (burn)", &|| {
        gelu(hidden.clone()).into_data().num_elements()
    });
    time("gelu (cpu_kernels)", &|| {
        sftok_core::kernels::gelu(hidden.clone())
            .into_data()
            .num_elements()
    });
    let qkv = linear_op(
        x.clone(),
        block.attn.in_proj_weight.val().transpose(),
        Some(block.attn.in_proj_bias.val()),
    );
    time("fused attention core (cpu_kernels)", &|| {
        sftok_core::kernels::attention(&qkv, 12)
            .unwrap()
            .into_data()
            .num_elements()
    });
    time("mlp c_proj", &|| {
        block
            .mlp
            .c_proj
            .forward(hidden.clone())
            .into_data()
            .num_elements()
    });
    time("residual add", &|| {
        (x.clone() + x.clone()).into_data().num_elements()
    });
    let flops = batch as f64 * 321.0 * (4.0 * 768.0 * 768.0 + 2.0 * 768.0 * 3072.0) * 2.0
        + 2.0 * 12.0 * 321.0 * 321.0 * 64.0 * 2.0;
    eprintln!(
        "block: {:.1} GFLOP/s, {:.2} ms per image",
        flops / total / 1e6,
        total / batch as f64
    );
}
