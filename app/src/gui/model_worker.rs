//! The model worker: one thread that owns the device and the loaded models. The UI sends it
//! [`ModelCommand`]s and reads [`ModelEvent`]s; it never waits on the model. Every event wakes the
//! UI with `request_repaint`, so the window repaints only when something changed.
//!
//! A reconstruction streams: the worker runs the encoder and the T decoder steps, decodes only
//! the last step's pixels and sends that trace at once; then, between commands, it decodes the
//! teacher's reconstruction and each earlier step's image and sends them one by one
//! ([`ModelEvent::StepImage`], [`ModelEvent::Teacher`]). A step the scrubber is on is decoded
//! first ([`ModelCommand::PreferStep`]); the newest trace's images come before older ones, and
//! a new command is always served before the remaining images.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use burn::tensor::Tensor;
use image::RgbImage;
use sftok_core::checkpoint::{LoadedModel, load_model_dir};
use sftok_core::generator::{LoadedGenerator, load_generator_dir};
use sftok_core::image_io::{center_crop_resize, images_to_tensor, tensor_to_images};
use sftok_core::reconstruct::{
    ReconstructOptions, generate, ids_tensor, reconstruct, step_pixels, teacher_reconstruction,
};
use sftok_core::{ChosenDevice, DeviceChoice, choose_device};

use super::generation_data::{GenerateRequest, GenerationData};
use super::trace_data::TraceData;

/// Which side of the app a model is loaded into (the compare view shows both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

/// What is known about a loaded model, for the UI.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub dir: PathBuf,
    pub name: String,
    pub image_size: u32,
    pub latent_tokens: usize,
    pub grid: usize,
    pub latent_codebook: usize,
    pub has_teacher: bool,
}

/// Identifies a trace: the image, the step count, and any edited latent tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceKey {
    pub image_id: u64,
    pub steps: usize,
    /// Latent ids replacing the encoder's (the token editor), if any.
    pub latent_override: Option<Vec<i64>>,
}

/// What is known about the loaded generator, for the UI.
#[derive(Debug, Clone)]
pub struct GeneratorInfo {
    pub dir: PathBuf,
    /// A label per class ("animals", or "class 3" where the model has no names).
    pub classes: Vec<String>,
    pub codebook_size: usize,
    pub image_seq_len: usize,
    pub layers: usize,
    pub default_guidance: f64,
    pub default_temperature: f64,
    pub default_steps: usize,
}

pub enum ModelCommand {
    Load {
        slot: Slot,
        dir: PathBuf,
    },
    LoadGenerator {
        dir: PathBuf,
    },
    /// Generate with the generator, decoded by the model in slot A.
    Generate(GenerateRequest),
    Reconstruct {
        slot: Slot,
        key: TraceKey,
        image: RgbImage,
    },
    /// The scrubber is on this step of this trace and its image is not there yet: decode it
    /// before the others.
    PreferStep {
        slot: Slot,
        key: TraceKey,
        step: usize,
    },
}

pub enum ModelEvent {
    Loaded {
        slot: Slot,
        info: ModelInfo,
    },
    LoadFailed {
        slot: Slot,
        dir: PathBuf,
        message: String,
    },
    Trace {
        slot: Slot,
        key: TraceKey,
        trace: Box<TraceData>,
    },
    TraceFailed {
        slot: Slot,
        key: TraceKey,
        message: String,
    },
    /// The image of step `step` (1-based) of a trace sent before.
    StepImage {
        slot: Slot,
        key: TraceKey,
        step: usize,
        image: RgbImage,
    },
    /// The teacher's reconstruction and codes of a trace's input.
    Teacher {
        slot: Slot,
        key: TraceKey,
        image: RgbImage,
        ids: Vec<i64>,
    },
    GeneratorLoaded(GeneratorInfo),
    GeneratorLoadFailed {
        dir: PathBuf,
        message: String,
    },
    Generated(Box<GenerationData>),
    GenerateFailed(String),
    /// The device could not be set up; the worker runs nothing.
    DeviceFailed(String),
    DeviceReady(String),
}

/// The UI's handle on the worker thread.
pub struct ModelWorker {
    commands: Sender<ModelCommand>,
    events: Receiver<ModelEvent>,
}

impl ModelWorker {
    pub fn spawn(device: DeviceChoice, ctx: egui::Context) -> Self {
        let (commands, command_rx) = channel();
        let (event_tx, events) = channel();
        std::thread::Builder::new()
            .name("sftok-model".into())
            .spawn(move || worker_loop(device, command_rx, event_tx, ctx))
            .expect("spawning the model thread");
        ModelWorker { commands, events }
    }

    pub fn send(&self, command: ModelCommand) {
        // The worker only ends when this handle is dropped, so sending cannot fail before that.
        let _ = self.commands.send(command);
    }

    /// Events that arrived since the last call.
    pub fn poll(&self) -> Vec<ModelEvent> {
        self.events.try_iter().collect()
    }
}

fn worker_loop(
    choice: DeviceChoice,
    commands: Receiver<ModelCommand>,
    events: Sender<ModelEvent>,
    ctx: egui::Context,
) {
    let emit = |e: ModelEvent| {
        let _ = events.send(e);
        ctx.request_repaint();
    };
    let chosen: ChosenDevice = match choose_device(choice) {
        Ok(c) => c,
        Err(e) => {
            emit(ModelEvent::DeviceFailed(e.to_string()));
            return;
        }
    };
    emit(ModelEvent::DeviceReady(chosen.description.clone()));
    let mut models: HashMap<Slot, LoadedModel> = HashMap::new();
    let mut generator: Option<LoadedGenerator> = None;
    let mut jobs = ImageJobs::default();
    loop {
        // A command first; with none waiting, one image of a trace already sent.
        let command = if jobs.is_empty() {
            match commands.recv() {
                Ok(c) => c,
                Err(_) => return,
            }
        } else {
            match commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    if let Some(job) = jobs.next() {
                        run_image_job(job, &models, &emit);
                    }
                    continue;
                }
            }
        };
        match command {
            ModelCommand::PreferStep { slot, key, step } => jobs.prefer(slot, &key, step),
            ModelCommand::LoadGenerator { dir } => {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    load_generator_dir(&dir, &chosen.device)
                }));
                match result {
                    Ok(Ok(g)) => {
                        emit(ModelEvent::GeneratorLoaded(generator_info(&g)));
                        generator = Some(g);
                    }
                    Ok(Err(e)) => emit(ModelEvent::GeneratorLoadFailed {
                        dir,
                        message: e.to_string(),
                    }),
                    Err(_) => emit(ModelEvent::GeneratorLoadFailed {
                        dir,
                        message: "the generator could not be built (internal error)".into(),
                    }),
                }
            }
            ModelCommand::Generate(request) => {
                let (Some(g), Some(tokenizer)) = (&generator, models.get(&Slot::A)) else {
                    emit(ModelEvent::GenerateFailed(
                        "load a generator, and the tokenizer it was trained on into A".into(),
                    ));
                    continue;
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    GenerationData::build(tokenizer, g, &request)
                }));
                emit(match result {
                    Ok(Ok(data)) => ModelEvent::Generated(Box::new(data)),
                    Ok(Err(message)) => ModelEvent::GenerateFailed(message),
                    Err(_) => {
                        ModelEvent::GenerateFailed("the generation failed (internal error)".into())
                    }
                });
            }
            ModelCommand::Load { slot, dir } => {
                // The images still to decode belong to the slot's old model.
                jobs.forget_slot(slot);
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    load_model_dir(&dir, &chosen.device)
                }));
                match result {
                    Ok(Ok(model)) => {
                        let info = info_of(&model);
                        models.insert(slot, model);
                        emit(ModelEvent::Loaded { slot, info });
                    }
                    Ok(Err(e)) => emit(ModelEvent::LoadFailed {
                        slot,
                        dir,
                        message: e.to_string(),
                    }),
                    Err(_) => emit(ModelEvent::LoadFailed {
                        slot,
                        dir,
                        message: "the model could not be built (internal error); check that the directory holds a config.json and weights made by `sftok import` or `sftok train`".into(),
                    }),
                }
            }
            ModelCommand::Reconstruct { slot, key, image } => {
                let Some(model) = models.get(&slot) else {
                    emit(ModelEvent::TraceFailed {
                        slot,
                        key,
                        message: format!("no model is loaded in slot {}", slot.name()),
                    });
                    continue;
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    streamed_trace_of(model, &key, &image, &chosen)
                }));
                match result {
                    Ok((trace, pending)) => {
                        jobs.add(slot, &key, pending);
                        emit(ModelEvent::Trace {
                            slot,
                            key,
                            trace: Box::new(trace),
                        })
                    }
                    Err(_) => emit(ModelEvent::TraceFailed {
                        slot,
                        key,
                        message: "the reconstruction failed (internal error)".into(),
                    }),
                }
            }
        }
    }
}

pub fn generator_info(g: &LoadedGenerator) -> GeneratorInfo {
    let c = &g.config;
    GeneratorInfo {
        dir: g.dir.clone(),
        classes: (0..c.condition_num_classes)
            .map(|i| c.class_label(i))
            .collect(),
        codebook_size: c.codebook_size,
        image_seq_len: c.image_seq_len,
        layers: c.num_hidden_layers,
        default_guidance: c.sampling.guidance_scale,
        default_temperature: c.sampling.randomize_temperature,
        default_steps: c.sampling.num_steps,
    }
}

pub fn info_of(model: &LoadedModel) -> ModelInfo {
    ModelInfo {
        dir: model.dir.clone(),
        name: model.config.name.clone(),
        image_size: model.config.image_size as u32,
        latent_tokens: model.config.num_latent_tokens,
        grid: model.model.decoder.grid,
        latent_codebook: model.config.quantizer.codebook_size,
        has_teacher: model.teacher.is_some(),
    }
}

/// What is left to decode of a trace after its last step's image was sent.
pub struct PendingImages {
    /// The model's input, for the teacher (when the model has one).
    teacher_input: Option<Tensor<4>>,
    /// Each earlier step's logits, `(step, logits)`, step 1-based.
    steps: Vec<(usize, Tensor<3>)>,
}

/// One image of a trace still to decode.
struct ImageJob {
    slot: Slot,
    key: TraceKey,
    work: ImageWork,
}

enum ImageWork {
    /// The teacher's reconstruction of the model's input.
    Teacher(Tensor<4>),
    /// The pixel head's image of a step's logits (step 1-based).
    Step(usize, Tensor<3>),
}

/// A decoded image of a trace.
enum Decoded {
    Teacher { image: RgbImage, ids: Vec<i64> },
    Step { step: usize, image: RgbImage },
}

impl ImageWork {
    /// Decodes image 0 (`None` for a teacher job of a model without a teacher).
    fn decode(self, model: &LoadedModel) -> Option<Decoded> {
        match self {
            ImageWork::Teacher(pixels) => {
                let (image, ids) = teacher_reconstruction(model.teacher.as_ref()?, pixels);
                Some(Decoded::Teacher {
                    image: tensor_to_images(image).remove(0),
                    ids: ids.into_iter().next().unwrap_or_default(),
                })
            }
            ImageWork::Step(step, logits) => Some(Decoded::Step {
                step,
                image: tensor_to_images(step_pixels(&model.model, logits)).remove(0),
            }),
        }
    }
}

impl PendingImages {
    /// The teacher (shown beside the final image) first, then the steps from the first.
    fn into_work(self) -> impl Iterator<Item = ImageWork> {
        self.teacher_input
            .map(ImageWork::Teacher)
            .into_iter()
            .chain(
                self.steps
                    .into_iter()
                    .map(|(step, logits)| ImageWork::Step(step, logits)),
            )
    }
}

/// The images still to decode, newest trace first.
#[derive(Default)]
struct ImageJobs {
    queue: VecDeque<ImageJob>,
}

impl ImageJobs {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn next(&mut self) -> Option<ImageJob> {
        self.queue.pop_front()
    }

    /// A new trace's images go before every older trace's, in [`PendingImages::into_work`]'s
    /// order.
    fn add(&mut self, slot: Slot, key: &TraceKey, pending: PendingImages) {
        let new: Vec<ImageJob> = pending
            .into_work()
            .map(|work| ImageJob {
                slot,
                key: key.clone(),
                work,
            })
            .collect();
        for job in new.into_iter().rev() {
            self.queue.push_front(job);
        }
    }

    /// Moves the job of `step` of this trace to the front.
    fn prefer(&mut self, slot: Slot, key: &TraceKey, step: usize) {
        let found = self.queue.iter().position(|j| {
            j.slot == slot && &j.key == key && matches!(j.work, ImageWork::Step(s, _) if s == step)
        });
        if let Some(job) = found.and_then(|i| self.queue.remove(i)) {
            self.queue.push_front(job);
        }
    }

    fn forget_slot(&mut self, slot: Slot) {
        self.queue.retain(|j| j.slot != slot);
    }
}

fn run_image_job(job: ImageJob, models: &HashMap<Slot, LoadedModel>, emit: &impl Fn(ModelEvent)) {
    let ImageJob { slot, key, work } = job;
    let Some(model) = models.get(&slot) else {
        return;
    };
    // A failure here loses one image of a trace that is already shown; the view keeps saying
    // that it is being decoded rather than the app going down.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.decode(model)));
    match decoded {
        Ok(Some(Decoded::Teacher { image, ids })) => emit(ModelEvent::Teacher {
            slot,
            key,
            image,
            ids,
        }),
        Ok(Some(Decoded::Step { step, image })) => emit(ModelEvent::StepImage {
            slot,
            key,
            step,
            image,
        }),
        Ok(None) | Err(_) => {}
    }
}

/// Reconstructs `image` (any size: centre-cropped and resized to the model's): the trace with
/// the last step's image only, and what is left to decode (the earlier steps' images, the
/// teacher's reconstruction).
pub fn streamed_trace_of(
    model: &LoadedModel,
    key: &TraceKey,
    image: &RgbImage,
    chosen: &ChosenDevice,
) -> (TraceData, PendingImages) {
    let (input, _) = center_crop_resize(image, model.config.image_size as u32);
    let pixels = images_to_tensor(std::slice::from_ref(&input), &chosen.device);
    let opts = ReconstructOptions {
        steps: key.steps.max(1),
        step_images: false,
        keep_logits: true,
        ..ReconstructOptions::default()
    };
    let mut trace = match &key.latent_override {
        None => reconstruct(&model.model, None, pixels.clone(), &opts),
        Some(ids) => {
            // The token editor: decode from the given latent ids instead of the encoder's.
            let zq = model
                .model
                .quantize
                .codebook_entries(ids_tensor(std::slice::from_ref(ids), &chosen.device));
            let mut trace = generate(&model.model, zq, &opts);
            trace.latent_ids = vec![ids.clone()];
            trace
        }
    };
    let last = trace.steps.len();
    let steps = trace
        .steps
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| i + 1 < last)
        .filter_map(|(i, s)| s.logits.take().map(|l| (i + 1, l)))
        .collect();
    let mut data = TraceData::from_trace(
        &trace,
        input,
        model.model.decoder.grid,
        model.model.mask_token_id as i64,
        model.config.quantizer.codebook_size,
    );
    data.teacher_pending = model.teacher.is_some();
    let pending = PendingImages {
        teacher_input: model.teacher.is_some().then_some(pixels),
        steps,
    };
    (data, pending)
}

/// Reconstructs `image` with every step's image and the teacher's at once (what the tests and
/// a caller that needs the whole trace use).
pub fn trace_of(
    model: &LoadedModel,
    key: &TraceKey,
    image: &RgbImage,
    chosen: &ChosenDevice,
) -> TraceData {
    let (mut data, pending) = streamed_trace_of(model, key, image, chosen);
    for work in pending.into_work() {
        match work.decode(model) {
            Some(Decoded::Teacher { image, ids }) => data.set_teacher(image, ids),
            Some(Decoded::Step { step, image }) => data.set_step_image(step, image),
            None => {}
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use sftok_core::image_io::load_rgb;

    /// The streamed trace carries the last step's image only and says the teacher's is coming;
    /// each image decoded afterwards is the very image a trace made at once has (same tensors,
    /// same operations), and so are the teacher's reconstruction and codes.
    #[test]
    fn streamed_images_are_the_ones_a_whole_trace_has() {
        let chosen = choose_device(DeviceChoice::Cpu).unwrap();
        let assets = crate::assets::assets_dir();
        let model = load_model_dir(&assets.join("models/sfvr"), &chosen.device).unwrap();
        let image = load_rgb(&assets.join("samples/astronaut.png")).unwrap();
        let key = TraceKey {
            image_id: 1,
            steps: 5,
            latent_override: None,
        };
        let (streamed, pending) = streamed_trace_of(&model, &key, &image, &chosen);
        assert!(streamed.steps[..4].iter().all(|s| s.image.is_none()));
        assert!(streamed.steps[4].image.is_some());
        assert!(streamed.teacher_pending && streamed.teacher.is_none());
        assert_eq!(streamed.psnr_curve().len(), 1);
        assert_eq!(
            pending.steps.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(!streamed.is_complete());

        let completed = trace_of(&model, &key, &image, &chosen);
        assert!(completed.is_complete());
        let (input, _) = center_crop_resize(&image, model.config.image_size as u32);
        let pixels = images_to_tensor(std::slice::from_ref(&input), &chosen.device);
        let whole = reconstruct(
            &model.model,
            model.teacher.as_ref(),
            pixels,
            &ReconstructOptions {
                steps: 5,
                ..ReconstructOptions::default()
            },
        );
        for (i, step) in whole.steps.iter().enumerate() {
            let expected = tensor_to_images(step.image.clone().unwrap()).remove(0);
            assert_eq!(
                completed.step_image(i + 1),
                Some(&expected),
                "step {}",
                i + 1
            );
        }
        assert_eq!(
            completed.teacher.as_ref(),
            Some(&tensor_to_images(whole.teacher_reconstruction.unwrap()).remove(0))
        );
        assert_eq!(
            completed.teacher_ids.as_ref(),
            whole.teacher_ids.as_ref().map(|t| &t[0])
        );
        assert_eq!(completed.psnr_curve().len(), 5);
    }

    /// A step asked for by the scrubber moves to the front of the images to decode; a newer
    /// trace's images go before an older one's; loading another model drops the slot's images.
    #[test]
    fn preferred_steps_and_newer_traces_are_decoded_first() {
        let device = burn::tensor::Device::flex();
        let key = |id| TraceKey {
            image_id: id,
            steps: 4,
            latent_override: None,
        };
        let logits = || Tensor::<3>::zeros([1, 4, 4], &device);
        let pending = || PendingImages {
            teacher_input: None,
            steps: (1..4).map(|s| (s, logits())).collect(),
        };
        let order = |jobs: &ImageJobs| -> Vec<(u64, usize)> {
            jobs.queue
                .iter()
                .map(|j| match j.work {
                    ImageWork::Step(step, _) => (j.key.image_id, step),
                    ImageWork::Teacher(_) => (j.key.image_id, 0),
                })
                .collect()
        };
        let mut jobs = ImageJobs::default();
        jobs.add(Slot::A, &key(1), pending());
        jobs.add(Slot::B, &key(2), pending());
        assert_eq!(
            order(&jobs),
            [(2, 1), (2, 2), (2, 3), (1, 1), (1, 2), (1, 3)]
        );
        jobs.prefer(Slot::A, &key(1), 3);
        assert_eq!(order(&jobs)[0], (1, 3));
        jobs.forget_slot(Slot::B);
        assert_eq!(order(&jobs), [(1, 3), (1, 1), (1, 2)]);
    }
}
