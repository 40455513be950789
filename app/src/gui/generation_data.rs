//! A generation on the host, in the form the Generate view draws: per sample the generator's
//! steps (which latent tokens are known, and each committed token's probability) and the
//! decoder's step images. Built once by the model worker; the view only reads it.

use image::RgbImage;
use sftok_core::checkpoint::LoadedModel;
use sftok_core::generator::{
    GenerateOptions, LoadedGenerator, SeededNoise, check_pairing, generate_images,
};
use sftok_core::image_io::{grid, tensor_to_images};
use sftok_core::reconstruct::ReconstructOptions;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// `None`: unconditional.
    pub class: Option<usize>,
    pub count: usize,
    pub guidance: f64,
    pub temperature: f64,
    pub seed: u64,
    /// Generator steps.
    pub steps: usize,
    /// Tokenizer decoding steps.
    pub decoder_steps: usize,
}

/// One latent token after a generator step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenState {
    /// The committed id, or `None` while masked.
    pub id: Option<i64>,
    /// Probability of the committed id when it was sampled (1 for the tokens known before).
    pub probability: f32,
    /// Committed at this step.
    pub new: bool,
}

#[derive(Debug, Clone)]
pub struct SampleData {
    /// The decoded image (after the last decoder step).
    pub image: RgbImage,
    /// `[generator step][token]`.
    pub generator_steps: Vec<Vec<TokenState>>,
    pub latent_ids: Vec<i64>,
    /// The decoder's image after each of its steps.
    pub decoder_images: Vec<RgbImage>,
}

#[derive(Debug, Clone)]
pub struct GenerationData {
    pub request: GenerateRequest,
    /// "class 3", a class name, or "unconditional".
    pub class_label: String,
    pub samples: Vec<SampleData>,
}

impl GenerationData {
    /// Generates on the worker's device with `tokenizer` decoding `generator`'s tokens.
    pub fn build(
        tokenizer: &LoadedModel,
        generator: &LoadedGenerator,
        request: &GenerateRequest,
    ) -> Result<Self, String> {
        check_pairing(&generator.config, &tokenizer.config).map_err(|e| e.to_string())?;
        let gcfg = &generator.config;
        if let Some(c) = request.class
            && c >= gcfg.condition_num_classes
        {
            return Err(format!(
                "class {c} does not exist: this generator has {} classes",
                gcfg.condition_num_classes
            ));
        }
        let opts = GenerateOptions {
            steps: request.steps.max(1),
            guidance_scale: request.guidance,
            randomize_temperature: request.temperature,
            ..GenerateOptions::from(&gcfg.sampling)
        };
        let decode = ReconstructOptions {
            steps: request.decoder_steps.max(1),
            step_images: true,
            ..ReconstructOptions::default()
        };
        let classes = vec![request.class; request.count.max(1)];
        let out = generate_images(
            &tokenizer.model,
            &generator.model,
            &classes,
            &opts,
            &decode,
            &mut SeededNoise::new(request.seed),
        );
        let finals = tensor_to_images(out.decoding.pixels.clone());
        let per_step: Vec<Vec<RgbImage>> = out
            .decoding
            .steps
            .iter()
            .filter_map(|s| s.image.clone().map(tensor_to_images))
            .collect();
        let mask = gcfg.mask_token_id() as i64;
        let samples = finals
            .into_iter()
            .enumerate()
            .map(|(i, image)| SampleData {
                image,
                generator_steps: out
                    .generation
                    .steps
                    .iter()
                    .map(|s| {
                        (0..s.output_ids[i].len())
                            .map(|j| {
                                let id = s.output_ids[i][j];
                                let was_known = s.input_ids[i][j] != mask;
                                TokenState {
                                    id: (id != mask).then_some(id),
                                    probability: s.probabilities[i][j],
                                    new: id != mask && !was_known,
                                }
                            })
                            .collect()
                    })
                    .collect(),
                latent_ids: out.generation.ids[i].clone(),
                decoder_images: per_step.iter().map(|s| s[i].clone()).collect(),
            })
            .collect();
        Ok(GenerationData {
            request: request.clone(),
            class_label: request
                .class
                .map_or("unconditional".into(), |c| gcfg.class_label(c)),
            samples,
        })
    }

    /// The samples side by side (up to 8 per row), 2 px apart: what "Save grid" writes.
    pub fn grid(&self) -> RgbImage {
        let images: Vec<RgbImage> = self.samples.iter().map(|s| s.image.clone()).collect();
        grid(&images, 8, 2)
    }
}
