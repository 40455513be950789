//! The PatchGAN discriminator (`NLayerDiscriminator` of taming-transformers, 3 layers, 64 filters)
//! used by the adversarial terms of the teacher and of stage 3, and the hinge / LeCam losses.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::activation::{leaky_relu, relu};
use burn::tensor::{Device, Tensor};

#[derive(Module, Debug)]
pub struct PatchDiscriminator {
    pub convs: Vec<Conv2d>,
    /// One norm per inner conv (not after the first and the last).
    pub norms: Vec<BatchNorm>,
}

impl PatchDiscriminator {
    pub fn new(filters: usize, layers: usize, device: &Device) -> Self {
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let conv = |c_in: usize, c_out: usize, stride: usize, bias: bool| {
            Conv2dConfig::new([c_in, c_out], [4, 4])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(bias)
                .with_initializer(init.clone())
                .init(device)
        };
        let mut convs = vec![conv(3, filters, 2, true)];
        let mut norms = Vec::new();
        let mut mult = 1;
        for n in 1..=layers {
            let prev = mult;
            mult = (1 << n).min(8);
            let stride = if n == layers { 1 } else { 2 };
            convs.push(conv(filters * prev, filters * mult, stride, false));
            norms.push(BatchNormConfig::new(filters * mult).init(device));
        }
        convs.push(conv(filters * mult, 1, 1, true));
        PatchDiscriminator { convs, norms }
    }

    /// Patch logits `[B, 1, h, w]` for images in [0, 1].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let last = self.convs.len() - 1;
        let mut h = leaky_relu(
            self.convs[0].forward(x.mul_scalar(2.0).sub_scalar(1.0)),
            0.2,
        );
        for (conv, norm) in self.convs[1..last].iter().zip(&self.norms) {
            h = leaky_relu(norm.forward(conv.forward(h)), 0.2);
        }
        self.convs[last].forward(h)
    }
}

/// Hinge loss of the discriminator: `0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))`.
pub fn hinge_d_loss(real: Tensor<4>, fake: Tensor<4>) -> Tensor<1> {
    (relu(real.neg().add_scalar(1.0)).mean() + relu(fake.add_scalar(1.0)).mean()).mul_scalar(0.5)
}

/// The generator's adversarial loss: `-mean(fake)`.
pub fn generator_loss(fake: Tensor<4>) -> Tensor<1> {
    fake.mean().neg()
}

/// LeCam regularisation (Tseng et al. 2021), as the official `compute_lecam_loss`: the mean
/// logits are pulled towards the moving averages of the other kind's mean logits. The averages
/// start at 0 and are updated after the loss is computed (decay 0.999).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LeCam {
    pub ema_real: f64,
    pub ema_fake: f64,
    pub decay: f64,
}

impl LeCam {
    pub fn new(decay: f64) -> Self {
        LeCam {
            decay,
            ..Default::default()
        }
    }

    /// The regulariser for this step's logits; then updates the averages.
    pub fn loss(&mut self, real: Tensor<4>, fake: Tensor<4>) -> Tensor<1> {
        let real_mean = real.mean();
        let fake_mean = fake.mean();
        let loss = relu(real_mean.clone().sub_scalar(self.ema_fake)).powi_scalar(2)
            + relu(fake_mean.clone().neg().add_scalar(self.ema_real)).powi_scalar(2);
        let host = |t: Tensor<1>| {
            t.inner()
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .map_or(0.0, |v| v[0])
        };
        self.ema_real = self.ema_real * self.decay + host(real_mean) * (1.0 - self.decay);
        self.ema_fake = self.ema_fake * self.decay + host(fake_mean) * (1.0 - self.decay);
        loss
    }
}
