//! The SFTok model, one block per file, read leaf to root: `vit` (the transformer block),
//! `encoder`, `quantizer`, `decoder`, `vqgan` (teacher and pixel decoder), `sftok` (the whole).

pub mod decoder;
pub mod discriminator;
pub mod encoder;
pub mod lpips;
pub mod quantizer;
pub mod sftok;
pub mod vit;
pub mod vqgan;

pub use decoder::MultiStepDecoder;
pub use encoder::TitokEncoder;
pub use quantizer::{OptVq, Quantized};
pub use sftok::Sftok;
pub use vqgan::Vqgan;
