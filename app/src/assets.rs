//! Where the bundled assets (sample images, models) are: shared by the command line and the app.

use std::path::PathBuf;

/// The folder of bundled assets: `$SFTOK_ASSETS`, else `assets/` of the source tree.
pub fn assets_dir() -> PathBuf {
    let dir = std::env::var_os("SFTOK_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets")));
    // `<checkout>/assets`, not `<checkout>/app/../assets`, wherever a user sees it.
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// The model used when none is named: the bundled SFVR demo model, or the small random-weight
/// model when the demo models are not there.
pub fn default_model_dir() -> PathBuf {
    let models = assets_dir().join("models");
    let sfvr = models.join("sfvr");
    if sfvr.join("config.json").is_file() {
        sfvr
    } else {
        models.join("default")
    }
}

/// The models compared when none are named: the bundled SFVR and vanilla demo models.
pub fn bundled_pair() -> Vec<PathBuf> {
    let models = assets_dir().join("models");
    let pair = [models.join("sfvr"), models.join("vanilla")];
    if pair.iter().all(|d| d.join("config.json").is_file()) {
        pair.to_vec()
    } else {
        vec![default_model_dir()]
    }
}

/// The bundled demo generator inside an assets folder.
pub fn generator_dir(assets: &std::path::Path) -> PathBuf {
    assets.join("models").join("generator")
}
