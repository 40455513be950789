//! Checkpoints: state dicts under the official names, weight files (safetensors, PyTorch `.bin`),
//! model directories and the import of official weights.

pub mod files;
pub mod model_dir;
pub mod pytorch;
pub mod state;

pub use model_dir::{
    CONFIG_FILE, LoadedModel, MODEL_FILE, TEACHER_FILE, build_sftok, build_teacher,
    import_official, load_model_dir, save_model_dir,
};
pub use state::{StateDict, StoredTensor, state_dict, state_dict_shapes};
