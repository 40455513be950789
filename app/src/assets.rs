//! Where the bundled assets (sample images, models) are: shared by the command line and the app.

use std::path::{Path, PathBuf};

/// The folder of bundled assets: `$SFTOK_ASSETS`; else the first that exists of `assets/` of
/// the source tree the binary was built from, `assets/` beside the executable or in a folder
/// above it (a binary copied out of the build, or a source tree moved after the build), and
/// `assets/` in the current folder; else the source tree's (so messages name a real place).
pub fn assets_dir() -> PathBuf {
    let dir = match std::env::var_os("SFTOK_ASSETS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets"));
            // Lazily: the app asks every frame (the fine-tune's default base), and the built
            // tree, which is usually there, must cost no more than one look.
            let beside_exe = std::iter::once_with(|| std::env::current_exe().ok())
                .flatten()
                .flat_map(|exe| {
                    exe.ancestors()
                        .skip(1)
                        .map(|d| d.join("assets"))
                        .collect::<Vec<_>>()
                });
            let candidates = std::iter::once(built.clone())
                .chain(beside_exe)
                .chain(std::iter::once(PathBuf::from("assets")));
            first_assets_folder(candidates).unwrap_or(built)
        }
    };
    // `<checkout>/assets`, not `<checkout>/app/../assets`, wherever a user sees it.
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

/// The first candidate that looks like this project's assets (it has `models/`).
fn first_assets_folder(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|d| is_assets_folder(d))
}

fn is_assets_folder(dir: &Path) -> bool {
    dir.join("models").is_dir()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_folder_with_models_wins_and_none_gives_none() {
        let root = std::env::temp_dir().join(format!("sftok-assets-{}", std::process::id()));
        let without = root.join("a/assets");
        let with = root.join("b/assets");
        std::fs::create_dir_all(&without).unwrap();
        std::fs::create_dir_all(with.join("models")).unwrap();
        let missing = root.join("c/assets");
        assert_eq!(
            first_assets_folder([missing.clone(), without.clone(), with.clone()]),
            Some(with)
        );
        assert_eq!(first_assets_folder([missing, without]), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
