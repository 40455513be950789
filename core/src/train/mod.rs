//! Training: every stage of the paper's recipe and the teacher, as a library with an event stream
//! and a stop handle (the CLI and the app drive the same trainer).

pub mod adversary;
pub mod codebook;
pub mod config;
pub mod data_parallel;
pub mod ema;
pub mod events;
pub mod generator_step;
pub mod generator_tokens;
pub mod generator_trainer;
pub mod heldout;
pub mod masking;
pub mod optim;
pub mod pixel_step;
pub mod plan;
pub mod run_dir;
pub mod sfvr;
pub mod stage;
pub mod stages;
pub mod starting_point;
pub mod teacher_step;
pub mod token_step;
pub mod trainer;

pub use config::{StageKind, TrainConfig};
pub use events::{StopHandle, TrainEvent};
pub use trainer::{TrainOutcome, train, train_data_parallel};
