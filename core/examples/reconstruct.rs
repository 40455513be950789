//! The library's common path in a few lines: load a model directory, reconstruct one image in 8
//! steps, save the result.
//!
//! `cargo run --release --example reconstruct -- assets/models/sfvr assets/samples/astronaut.png out.png`

use std::path::Path;

use sftok_core::{
    DeviceChoice, ReconstructOptions, center_crop_resize, choose_device, images_to_tensor,
    load_model_dir, load_rgb, reconstruct, tensor_to_images,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, input, output] = args.as_slice() else {
        return Err("usage: reconstruct MODEL_DIR INPUT_IMAGE OUTPUT_PNG".into());
    };
    let device = choose_device(DeviceChoice::Cpu)?.device;
    let loaded = load_model_dir(Path::new(model_dir), &device)?;
    let size = u32::try_from(loaded.config.image_size)?;
    let (image, _) = center_crop_resize(&load_rgb(Path::new(input))?, size);
    let trace = reconstruct(
        &loaded.model,
        loaded.teacher.as_ref(),
        images_to_tensor(&[image], &device),
        &ReconstructOptions::default(),
    );
    tensor_to_images(trace.pixels.clamp(0.0, 1.0))[0].save(output)?;
    println!("latent tokens: {:?}", trace.latent_ids[0]);
    Ok(())
}
