//! Finding the images of a data set: any folder layout (flat, or `ImageNet`'s
//! `train/n01440764/*.JPEG`), in an order that does not depend on the file system.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::DataError;

/// File name extensions (compared without regard to case) that are taken as images. Anything
/// else in the folder (labels, `README`, `.DS_Store`) is ignored.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// The images found under a folder, sorted by path.
///
/// Sorting makes the data order (and so a seeded run) the same on every machine and file
/// system, whatever order the directory listing comes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    root: PathBuf,
    paths: Vec<PathBuf>,
}

impl ImageFolder {
    /// Walks `root` recursively and keeps the files with an image extension.
    ///
    /// Symbolic links to files and folders are followed (data sets are often assembled from
    /// links); each real folder is visited once, so a link cycle cannot loop forever.
    /// A missing or empty folder is an error that names the folder. Whether the files really
    /// are images is only found out when they are decoded (see `DataLoader::skipped`).
    pub fn scan(root: &Path) -> Result<ImageFolder, DataError> {
        check_root(root)?;
        let mut paths = Vec::new();
        let mut visited = HashSet::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            if mark_visited(&dir, &mut visited) {
                list_folder(&dir, &mut paths, &mut pending)?;
            }
        }
        if paths.is_empty() {
            return Err(DataError::NoImages {
                root: root.to_path_buf(),
            });
        }
        paths.sort();
        Ok(ImageFolder {
            root: root.to_path_buf(),
            paths,
        })
    }

    /// A subset of a scanned folder (e.g. a held-out split): `paths` under `root`, sorted.
    /// Empty is an error, as for a scan.
    pub fn from_paths(root: &Path, mut paths: Vec<PathBuf>) -> Result<ImageFolder, DataError> {
        if paths.is_empty() {
            return Err(DataError::NoImages {
                root: root.to_path_buf(),
            });
        }
        paths.sort();
        Ok(ImageFolder {
            root: root.to_path_buf(),
            paths,
        })
    }

    /// The folder that was scanned (used in messages).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of image files found (readable or not).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Always false: a scan that finds nothing is an error.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The image files, sorted.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

/// Tells a missing folder and a file given by mistake apart from an empty folder, because the
/// fixes differ.
fn check_root(root: &Path) -> Result<(), DataError> {
    let root_buf = root.to_path_buf();
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(DataError::NotAFolder { root: root_buf }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(DataError::MissingFolder { root: root_buf })
        }
        Err(e) => Err(DataError::ReadFolder {
            path: root_buf,
            detail: e.to_string(),
        }),
    }
}

/// Records `dir` as visited; false if it (or the folder a link points to) was seen before.
fn mark_visited(dir: &Path, visited: &mut HashSet<PathBuf>) -> bool {
    let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    visited.insert(real)
}

/// Adds the images directly in `dir` to `images` and its sub-folders to `folders`.
fn list_folder(
    dir: &Path,
    images: &mut Vec<PathBuf>,
    folders: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let read_error = |e: std::io::Error| DataError::ReadFolder {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        entries.push(entry.map_err(read_error)?.path());
    }
    // Sorted, and sub-folders pushed in reverse onto the stack, so that the walk visits folders
    // in the same order everywhere: which name of a linked folder is kept must not depend on the
    // order the file system lists entries in.
    entries.sort();
    let mut subfolders = Vec::new();
    for path in entries {
        // `metadata` follows links; a dangling link is neither a file nor a folder and is ignored.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            subfolders.push(path);
        } else if meta.is_file() && has_image_extension(&path) {
            images.push(path);
        }
    }
    folders.extend(subfolders.into_iter().rev());
    Ok(())
}

/// True for `photo.JPG`, `a.WebP`, ...; false for `notes.txt` or `jpg` without a dot.
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{TempDir, write_png};

    #[test]
    fn scan_is_recursive_sorted_and_ignores_other_files() {
        let dir = TempDir::new("scan");
        let root = dir.path();
        write_png(&root.join("b.png"), 16, 16, 1);
        write_png(&root.join("train/n01/a.JPEG"), 16, 16, 2);
        write_png(&root.join("train/n01/c.Jpg"), 16, 16, 3);
        write_png(&root.join("train/n02/deep/d.WebP"), 16, 16, 4);
        write_png(&root.join("x.BMP"), 16, 16, 5);
        fs::write(root.join("README.txt"), "not an image").unwrap();
        fs::write(root.join("train/n01/labels.csv"), "a,1").unwrap();
        fs::write(root.join("train/jpg"), "no extension").unwrap();
        fs::create_dir_all(root.join("empty/sub")).unwrap();

        let folder = ImageFolder::scan(root).unwrap();
        let names: Vec<_> = folder
            .paths()
            .iter()
            .map(|p| {
                p.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect();
        assert_eq!(
            names,
            [
                "b.png",
                "train/n01/a.JPEG",
                "train/n01/c.Jpg",
                "train/n02/deep/d.WebP",
                "x.BMP"
            ]
        );
        assert_eq!(folder.len(), 5);
        assert_eq!(folder.root(), root);
    }

    #[test]
    fn empty_or_missing_folder_is_a_clear_error() {
        let dir = TempDir::new("empty");
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let e = ImageFolder::scan(dir.path()).unwrap_err();
        assert!(matches!(e, DataError::NoImages { .. }));
        assert_eq!(
            e.to_string(),
            format!(
                "no images (jpg, png, webp, bmp) found under {}",
                dir.path().display()
            )
        );

        let missing = dir.path().join("nope");
        let e = ImageFolder::scan(&missing).unwrap_err();
        assert!(matches!(e, DataError::MissingFolder { .. }), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");

        let e = ImageFolder::scan(&dir.path().join("notes.txt")).unwrap_err();
        assert!(matches!(e, DataError::NotAFolder { .. }), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn linked_folders_are_followed_once() {
        let dir = TempDir::new("links");
        let root = dir.path();
        write_png(&root.join("real/a.png"), 16, 16, 1);
        std::os::unix::fs::symlink(root.join("real"), root.join("alias")).unwrap();
        std::os::unix::fs::symlink(root, root.join("real/loop")).unwrap();
        let folder = ImageFolder::scan(root).unwrap();
        // `real` and `alias` are the same folder: its image is listed once, under the name met
        // first in sorted order, and the loop ends.
        assert_eq!(folder.paths(), [root.join("alias/a.png")]);
    }
}
