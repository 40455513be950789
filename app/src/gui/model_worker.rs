//! The model worker: one thread that owns the device and the loaded models. The UI sends it
//! [`ModelCommand`]s and reads [`ModelEvent`]s; it never waits on the model. Every event wakes the
//! UI with `request_repaint`, so the window repaints only when something changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};

use image::RgbImage;
use sftok_core::checkpoint::{LoadedModel, load_model_dir};
use sftok_core::generator::{LoadedGenerator, load_generator_dir};
use sftok_core::image_io::{center_crop_resize, images_to_tensor};
use sftok_core::reconstruct::{ReconstructOptions, generate, ids_tensor, reconstruct};
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
    while let Ok(command) = commands.recv() {
        match command {
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
                    trace_of(model, &key, &image, &chosen)
                }));
                match result {
                    Ok(trace) => emit(ModelEvent::Trace {
                        slot,
                        key,
                        trace: Box::new(trace),
                    }),
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

/// Reconstructs `image` (any size: centre-cropped and resized to the model's) with the full trace.
pub fn trace_of(
    model: &LoadedModel,
    key: &TraceKey,
    image: &RgbImage,
    chosen: &ChosenDevice,
) -> TraceData {
    let (input, _) = center_crop_resize(image, model.config.image_size as u32);
    let pixels = images_to_tensor(std::slice::from_ref(&input), &chosen.device);
    let opts = ReconstructOptions {
        steps: key.steps.max(1),
        ..ReconstructOptions::default()
    };
    let trace = match &key.latent_override {
        None => reconstruct(&model.model, model.teacher.as_ref(), pixels, &opts),
        Some(ids) => {
            // The token editor: decode from the given latent ids instead of the encoder's.
            let zq = model
                .model
                .quantize
                .codebook_entries(ids_tensor(std::slice::from_ref(ids), &chosen.device));
            let mut trace = generate(&model.model, zq, &opts);
            trace.latent_ids = vec![ids.clone()];
            if let Some(teacher) = &model.teacher {
                let codes = teacher.encode(pixels);
                trace.teacher_reconstruction = Some(teacher.decode(codes.clone()));
                trace.teacher_ids = Some(sftok_core::reconstruct::rows_i64(codes));
            }
            trace
        }
    };
    TraceData::from_trace(
        &trace,
        input,
        model.model.decoder.grid,
        model.model.mask_token_id as i64,
        model.config.quantizer.codebook_size,
    )
}
