//! The optimiser of the paper: AdamW with the official weight-decay exclusions, linear warm-up then
//! cosine decay, global grad-norm clipping, and state that is saved and restored exactly.
//!
//! Written here rather than taken from burn-optim so that its state is keyed by the official
//! parameter names (checkpoints stay readable and resumable across code changes) and the
//! exclusions mirror the official `exclude` rule one to one.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::state::{StateDict, StoredTensor, official_key};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// Stages 1 and 2 of the paper: betas (0.9, 0.99), weight decay 1e-4.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            epsilon: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to `end` at
/// `total_steps` (the official `get_scheduler("cosine")` with an end learning rate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f64,
    pub end: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    /// Learning rate of the update that follows `step` completed updates (the official LambdaLR:
    /// the very first update has lr 0 when there is a warm-up).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.end + (self.peak - self.end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The official exclusion rule (TiTok/SFTok `train_utils.create_optimizer`): no weight decay on
/// tensors with fewer than 2 dimensions or whose name mentions a norm, bias, embedding or the
/// latent / mask tokens.
pub fn excluded_from_weight_decay(name: &str, ndim: usize) -> bool {
    ndim < 2
        || [
            "ln",
            "bias",
            "latent_tokens",
            "mask_token",
            "embedding",
            "norm",
            "gamma",
            "embed",
        ]
        .iter()
        .any(|pattern| name.contains(pattern))
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// AdamW whose state is keyed by official parameter names.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Completed updates (for bias correction).
    pub steps: u64,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient. Gradients are multiplied by
    /// `grad_scale` first (the clipping coefficient).
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &mut GradientsParams,
        lr: f64,
        grad_scale: f64,
    ) -> M {
        self.steps += 1;
        let mut updater = Updater {
            optim: self,
            grads,
            lr,
            grad_scale,
            path: Vec::new(),
        };
        module.map(&mut updater)
    }

    /// The state as tensors `m.<name>` / `v.<name>` (flattened), for a checkpoint.
    pub fn state_dict(&self) -> StateDict {
        let mut out = StateDict::new();
        for (name, moments) in &self.moments {
            for (prefix, t) in [("m", &moments.m), ("v", &moments.v)] {
                let values = t
                    .to_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                out.insert(
                    format!("{prefix}.{name}"),
                    StoredTensor::f32(vec![values.len()], values),
                );
            }
        }
        out
    }

    /// Restores the state written by [`AdamW::state_dict`].
    pub fn load_state_dict(
        &mut self,
        tensors: &StateDict,
        steps: u64,
        device: &burn::tensor::Device,
    ) {
        self.steps = steps;
        self.moments.clear();
        for (key, t) in tensors {
            let Some(name) = key.strip_prefix("m.") else {
                continue;
            };
            let Some(v) = tensors.get(&format!("v.{name}")) else {
                continue;
            };
            let to_tensor = |s: &StoredTensor| {
                Tensor::<1>::from_data(
                    TensorData::new(s.as_f32(), [s.shape.iter().product::<usize>()]),
                    device,
                )
            };
            self.moments.insert(
                name.to_string(),
                Moments {
                    m: to_tensor(t),
                    v: to_tensor(v),
                },
            );
        }
    }
}

struct Updater<'a> {
    optim: &'a mut AdamW,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
    path: Vec<(String, String)>,
}

impl ModuleMapper for Updater<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let name = official_key(&self.path).name;
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let numel = shape.num_elements();
        let value = tensor.inner().reshape([numel]);
        let grad = grad.reshape([numel]).mul_scalar(self.grad_scale);
        let c = &self.optim.config;
        let (b1, b2) = (c.beta1, c.beta2);
        let moments = self.optim.moments.remove(&name).unwrap_or_else(|| Moments {
            m: value.zeros_like(),
            v: value.zeros_like(),
        });
        let m = moments.m.mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1);
        let v = moments.v.mul_scalar(b2) + grad.powi_scalar(2).mul_scalar(1.0 - b2);
        let t = self.optim.steps as i32;
        let m_hat = m.clone().div_scalar(1.0 - b1.powi(t));
        let v_hat = v.clone().div_scalar(1.0 - b2.powi(t));
        let decay = if excluded_from_weight_decay(&name, shape.num_dims()) {
            0.0
        } else {
            c.weight_decay
        };
        // Decoupled weight decay (PyTorch AdamW): p <- p * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps)
        let update = m_hat / (v_hat.sqrt() + c.epsilon);
        let value = value.mul_scalar(1.0 - self.lr * decay) - update.mul_scalar(self.lr);
        self.optim.moments.insert(name, Moments { m, v });
        let mut updated = Tensor::from_inner(value.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// The global L2 norm of all gradients of `module` (what `clip_grad_norm_` computes).
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut n = Norm { grads, total: None };
    module.visit(&mut n);
    n.total.map_or(0.0, |t| {
        t.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .map_or(0.0, |v| v[0].sqrt())
    })
}

/// `clip_grad_norm_`'s coefficient: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_end_value() {
        let s = LrSchedule {
            peak: 1e-4,
            end: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 5e-5).abs() < 1e-12);
        assert!((s.lr(10) - 1e-4).abs() < 1e-12);
        assert!((s.lr(60) - 5.5e-5).abs() < 1e-9);
        assert!((s.lr(110) - 1e-5).abs() < 1e-12);
        assert!((s.lr(1000) - 1e-5).abs() < 1e-12);
    }

    #[test]
    fn exclusions_follow_the_official_rule() {
        assert!(excluded_from_weight_decay("encoder.ln_pre.weight", 1));
        assert!(excluded_from_weight_decay("latent_tokens", 2));
        assert!(excluded_from_weight_decay(
            "decoder.learnable_embedding.weight",
            2
        ));
        assert!(excluded_from_weight_decay("encoder.patch_embed.weight", 4));
        assert!(!excluded_from_weight_decay(
            "encoder.transformer.0.mlp.c_fc.weight",
            2
        ));
        assert!(!excluded_from_weight_decay(
            "decoder.transformer.0.attn.in_proj_weight",
            2
        ));
    }

    #[test]
    fn clipping_coefficient() {
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert!((clip_coefficient(4.0, 1.0) - 0.25).abs() < 1e-6);
    }
}
