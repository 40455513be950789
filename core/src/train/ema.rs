//! Exponential moving average of the weights (the official `EMAModel`, decay 0.999): the EMA
//! weights are the ones saved for inference and evaluated.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::state::{StateDict, StoredTensor, official_key};

/// EMA shadow weights, keyed by official parameter name, flattened.
#[derive(Debug, Clone)]
pub struct Ema {
    pub decay: f64,
    /// Number of updates so far (`optimization_step` of the official class).
    pub updates: u64,
    shadow: BTreeMap<String, Tensor<1>>,
}

impl Ema {
    /// A shadow equal to the module's current weights.
    pub fn new<M: Module>(module: &M, decay: f64) -> Self {
        let mut ema = Ema {
            decay,
            updates: 0,
            shadow: BTreeMap::new(),
        };
        ema.blend(module, 0.0);
        ema
    }

    /// The official warm-up: `min(decay, (1 + s) / (10 + s))` with `s = updates - 1`, and 0 on the
    /// first update (which copies the weights).
    pub fn current_decay(&self) -> f64 {
        let s = self.updates.saturating_sub(1);
        if s == 0 {
            return 0.0;
        }
        ((1 + s) as f64 / (10 + s) as f64).min(self.decay)
    }

    /// One update after an optimiser step.
    pub fn update<M: Module>(&mut self, module: &M) {
        self.updates += 1;
        let decay = self.current_decay();
        self.blend(module, decay);
    }

    fn blend<M: Module>(&mut self, module: &M, decay: f64) {
        struct Blend<'a> {
            ema: &'a mut Ema,
            decay: f64,
            path: Vec<(String, String)>,
        }
        impl ModuleVisitor for Blend<'_> {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.path
                    .push((name.to_string(), container_type.to_string()));
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let name = official_key(&self.path).name;
                let value = param.val().inner();
                let numel = value.shape().num_elements();
                let value = value.reshape([numel]).detach();
                let blended = match self.ema.shadow.remove(&name) {
                    // `old + (1 - d) (value - old)`: the same average as `d old + (1 - d) value`,
                    // but a weight that did not move (a frozen one) stays bit-identical.
                    Some(old) if self.decay > 0.0 => {
                        old.clone() + (value - old).mul_scalar(1.0 - self.decay)
                    }
                    _ => value,
                };
                self.ema.shadow.insert(name, blended);
            }
        }
        module.visit(&mut Blend {
            ema: self,
            decay,
            path: Vec::new(),
        });
    }

    /// `module` with its weights replaced by the shadow ones (parameters without a shadow keep
    /// their values).
    pub fn apply_to<M: Module>(&self, module: M) -> M {
        struct Apply<'a> {
            ema: &'a Ema,
            path: Vec<(String, String)>,
        }
        impl ModuleMapper for Apply<'_> {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.path
                    .push((name.to_string(), container_type.to_string()));
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let name = official_key(&self.path).name;
                let Some(shadow) = self.ema.shadow.get(&name) else {
                    return param;
                };
                let (id, tensor, mapper) = param.consume();
                let require_grad = tensor.is_require_grad();
                let mut value = Tensor::from_inner(shadow.clone().reshape(tensor.shape()));
                if require_grad {
                    value = value.require_grad();
                }
                Param::from_mapped_value(id, value, mapper)
            }
        }
        module.map(&mut Apply {
            ema: self,
            path: Vec::new(),
        })
    }

    /// Shadow weights for a checkpoint (flattened, under `ema.<name>`).
    pub fn state_dict(&self) -> StateDict {
        self.shadow
            .iter()
            .map(|(name, t)| {
                let values = t
                    .to_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default();
                (
                    format!("ema.{name}"),
                    StoredTensor::f32(vec![values.len()], values),
                )
            })
            .collect()
    }

    /// Restores what [`Ema::state_dict`] wrote.
    pub fn load_state_dict(&mut self, tensors: &StateDict, updates: u64, device: &Device) {
        self.updates = updates;
        for (key, t) in tensors {
            if let Some(name) = key.strip_prefix("ema.") {
                let values = t.as_f32();
                let n = values.len();
                self.shadow.insert(
                    name.to_string(),
                    Tensor::from_data(TensorData::new(values, [n]), device),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_warms_up_to_its_ceiling() {
        let mut e = Ema {
            decay: 0.999,
            updates: 1,
            shadow: BTreeMap::new(),
        };
        assert_eq!(e.current_decay(), 0.0);
        e.updates = 2;
        assert!((e.current_decay() - 2.0 / 11.0).abs() < 1e-12);
        e.updates = 1_000_000;
        assert_eq!(e.current_decay(), 0.999);
    }
}
