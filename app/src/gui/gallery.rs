//! The gallery: the images the user opened (files, a folder, drag and drop, the bundled samples),
//! decoded on a background thread, shown as thumbnails.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};

use egui::{ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;
use sftok_core::data::{IMAGE_EXTENSIONS, ImageFolder};
use sftok_core::image_io::load_rgb;

/// Side of a thumbnail in pixels.
const THUMB: u32 = 96;

pub struct GalleryImage {
    pub id: u64,
    pub path: PathBuf,
    pub label: String,
    /// The image as decoded (any size); the views crop and resize it to the model's size.
    pub image: RgbImage,
    thumbnail: Option<TextureHandle>,
}

impl GalleryImage {
    pub fn thumbnail(&mut self, ctx: &egui::Context) -> &TextureHandle {
        self.thumbnail.get_or_insert_with(|| {
            let (w, h) = self.image.dimensions();
            let scale = THUMB as f32 / w.max(h) as f32;
            let small = image::imageops::thumbnail(
                &self.image,
                ((w as f32 * scale).round() as u32).max(1),
                ((h as f32 * scale).round() as u32).max(1),
            );
            ctx.load_texture(
                format!("thumb-{}", self.id),
                rgb_to_color_image(&small),
                TextureOptions::LINEAR,
            )
        })
    }
}

enum Loaded {
    Image(PathBuf, RgbImage),
    Failed(PathBuf, String),
    Done,
}

/// Images and a background decoder.
pub struct Gallery {
    pub images: Vec<GalleryImage>,
    pub selected: Option<u64>,
    next_id: u64,
    tx: Sender<Loaded>,
    rx: Receiver<Loaded>,
    pub loading: usize,
    /// Select the next image that arrives (the first of a batch the user opened).
    select_next_loaded: bool,
}

impl Default for Gallery {
    fn default() -> Self {
        let (tx, rx) = channel();
        Gallery {
            images: Vec::new(),
            selected: None,
            next_id: 1,
            tx,
            rx,
            loading: 0,
            select_next_loaded: false,
        }
    }
}

impl Gallery {
    /// Decodes `paths` on a worker thread; the results arrive through [`Gallery::poll`].
    /// A file opened again is selected, not added twice; paths are compared in their canonical
    /// form (`/a/app/../assets/x.png` is `/a/assets/x.png`).
    pub fn open(&mut self, paths: Vec<PathBuf>, ctx: &egui::Context) {
        let paths: Vec<PathBuf> = paths
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        let mut fresh = Vec::new();
        for path in paths {
            match self.images.iter().find(|i| i.path == path) {
                Some(known) => self.selected = Some(known.id),
                None if !fresh.contains(&path) => fresh.push(path),
                None => {}
            }
        }
        let paths = fresh;
        if paths.is_empty() {
            return;
        }
        self.select_next_loaded = true;
        self.loading += 1;
        let tx = self.tx.clone();
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            for path in paths {
                let msg = match load_rgb(&path) {
                    Ok(image) => Loaded::Image(path, image),
                    Err(e) => Loaded::Failed(path, e.to_string()),
                };
                let _ = tx.send(msg);
                ctx.request_repaint();
            }
            let _ = tx.send(Loaded::Done);
            ctx.request_repaint();
        });
    }

    /// Every image file under `dir` (recursively).
    pub fn open_folder(&mut self, dir: &Path, ctx: &egui::Context) -> Result<usize, String> {
        let folder = ImageFolder::scan(dir).map_err(|e| e.to_string())?;
        let n = folder.len();
        self.open(folder.paths().to_vec(), ctx);
        Ok(n)
    }

    /// Adds an image that is already decoded (tests, generated images).
    pub fn add(&mut self, path: PathBuf, image: RgbImage) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let label = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        self.images.push(GalleryImage {
            id,
            path,
            label,
            image,
            thumbnail: None,
        });
        if self.selected.is_none() || self.select_next_loaded {
            // The first image of what the user just opened is the one shown.
            self.selected = Some(id);
            self.select_next_loaded = false;
        }
        id
    }

    /// Takes decoded images in; returns the messages of the files that could not be read.
    pub fn poll(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Loaded::Image(path, image) => {
                    self.add(path, image);
                }
                Loaded::Failed(path, e) => {
                    errors.push(format!("{} was not added: {e}", path.display()))
                }
                Loaded::Done => self.loading = self.loading.saturating_sub(1),
            }
        }
        errors
    }

    pub fn get(&self, id: u64) -> Option<&GalleryImage> {
        self.images.iter().find(|i| i.id == id)
    }

    pub fn selected_image(&self) -> Option<&GalleryImage> {
        self.selected.and_then(|id| self.get(id))
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.images.iter().map(|i| i.path.clone()).collect()
    }

    /// The thumbnails, newest last; a click selects.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        if self.loading > 0 {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("decoding images...");
            });
        }
        if self.images.is_empty() {
            ui.label(
                "No images yet: open files or a folder, drop images here, or add the samples.",
            );
            return;
        }
        let ctx = ui.ctx().clone();
        let mut remove = None;
        egui::ScrollArea::vertical().show(ui, |ui| {
            for im in &mut self.images {
                let selected = self.selected == Some(im.id);
                let texture = im.thumbnail(&ctx).clone();
                let response = ui
                    .add(
                        egui::Button::image_and_text(
                            egui::Image::new(&texture).max_size(egui::vec2(64.0, 64.0)),
                            &im.label,
                        )
                        .selected(selected),
                    )
                    .on_hover_text(format!(
                        "{} ({}x{})",
                        im.path.display(),
                        im.image.width(),
                        im.image.height()
                    ));
                if response.clicked() {
                    self.selected = Some(im.id);
                }
                response.context_menu(|ui| {
                    if ui.button("Remove from gallery").clicked() {
                        remove = Some(im.id);
                    }
                });
            }
        });
        if let Some(id) = remove {
            self.images.retain(|i| i.id != id);
            if self.selected == Some(id) {
                self.selected = self.images.first().map(|i| i.id);
            }
        }
    }
}

/// Whether a dropped file looks like an image we read.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

pub fn rgb_to_color_image(image: &RgbImage) -> ColorImage {
    ColorImage::from_rgb(
        [image.width() as usize, image.height() as usize],
        image.as_raw(),
    )
}

/// The bundled sample images.
pub fn sample_paths(assets: &Path) -> Vec<PathBuf> {
    let dir = assets.join("samples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image_path(p))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
}
