//! Parity with the official PyTorch code, tensor by tensor.
//!
//! The fixtures come from github.com/Neur-IO/SFTok at commit 0e98df00 (see the fixture set's
//! README): `weights.safetensors` (the SFTok state dict), `teacher.safetensors` (the MaskGIT-VQGAN),
//! `io.safetensors` (inputs, intermediate values and outputs) and `config.json`, from which alone
//! the model is built. The set is `$SFTOK_PARITY_DIR`, else `../shared/parity/public` beside the
//! repository, else the copy of the public set in `tests/data/parity/public`.
//!
//! Tolerances (the set's README): ids, indices and `mask_len` exactly; encoder and quantizer
//! floats atol 1e-5; logits atol 1e-4; pixels atol 5e-4.
//!
//! Every check runs on burn's CPU backend; the same checks run on wgpu when an adapter exists
//! (a software Vulkan driver counts), and `SFTOK_REQUIRE_WGPU=1` makes a missing adapter a failure.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use sftok_core::checkpoint::files::read_safetensors_bytes;
use sftok_core::checkpoint::{StateDict, build_sftok, build_teacher};
use sftok_core::config::{AssignmentMode, SftokConfig};
use sftok_core::model::{Sftok, Vqgan};
use sftok_core::reconstruct::{ReconstructOptions, generate, rows_i64};

fn fixture_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SFTOK_PARITY_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/parity/public");
    if shared.join("config.json").is_file() {
        return shared;
    }
    manifest.join("tests/data/parity/public")
}

fn read(path: &Path) -> StateDict {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    read_safetensors_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Fixture {
    dir: PathBuf,
    config: SftokConfig,
    io: StateDict,
}

impl Fixture {
    fn load() -> Self {
        let dir = fixture_dir();
        let config = SftokConfig::from_file(&dir.join("config.json")).expect("fixture config");
        let io = read(&dir.join("io.safetensors"));
        Fixture { dir, config, io }
    }

    fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let t = self
            .io
            .get(key)
            .unwrap_or_else(|| panic!("fixture lacks `{key}`"));
        (t.shape.clone(), t.as_f32())
    }

    fn i64(&self, key: &str) -> Vec<i64> {
        self.io
            .get(key)
            .unwrap_or_else(|| panic!("fixture lacks `{key}`"))
            .as_i64()
    }

    fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        let (shape, values) = self.f32(key);
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn int_tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D, Int> {
        let shape = self.io[key].shape.clone();
        Tensor::from_data(TensorData::new(self.i64(key), shape), device)
    }

    fn models(&self, device: &Device) -> (Sftok, Vqgan) {
        let weights = self.dir.join("weights.safetensors");
        let teacher = self.dir.join("teacher.safetensors");
        let model = build_sftok(&self.config, read(&weights), device, &weights)
            .expect("SFTok weights load");
        let teacher =
            build_teacher(&self.config, read(&teacher), device, &teacher).expect("teacher loads");
        (model, teacher)
    }

    /// `gen_T<t>` step counts present in the set.
    fn generate_steps(&self) -> Vec<usize> {
        let steps: BTreeSet<usize> = self
            .io
            .keys()
            .filter_map(|k| k.strip_prefix("gen_T")?.strip_suffix("_ids")?.parse().ok())
            .collect();
        steps.into_iter().collect()
    }
}

/// Collects every mismatch so that one run reports all of them.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    checked: usize,
}

impl Report {
    // `!(d <= tol)` on purpose: a NaN difference must count as a mismatch.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn close<const D: usize>(
        &mut self,
        name: &str,
        got: Tensor<D>,
        want: (Vec<usize>, Vec<f32>),
        atol: f32,
    ) {
        self.checked += 1;
        let shape = got.dims().to_vec();
        if shape != want.0 {
            self.failures
                .push(format!("{name}: shape {shape:?}, expected {:?}", want.0));
            return;
        }
        let got = got
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        let (mut worst, mut at) = (0.0f32, 0);
        for (i, (g, w)) in got.iter().zip(&want.1).enumerate() {
            let d = (g - w).abs();
            if !(d <= worst) {
                worst = d;
                at = i;
            }
        }
        if !(worst <= atol) {
            self.failures.push(format!(
                "{name}: max |diff| {worst:e} > {atol:e} at flat index {at} (got {}, want {})",
                got[at], want.1[at]
            ));
        }
    }

    fn exact(&mut self, name: &str, got: &[i64], want: &[i64]) {
        self.checked += 1;
        if got != want {
            let diffs = got.iter().zip(want).filter(|(a, b)| a != b).count();
            self.failures.push(format!(
                "{name}: {diffs} of {} values differ (or lengths {} vs {})",
                want.len(),
                got.len(),
                want.len()
            ));
        }
    }

    fn finish(self, backend: &str) {
        assert!(self.checked > 0);
        assert!(
            self.failures.is_empty(),
            "{backend}: {} of {} checks failed:\n{}",
            self.failures.len(),
            self.checked,
            self.failures.join("\n")
        );
        eprintln!("{backend}: all {} parity checks passed", self.checked);
    }
}

fn flat(rows: &[Vec<i64>]) -> Vec<i64> {
    rows.iter().flatten().copied().collect()
}

/// `[B][T][N]` from per-step `[B][N]` rows.
fn by_batch_then_step(per_step: &[Vec<Vec<i64>>]) -> Vec<i64> {
    let b = per_step.first().map_or(0, Vec::len);
    (0..b)
        .flat_map(|bi| per_step.iter().flat_map(move |s| s[bi].clone()))
        .collect()
}

fn check_all(device: &Device, backend: &str) {
    let fx = Fixture::load();
    let (model, teacher) = fx.models(device);
    let mut r = Report::default();
    let x: Tensor<4> = fx.tensor("x", device);

    // Encoder.
    let tokens = model
        .encoder
        .forward_tokens(x.clone(), model.latent_tokens.val());
    r.close("enc_ln_post", tokens.clone(), fx.f32("enc_ln_post"), 1e-5);
    let z = model.encoder.tokens_to_latents(tokens);
    r.close("enc_z", z.clone(), fx.f32("enc_z"), 1e-5);

    // Quantizer, whole batch (the official call) and one image at a time.
    r.close(
        "quant_normalized_codebook",
        model.quantize.normalized_codebook(),
        fx.f32("quant_normalized_codebook"),
        1e-5,
    );
    let q = model
        .quantize
        .forward(z.clone(), AssignmentMode::SinkhornBatch);
    r.exact(
        "quant_indices_batch",
        &flat(&rows_i64(q.indices.clone())),
        &fx.i64("quant_indices_batch"),
    );
    r.close(
        "quant_z_st_batch",
        q.z_st.clone(),
        fx.f32("quant_z_st_batch"),
        1e-5,
    );
    r.close("quant_loss", q.loss.clone(), fx.f32("quant_loss"), 1e-5);
    r.close(
        "quant_commitment_loss",
        q.commitment_loss.clone(),
        fx.f32("quant_commitment_loss"),
        1e-5,
    );
    r.close(
        "quant_codebook_loss",
        q.codebook_loss.clone(),
        fx.f32("quant_codebook_loss"),
        1e-5,
    );
    let single = model
        .quantize
        .forward(z.clone(), AssignmentMode::SinkhornPerImage);
    r.exact(
        "quant_indices_single",
        &flat(&rows_i64(single.indices)),
        &fx.i64("quant_indices_single"),
    );
    let b = z.dims()[0];
    let losses: Vec<Tensor<1>> = (0..b)
        .map(|i| {
            let one = model
                .quantize
                .forward(z.clone().narrow(0, i, 1), AssignmentMode::SinkhornBatch);
            Tensor::cat(vec![one.loss, one.commitment_loss, one.codebook_loss], 0)
        })
        .collect();
    r.close(
        "quant_losses_single",
        Tensor::stack::<2>(losses, 0),
        fx.f32("quant_losses_single"),
        1e-5,
    );
    let zq = model.quantize.codebook_entries(q.indices);
    r.close(
        "quant_z_codebook",
        zq.clone(),
        fx.f32("quant_z_codebook"),
        1e-5,
    );

    // Teacher.
    let tz = teacher.encoder.forward(x.clone());
    r.close("teacher_z", tz.clone(), fx.f32("teacher_z"), 1e-5);
    let codes = teacher.quantize.encode(tz);
    r.exact(
        "teacher_indices",
        &flat(&rows_i64(codes.clone())),
        &fx.i64("teacher_indices"),
    );
    r.close(
        "teacher_decoded_raw",
        teacher.decode_raw(codes.clone()),
        fx.f32("teacher_decoded_raw"),
        5e-4,
    );
    r.close(
        "teacher_decoded",
        teacher.decode(codes),
        fx.f32("teacher_decoded"),
        5e-4,
    );

    // Decoder, from the exact codebook vectors as every decoder fixture is.
    let zq_fx: Tensor<4> = fx.tensor("quant_z_codebook", device);
    let n = fx.config.num_proxy_codes();
    let all_masked = model.all_masked_ids(b, n, device);
    let hidden = model
        .decoder
        .forward_hidden(all_masked.clone(), zq_fx.clone());
    r.close(
        "dec_ln_post_allmask",
        hidden,
        fx.f32("dec_ln_post_allmask"),
        1e-5,
    );
    let logits = model.decode_logits(all_masked, zq_fx.clone());
    r.close(
        "logits_allmask",
        logits.clone(),
        fx.f32("logits_allmask"),
        1e-4,
    );
    r.close(
        "pixels_allmask",
        model.pixels_from_logits(logits),
        fx.f32("pixels_allmask"),
        5e-4,
    );
    let partial = model.decode_logits(fx.int_tensor("ids_partial", device), zq_fx.clone());
    r.close("logits_partial", partial, fx.f32("logits_partial"), 1e-4);

    // Multi-step generation.
    for t in fx.generate_steps() {
        let opts = ReconstructOptions {
            steps: t,
            step_images: false,
            keep_logits: true,
            ..ReconstructOptions::default()
        };
        let trace = generate(&model, zq_fx.clone(), &opts);
        let p = format!("gen_T{t}");
        r.exact(
            &format!("{p}_ids"),
            &flat(&trace.final_ids),
            &fx.i64(&format!("{p}_ids")),
        );
        r.close(
            &format!("{p}_final_logits"),
            trace.final_logits.clone(),
            fx.f32(&format!("{p}_final_logits")),
            1e-4,
        );
        let inputs: Vec<_> = trace.steps.iter().map(|s| s.input_ids.clone()).collect();
        let sampled: Vec<_> = trace.steps.iter().map(|s| s.sampled_ids.clone()).collect();
        let outputs: Vec<_> = trace.steps.iter().map(|s| s.output_ids.clone()).collect();
        r.exact(
            &format!("{p}_step_input_ids"),
            &by_batch_then_step(&inputs),
            &fx.i64(&format!("{p}_step_input_ids")),
        );
        r.exact(
            &format!("{p}_step_sampled_ids"),
            &by_batch_then_step(&sampled),
            &fx.i64(&format!("{p}_step_sampled_ids")),
        );
        r.exact(
            &format!("{p}_step_output_ids"),
            &by_batch_then_step(&outputs),
            &fx.i64(&format!("{p}_step_output_ids")),
        );
        let lens: Vec<i64> = trace.steps.iter().map(|s| s.mask_len as i64).collect();
        r.exact(
            &format!("{p}_mask_len"),
            &lens,
            &fx.i64(&format!("{p}_mask_len")),
        );
        let soft = model.pixel_quantize.soft_lookup(trace.final_logits.clone());
        r.close(
            &format!("{p}_soft_latent"),
            soft,
            fx.f32(&format!("{p}_soft_latent")),
            1e-5,
        );
        r.close(
            &format!("{p}_pixels"),
            trace.pixels.clone(),
            fx.f32(&format!("{p}_pixels")),
            5e-4,
        );
        let key = format!("{p}_step_logits");
        if fx.io.contains_key(&key) {
            let per_step: Vec<Tensor<3>> = trace
                .steps
                .iter()
                .map(|s| s.logits.clone().unwrap())
                .collect();
            r.close(&key, Tensor::stack::<4>(per_step, 1), fx.f32(&key), 1e-4);
        }
    }
    r.finish(backend);
}

#[test]
fn parity_cpu() {
    check_all(&Device::flex(), "cpu (flex)");
}

#[test]
fn parity_wgpu() {
    if let Some(chosen) = common::wgpu_or_skip("parity_wgpu") {
        check_all(&chosen.device, &chosen.description);
    }
}
