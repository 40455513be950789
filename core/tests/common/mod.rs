//! What several integration tests of `sftok-core` share.

use sftok_core::{ChosenDevice, DeviceChoice, choose_device};

/// The wgpu device for a test that runs on one. Without an adapter (a software Vulkan driver
/// counts) the test is skipped, with a line saying so, unless `SFTOK_REQUIRE_WGPU=1`, which makes
/// a missing adapter a failure (`.ci/run` sets it).
pub fn wgpu_or_skip(test: &str) -> Option<ChosenDevice> {
    match choose_device(DeviceChoice::Wgpu) {
        Ok(chosen) => Some(chosen),
        Err(e) if std::env::var("SFTOK_REQUIRE_WGPU").is_ok_and(|v| v == "1") => {
            panic!("SFTOK_REQUIRE_WGPU=1 but {e}")
        }
        Err(e) => {
            eprintln!("{test}: skipped, {e}");
            None
        }
    }
}
