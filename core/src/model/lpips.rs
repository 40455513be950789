//! LPIPS (Zhang et al. 2018) on VGG16 features, as the official `modeling/modules/lpips.py` computes
//! it: inputs in [0, 1] are mapped to [-1, 1], shifted and scaled, run through VGG16 up to
//! relu1_2 .. relu5_3; each feature map is unit-normalised over channels, the squared differences
//! are weighted by a 1x1 conv (`lin0..lin4`), averaged over space and summed.
//!
//! No package here ships the weights, so they come from the user: torchvision's VGG16
//! (`vgg16-397923af.pth`, keys `features.<i>.weight/bias`) and the LPIPS linear layers
//! (`vgg.pth`, keys `lin<k>.model.1.weight`). Without them the perceptual term is off.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::files::read_weights;
use crate::checkpoint::state::StateDict;
use crate::error::{Result, SftokError};

/// VGG16 `features` indices of the 13 convolutions; max pools sit at 4, 9, 16, 23.
const VGG_CONVS: [(usize, usize, usize); 13] = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
];
/// Number of convolutions in each of the five slices (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
const SLICE_CONVS: [usize; 5] = [2, 2, 3, 3, 3];
const CHANNELS: [usize; 5] = [64, 128, 256, 512, 512];
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

#[derive(Module, Debug)]
pub struct Lpips {
    pub convs: Vec<Conv2d>,
    /// 1x1, C -> 1, no bias.
    pub lins: Vec<Conv2d>,
}

impl Lpips {
    /// Random weights (for tests; a real metric needs [`Lpips::from_files`]).
    pub fn random(device: &Device) -> Self {
        Lpips {
            convs: VGG_CONVS
                .iter()
                .map(|&(_, c_in, c_out)| {
                    Conv2dConfig::new([c_in, c_out], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device)
                })
                .collect(),
            lins: CHANNELS
                .iter()
                .map(|&c| {
                    Conv2dConfig::new([c, 1], [1, 1])
                        .with_bias(false)
                        .init(device)
                })
                .collect(),
        }
    }

    /// Loads torchvision's VGG16 weights and the LPIPS linear layers.
    pub fn from_files(vgg16: &Path, lpips_lin: &Path, device: &Device) -> Result<Self> {
        let vgg = read_weights(vgg16)?;
        let lin = read_weights(lpips_lin)?;
        Self::from_state_dicts(&vgg, &lin, device).map_err(|message| SftokError::Weights {
            path: if message.contains("lin") {
                lpips_lin
            } else {
                vgg16
            }
            .to_path_buf(),
            message,
        })
    }

    pub fn from_state_dicts(
        vgg: &StateDict,
        lin: &StateDict,
        device: &Device,
    ) -> std::result::Result<Self, String> {
        let tensor4 = |sd: &StateDict,
                       key: &str,
                       shape: [usize; 4]|
         -> std::result::Result<Tensor<4>, String> {
            let t = sd
                .get(key)
                .ok_or_else(|| format!("missing `{key}` (expected shape {shape:?})"))?;
            if t.shape != shape {
                return Err(format!(
                    "`{key}` has shape {:?}, expected {shape:?}",
                    t.shape
                ));
            }
            Ok(Tensor::from_data(
                TensorData::new(t.as_f32(), shape),
                device,
            ))
        };
        let mut convs = Self::random(device).convs;
        for (conv, &(idx, c_in, c_out)) in convs.iter_mut().zip(VGG_CONVS.iter()) {
            let w = tensor4(vgg, &format!("features.{idx}.weight"), [c_out, c_in, 3, 3])?;
            let key = format!("features.{idx}.bias");
            let b = vgg.get(&key).ok_or_else(|| format!("missing `{key}`"))?;
            conv.weight = Param::from_tensor(w);
            conv.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b.as_f32(), [c_out]),
                device,
            )));
        }
        let mut lins = Vec::new();
        for (k, &c) in CHANNELS.iter().enumerate() {
            // With dropout the conv is `model.1`, without it `model.0`.
            let key = [
                format!("lin{k}.model.1.weight"),
                format!("lin{k}.model.0.weight"),
            ]
            .into_iter()
            .find(|key| lin.contains_key(key))
            .ok_or_else(|| format!("missing `lin{k}.model.1.weight` in the LPIPS file"))?;
            let mut conv = Conv2dConfig::new([c, 1], [1, 1])
                .with_bias(false)
                .init(device);
            conv.weight = Param::from_tensor(tensor4(lin, &key, [1, c, 1, 1])?);
            lins.push(conv);
        }
        Ok(Lpips { convs, lins })
    }

    fn features(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut out = Vec::with_capacity(5);
        let mut h = x;
        let mut convs = self.convs.iter();
        for (slice, &n) in SLICE_CONVS.iter().enumerate() {
            if slice > 0 {
                h = max_pool_2x2(h);
            }
            for _ in 0..n {
                h = relu(convs.next().expect("13 convs").forward(h));
            }
            out.push(h.clone());
        }
        out
    }

    /// Per-image distance `[B]` between images in [0, 1].
    pub fn forward(&self, input: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
        let device = input.device();
        let shift = Tensor::<1>::from_data(TensorData::new(SHIFT.to_vec(), [3]), &device)
            .reshape([1, 3, 1, 1]);
        let scale = Tensor::<1>::from_data(TensorData::new(SCALE.to_vec(), [3]), &device)
            .reshape([1, 3, 1, 1]);
        let prep =
            |x: Tensor<4>| (x.mul_scalar(2.0).sub_scalar(1.0) - shift.clone()) / scale.clone();
        let f0 = self.features(prep(input));
        let f1 = self.features(prep(target));
        let b = f0[0].dims()[0];
        let mut total: Option<Tensor<1>> = None;
        for ((a, t), lin) in f0.into_iter().zip(f1).zip(&self.lins) {
            let d = (unit_normalize(a) - unit_normalize(t)).powi_scalar(2);
            let r = lin.forward(d); // [B, 1, h, w]
            let [_, _, h, w] = r.dims();
            let r = r.reshape([b, h * w]).mean_dim(1).reshape([b]);
            total = Some(match total {
                Some(t) => t + r,
                None => r,
            });
        }
        total.expect("five slices")
    }
}

/// `x / (sqrt(sum_c x^2) + 1e-10)`.
fn unit_normalize(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().add_scalar(1e-10);
    x / norm
}

/// 2x2 max pooling, stride 2 (odd sizes drop their last row / column, as PyTorch's floor mode).
fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, h2 * 2).narrow(3, 0, w2 * 2)
    } else {
        x
    };
    x.reshape([b * c * h2, 2, w2, 2])
        .max_dim(3)
        .max_dim(1)
        .reshape([b, c, h2, w2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_for_identical_images_positive_otherwise() {
        let device = Device::flex();
        let lpips = Lpips::random(&device);
        let a = Tensor::<4>::random(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let b = Tensor::<4>::random(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let same = lpips
            .forward(a.clone(), a.clone())
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(same.iter().all(|v| v.abs() < 1e-6), "{same:?}");
        let diff = lpips
            .forward(a, b)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(diff.len(), 2);
        assert!(diff.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn weights_load_from_user_files_under_the_torchvision_and_lpips_names() {
        use crate::checkpoint::files::write_safetensors;
        use crate::checkpoint::state::StoredTensor;
        let dir = std::env::temp_dir().join(format!("sftok-lpips-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut vgg = StateDict::new();
        for &(idx, c_in, c_out) in VGG_CONVS.iter() {
            let n = c_out * c_in * 9;
            vgg.insert(
                format!("features.{idx}.weight"),
                StoredTensor::f32(vec![c_out, c_in, 3, 3], vec![0.01; n]),
            );
            vgg.insert(
                format!("features.{idx}.bias"),
                StoredTensor::f32(vec![c_out], vec![0.0; c_out]),
            );
        }
        let mut lin = StateDict::new();
        for (k, &c) in CHANNELS.iter().enumerate() {
            lin.insert(
                format!("lin{k}.model.1.weight"),
                StoredTensor::f32(vec![1, c, 1, 1], vec![1.0 / c as f32; c]),
            );
        }
        write_safetensors(&dir.join("vgg16.safetensors"), &vgg).unwrap();
        write_safetensors(&dir.join("lpips.safetensors"), &lin).unwrap();
        let device = Device::flex();
        let lpips = Lpips::from_files(
            &dir.join("vgg16.safetensors"),
            &dir.join("lpips.safetensors"),
            &device,
        )
        .unwrap();
        let a = Tensor::<4>::random(
            [1, 3, 32, 32],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let d = lpips
            .forward(a.clone(), a.clone().mul_scalar(0.5))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(d[0].is_finite() && d[0] >= 0.0, "{d:?}");
        // A wrong shape names the key.
        lin.insert(
            "lin0.model.1.weight".into(),
            StoredTensor::f32(vec![1, 3, 1, 1], vec![0.0; 3]),
        );
        let e = Lpips::from_state_dicts(&vgg, &lin, &device).unwrap_err();
        assert!(
            e.contains("lin0.model.1.weight") && e.contains("[1, 64, 1, 1]"),
            "{e}"
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let e = Lpips::from_state_dicts(&StateDict::new(), &StateDict::new(), &Device::flex())
            .unwrap_err();
        assert!(e.contains("features.0.weight"), "{e}");
    }
}
