//! The two front ends agree: what the app's Train view plans from its defaults is what
//! `sftok train` plans from its flags' defaults. (Here, beside both, so that neither imports the
//! other.)

use std::path::Path;

use sftok_core::train::StageKind;

use crate::cli::train::{Args, TrainTarget, config_from_args};
use crate::gui::training::TrainSettings;

#[test]
fn a_teacher_continued_from_a_model_takes_its_configuration() {
    let teacher = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models/teacher");
    let mut args = Args::with_defaults(StageKind::Teacher, Path::new("d"), Path::new("o")).unwrap();
    args.init = Some(teacher.clone());
    let config = config_from_args(&args).unwrap();
    let bundled = sftok_core::train::starting_point::model_config_of(&teacher).unwrap();
    assert_eq!(
        config.model.vqgan.num_embeddings,
        bundled.vqgan.num_embeddings
    );
    assert_eq!(config.model.vqgan.z_channels, bundled.vqgan.z_channels);
    assert_eq!(config.model.name, bundled.name);
}

#[test]
fn default_settings_are_the_command_lines() {
    let s = TrainSettings::default();
    let args = Args::with_defaults(StageKind::Teacher, Path::new("d"), Path::new("o")).unwrap();
    assert_eq!(s.preset, args.preset);
    assert_eq!(s.steps, args.steps);
    assert_eq!(s.batch_size, args.batch_size);
    assert_eq!(s.replace_prob, args.replace_prob);
    assert_eq!(s.vanilla, args.vanilla);
    assert_eq!(s.log_every, args.log_every);
    assert_eq!(s.preview_every, args.preview_every);
    assert_eq!(s.checkpoint_every, args.checkpoint_every);
    // The GAN: off by default in both (the form's tick means on; the teacher's CLI default is
    // off, and `--gan-start` turns it on).
    assert!(s.no_gan);
    assert_eq!(config_from_args(&args).unwrap().gan.start_step, None);
    assert_eq!(args.data, Path::new("d"));
    assert_eq!(args.out, Path::new("o"));
    // The run the app plans from nothing is the command line's with no flags.
    for stage in [
        StageKind::Teacher,
        StageKind::Stage1,
        StageKind::Stage2,
        StageKind::Stage3,
    ] {
        let args = Args::with_defaults(stage, Path::new("d"), Path::new("o")).unwrap();
        assert_eq!(
            args.plan().unwrap(),
            sftok_core::train::plan::RunPlan::new(stage, Path::new("d"))
        );
    }
    // A path that looks like a flag is still a path.
    let args = Args::with_defaults(StageKind::Stage3, Path::new("-x"), Path::new("--y")).unwrap();
    assert_eq!(args.data, Path::new("-x"));
    assert_eq!(args.stage, TrainTarget::Stage(StageKind::Stage3));
}
