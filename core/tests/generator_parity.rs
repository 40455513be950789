//! Parity of the MaskGIT generator with the official PyTorch code (`modeling/maskgit.py`,
//! `MLMLoss`), tensor by tensor: the forward pass with and without the class, every generation
//! case (1, 4 and 8 steps, three guidance decays, three stochastic cases replayed with the
//! official run's uniform draws) step by step, the decoded pixels, and one training step with
//! every parameter's gradient.
//!
//! The fixtures (`GENERATOR.md` beside them) are `$SFTOK_PARITY_DIR/generator` when that is set,
//! else `../shared/parity/generator` beside the repository, else the copy in
//! `tests/data/parity/generator`. The decoded pixels need the tokenizer of the `public` set next
//! to it.
//!
//! Tolerances (GENERATOR.md): ids, sampled ids, re-masks, `mask_len`, masks and counts exactly;
//! forward and unguided logits atol 1e-4; guided logits, confidences and cut-offs atol
//! 1e-4 (1 + |cfg|); pixels 5e-4; losses 1e-5; gradients max|g - g_ref| <= 1e-3 max|g_ref| per
//! tensor (atol 1e-6 for the key bias, whose true gradient is 0); grad norm rtol 1e-4.

mod common;

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use serde_json::Value;
use sftok_core::checkpoint::build_sftok;
use sftok_core::checkpoint::files::read_safetensors_bytes;
use sftok_core::checkpoint::state::{StateDict, param_ids};
use sftok_core::config::{SftokConfig, python_json_to_json};
use sftok_core::generator::sampling::{Draw, NoiseSource, gumbel};
use sftok_core::generator::{
    GenerateOptions, GeneratorConfig, GuidanceDecay, ImageBert, build_generator, generate,
};
use sftok_core::reconstruct::{ReconstructOptions, decode_tokens, ids_tensor};
use sftok_core::train::generator_step::{GeneratorDraws, generator_step};
use sftok_core::train::optim::grad_norm;

fn fixture_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SFTOK_PARITY_DIR") {
        // The variable names the parity root (holding `generator/`) or, as for the `parity`
        // test, the tokenizer set beside it.
        let dir = PathBuf::from(dir);
        let nested = dir.join("generator");
        return if nested.is_dir() {
            nested
        } else {
            dir.join("../generator")
        };
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/parity/generator");
    if shared.join("config.json").is_file() {
        return shared;
    }
    manifest.join("tests/data/parity/generator")
}

/// The tokenizer set that decodes the generated ids (`flat.tokenizer_fixture.dir`, `../public`).
fn tokenizer_dir(generator_dir: &Path) -> PathBuf {
    let beside = generator_dir.join("../public");
    match std::env::var("SFTOK_PARITY_DIR") {
        Ok(dir) if !beside.join("weights.safetensors").is_file() => PathBuf::from(dir),
        _ => beside,
    }
}

fn read(path: &Path) -> StateDict {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    read_safetensors_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Fixture {
    dir: PathBuf,
    config: GeneratorConfig,
    cases: serde_json::Map<String, Value>,
    io: StateDict,
    train: StateDict,
}

impl Fixture {
    fn load() -> Self {
        let dir = fixture_dir();
        let config = GeneratorConfig::from_file(&dir.join("config.json")).expect("config");
        let json: Value =
            // Python's json writes Infinity (the cut-off gaps of one-step cases).
            serde_json::from_str(&python_json_to_json(
                &std::fs::read_to_string(dir.join("config.json")).unwrap(),
            ))
            .unwrap();
        Fixture {
            config,
            cases: json["cases"].as_object().expect("cases").clone(),
            io: read(&dir.join("io.safetensors")),
            train: read(&dir.join("train.safetensors")),
            dir,
        }
    }

    fn model(&self, device: &Device) -> ImageBert {
        let path = self.dir.join("generator.safetensors");
        build_generator(&self.config, read(&path), device, &path).expect("generator loads")
    }
}

fn get<'a>(sd: &'a StateDict, key: &str) -> &'a sftok_core::checkpoint::StoredTensor {
    sd.get(key)
        .unwrap_or_else(|| panic!("fixture lacks `{key}`"))
}

fn f32s(sd: &StateDict, key: &str) -> Vec<f32> {
    get(sd, key).as_f32()
}

fn i64s(sd: &StateDict, key: &str) -> Vec<i64> {
    get(sd, key).as_i64()
}

fn rows(sd: &StateDict, key: &str) -> Vec<Vec<i64>> {
    let t = get(sd, key);
    t.as_i64().chunks(t.shape[1]).map(<[i64]>::to_vec).collect()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// `[B][T][..]` from per-step `[B][..]` rows.
fn by_batch_then_step<T: Copy>(per_step: &[Vec<Vec<T>>]) -> Vec<T> {
    let b = per_step.first().map_or(0, Vec::len);
    (0..b)
        .flat_map(|bi| per_step.iter().flat_map(move |s| s[bi].clone()))
        .collect()
}

/// `[B][T][rest]` from per-step flat `[B * rest]` values.
fn flat_by_batch_then_step(per_step: &[Vec<f32>], b: usize) -> Vec<f32> {
    let rest = per_step.first().map_or(0, Vec::len) / b.max(1);
    (0..b)
        .flat_map(|bi| {
            per_step
                .iter()
                .flat_map(move |s| s[bi * rest..(bi + 1) * rest].iter().copied())
        })
        .collect()
}

/// Collects every mismatch so that one run reports all of them.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    checked: usize,
}

impl Report {
    /// Equal within `atol`; equal infinities count as equal, a NaN never does.
    fn close(&mut self, name: &str, got: &[f32], want: &[f32], atol: f32) {
        self.checked += 1;
        if got.len() != want.len() {
            self.failures.push(format!(
                "{name}: {} values, expected {}",
                got.len(),
                want.len()
            ));
            return;
        }
        let mut worst = (0.0f32, 0usize);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let d = if g == w { 0.0 } else { (g - w).abs() };
            if d.is_nan() || d > worst.0 {
                worst = (if d.is_nan() { f32::INFINITY } else { d }, i);
            }
        }
        if worst.0 > atol {
            self.failures.push(format!(
                "{name}: max |diff| {:e} > {atol:e} at flat index {} (got {}, want {})",
                worst.0, worst.1, got[worst.1], want[worst.1]
            ));
        }
    }

    fn exact(&mut self, name: &str, got: &[i64], want: &[i64]) {
        self.checked += 1;
        if got != want {
            let diffs = got.iter().zip(want).filter(|(a, b)| a != b).count();
            self.failures.push(format!(
                "{name}: {diffs} of {} values differ (lengths {} and {})",
                want.len(),
                got.len(),
                want.len()
            ));
        }
    }

    fn check(&mut self, name: &str, ok: bool, detail: String) {
        self.checked += 1;
        if !ok {
            self.failures.push(format!("{name}: {detail}"));
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
        eprintln!(
            "{backend}: all {} generator parity checks passed",
            self.checked
        );
    }
}

/// The official run's uniform draws, replayed: `<case>_step_u_logits` `[B, T, L, K]` and
/// `<case>_step_u_conf` `[B, T, L]`.
struct Recorded {
    logits: Vec<f32>,
    conf: Vec<f32>,
    b: usize,
    t: usize,
}

impl NoiseSource for Recorded {
    fn uniforms(&mut self, step: usize, draw: Draw, len: usize) -> Vec<f32> {
        let src = match draw {
            Draw::Logits => &self.logits,
            Draw::Confidence => &self.conf,
        };
        let per = len / self.b; // one image's values at one step
        (0..self.b)
            .flat_map(|bi| {
                let at = (bi * self.t + step) * per;
                src[at..at + per].iter().copied()
            })
            .collect()
    }
}

/// No draws: a deterministic case must not ask for any.
struct NoNoise;

impl NoiseSource for NoNoise {
    fn uniforms(&mut self, step: usize, draw: Draw, _len: usize) -> Vec<f32> {
        panic!("a temperature-0 case drew noise ({draw:?} at step {step})")
    }
}

fn check_forward(fx: &Fixture, model: &ImageBert, device: &Device, r: &mut Report) {
    let ids = rows(&fx.io, "fwd_input_ids");
    let labels: Vec<Option<usize>> = i64s(&fx.io, "fwd_labels")
        .iter()
        .map(|&c| Some(c as usize))
        .collect();
    let b = labels.len();
    let cond = model.condition_tokens(&labels, &vec![false; b]);
    let null = model.condition_tokens(&labels, &vec![true; b]);
    r.exact(
        "fwd_condition_ids_cond",
        &cond,
        &i64s(&fx.io, "fwd_condition_ids_cond"),
    );
    r.exact(
        "fwd_condition_ids_null",
        &null,
        &i64s(&fx.io, "fwd_condition_ids_null"),
    );
    for (key, tokens) in [("fwd_logits_cond", &cond), ("fwd_logits_null", &null)] {
        let logits = model.forward(ids_tensor(&ids, device), tokens);
        r.close(key, &values(logits), &f32s(&fx.io, key), 1e-4);
    }
    let sequence: Vec<Vec<i64>> = ids
        .iter()
        .zip(&cond)
        .map(|(row, &c)| std::iter::once(c).chain(row.iter().copied()).collect())
        .collect();
    let hidden = model.hidden_states(ids_tensor(&sequence, device));
    for (i, h) in hidden.into_iter().enumerate() {
        let key = if i == 0 {
            "fwd_hidden_embeddings".to_string()
        } else {
            format!("fwd_hidden_layer{}", i - 1)
        };
        r.close(&key, &values(h), &f32s(&fx.io, &key), 1e-5);
    }
}

fn options(case: &Value) -> GenerateOptions {
    GenerateOptions {
        steps: case["T"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance_scale"].as_f64().unwrap(),
        guidance_decay: GuidanceDecay::parse(case["guidance_decay"].as_str().unwrap()).unwrap(),
        guidance_scale_pow: case["guidance_scale_pow"].as_f64().unwrap(),
        randomize_temperature: case["randomize_temperature"].as_f64().unwrap(),
        softmax_temperature_annealing: case["softmax_temperature_annealing"].as_bool().unwrap(),
        keep_logits: true,
    }
}

fn check_generation(fx: &Fixture, model: &ImageBert, r: &mut Report) -> usize {
    let labels: Vec<Option<usize>> = i64s(&fx.io, "gen_labels")
        .iter()
        .map(|&c| Some(c as usize))
        .collect();
    let b = labels.len();
    for (name, case) in &fx.cases {
        let opts = options(case);
        let t = opts.steps;
        let key = |suffix: &str| format!("{name}_{suffix}");
        let generation = if opts.randomize_temperature > 0.0 {
            let mut noise = Recorded {
                logits: f32s(&fx.io, &key("step_u_logits")),
                conf: f32s(&fx.io, &key("step_u_conf")),
                b,
                t,
            };
            // The Gumbel transform itself, against the official run's.
            let g: Vec<f32> = noise.logits.iter().map(|&u| gumbel(u)).collect();
            r.close(
                &key("step_g_logits"),
                &g,
                &f32s(&fx.io, &key("step_g_logits")),
                1e-5,
            );
            let g: Vec<f32> = noise.conf.iter().map(|&u| gumbel(u)).collect();
            r.close(
                &key("step_g_conf"),
                &g,
                &f32s(&fx.io, &key("step_g_conf")),
                1e-5,
            );
            generate(model, &labels, &opts, &mut noise)
        } else {
            generate(model, &labels, &opts, &mut NoNoise)
        };
        let steps = &generation.steps;
        r.exact(
            &key("ids"),
            &generation.ids.concat(),
            &i64s(&fx.io, &key("ids")),
        );
        let ids_per_step = |f: fn(&sftok_core::generator::GeneratorStep) -> &Vec<Vec<i64>>| {
            by_batch_then_step(&steps.iter().map(|s| f(s).clone()).collect::<Vec<_>>())
        };
        r.exact(
            &key("step_input_ids"),
            &ids_per_step(|s| &s.input_ids),
            &i64s(&fx.io, &key("step_input_ids")),
        );
        r.exact(
            &key("step_sampled_ids"),
            &ids_per_step(|s| &s.sampled_ids),
            &i64s(&fx.io, &key("step_sampled_ids")),
        );
        r.exact(
            &key("step_output_ids"),
            &ids_per_step(|s| &s.output_ids),
            &i64s(&fx.io, &key("step_output_ids")),
        );
        let remask: Vec<Vec<Vec<i64>>> = steps
            .iter()
            .map(|s| {
                s.remask
                    .iter()
                    .map(|row| row.iter().map(|&m| i64::from(m)).collect())
                    .collect()
            })
            .collect();
        r.exact(
            &key("step_remask"),
            &by_batch_then_step(&remask),
            &i64s(&fx.io, &key("step_remask")),
        );
        let lens: Vec<i64> = steps.iter().map(|s| s.mask_len as i64).collect();
        r.exact(&key("mask_len"), &lens, &i64s(&fx.io, &key("mask_len")));
        let uses: Vec<i64> = steps.iter().map(|s| i64::from(s.uses_cfg)).collect();
        r.exact(
            &key("step_uses_cfg"),
            &uses,
            &i64s(&fx.io, &key("step_uses_cfg")),
        );
        let cfg: Vec<f32> = steps.iter().map(|s| s.cfg_scale).collect();
        r.close(
            &key("step_cfg_scale"),
            &cfg,
            &f32s(&fx.io, &key("step_cfg_scale")),
            1e-6,
        );
        let temps: Vec<f32> = steps.iter().map(|s| s.annealed_temp as f32).collect();
        r.close(
            &key("step_annealed_temp"),
            &temps,
            &f32s(&fx.io, &key("step_annealed_temp")),
            1e-6,
        );

        // Floats: guided values scale with the guidance weight.
        let max_cfg = cfg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let guided_tol = 1e-4 * (1.0 + max_cfg);
        let logits: Vec<Vec<f32>> = steps.iter().map(|s| s.logits.clone().unwrap()).collect();
        r.close(
            &key("step_logits"),
            &flat_by_batch_then_step(&logits, b),
            &f32s(&fx.io, &key("step_logits")),
            guided_tol,
        );
        let confidence: Vec<Vec<Vec<f32>>> = steps.iter().map(|s| s.confidence.clone()).collect();
        r.close(
            &key("step_confidence"),
            &by_batch_then_step(&confidence),
            &f32s(&fx.io, &key("step_confidence")),
            guided_tol,
        );
        let cut: Vec<Vec<Vec<f32>>> = steps
            .iter()
            .map(|s| s.cut_off.iter().map(|&c| vec![c]).collect())
            .collect();
        r.close(
            &key("step_cut_off"),
            &by_batch_then_step(&cut),
            &f32s(&fx.io, &key("step_cut_off")),
            guided_tol,
        );
        if fx.io.contains_key(&key("step_cond_logits")) {
            let k = model.codebook_size;
            let l = generation.ids[0].len();
            let per_step =
                |which: fn(&sftok_core::generator::GeneratorStep) -> &Option<Vec<f32>>| {
                    let v: Vec<Vec<f32>> = steps
                        .iter()
                        .map(|s| which(s).clone().unwrap_or_else(|| vec![0.0; b * l * k]))
                        .collect();
                    flat_by_batch_then_step(&v, b)
                };
            r.close(
                &key("step_cond_logits"),
                &per_step(|s| &s.cond_logits),
                &f32s(&fx.io, &key("step_cond_logits")),
                1e-4,
            );
            r.close(
                &key("step_null_logits"),
                &per_step(|s| &s.null_logits),
                &f32s(&fx.io, &key("step_null_logits")),
                1e-4,
            );
        }
    }
    fx.cases.len()
}

fn check_decoding(fx: &Fixture, device: &Device, r: &mut Report) {
    let public = tokenizer_dir(&fx.dir);
    let config = SftokConfig::from_file(&public.join("config.json")).expect("tokenizer config");
    let weights = public.join("weights.safetensors");
    let tokenizer = build_sftok(&config, read(&weights), device, &weights).expect("tokenizer");
    let opts = ReconstructOptions {
        steps: 8,
        step_images: false,
        ..ReconstructOptions::default()
    };
    for case in ["gen_T8", "sto_T8"] {
        let ids = rows(&fx.io, &format!("{case}_ids"));
        let trace = decode_tokens(&tokenizer, &ids, &opts);
        let key = format!("decode_{case}_pixels");
        r.close(&key, &values(trace.pixels), &f32s(&fx.io, &key), 5e-4);
    }
}

fn check_training(fx: &Fixture, device: &Device, r: &mut Report) {
    let device = device.clone().autodiff();
    let model = fx.model(&device);
    let tr = &fx.train;
    let tokens = rows(tr, "tokens");
    let classes: Vec<Option<usize>> = i64s(tr, "labels")
        .iter()
        .map(|&c| Some(c as usize))
        .collect();
    let l = tokens[0].len();
    let draws = GeneratorDraws {
        timesteps: f32s(tr, "rand/timesteps"),
        perm_rand: f32s(tr, "rand/perm_rand")
            .chunks(l)
            .map(<[f32]>::to_vec)
            .collect(),
        drop_rand: f32s(tr, "rand/drop_rand"),
    };
    let out = generator_step(
        &model,
        &tokens,
        &classes,
        &draws,
        fx.config.class_label_dropout,
    );
    let m = &out.masking;
    r.close("mask_ratio", &m.mask_ratio, &f32s(tr, "mask_ratio"), 1e-6);
    let counts: Vec<i64> = m.num_token_masked.iter().map(|&n| n as i64).collect();
    r.exact("num_token_masked", &counts, &i64s(tr, "num_token_masked"));
    let mask: Vec<i64> = m.mask.iter().flatten().map(|&v| i64::from(v)).collect();
    r.exact("mask", &mask, &i64s(tr, "mask"));
    r.exact(
        "masked_tokens",
        &m.masked_tokens.concat(),
        &i64s(tr, "masked_tokens"),
    );
    let drop: Vec<i64> = m.drop_label.iter().map(|&v| i64::from(v)).collect();
    r.exact("drop_label", &drop, &i64s(tr, "drop_label"));
    r.exact(
        "condition_ids",
        &m.condition_tokens,
        &i64s(tr, "condition_ids"),
    );
    r.close(
        "logits",
        &values(out.logits.clone()),
        &f32s(tr, "logits"),
        1e-4,
    );
    for (name, t) in [("nll", &out.nll), ("smooth", &out.smooth), ("ce", &out.ce)] {
        r.close(name, &values(t.clone()), &f32s(tr, name), 1e-5);
    }
    r.close(
        "loss_weights",
        &out.loss_weights.concat(),
        &f32s(tr, "loss_weights"),
        0.0,
    );
    r.close("loss", &values(out.loss.clone()), &f32s(tr, "loss"), 1e-5);
    r.close(
        "correct_tokens",
        &[out.correct_tokens],
        &f32s(tr, "correct_tokens"),
        1e-6,
    );

    let grads = GradientsParams::from_grads(out.loss.backward(), &model);
    let norm = grad_norm(&model, &grads);
    let want_norm = f32s(tr, "grad_total_norm")[0] as f64;
    r.check(
        "grad_total_norm",
        ((norm - want_norm) / want_norm).abs() <= 1e-4,
        format!("{norm} vs {want_norm}"),
    );
    let ids = param_ids(&model);
    let mut seen = 0;
    for (name, id) in &ids {
        let want_key = format!("grad/{name}");
        let want = f32s(tr, &want_key);
        let rank = get(tr, &want_key).shape.len();
        // burn's Linear holds [in, out]; the file holds PyTorch's [out, in].
        let linear_weight = name.ends_with(".weight") && rank == 2 && !name.contains("embeddings");
        let got = match (rank, linear_weight) {
            (1, _) => grads.get::<1>(*id).map(values),
            (2, true) => grads.get::<2>(*id).map(|g| values(g.transpose())),
            (2, false) => grads.get::<2>(*id).map(values),
            _ => panic!("{name}: rank {rank}"),
        };
        let Some(got) = got else {
            r.check(&want_key, false, "no gradient".into());
            continue;
        };
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // The key bias's true gradient is 0 (softmax ignores q . b_k): only rounding noise.
        let tol = if name.ends_with("attention.self.key.bias") {
            1e-6
        } else {
            1e-3 * scale
        };
        r.close(&want_key, &got, &want, tol);
        seen += 1;
    }
    let in_file = tr.keys().filter(|k| k.starts_with("grad/")).count();
    r.check(
        "every parameter's gradient",
        seen == in_file,
        format!("{seen} parameters checked, {in_file} gradients in the file"),
    );
}

fn check_all(device: &Device, backend: &str) {
    let fx = Fixture::load();
    let model = fx.model(device);
    let mut r = Report::default();
    check_forward(&fx, &model, device, &mut r);
    let cases = check_generation(&fx, &model, &mut r);
    assert_eq!(cases, 9, "the fixture set has 9 generation cases");
    check_decoding(&fx, device, &mut r);
    check_training(&fx, device, &mut r);
    r.finish(backend);
}

#[test]
fn generator_parity_cpu() {
    check_all(&Device::flex(), "cpu (flex)");
}

#[test]
fn generator_parity_wgpu() {
    if let Some(chosen) = common::wgpu_or_skip("generator_parity_wgpu") {
        check_all(&chosen.device, &chosen.description);
    }
}

#[test]
fn the_fixture_weights_and_a_fresh_model_have_the_same_names_and_shapes() {
    let fx = Fixture::load();
    let device = Device::flex();
    let fresh = ImageBert::new(&fx.config, &device);
    let ours = sftok_core::checkpoint::state_dict_shapes(&fresh);
    let file = read(&fx.dir.join("generator.safetensors"));
    assert_eq!(ours.len(), file.len(), "tensor count");
    for (name, shape, _) in ours {
        let t = file
            .get(&name)
            .unwrap_or_else(|| panic!("{name} not in the file"));
        assert_eq!(t.shape, shape, "{name}");
    }
}
