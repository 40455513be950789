//! What the app remembers between sessions (eframe storage): folders, models, the view, T.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::training::TrainSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum View {
    #[default]
    Reconstruct,
    Compare,
    Generate,
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
    /// The generator last used (absent: the bundled one).
    pub generator: Option<PathBuf>,
    pub generate: GenerateSettings,
}

/// The Generate view's form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateSettings {
    /// `None`: unconditional.
    pub class: Option<usize>,
    pub count: usize,
    pub guidance: f64,
    pub temperature: f64,
    pub seed: u64,
    pub steps: usize,
    pub decoder_steps: usize,
}

impl Default for GenerateSettings {
    fn default() -> Self {
        GenerateSettings {
            class: Some(0),
            count: 8,
            guidance: 2.0,
            temperature: 1.0,
            seed: 0,
            steps: 8,
            decoder_steps: 8,
        }
    }
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
            generator: None,
            generate: GenerateSettings::default(),
        }
    }
}

pub const STORAGE_KEY: &str = "sftok-studio-settings";
