//! The generator's training data: the tokenizer's latent tokens of a folder of images, computed
//! once and cached in the run folder (`tokens.safetensors`).
//!
//! Classes are the first-level sub-folders (`data/<class>/...`); a flat folder trains an
//! unconditional generator. Every 10th image of each class (by sorted path) is held out: its
//! centre crop's tokens measure the generator on sequences it never saw. The training images are
//! tokenized `views` times, each time with the random crop and flip the other stages use.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::checkpoint::files::{read_weights, write_safetensors};
use crate::checkpoint::state::{StateDict, StoredTensor, Values};
use crate::config::AssignmentMode;
use crate::data::{DataLoader, DataPosition, ImageFolder, LoaderConfig, Mode};
use crate::error::{Result, SftokError};
use crate::model::Sftok;
use crate::reconstruct::rows_i64;

pub const TOKENS_FILE: &str = "tokens.safetensors";
/// One image in this many of each class is held out.
const HELD_OUT_EVERY: usize = 10;

/// Token sequences with their classes (`None`: unconditional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenSet {
    pub ids: Vec<Vec<i64>>,
    pub classes: Vec<Option<usize>>,
}

/// The cached tokens of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorData {
    pub class_names: Vec<String>,
    pub train: TokenSet,
    pub heldout: TokenSet,
}

/// The class of each image: its first-level sub-folder's index in `names`.
pub fn classes_of(folder: &ImageFolder) -> Result<(Vec<String>, Vec<Option<usize>>)> {
    let root = folder.root();
    let first: Vec<Option<String>> = folder
        .paths()
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap_or(p);
            let mut parts = rel.components();
            let first = parts.next()?;
            parts
                .next()
                .map(|_| first.as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    let names: BTreeSet<String> = first.iter().flatten().cloned().collect();
    if names.is_empty() {
        return Ok((Vec::new(), vec![None; first.len()]));
    }
    if let Some(i) = first.iter().position(Option::is_none) {
        return Err(SftokError::Other(format!(
            "{} has images in class sub-folders ({}) and directly inside it ({}): put every \
             image in a class folder, or none (an unconditional generator)",
            root.display(),
            names.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
            folder.paths()[i].display()
        )));
    }
    let names: Vec<String> = names.into_iter().collect();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let classes = first
        .iter()
        .map(|f| f.as_deref().map(|n| index[n]))
        .collect();
    Ok((names, classes))
}

/// How the training images are cut into the views that are tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    /// The tokenizer's input size.
    pub image_size: usize,
    /// Random crops (with flips) per training image.
    pub views: usize,
    /// Shorter side resized to `image_size x U[1, max_scale]` before the crop.
    pub max_scale: f32,
    pub seed: u64,
}

/// Tokenizes `folder` (or reads the cache in `run_root`).
pub fn prepare_tokens(
    run_root: &Path,
    folder: &ImageFolder,
    tokenizer: &Sftok,
    plan: &Views,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GeneratorData> {
    let Views {
        image_size,
        views,
        max_scale,
        seed,
    } = *plan;
    let (class_names, classes) = classes_of(folder)?;
    let cache = run_root.join(TOKENS_FILE);
    if cache.is_file() {
        return read_cache(&cache, class_names);
    }
    // Hold out every 10th image of each class.
    let mut seen: BTreeMap<Option<usize>, usize> = BTreeMap::new();
    let (mut train_paths, mut held_paths) = (Vec::new(), Vec::new());
    let mut class_of: HashMap<PathBuf, Option<usize>> = HashMap::new();
    for (path, &class) in folder.paths().iter().zip(&classes) {
        let n = seen.entry(class).or_default();
        if *n % HELD_OUT_EVERY == HELD_OUT_EVERY / 2 {
            held_paths.push(path.clone());
        } else {
            train_paths.push(path.clone());
        }
        *n += 1;
        class_of.insert(path.clone(), class);
    }
    let batch = 16.min(train_paths.len()).max(1);
    let train_folder =
        ImageFolder::from_paths(folder.root(), train_paths).map_err(SftokError::from)?;
    let per_epoch = train_folder.len() / batch;
    let total = per_epoch * batch * views + held_paths.len();
    let mut done = 0;
    let train_config = LoaderConfig {
        mode: Mode::Train {
            max_scale,
            flip: true,
        },
        seed,
        ..LoaderConfig::train(image_size as u32, batch)
    };
    let mut train = TokenSet::default();
    let mut loader = DataLoader::start(train_folder, train_config, DataPosition::default())
        .map_err(SftokError::from)?;
    for _ in 0..per_epoch * views {
        let Some(b) = loader.next_batch().map_err(SftokError::from)? else {
            break;
        };
        encode_batch(tokenizer, &b, &class_of, device, &mut train);
        done += b.batch_size;
        progress(done, total);
    }
    let mut heldout = TokenSet::default();
    if !held_paths.is_empty() {
        let held_folder =
            ImageFolder::from_paths(folder.root(), held_paths).map_err(SftokError::from)?;
        let mut loader = DataLoader::start(
            held_folder,
            LoaderConfig::eval(image_size as u32, 8),
            DataPosition::default(),
        )
        .map_err(SftokError::from)?;
        while let Some(b) = loader.next_batch().map_err(SftokError::from)? {
            encode_batch(tokenizer, &b, &class_of, device, &mut heldout);
            done += b.batch_size;
            progress(done, total);
        }
    }
    if train.ids.is_empty() {
        return Err(SftokError::Other(format!(
            "none of the images in {} could be read",
            folder.root().display()
        )));
    }
    write_cache(&cache, &train, &heldout)?;
    Ok(GeneratorData {
        class_names,
        train,
        heldout,
    })
}

fn encode_batch(
    tokenizer: &Sftok,
    batch: &crate::data::Batch,
    class_of: &HashMap<PathBuf, Option<usize>>,
    device: &Device,
    into: &mut TokenSet,
) {
    let pixels =
        Tensor::<4>::from_data(TensorData::new(batch.pixels.clone(), batch.shape()), device);
    let q = crate::device::on_compute_pool(device, || {
        tokenizer.encode(pixels, AssignmentMode::SinkhornPerImage)
    });
    into.ids.extend(rows_i64(q.indices));
    into.classes.extend(
        batch
            .paths
            .iter()
            .map(|p| class_of.get(p).copied().flatten()),
    );
}

/// Classes are stored as `class + 1`, 0 for none.
fn write_cache(path: &Path, train: &TokenSet, heldout: &TokenSet) -> Result<()> {
    let mut sd = StateDict::new();
    for (name, set) in [("train", train), ("heldout", heldout)] {
        let l = set.ids.first().map_or(0, Vec::len);
        sd.insert(
            format!("{name}.ids"),
            StoredTensor {
                shape: vec![set.ids.len(), l],
                values: Values::I64(set.ids.concat()),
            },
        );
        sd.insert(
            format!("{name}.classes"),
            StoredTensor {
                shape: vec![set.classes.len()],
                values: Values::I64(
                    set.classes
                        .iter()
                        .map(|c| c.map_or(0, |c| c as i64 + 1))
                        .collect(),
                ),
            },
        );
    }
    write_safetensors(path, &sd)
}

fn read_cache(path: &Path, class_names: Vec<String>) -> Result<GeneratorData> {
    let sd = read_weights(path)?;
    let set = |name: &str| -> Result<TokenSet> {
        let ids = sd.get(&format!("{name}.ids"));
        let classes = sd.get(&format!("{name}.classes"));
        let (Some(ids), Some(classes)) = (ids, classes) else {
            return Err(SftokError::Other(format!(
                "{} is not a token cache of this program; delete it and it is made again",
                path.display()
            )));
        };
        let l = ids.shape.get(1).copied().unwrap_or(0).max(1);
        Ok(TokenSet {
            ids: ids.as_i64().chunks(l).map(<[i64]>::to_vec).collect(),
            classes: classes
                .as_i64()
                .iter()
                .map(|&c| (c > 0).then(|| c as usize - 1))
                .collect(),
        })
    };
    Ok(GeneratorData {
        class_names,
        train: set("train")?,
        heldout: set("heldout")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_come_from_sub_folders_and_a_mix_is_refused() {
        let root = std::env::temp_dir().join(format!("sftok-gen-classes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, file) in [("cats", "a.png"), ("cats", "b.png"), ("dogs", "c.png")] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join(file), b"x").unwrap();
        }
        let folder = ImageFolder::scan(&root).unwrap();
        let (names, classes) = classes_of(&folder).unwrap();
        assert_eq!(names, ["cats", "dogs"]);
        assert_eq!(classes, [Some(0), Some(0), Some(1)]);
        std::fs::write(root.join("loose.png"), b"x").unwrap();
        let e = classes_of(&ImageFolder::scan(&root).unwrap()).unwrap_err();
        assert!(e.to_string().contains("class folder"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
