//! What the app remembers between sessions (eframe storage): folders, models, the view, T.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::training::TrainSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum View {
    #[default]
    Reconstruct,
    Compare,
    Train,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub view: View,
    /// Decoding steps T.
    pub steps: usize,
    pub last_image_dir: Option<PathBuf>,
    pub model_a: Option<PathBuf>,
    pub model_b: Option<PathBuf>,
    /// Images open when the app closed (re-opened at start when they still exist).
    pub images: Vec<PathBuf>,
    pub show_heatmap: bool,
    pub train: TrainSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            view: View::Reconstruct,
            steps: 8,
            last_image_dir: None,
            model_a: None,
            model_b: None,
            images: Vec::new(),
            show_heatmap: false,
            train: TrainSettings::default(),
        }
    }
}

pub const STORAGE_KEY: &str = "sftok-studio-settings";
