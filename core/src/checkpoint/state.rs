//! State dicts: the bridge between our module tree and checkpoint files under the official names.
//!
//! The struct tree *is* the weight file: field names equal the official keys, so a name is the
//! path of a parameter in the tree, with three kinds of adjustment, all listed in [`official_key`]:
//! burn's norms call their affine parameters `gamma`/`beta` (PyTorch: `weight`/`bias`), burn's
//! `Linear` stores its weight as `[in, out]` (PyTorch: `[out, in]`), and the decoder's `ffn`
//! sequential is two named fields here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::pytorch::{RawDType, RawTensor};
use crate::error::{Result, SftokError};

/// Values of one stored tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One tensor of a state dict, in PyTorch layout.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl StoredTensor {
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        StoredTensor {
            shape,
            values: Values::F32(values),
        }
    }

    pub fn as_f32(&self) -> Vec<f32> {
        match &self.values {
            Values::F32(v) => v.clone(),
            Values::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    pub fn as_i64(&self) -> Vec<i64> {
        match &self.values {
            Values::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Values::I64(v) => v.clone(),
        }
    }
}

impl From<RawTensor> for StoredTensor {
    fn from(raw: RawTensor) -> Self {
        let values = match raw.dtype {
            RawDType::I64
            | RawDType::I32
            | RawDType::I16
            | RawDType::I8
            | RawDType::U8
            | RawDType::Bool => Values::I64(raw.to_i64()),
            _ => Values::F32(raw.to_f32()),
        };
        StoredTensor {
            shape: raw.shape,
            values,
        }
    }
}

/// Name -> tensor, sorted by name.
pub type StateDict = BTreeMap<String, StoredTensor>;

/// How a parameter's path in the module tree becomes its official key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfficialKey {
    pub name: String,
    /// burn `Linear` weights are `[in, out]`; the file holds `[out, in]`.
    pub transposed: bool,
}

/// The official key of the parameter at `path` (`(field name, owning container type)` pairs).
pub fn official_key(path: &[(String, String)]) -> OfficialKey {
    let mut parts: Vec<&str> = Vec::with_capacity(path.len());
    let mut transposed = false;
    for (i, (name, owner)) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let part = match (name.as_str(), owner.as_str()) {
            ("gamma", "Struct:LayerNorm" | "Struct:GroupNorm") if last => "weight",
            ("beta", "Struct:LayerNorm" | "Struct:GroupNorm") if last => "bias",
            ("weight", "Struct:Linear") if last => {
                transposed = true;
                "weight"
            }
            // The generator's BERT (`generator/bert.rs`): `self` is a Rust keyword, and
            // `LayerNorm` is not a field name Rust accepts without complaint.
            ("self_attention", "Struct:BertAttention") => "self",
            (
                "layer_norm",
                "Struct:BertEmbeddings" | "Struct:BertSelfOutput" | "Struct:BertOutput",
            ) => "LayerNorm",
            // The official decoder head is `nn.Sequential(conv, tanh, conv)`.
            ("ffn_expand", _) => "ffn.0",
            ("ffn_logits", _) => "ffn.2",
            (other, _) => other,
        };
        parts.push(part);
    }
    OfficialKey {
        name: parts.join("."),
        transposed,
    }
}

/// Records the problems found while fitting a state dict to a module.
#[derive(Debug, Default)]
pub struct KeyReport {
    pub missing: Vec<(String, Vec<usize>)>,
    pub misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    pub unexpected: Vec<(String, Vec<usize>)>,
}

impl KeyReport {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.misshaped.is_empty() && self.unexpected.is_empty()
    }

    /// A report for people: every problem key with its shape(s), at most `limit` per kind.
    pub fn describe(&self, limit: usize) -> String {
        let mut out = String::new();
        let mut section = |title: &str, rows: Vec<String>| {
            if rows.is_empty() {
                return;
            }
            let _ = writeln!(out, "  {} {title}:", rows.len());
            for r in rows.iter().take(limit) {
                let _ = writeln!(out, "    {r}");
            }
            if rows.len() > limit {
                let _ = writeln!(out, "    ... and {} more", rows.len() - limit);
            }
        };
        section(
            "missing key(s) (the model needs them, the file lacks them)",
            self.missing
                .iter()
                .map(|(n, s)| format!("{n} {s:?}"))
                .collect(),
        );
        section(
            "mis-shaped key(s)",
            self.misshaped
                .iter()
                .map(|(n, file, model)| format!("{n}: file has {file:?}, model expects {model:?}"))
                .collect(),
        );
        section(
            "unexpected key(s) (in the file, unknown to the model)",
            self.unexpected
                .iter()
                .map(|(n, s)| format!("{n} {s:?}"))
                .collect(),
        );
        out.push_str(
            "  Check that the configuration matches the weights (model size, image size, token count, codebook size).",
        );
        out
    }
}

struct Loader<'a> {
    path: Vec<(String, String)>,
    tensors: &'a mut StateDict,
    device: Device,
    report: KeyReport,
}

impl Loader<'_> {
    /// Takes the stored tensor for the current path if it exists and has the right shape.
    fn take(&mut self, model_shape: Vec<usize>) -> Option<(StoredTensor, bool)> {
        let key = official_key(&self.path);
        let expected: Vec<usize> = if key.transposed {
            model_shape.iter().rev().copied().collect()
        } else {
            model_shape
        };
        match self.tensors.remove(&key.name) {
            None => {
                self.report.missing.push((key.name, expected));
                None
            }
            Some(t) if t.shape != expected => {
                self.report.misshaped.push((key.name, t.shape, expected));
                None
            }
            Some(t) => Some((t, key.transposed)),
        }
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape().to_vec();
        let Some((stored, transposed)) = self.take(shape) else {
            return param;
        };
        let stored_shape = stored.shape.clone();
        let tensor =
            Tensor::<D>::from_data(TensorData::new(stored.as_f32(), stored_shape), &self.device);
        let tensor = if transposed {
            tensor.transpose()
        } else {
            tensor
        };
        let id = param.id;
        param.transform_for_load(tensor, id)
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let shape = param.lazy_shape().to_vec();
        let Some((stored, _)) = self.take(shape) else {
            return param;
        };
        let stored_shape = stored.shape.clone();
        let tensor = Tensor::<D, Int>::from_data(
            TensorData::new(stored.as_i64(), stored_shape),
            &self.device,
        );
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// Loads `tensors` into `module`. Every parameter must be present with its shape and every tensor
/// must be used; otherwise the error lists each missing, mis-shaped and unexpected key.
pub fn load_state_dict<M: Module>(
    module: M,
    mut tensors: StateDict,
    device: &Device,
    source: &Path,
) -> Result<M> {
    let mut loader = Loader {
        path: Vec::new(),
        tensors: &mut tensors,
        device: device.clone(),
        report: KeyReport::default(),
    };
    let module = module.map(&mut loader);
    let mut report = loader.report;
    report.unexpected = tensors
        .into_iter()
        .map(|(name, t)| (name, t.shape))
        .collect();
    if report.is_empty() {
        Ok(module)
    } else {
        Err(SftokError::KeyMismatch {
            path: source.to_path_buf(),
            report: report.describe(12),
        })
    }
}

struct Collector {
    path: Vec<(String, String)>,
    out: StateDict,
    /// Only names and shapes, without reading values (cheap on lazily initialised modules).
    shapes_only: bool,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let key = official_key(&self.path);
        let mut shape = param.lazy_shape().to_vec();
        if key.transposed {
            shape.reverse();
        }
        let values = if self.shapes_only {
            Vec::new()
        } else {
            let t = param.val();
            let t = if key.transposed { t.transpose() } else { t };
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        };
        self.out.insert(key.name, StoredTensor::f32(shape, values));
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        let key = official_key(&self.path);
        let shape = param.lazy_shape().to_vec();
        let values = if self.shapes_only {
            Vec::new()
        } else {
            param
                .val()
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .unwrap_or_default()
        };
        self.out.insert(
            key.name,
            StoredTensor {
                shape,
                values: Values::I64(values),
            },
        );
    }
}

/// The module's parameters under their official names, PyTorch layout.
pub fn state_dict<M: Module>(module: &M) -> StateDict {
    let mut c = Collector {
        path: Vec::new(),
        out: StateDict::new(),
        shapes_only: false,
    };
    module.visit(&mut c);
    c.out
}

/// Official names and shapes of the module's parameters (values are not read).
pub fn state_dict_shapes<M: Module>(module: &M) -> Vec<(String, Vec<usize>, &'static str)> {
    let mut c = Collector {
        path: Vec::new(),
        out: StateDict::new(),
        shapes_only: true,
    };
    module.visit(&mut c);
    c.out
        .into_iter()
        .map(|(n, t)| {
            let dtype = match t.values {
                Values::F32(_) => "float32",
                Values::I64(_) => "int64",
            };
            (n, t.shape, dtype)
        })
        .collect()
}

/// Official name -> parameter id, for looking up gradients by name.
pub fn param_ids<M: Module>(module: &M) -> BTreeMap<String, burn::module::ParamId> {
    struct Ids {
        path: Vec<(String, String)>,
        out: BTreeMap<String, burn::module::ParamId>,
    }
    impl ModuleVisitor for Ids {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.insert(official_key(&self.path).name, param.id);
        }
    }
    let mut ids = Ids {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut ids);
    ids.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[(&str, &str)]) -> Vec<(String, String)> {
        parts
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn norm_params_take_pytorch_names() {
        let k = official_key(&p(&[
            ("encoder", "Struct:Sftok"),
            ("ln_pre", "Struct:TitokEncoder"),
            ("gamma", "Struct:LayerNorm"),
        ]));
        assert_eq!(k.name, "encoder.ln_pre.weight");
        assert!(!k.transposed);
    }

    #[test]
    fn linear_weights_are_transposed_and_ffn_is_renamed() {
        let k = official_key(&p(&[
            ("decoder", "Struct:Sftok"),
            ("decoder_embed", "Struct:MultiStepDecoder"),
            ("weight", "Struct:Linear"),
        ]));
        assert_eq!(k.name, "decoder.decoder_embed.weight");
        assert!(k.transposed);
        let k = official_key(&p(&[
            ("decoder", "Struct:Sftok"),
            ("ffn_logits", "Struct:MultiStepDecoder"),
            ("bias", "Struct:Conv2d"),
        ]));
        assert_eq!(k.name, "decoder.ffn.2.bias");
    }
}
