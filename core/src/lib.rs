//! SFTok (arXiv 2512.16910) on burn: a discrete image tokenizer whose multi-step decoder is
//! trained with self-forcing. This crate holds the model, reconstruction with a step-by-step
//! trace, checkpoints and the import of the official PyTorch weights.
//!
//! Reference code: github.com/Neur-IO/SFTok (commit 0e98df00) and github.com/bytedance/1d-tokenizer.
//!
//! `unsafe` code lives in [`kernels`] only.
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod generator;
pub mod image_io;
#[allow(unsafe_code)]
pub mod kernels;
pub mod model;
pub mod reconstruct;
pub mod schedule;
pub mod train;

// The calls a library user needs first: load a model directory, turn images into a batch,
// reconstruct it step by step, and turn the result back into images.
pub use checkpoint::{LoadedModel, load_model_dir};
pub use config::{AssignmentMode, SftokConfig};
pub use device::{ChosenDevice, DeviceChoice, choose_device, choose_devices};
pub use error::{Result, SftokError};
pub use image_io::{center_crop_resize, images_to_tensor, load_rgb, tensor_to_images};
pub use reconstruct::{ReconstructOptions, Trace, decode_tokens, reconstruct};
// Class to image: load a generator directory, generate latent tokens, decode them.
pub use generator::{
    GenerateOptions, GeneratedImages, LoadedGenerator, SeededNoise, generate_images,
    load_generator_dir,
};
