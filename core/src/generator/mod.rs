//! The paper's class-to-image generator: a MaskGIT transformer (`ImageBert`,
//! `modeling/maskgit.py`) that produces SFTok's 1-D latent tokens, which the tokenizer's
//! multi-step decoder then turns into an image.
//!
//! Read in this order: `config` (sizes, token layout, sampling settings), `bert` (the network),
//! `sampling` (MaskGIT's confidence-ordered unmasking with guidance), `pipeline` (class to
//! pixels through the tokenizer), `model_dir` (files).
//! Its training step is `train::generator_step`.

pub mod bert;
pub mod config;
pub mod model_dir;
pub mod pipeline;
pub mod sampling;

pub use bert::ImageBert;
pub use config::{GeneratorConfig, GuidanceDecay, SamplingDefaults};
pub use model_dir::{
    LoadedGenerator, build_generator, import_official_generator, load_generator_dir,
    save_generator_dir,
};
pub use pipeline::{GeneratedImages, check_pairing, generate_images};
pub use sampling::{
    GenerateOptions, Generation, GeneratorStep, NoiseSource, SeededNoise, generate,
};
