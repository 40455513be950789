//! rFID for `sftok eval`: the FID Inception network when the user supplies its weights.

use std::path::Path;

use burn::tensor::Device;
use sftok_core::eval::FidFeatures;

/// Why rFID is off when no weights are given.
pub const UNAVAILABLE: &str = "unavailable: rFID needs the standard FID Inception weights \
(pt_inception-2015-12-05-6726825d.pth, from the pytorch-fid releases), passed with --inception FILE; \
no package on this machine ships them";

/// Placeholder until the Inception network lands.
pub struct Fid;

impl FidFeatures for Fid {
    fn distance(
        &self,
        _reference: &[image::RgbImage],
        _candidate: &[image::RgbImage],
    ) -> sftok_core::Result<f64> {
        unreachable!()
    }
}

pub fn load(path: Option<&Path>, _device: &Device) -> anyhow::Result<(Option<Fid>, String)> {
    match path {
        None => Ok((None, UNAVAILABLE.to_string())),
        Some(_) => anyhow::bail!("not yet"),
    }
}
