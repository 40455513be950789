//! The Inception-v3 of FID, as pytorch-fid runs it (`pytorch_fid/inception.py`,
//! `InceptionV3([3], resize_input=True, normalize_input=True)`): images in [0, 1] are resized
//! to 299×299 (bilinear, `align_corners=False`), mapped to [-1, 1], and run up to the final
//! average pool, whose 2048 values ("pool3") are the features whose statistics FID compares.
//!
//! This is not torchvision's ImageNet Inception-v3: the FID network is the 2015 TensorFlow graph
//! ported to PyTorch, with its quirks kept so that scores stay comparable with published ones
//! (`FIDInceptionA/C/E_1`: the pool branches average without counting the zero padding, as
//! TensorFlow does; `FIDInceptionE_2`: the last block max-pools in its pool branch). Its weights
//! come from the user, as `pt_inception-2015-12-05-6726825d.pth`, the file pytorch-fid
//! downloads; torchvision's weights have the same names but are refused, since they would give
//! different, incomparable scores.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, interpolate, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::files::read_weights;
use crate::checkpoint::state::StateDict;
use crate::error::{Result, SftokError};

/// Side of the square input the network was trained on.
pub const INPUT_SIZE: usize = 299;
/// Length of the pool3 feature vector.
pub const FEATURE_DIM: usize = 2048;
/// TensorFlow's batch-norm epsilon, kept by the port.
const BN_EPS: f32 = 0.001;
/// Classes of the 2015 graph's classifier (`fc`), which FID does not use; its shape tells the
/// FID weights from torchvision's (1000 classes).
const FC_CLASSES: usize = 1008;

/// Convolution without bias, batch norm in eval mode and ReLU (torchvision's `BasicConv2d`).
/// The batch norm is folded into the convolution when the weights are loaded: `γ (w∗x − μ) /
/// √(σ² + ε) + β` is a convolution with weights `w γ/√(σ² + ε)` and bias `β − μ γ/√(σ² + ε)`.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    conv: Conv2d,
}

impl BasicConv2d {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.conv.forward(x))
    }
}

/// Shape of one `BasicConv2d`.
#[derive(Debug, Clone, Copy)]
struct ConvSpec {
    c_in: usize,
    c_out: usize,
    kernel: [usize; 2],
    stride: usize,
    padding: [usize; 2],
}

const fn spec(c_in: usize, c_out: usize, kernel: [usize; 2], padding: [usize; 2]) -> ConvSpec {
    ConvSpec {
        c_in,
        c_out,
        kernel,
        stride: 1,
        padding,
    }
}

const fn strided(c_in: usize, c_out: usize, kernel: usize) -> ConvSpec {
    ConvSpec {
        c_in,
        c_out,
        kernel: [kernel, kernel],
        stride: 2,
        padding: [0, 0],
    }
}

/// Builds the convolutions, from random weights or from a state dict under the official names,
/// collecting every problem with the file instead of stopping at the first.
struct Builder<'a> {
    device: &'a Device,
    weights: Option<&'a StateDict>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
}

impl<'a> Builder<'a> {
    fn new(device: &'a Device, weights: Option<&'a StateDict>) -> Self {
        Builder {
            device,
            weights,
            used: BTreeSet::new(),
            missing: Vec::new(),
            misshaped: Vec::new(),
        }
    }

    /// The `BasicConv2d` called `name` (e.g. `Mixed_5b.branch1x1`).
    fn conv(&mut self, name: &str, s: ConvSpec) -> BasicConv2d {
        let [kh, kw] = s.kernel;
        let [ph, pw] = s.padding;
        let mut conv = Conv2dConfig::new([s.c_in, s.c_out], s.kernel)
            .with_stride([s.stride, s.stride])
            .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
            .init(self.device);
        if let Some((weight, bias)) = self.folded(name, s, [s.c_out, s.c_in, kh, kw]) {
            conv.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(weight, [s.c_out, s.c_in, kh, kw]),
                self.device,
            ));
            conv.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(bias, [s.c_out]),
                self.device,
            )));
        }
        BasicConv2d { conv }
    }

    /// The convolution weights with the batch norm folded in, if the file has all of them with
    /// the right shapes (problems are recorded; `None` without a file).
    fn folded(
        &mut self,
        name: &str,
        s: ConvSpec,
        shape: [usize; 4],
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        self.weights?;
        let mut weight = self.take(&format!("{name}.conv.weight"), &shape);
        let c = [s.c_out];
        let gamma = self.take(&format!("{name}.bn.weight"), &c);
        let beta = self.take(&format!("{name}.bn.bias"), &c);
        let mean = self.take(&format!("{name}.bn.running_mean"), &c);
        let var = self.take(&format!("{name}.bn.running_var"), &c);
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let per_out = shape[1] * shape[2] * shape[3];
        let mut bias = Vec::with_capacity(s.c_out);
        for (o, w) in weight.as_mut()?.chunks_exact_mut(per_out).enumerate() {
            let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
            w.iter_mut().for_each(|v| *v *= scale);
            bias.push(beta[o] - mean[o] * scale);
        }
        Some((weight?, bias))
    }

    /// The values of `key`, if present with `shape`.
    fn take(&mut self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let t = self.weights?.get(key);
        self.used.insert(key.to_string());
        match t {
            None => {
                self.missing.push(format!("{key} {shape:?}"));
                None
            }
            Some(t) if t.shape != shape => {
                self.misshaped
                    .push(format!("{key}: file has {:?}, expected {shape:?}", t.shape));
                None
            }
            Some(t) => Some(t.as_f32()),
        }
    }

    /// Every problem with the file, or `None` when it fits. Keys the network does not use are
    /// problems too, except the classifier and batch-norm counters: a file with more is another
    /// network (torchvision's has `AuxLogits.*`).
    fn report(&self) -> Option<String> {
        let weights = self.weights?;
        let unexpected: Vec<String> = weights
            .iter()
            .filter(|(k, _)| {
                !self.used.contains(*k)
                    && !k.ends_with(".num_batches_tracked")
                    && !matches!(k.as_str(), "fc.weight" | "fc.bias")
            })
            .map(|(k, t)| format!("{k} {:?}", t.shape))
            .collect();
        let fc = weights
            .get("fc.weight")
            .filter(|t| t.shape != [FC_CLASSES, FEATURE_DIM])
            .map(|t| {
                format!(
                    "fc.weight: file has {:?}, expected {:?}",
                    t.shape,
                    [FC_CLASSES, FEATURE_DIM]
                )
            });
        let misshaped: Vec<&String> = self.misshaped.iter().chain(&fc).collect();
        if self.missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() {
            return None;
        }
        let mut out = String::new();
        let mut section = |title: &str, rows: &[&String]| {
            if rows.is_empty() {
                return;
            }
            let _ = writeln!(out, "  {} {title}:", rows.len());
            for r in rows.iter().take(12) {
                let _ = writeln!(out, "    {r}");
            }
            if rows.len() > 12 {
                let _ = writeln!(out, "    ... and {} more", rows.len() - 12);
            }
        };
        section("missing key(s)", &self.missing.iter().collect::<Vec<_>>());
        section("mis-shaped key(s)", &misshaped);
        section("unexpected key(s)", &unexpected.iter().collect::<Vec<_>>());
        if weights.keys().any(|k| k.starts_with("AuxLogits.")) || fc.is_some() {
            out.push_str(
                "  This looks like torchvision's ImageNet Inception-v3, whose scores are not FIDs. ",
            );
        }
        out.push_str(
            "  FID needs pytorch-fid's weights, pt_inception-2015-12-05-6726825d.pth \
             (github.com/mseitzer/pytorch-fid/releases/tag/fid_weights).",
        );
        Some(out)
    }
}

/// `InceptionA` (Mixed_5b/c/d): 1×1, 5×5, double 3×3 and pool branches, 35×35.
#[derive(Module, Debug)]
pub struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(b: &mut Builder, name: &str, c_in: usize, pool_features: usize) -> Self {
        let mut conv = |branch: &str, s| b.conv(&format!("{name}.{branch}"), s);
        InceptionA {
            branch1x1: conv("branch1x1", spec(c_in, 64, [1, 1], [0, 0])),
            branch5x5_1: conv("branch5x5_1", spec(c_in, 48, [1, 1], [0, 0])),
            branch5x5_2: conv("branch5x5_2", spec(48, 64, [5, 5], [2, 2])),
            branch3x3dbl_1: conv("branch3x3dbl_1", spec(c_in, 64, [1, 1], [0, 0])),
            branch3x3dbl_2: conv("branch3x3dbl_2", spec(64, 96, [3, 3], [1, 1])),
            branch3x3dbl_3: conv("branch3x3dbl_3", spec(96, 96, [3, 3], [1, 1])),
            branch_pool: conv("branch_pool", spec(c_in, pool_features, [1, 1], [0, 0])),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self
            .branch5x5_2
            .forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        let bp = self.branch_pool.forward(avg_pool_3x3_same(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// `InceptionB` (Mixed_6a): grid reduction 35×35 → 17×17.
#[derive(Module, Debug)]
pub struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(b: &mut Builder, name: &str, c_in: usize) -> Self {
        let mut conv = |branch: &str, s| b.conv(&format!("{name}.{branch}"), s);
        InceptionB {
            branch3x3: conv("branch3x3", strided(c_in, 384, 3)),
            branch3x3dbl_1: conv("branch3x3dbl_1", spec(c_in, 64, [1, 1], [0, 0])),
            branch3x3dbl_2: conv("branch3x3dbl_2", spec(64, 96, [3, 3], [1, 1])),
            branch3x3dbl_3: conv("branch3x3dbl_3", strided(96, 96, 3)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        Tensor::cat(vec![b3, bd, max_pool_3x3_stride2(x)], 1)
    }
}

/// `InceptionC` (Mixed_6b..e): factorised 7×7 branches, 17×17.
#[derive(Module, Debug)]
pub struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7_1: BasicConv2d,
    branch7x7_2: BasicConv2d,
    branch7x7_3: BasicConv2d,
    branch7x7dbl_1: BasicConv2d,
    branch7x7dbl_2: BasicConv2d,
    branch7x7dbl_3: BasicConv2d,
    branch7x7dbl_4: BasicConv2d,
    branch7x7dbl_5: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(b: &mut Builder, name: &str, c_in: usize, c7: usize) -> Self {
        let mut conv = |branch: &str, s| b.conv(&format!("{name}.{branch}"), s);
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        InceptionC {
            branch1x1: conv("branch1x1", spec(c_in, 192, [1, 1], [0, 0])),
            branch7x7_1: conv("branch7x7_1", spec(c_in, c7, [1, 1], [0, 0])),
            branch7x7_2: conv("branch7x7_2", spec(c7, c7, row.0, row.1)),
            branch7x7_3: conv("branch7x7_3", spec(c7, 192, col.0, col.1)),
            branch7x7dbl_1: conv("branch7x7dbl_1", spec(c_in, c7, [1, 1], [0, 0])),
            branch7x7dbl_2: conv("branch7x7dbl_2", spec(c7, c7, col.0, col.1)),
            branch7x7dbl_3: conv("branch7x7dbl_3", spec(c7, c7, row.0, row.1)),
            branch7x7dbl_4: conv("branch7x7dbl_4", spec(c7, c7, col.0, col.1)),
            branch7x7dbl_5: conv("branch7x7dbl_5", spec(c7, 192, row.0, row.1)),
            branch_pool: conv("branch_pool", spec(c_in, 192, [1, 1], [0, 0])),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = [&self.branch7x7_1, &self.branch7x7_2, &self.branch7x7_3]
            .iter()
            .fold(x.clone(), |h, c| c.forward(h));
        let bd = [
            &self.branch7x7dbl_1,
            &self.branch7x7dbl_2,
            &self.branch7x7dbl_3,
            &self.branch7x7dbl_4,
            &self.branch7x7dbl_5,
        ]
        .iter()
        .fold(x.clone(), |h, c| c.forward(h));
        let bp = self.branch_pool.forward(avg_pool_3x3_same(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// `InceptionD` (Mixed_7a): grid reduction 17×17 → 8×8.
#[derive(Module, Debug)]
pub struct InceptionD {
    branch3x3_1: BasicConv2d,
    branch3x3_2: BasicConv2d,
    branch7x7x3_1: BasicConv2d,
    branch7x7x3_2: BasicConv2d,
    branch7x7x3_3: BasicConv2d,
    branch7x7x3_4: BasicConv2d,
}

impl InceptionD {
    fn new(b: &mut Builder, name: &str, c_in: usize) -> Self {
        let mut conv = |branch: &str, s| b.conv(&format!("{name}.{branch}"), s);
        InceptionD {
            branch3x3_1: conv("branch3x3_1", spec(c_in, 192, [1, 1], [0, 0])),
            branch3x3_2: conv("branch3x3_2", strided(192, 320, 3)),
            branch7x7x3_1: conv("branch7x7x3_1", spec(c_in, 192, [1, 1], [0, 0])),
            branch7x7x3_2: conv("branch7x7x3_2", spec(192, 192, [1, 7], [0, 3])),
            branch7x7x3_3: conv("branch7x7x3_3", spec(192, 192, [7, 1], [3, 0])),
            branch7x7x3_4: conv("branch7x7x3_4", strided(192, 192, 3)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self
            .branch3x3_2
            .forward(self.branch3x3_1.forward(x.clone()));
        let b7 = [
            &self.branch7x7x3_1,
            &self.branch7x7x3_2,
            &self.branch7x7x3_3,
            &self.branch7x7x3_4,
        ]
        .iter()
        .fold(x.clone(), |h, c| c.forward(h));
        Tensor::cat(vec![b3, b7, max_pool_3x3_stride2(x)], 1)
    }
}

/// `InceptionE` (Mixed_7b/c): expanded 3×3 branches, 8×8.
#[derive(Module, Debug)]
pub struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    /// `FIDInceptionE_2` (Mixed_7c) max-pools its pool branch; `FIDInceptionE_1` averages.
    #[module(skip)]
    max_pool: bool,
}

impl InceptionE {
    fn new(b: &mut Builder, name: &str, c_in: usize, max_pool: bool) -> Self {
        let mut conv = |branch: &str, s| b.conv(&format!("{name}.{branch}"), s);
        let (row, col) = (([1, 3], [0, 1]), ([3, 1], [1, 0]));
        InceptionE {
            branch1x1: conv("branch1x1", spec(c_in, 320, [1, 1], [0, 0])),
            branch3x3_1: conv("branch3x3_1", spec(c_in, 384, [1, 1], [0, 0])),
            branch3x3_2a: conv("branch3x3_2a", spec(384, 384, row.0, row.1)),
            branch3x3_2b: conv("branch3x3_2b", spec(384, 384, col.0, col.1)),
            branch3x3dbl_1: conv("branch3x3dbl_1", spec(c_in, 448, [1, 1], [0, 0])),
            branch3x3dbl_2: conv("branch3x3dbl_2", spec(448, 384, [3, 3], [1, 1])),
            branch3x3dbl_3a: conv("branch3x3dbl_3a", spec(384, 384, row.0, row.1)),
            branch3x3dbl_3b: conv("branch3x3dbl_3b", spec(384, 384, col.0, col.1)),
            branch_pool: conv("branch_pool", spec(c_in, 192, [1, 1], [0, 0])),
            max_pool,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let h = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(h.clone()),
                self.branch3x3_2b.forward(h),
            ],
            1,
        );
        let h = self
            .branch3x3dbl_2
            .forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(h.clone()),
                self.branch3x3dbl_3b.forward(h),
            ],
            1,
        );
        let pooled = if self.max_pool {
            max_pool2d(
                x,
                MaxPoolOptions::new([3, 3])
                    .with_stride([1, 1])
                    .with_padding([1, 1]),
            )
        } else {
            avg_pool_3x3_same(x)
        };
        let bp = self.branch_pool.forward(pooled);
        Tensor::cat(vec![b1, b3, bd, bp], 1)
    }
}

/// The FID Inception-v3 up to its 2048-d average pool.
#[derive(Module, Debug)]
pub struct FidInception {
    conv2d_1a_3x3: BasicConv2d,
    conv2d_2a_3x3: BasicConv2d,
    conv2d_2b_3x3: BasicConv2d,
    conv2d_3b_1x1: BasicConv2d,
    conv2d_4a_3x3: BasicConv2d,
    mixed_5: Vec<InceptionA>,
    mixed_6a: InceptionB,
    mixed_6: Vec<InceptionC>,
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
}

impl FidInception {
    /// Random weights, for tests: the features mean nothing.
    pub fn random(device: &Device) -> Self {
        Self::build(&mut Builder::new(device, None))
    }

    /// Loads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or the same state dict as
    /// safetensors). Missing, mis-shaped and unknown keys are all listed in the error.
    pub fn from_file(path: &Path, device: &Device) -> Result<Self> {
        let weights = read_weights(path)?;
        Self::from_state_dict(&weights, device).map_err(|report| SftokError::KeyMismatch {
            path: path.to_path_buf(),
            report,
        })
    }

    /// Builds the network from a state dict under pytorch-fid's names; the error is a report of
    /// every key that does not fit.
    pub fn from_state_dict(
        weights: &StateDict,
        device: &Device,
    ) -> std::result::Result<Self, String> {
        let mut builder = Builder::new(device, Some(weights));
        let net = Self::build(&mut builder);
        match builder.report() {
            None => Ok(net),
            Some(report) => Err(report),
        }
    }

    fn build(b: &mut Builder) -> Self {
        FidInception {
            conv2d_1a_3x3: b.conv("Conv2d_1a_3x3", strided(3, 32, 3)),
            conv2d_2a_3x3: b.conv("Conv2d_2a_3x3", spec(32, 32, [3, 3], [0, 0])),
            conv2d_2b_3x3: b.conv("Conv2d_2b_3x3", spec(32, 64, [3, 3], [1, 1])),
            conv2d_3b_1x1: b.conv("Conv2d_3b_1x1", spec(64, 80, [1, 1], [0, 0])),
            conv2d_4a_3x3: b.conv("Conv2d_4a_3x3", spec(80, 192, [3, 3], [0, 0])),
            mixed_5: vec![
                InceptionA::new(b, "Mixed_5b", 192, 32),
                InceptionA::new(b, "Mixed_5c", 256, 64),
                InceptionA::new(b, "Mixed_5d", 288, 64),
            ],
            mixed_6a: InceptionB::new(b, "Mixed_6a", 288),
            mixed_6: vec![
                InceptionC::new(b, "Mixed_6b", 768, 128),
                InceptionC::new(b, "Mixed_6c", 768, 160),
                InceptionC::new(b, "Mixed_6d", 768, 160),
                InceptionC::new(b, "Mixed_6e", 768, 192),
            ],
            mixed_7a: InceptionD::new(b, "Mixed_7a", 768),
            mixed_7b: InceptionE::new(b, "Mixed_7b", 1280, false),
            mixed_7c: InceptionE::new(b, "Mixed_7c", 2048, true),
        }
    }

    /// Pool3 features `[B, 2048]` of images `[B, 3, H, W]` with values in [0, 1], any size.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let [batch, _, h, w] = images.dims();
        // Bilinear resizing to the same size is the identity, so it is skipped.
        let x = if (h, w) == (INPUT_SIZE, INPUT_SIZE) {
            images
        } else {
            interpolate(
                images,
                InterpolateOptions::new(InterpolateMode::Bilinear)
                    .with_align_corners(false)
                    .with_output_size([INPUT_SIZE, INPUT_SIZE]),
            )
        };
        let x = x.mul_scalar(2.0).sub_scalar(1.0);
        let x = self.conv2d_1a_3x3.forward(x);
        let x = self.conv2d_2a_3x3.forward(x);
        let x = max_pool_3x3_stride2(self.conv2d_2b_3x3.forward(x));
        let x = self.conv2d_3b_1x1.forward(x);
        let x = max_pool_3x3_stride2(self.conv2d_4a_3x3.forward(x));
        let x = self.mixed_5.iter().fold(x, |h, m| m.forward(h));
        let x = self.mixed_6a.forward(x);
        let x = self.mixed_6.iter().fold(x, |h, m| m.forward(h));
        let x = self.mixed_7a.forward(x);
        let x = self.mixed_7c.forward(self.mixed_7b.forward(x));
        // Adaptive average pool to 1×1.
        let [_, c, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([batch, c])
    }
}

/// 3×3 average pool, stride 1, padding 1, averaging only the real values at the borders
/// (`count_include_pad=False`, the FID patch).
fn avg_pool_3x3_same(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(
        x,
        AvgPoolOptions::new([3, 3])
            .with_stride([1, 1])
            .with_padding([1, 1])
            .with_count_include_pad(false),
    )
}

/// 3×3 max pool, stride 2, no padding (floor mode).
fn max_pool_3x3_stride2(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([2, 2]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::state::StoredTensor;

    /// Every key of a complete FID state dict, with its shape (as the random network has it).
    fn complete_state_dict() -> StateDict {
        // The builder records the keys it asks for; an empty dict makes it ask for all of them.
        let (empty, device) = (StateDict::new(), Device::flex());
        let mut b = Builder::new(&device, Some(&empty));
        let _ = FidInception::build(&mut b);
        let mut dict = StateDict::new();
        for row in &b.missing {
            let (key, shape) = row.split_once(' ').unwrap();
            let shape: Vec<usize> = shape
                .trim_matches(['[', ']'])
                .split(", ")
                .map(|s| s.parse().unwrap())
                .collect();
            let n = shape.iter().product();
            let value = if key.ends_with("running_var") {
                1.0
            } else {
                0.01
            };
            dict.insert(key.to_string(), StoredTensor::f32(shape, vec![value; n]));
        }
        dict.insert(
            "fc.weight".into(),
            StoredTensor::f32(
                vec![FC_CLASSES, FEATURE_DIM],
                vec![0.0; FC_CLASSES * FEATURE_DIM],
            ),
        );
        dict
    }

    #[test]
    fn random_network_gives_finite_pool3_features() {
        let device = Device::flex();
        let net = FidInception::random(&device);
        let images = Tensor::<4>::random(
            [1, 3, 64, 64],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let f = net.features(images);
        assert_eq!(f.dims(), [1, FEATURE_DIM]);
        let values = f.into_data().try_into_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
        assert!(values.iter().all(|&v| v >= 0.0), "pool3 follows a ReLU");
    }

    #[test]
    fn a_complete_state_dict_loads() {
        let dict = complete_state_dict();
        // 94 convolutions, 5 tensors each, and the classifier.
        assert_eq!(dict.len(), 94 * 5 + 1);
        assert!(FidInception::from_state_dict(&dict, &Device::flex()).is_ok());
    }

    #[test]
    fn problems_with_the_file_are_all_named() {
        let device = Device::flex();
        let mut dict = complete_state_dict();
        dict.remove("Mixed_6c.branch7x7dbl_3.bn.running_var");
        dict.insert(
            "Mixed_7c.branch_pool.conv.weight".into(),
            StoredTensor::f32(vec![192, 2048, 3, 3], vec![0.0; 192 * 2048 * 9]),
        );
        let e = FidInception::from_state_dict(&dict, &device).unwrap_err();
        assert!(
            e.contains("Mixed_6c.branch7x7dbl_3.bn.running_var [160]"),
            "{e}"
        );
        assert!(
            e.contains("Mixed_7c.branch_pool.conv.weight: file has [192, 2048, 3, 3], expected [192, 2048, 1, 1]"),
            "{e}"
        );
        let e = FidInception::from_state_dict(&StateDict::new(), &device).unwrap_err();
        assert!(
            e.contains("470 missing") && e.contains("Conv2d_1a_3x3.conv.weight [32, 3, 3, 3]"),
            "{e}"
        );
    }

    #[test]
    fn torchvision_weights_are_refused() {
        let mut dict = complete_state_dict();
        dict.insert(
            "AuxLogits.conv0.conv.weight".into(),
            StoredTensor::f32(vec![128, 768, 1, 1], vec![0.0; 128 * 768]),
        );
        dict.insert(
            "fc.weight".into(),
            StoredTensor::f32(vec![1000, FEATURE_DIM], vec![0.0; 1000 * FEATURE_DIM]),
        );
        let e = FidInception::from_state_dict(&dict, &Device::flex()).unwrap_err();
        assert!(
            e.contains("AuxLogits.conv0.conv.weight") && e.contains("torchvision"),
            "{e}"
        );
    }

    #[test]
    fn batch_norm_is_folded_into_the_convolution() {
        let device = Device::flex();
        let mut dict = StateDict::new();
        let f = |shape: Vec<usize>, v: Vec<f32>| StoredTensor::f32(shape, v);
        dict.insert("c.conv.weight".into(), f(vec![2, 1, 1, 1], vec![2.0, -1.0]));
        dict.insert("c.bn.weight".into(), f(vec![2], vec![3.0, 1.0]));
        dict.insert("c.bn.bias".into(), f(vec![2], vec![0.5, 0.0]));
        dict.insert("c.bn.running_mean".into(), f(vec![2], vec![1.0, -4.0]));
        dict.insert(
            "c.bn.running_var".into(),
            f(vec![2], vec![4.0 - BN_EPS, 1.0 - BN_EPS]),
        );
        let mut b = Builder::new(&device, Some(&dict));
        let conv = b.conv("c", spec(1, 2, [1, 1], [0, 0]));
        assert!(b.report().is_none());
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.5f32], [1, 1, 1, 1]), &device);
        let y = conv.forward(x).into_data().try_into_vec::<f32>().unwrap();
        // relu(3 (2·1.5 − 1)/2 + 0.5) = 3.5; relu(1 (−1.5 + 4)/1 + 0) = 2.5.
        assert!(
            (y[0] - 3.5).abs() < 1e-5 && (y[1] - 2.5).abs() < 1e-5,
            "{y:?}"
        );
    }
}
