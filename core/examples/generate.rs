//! Class to image in a few lines: load a tokenizer and a generator, generate four images of one
//! class, save them side by side.
//!
//! `cargo run --release --example generate -- assets/models/sfvr assets/models/generator mate out.png`

use std::path::Path;

use sftok_core::generator::check_pairing;
use sftok_core::image_io::{hstack, tensor_to_images};
use sftok_core::{
    DeviceChoice, GenerateOptions, ReconstructOptions, SeededNoise, choose_device, generate_images,
    load_generator_dir, load_model_dir,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tokenizer_dir, generator_dir, class, output] = args.as_slice() else {
        return Err("usage: generate TOKENIZER_DIR GENERATOR_DIR CLASS OUTPUT_PNG".into());
    };
    let device = choose_device(DeviceChoice::Cpu)?.device;
    let tokenizer = load_model_dir(Path::new(tokenizer_dir), &device)?;
    let generator = load_generator_dir(Path::new(generator_dir), &device)?;
    check_pairing(&generator.config, &tokenizer.config)?;
    let class = generator.config.class_from_text(class)?;
    let out = generate_images(
        &tokenizer.model,
        &generator.model,
        &[Some(class); 4],
        &GenerateOptions::from(&generator.config.sampling),
        &ReconstructOptions::default(),
        &mut SeededNoise::new(0),
    );
    hstack(&tensor_to_images(out.decoding.pixels), 2).save(output)?;
    println!("latent tokens of the first: {:?}", out.generation.ids[0]);
    Ok(())
}
