//! rFID for `sftok eval`: the FID Inception network when the user supplies its weights.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use burn::tensor::Device;
use image::RgbImage;
use sftok_core::eval::FidFeatures;
use sftok_core::eval::frechet::{FeatureAccumulator, FeatureStats, frechet_distance};
use sftok_core::eval::inception::FidInception;
use sftok_core::image_io::images_to_tensor;

/// Why rFID is off when no weights are given.
pub const UNAVAILABLE: &str = "unavailable: rFID needs the standard FID Inception weights \
(pt_inception-2015-12-05-6726825d.pth, from the pytorch-fid releases), passed with --inception FILE; \
no package on this machine ships them";

/// Images per Inception forward pass.
const BATCH: usize = 8;

pub struct Fid {
    net: FidInception,
    device: Device,
    /// The reference set's statistics, computed once (keyed by the set's first pixels and size).
    reference: RefCell<HashMap<(usize, Vec<u8>), FeatureStats>>,
}

impl Fid {
    fn stats(&self, images: &[RgbImage]) -> sftok_core::Result<FeatureStats> {
        let mut acc = FeatureAccumulator::new(2048);
        for chunk in images.chunks(BATCH) {
            let features = self
                .net
                .features(images_to_tensor(chunk, &self.device))
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| sftok_core::SftokError::Other(format!("{e:?}")))?;
            acc.push_rows(&features)?;
        }
        Ok(acc.stats()?)
    }
}

impl FidFeatures for Fid {
    fn distance(&self, reference: &[RgbImage], candidate: &[RgbImage]) -> sftok_core::Result<f64> {
        let key = (
            reference.len(),
            reference
                .first()
                .map(|i| i.as_raw().iter().take(256).copied().collect())
                .unwrap_or_default(),
        );
        let cached = self.reference.borrow().get(&key).cloned();
        let reference_stats = match cached {
            Some(s) => s,
            None => {
                let s = self.stats(reference)?;
                self.reference.borrow_mut().insert(key, s.clone());
                s
            }
        };
        let candidate_stats = self.stats(candidate)?;
        Ok(frechet_distance(&reference_stats, &candidate_stats)?)
    }
}

pub fn load(path: Option<&Path>, device: &Device) -> anyhow::Result<(Option<Fid>, String)> {
    match path {
        None => Ok((None, UNAVAILABLE.to_string())),
        Some(p) => {
            let net = FidInception::from_file(p, device)
                .with_context(|| format!("loading the FID Inception weights {}", p.display()))?;
            Ok((
                Some(Fid {
                    net,
                    device: device.clone(),
                    reference: RefCell::new(HashMap::new()),
                }),
                "on".to_string(),
            ))
        }
    }
}
