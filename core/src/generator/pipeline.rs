//! Class to image: the generator's latent tokens, then the tokenizer's multi-step decoding
//! (the official `sample_fn`: `generate`, then `decode_tokens`).

use super::bert::ImageBert;
use super::config::GeneratorConfig;
use super::sampling::{GenerateOptions, Generation, NoiseSource, generate};
use crate::config::SftokConfig;
use crate::error::{Result, SftokError};
use crate::model::Sftok;
use crate::reconstruct::{ReconstructOptions, Trace, decode_tokens};

/// A generation and its decoding.
#[derive(Debug)]
pub struct GeneratedImages {
    /// The generator's steps and final latent ids `[B][L]`.
    pub generation: Generation,
    /// The tokenizer's decoding of those ids (`pixels` `[B, 3, H, W]`, and the per-step images
    /// when asked for).
    pub decoding: Trace,
}

/// Refuses a generator made for another tokenizer (its token ids would mean nothing to it).
pub fn check_pairing(generator: &GeneratorConfig, tokenizer: &SftokConfig) -> Result<()> {
    let codes = tokenizer.quantizer.codebook_size;
    let tokens = tokenizer.num_latent_tokens;
    if generator.codebook_size != codes || generator.image_seq_len != tokens {
        return Err(SftokError::Other(format!(
            "this generator makes {} tokens of {} codes, but the tokenizer (`{}`) reads {tokens} \
             tokens of {codes} codes: use the tokenizer the generator was trained on (a \
             generator's config.json names its sizes)",
            generator.image_seq_len, generator.codebook_size, tokenizer.name
        )));
    }
    Ok(())
}

/// Generates one image per entry of `classes` (`None`: unconditional).
pub fn generate_images(
    tokenizer: &Sftok,
    generator: &ImageBert,
    classes: &[Option<usize>],
    generate_opts: &GenerateOptions,
    decode_opts: &ReconstructOptions,
    noise: &mut (dyn NoiseSource + Send),
) -> GeneratedImages {
    let generation = generate(generator, classes, generate_opts, noise);
    let decoding = decode_tokens(tokenizer, &generation.ids, decode_opts);
    GeneratedImages {
        generation,
        decoding,
    }
}
