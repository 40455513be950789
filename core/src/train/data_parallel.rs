//! Data-parallel training on the devices of one machine: each micro-batch is split into one
//! contiguous shard per device (sizes differ by at most one image); each device runs its shard's
//! forward and backward pass on its own copy of the model, in its own thread, and the gradients
//! are brought to the first device and summed there, each shard's loss weighted by its share of
//! the batch (what PyTorch's DistributedDataParallel and burn-train's multi-device strategy do).
//! With one device this is just the forward and backward pass on the caller's thread.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::masking::MaskDraw;
use super::stage::{Helpers, ShardContext, Stage, scalar};
use crate::data::Batch;
use crate::device::on_compute_pool;
use crate::error::{Result, SftokError};
use crate::model::Vqgan;
use crate::model::discriminator::PatchDiscriminator;
use crate::model::lpips::Lpips;

/// What one device made of its shard; tensors are on the first device.
pub struct ShardOutput {
    /// The shard's loss (not weighted), and its terms.
    pub loss: f64,
    pub parts: Vec<(&'static str, f64)>,
    /// Gradients of the loss weighted by the shard's share of the batch.
    pub grads: GradientsParams,
    /// The teacher's codes (teacher stage) or the latent ids (token stages).
    pub codes: Vec<i64>,
    pub proxy_accuracy: Option<f64>,
    /// (real, fake), detached, for the discriminator's update.
    pub fake: Option<(Tensor<4>, Tensor<4>)>,
    /// The encoder's outputs, when the stage asked for them.
    pub latents: Option<Vec<f32>>,
    /// (originals, reconstructions), plain tensors, when a preview is due.
    pub preview: Option<(Tensor<4>, Tensor<4>)>,
}

/// The devices after the first, with their copies of the frozen helpers.
pub struct Replicas {
    devices: Vec<Device>,
    teachers: Vec<Option<Vqgan>>,
    lpipses: Vec<Option<Lpips>>,
}

impl Replicas {
    /// Copies of the first device's frozen helpers on each of `devices` (the ones after the
    /// first).
    pub fn new(devices: &[Device], teacher: Option<&Vqgan>, lpips: Option<&Lpips>) -> Self {
        Replicas {
            devices: devices.to_vec(),
            teachers: devices
                .iter()
                .map(|d| teacher.map(|t| t.clone().to_device(d)))
                .collect(),
            lpipses: devices
                .iter()
                .map(|d| lpips.map(|l| l.clone().to_device(&d.clone().autodiff())))
                .collect(),
        }
    }

    /// All the devices' shards of one micro-batch: shard `i` (`shards[i]`, `(start, len)`) runs
    /// on device `i` (0: the first, `main`, with `main_helpers`), each on its own copy of
    /// `model` and of the discriminator in `main_helpers`.
    #[allow(clippy::too_many_arguments)]
    pub fn run<S: Stage>(
        &self,
        stage: &S,
        context: &ShardContext<'_>,
        model: &S::Model,
        main_helpers: Helpers<'_>,
        main: &Device,
        batch: &Batch,
        draw: Option<&MaskDraw>,
        shards: &[(usize, usize)],
    ) -> Vec<Result<ShardOutput>> {
        let total = batch.batch_size as f64;
        let discs: Vec<Option<PatchDiscriminator>> = self
            .devices
            .iter()
            .map(|d| {
                main_helpers
                    .disc
                    .map(|disc| disc.clone().fork(&d.clone().autodiff()))
            })
            .collect();
        let copies: Vec<S::Model> = self
            .devices
            .iter()
            .map(|d| model.clone().fork(&d.clone().autodiff()))
            .collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = shards[1..]
                .iter()
                .enumerate()
                .map(|(i, &(start, len))| {
                    let device = self.devices[i].clone();
                    let helpers = Helpers {
                        teacher: self.teachers[i].as_ref(),
                        lpips: self.lpipses[i].as_ref(),
                        disc: discs[i].as_ref(),
                    };
                    let copy = &copies[i];
                    let draw = draw.map(|d| d.slice(start, len));
                    scope.spawn(move || {
                        let x = shard_tensor(batch, start, len, &device.clone().autodiff());
                        on_compute_pool(&device, || {
                            let weight = len as f64 / total;
                            run_shard(
                                stage,
                                context,
                                copy,
                                &helpers,
                                x,
                                draw.as_ref(),
                                weight,
                                main,
                            )
                        })
                    })
                })
                .collect();
            let (start, len) = shards[0];
            let first = on_compute_pool(main, || {
                run_shard(
                    stage,
                    context,
                    model,
                    &main_helpers,
                    shard_tensor(batch, start, len, main),
                    draw.map(|d| d.slice(start, len)).as_ref(),
                    len as f64 / total,
                    main,
                )
            });
            std::iter::once(first)
                .chain(handles.into_iter().map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SftokError::Other(
                            "a training thread of another device failed".into(),
                        ))
                    })
                }))
                .collect()
        })
    }
}

/// `n` images in `k` contiguous shards whose sizes differ by at most one: `(start, len)`.
pub fn split_batch(n: usize, k: usize) -> Vec<(usize, usize)> {
    let (base, rest) = (n / k, n % k);
    let mut start = 0;
    (0..k)
        .map(|i| {
            let len = base + usize::from(i < rest);
            let shard = (start, len);
            start += len;
            shard
        })
        .collect()
}

/// Images `start..start + len` of a batch as a tensor on `device`.
fn shard_tensor(batch: &Batch, start: usize, len: usize, device: &Device) -> Tensor<4> {
    let s = batch.image_size as usize;
    let per_image = 3 * s * s;
    Tensor::from_data(
        TensorData::new(
            batch.pixels[start * per_image..(start + len) * per_image].to_vec(),
            [len, 3, s, s],
        ),
        device,
    )
}

/// Forward and backward pass of one shard on the device of `model` (and of `x`); results are
/// moved to `main`, the first device (autodiff).
#[allow(clippy::too_many_arguments)]
fn run_shard<S: Stage>(
    stage: &S,
    context: &ShardContext<'_>,
    model: &S::Model,
    helpers: &Helpers<'_>,
    x: Tensor<4>,
    draw: Option<&MaskDraw>,
    weight: f64,
    main: &Device,
) -> Result<ShardOutput> {
    let out = stage.forward(context, model, helpers, x.clone(), draw)?;
    let loss = scalar(&out.loss);
    let grads = if loss.is_finite() {
        let grads = out.loss.mul_scalar(weight).backward();
        GradientsParams::from_grads(grads, model).to_device(main, model)
    } else {
        GradientsParams::new()
    };
    let recon = out.reconstruction;
    let main_inner = main.clone().inner();
    Ok(ShardOutput {
        loss,
        parts: out.parts,
        grads,
        codes: out.codes,
        proxy_accuracy: out.proxy_accuracy,
        fake: (context.gan_on && stage.in_pixel_space()).then(|| {
            (
                x.clone().detach().to_device(main),
                recon.clone().detach().to_device(main),
            )
        }),
        latents: out.latents,
        preview: context.wants_preview.then(|| {
            (
                x.inner().to_device(&main_inner),
                recon.inner().to_device(&main_inner),
            )
        }),
    })
}

/// Adds `grads` into `total`, parameter by parameter.
pub fn merge_grads<M: Module>(model: &M, total: &mut GradientsParams, grads: GradientsParams) {
    struct Add<'a> {
        total: &'a mut GradientsParams,
        grads: GradientsParams,
    }
    impl ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let sum = match self.total.remove::<D>(param.id) {
                    Some(t) => t + g,
                    None => g,
                };
                self.total.register(param.id, sum);
            }
        }
    }
    model.visit(&mut Add { total, grads });
}
