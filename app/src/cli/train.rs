//! `sftok train {teacher|stage1|stage2|stage3}`: a progress bar over the library trainer;
//! Ctrl-C stops cleanly after writing a checkpoint.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sftok_core::DeviceChoice;
use sftok_core::generator::GeneratorConfig;
use sftok_core::train::config::PerceptualWeights;
use sftok_core::train::generator_trainer::{GeneratorTrainConfig, train_generator};
use sftok_core::train::plan::{PlanError, PlanInput, RunPlan, TeacherCodebook, previous};
use sftok_core::train::{StageKind, StopHandle, TrainConfig, TrainEvent, train_data_parallel};

/// What `sftok train` trains: a stage of the tokenizer, or the class-to-image generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainTarget {
    Stage(StageKind),
    /// The MaskGIT generator, on the tokens of --data under --tokenizer.
    Generator,
}

impl std::str::FromStr for TrainTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "generator" => Ok(Self::Generator),
            _ => s
                .parse()
                .map(Self::Stage)
                .map_err(|e: String| format!("{e}, or generator")),
        }
    }
}

impl std::fmt::Display for TrainTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stage(k) => k.fmt(f),
            Self::Generator => f.write_str("generator"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// teacher, stage1, stage2, stage3, or generator (the class-to-image MaskGIT).
    pub stage: TrainTarget,
    /// Folder of training images (searched recursively; jpg, png, webp, bmp).
    #[arg(long)]
    pub data: PathBuf,
    /// The run directory to create (or to continue with --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Model size: tiny, demo, sftok-b, sftok-l (generator: demo or sftok-b).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// The teacher: a teacher run or an imported official teacher (needed by stages 1 and 2).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Generator: the tokenizer (model directory or run) whose tokens it learns; classes are
    /// the first-level sub-folders of --data (a flat folder: unconditional).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Generator: random crops (with flips) tokenized per training image, once, into the run.
    #[arg(long, default_value_t = 8)]
    pub views: usize,
    /// The run (or model directory) this stage starts from; it also carries its teacher.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Stage 2: the vanilla ablation (unmasked positions hold the true codes).
    #[arg(long)]
    pub vanilla: bool,
    /// Stage 2 (SFVR): probability that an unmasked position holds the model's own prediction.
    #[arg(long, default_value_t = 1.0)]
    pub replace_prob: f32,
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches per update.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (default: the paper's for the stage).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warm-up steps (default: 5% of the steps, at most 10k).
    #[arg(long)]
    pub warmup: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training crops: shorter side resized to size x U[1, max_scale] before the random crop.
    #[arg(long, default_value_t = 1.0)]
    pub max_scale: f32,
    /// Step from which the adversarial loss is on (teacher, stage 3); default: off for the
    /// teacher, half-way for stage 3.
    #[arg(long)]
    pub gan_start: Option<u64>,
    /// Turn the adversarial loss off.
    #[arg(long)]
    pub no_gan: bool,
    /// torchvision VGG16 weights (vgg16-397923af.pth) for the perceptual loss.
    #[arg(long, requires = "lpips")]
    pub vgg16: Option<PathBuf>,
    /// LPIPS linear-layer weights (vgg.pth) for the perceptual loss.
    #[arg(long, requires = "vgg16")]
    pub lpips: Option<PathBuf>,
    /// Held-out images measured during training (PSNR, proxy-code accuracy, code use; live and
    /// EMA weights), logged as `heldout_*` in metrics.jsonl: the learning curve to watch.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Steps between held-out measurements (and at the end).
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Teacher: how the codebook learns: `ema` (k-means start, moving average of the encoder
    /// outputs; the default) or `gradient` (the plain VQGAN codebook loss, which collapses when
    /// trained from scratch).
    #[arg(long, default_value = "ema", value_parser = ["ema", "gradient"])]
    pub codebook: String,
    /// Teacher: codes unused for this many steps are moved onto encoder outputs (0: never).
    #[arg(long, default_value_t = 100)]
    pub dead_code_window: u64,
    /// Stages 1 and 2: weight of the soft-embedding loss beside the CE (not in the paper; see
    /// docs/token_stages.md); 0 turns it off
    #[arg(long)]
    pub soft_embedding_weight: Option<f32>,
    /// Stage 3: train the encoder too, end to end in pixel space (the paper freezes it)
    #[arg(long)]
    pub train_encoder: bool,
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    #[arg(long, default_value_t = 200)]
    pub preview_every: u64,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// Data-loading threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// auto, cpu or wgpu.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Data-parallel training on several devices of this machine, instead of --device: a
    /// comma-separated list of cpu, wgpu, wgpu:N (the N-th discrete GPU) or all-gpus. Each batch
    /// is split over them; the first holds the optimiser and the checkpoints.
    #[arg(long)]
    pub devices: Option<String>,
}

impl Args {
    /// What `sftok train <stage> --data <data> --out <out>` means: every other option at its
    /// command-line default (a test checks that the app's Train view plans the same run from
    /// its own defaults).
    pub fn with_defaults(stage: StageKind, data: &Path, out: &Path) -> anyhow::Result<Self> {
        #[derive(clap::Parser)]
        #[command(no_binary_name = true)]
        struct Train {
            #[command(flatten)]
            args: Args,
        }
        let with_value = |flag: &str, path: &Path| {
            let mut arg = OsString::from(flag);
            arg.push(path);
            arg
        };
        let argv = [
            OsString::from(TrainTarget::Stage(stage).to_string()),
            with_value("--data=", data),
            with_value("--out=", out),
        ];
        Ok(<Train as clap::Parser>::try_parse_from(argv)
            .map_err(|e| anyhow::anyhow!("{}", e.render().to_string().trim()))?
            .args)
    }
}

impl Args {
    /// The run these flags ask for (a tokenizer stage; the generator has its own).
    pub fn plan(&self) -> anyhow::Result<RunPlan> {
        let TrainTarget::Stage(stage) = self.stage else {
            anyhow::bail!(
                "the generator is trained by `sftok train generator`, not as a tokenizer stage"
            );
        };
        Ok(RunPlan {
            stage,
            data: self.data.clone(),
            preset: self.preset.clone(),
            teacher: self.teacher.clone(),
            init: self.init.clone(),
            vanilla: self.vanilla,
            replace_prob: self.replace_prob,
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup: self.warmup,
            seed: self.seed,
            max_scale: self.max_scale,
            gan_start: if self.no_gan {
                Some(None)
            } else {
                self.gan_start.map(Some)
            },
            perceptual: match (&self.vgg16, &self.lpips) {
                (Some(vgg16), Some(lpips)) => Some(PerceptualWeights {
                    vgg16: vgg16.clone(),
                    lpips: lpips.clone(),
                }),
                _ => None,
            },
            eval_data: self.eval_data.clone(),
            eval_every: self.eval_every,
            codebook: if self.codebook == "gradient" {
                TeacherCodebook::Gradient
            } else {
                TeacherCodebook::MovingAverage
            },
            dead_code_window: self.dead_code_window,
            soft_embedding_weight: self.soft_embedding_weight,
            train_encoder: self.train_encoder,
            log_every: self.log_every,
            preview_every: self.preview_every,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            workers: self.workers,
        })
    }
}

/// The run configuration of a tokenizer stage ([`RunPlan::config`], which the app calls too).
pub fn config_from_args(args: &Args) -> anyhow::Result<TrainConfig> {
    args.plan()?
        .config()
        .map_err(|e| anyhow::anyhow!(cli_words(&e)))
}

/// What is wrong with a run, and which flag to change.
pub fn cli_words(e: &PlanError) -> String {
    let flag = |input: &PlanInput| match input {
        PlanInput::Data => "--data",
        PlanInput::Teacher => "--teacher",
        PlanInput::Init => "--init",
        PlanInput::Model => "--init",
    };
    match e {
        PlanError::Missing { input, .. } => format!("{e}: check {}", flag(input)),
        PlanError::NotAFolder { input, .. } => format!("{e}: {} takes a folder", flag(input)),
        PlanError::NoTeacher { .. } => format!(
            "{e}: --teacher takes a teacher run (`sftok train teacher`), or a model directory made by `sftok import --teacher`"
        ),
        PlanError::NotAModel { .. } => format!(
            "{e}: --init takes a model directory ({} and {}) or the run that made one",
            sftok_core::checkpoint::CONFIG_FILE,
            sftok_core::checkpoint::MODEL_FILE
        ),
        PlanError::CannotStart { stage, .. } => match stage {
            StageKind::Teacher => format!("{e}: --init takes a teacher run or a model directory"),
            StageKind::Stage1 => format!("{e}: --init takes a stage-1 run or a model directory"),
            _ => format!(
                "{e}: --init takes the stage-{} run or a model directory",
                previous(*stage)
            ),
        },
        PlanError::BatchLargerThanData { images, .. } => format!(
            "{e}: lower --batch-size to {} or add images",
            (*images).max(1)
        ),
        PlanError::NeedsTeacher {
            init_has_none: false,
            ..
        } => format!("{e}: pass --teacher (a teacher run or an imported official teacher)"),
        PlanError::NeedsTeacher {
            init_has_none: true,
            ..
        } => format!("{e}: the --init run carries no teacher, so pass --teacher too"),
        PlanError::NeedsInit { stage } => format!(
            "{e}: pass --init (a stage-{} run or a model directory)",
            previous(*stage)
        ),
        PlanError::RunExists { .. } => {
            format!("{e}: pass --resume to continue it, or choose another --out")
        }
        PlanError::Unreadable { .. } | PlanError::Model(_) => e.to_string(),
    }
}

/// A library error as the command line says it: a run's planning errors name the flags.
fn cli_error(e: sftok_core::SftokError) -> anyhow::Error {
    match e {
        sftok_core::SftokError::Plan(p) => anyhow::anyhow!(cli_words(&p)),
        other => other.into(),
    }
}

/// `sftok train generator`: the run's configuration from the flags.
pub fn generator_config_from_args(args: &Args) -> anyhow::Result<GeneratorTrainConfig> {
    let Some(tokenizer) = args.tokenizer.clone() else {
        anyhow::bail!(
            "the generator learns a tokenizer's tokens: pass --tokenizer (a model directory such \
             as assets/models/sfvr, or a training run)"
        );
    };
    let mut config = GeneratorTrainConfig::demo(args.data.clone(), tokenizer);
    match args.preset.as_str() {
        // The default preset of the tokenizer stages names no generator size: the demo one.
        "demo" | "tiny" => {}
        "sftok-b" => config.model = GeneratorConfig::sftok_b(),
        other => anyhow::bail!("--preset {other}: the generator has the presets demo and sftok-b"),
    }
    config.steps = args.steps;
    config.batch_size = args.batch_size;
    if let Some(lr) = args.lr {
        config.learning_rate = lr;
        config.end_learning_rate = lr / 50.0;
    }
    if let Some(w) = args.warmup {
        config.warmup_steps = w;
    }
    config.views = args.views;
    config.max_scale = args.max_scale;
    config.seed = args.seed;
    config.log_every = args.log_every;
    config.eval_every = args.eval_every;
    config.checkpoint_every = args.checkpoint_every;
    config.keep_checkpoints = args.keep_checkpoints;
    Ok(config)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let generator = match args.stage {
        TrainTarget::Generator => Some(generator_config_from_args(&args)?),
        TrainTarget::Stage(_) => None,
    };
    let config = match &generator {
        Some(_) => None,
        None => {
            // A resumed run keeps its own configuration: only a new one is checked.
            if !args.resume {
                args.plan()?
                    .check()
                    .map_err(|e| anyhow::anyhow!(cli_words(&e)))?;
            }
            Some(config_from_args(&args)?)
        }
    };
    let chosen: Vec<sftok_core::ChosenDevice> = match &args.devices {
        Some(_) if generator.is_some() => {
            anyhow::bail!("the generator trains on one device: use --device")
        }
        Some(list) => sftok_core::choose_devices(list)?,
        None => vec![super::device(args.device)?],
    };
    if chosen.len() > 1 {
        eprintln!(
            "data parallel over {} devices: {}",
            chosen.len(),
            chosen
                .iter()
                .map(|c| c.description.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let devices: Vec<burn::tensor::Device> = chosen.iter().map(|c| c.device.clone()).collect();
    let stop = StopHandle::new();
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\nstopping after this step (a checkpoint will be written)...");
            stop.stop();
        });
    }
    let total = generator
        .as_ref()
        .map_or_else(|| config.as_ref().map_or(0, |c| c.steps), |g| g.steps);
    let mut reported_skips = 0;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} loss {msg} ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}", args.stage));
    // Without a terminal (a log file, nohup, CI) the bar draws nothing, and neither does its
    // `println`: every message then goes to stderr as a plain line, and the metric rows stand in
    // for the bar.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |line: String| {
        if terminal {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let mut emit = |event: TrainEvent| match event {
        TrainEvent::Started {
            resumed_from,
            device,
            ..
        } => {
            say(format!(
                "training on {device}{}",
                resumed_from.map_or(String::new(), |s| format!(", resumed from step {s}"))
            ));
            if let Some(s) = resumed_from {
                bar.set_position(s);
            }
        }
        TrainEvent::Progress {
            step,
            loss,
            images_per_sec,
            ..
        } => {
            bar.set_position(step);
            bar.set_message(format!("{loss:.4}, {images_per_sec:.1} img/s"));
        }
        TrainEvent::SkippedFiles(files) => {
            // Every file skipped since the last report, not only the newest.
            for (path, reason) in files.iter().skip(reported_skips) {
                say(format!(
                    "skipped unreadable file {} ({reason})",
                    path.display()
                ));
            }
            reported_skips = files.len();
            say(format!("{} unreadable files skipped so far", files.len()));
        }
        TrainEvent::Metrics(row) => {
            // The generator's one-time tokenization of the data, before step 1.
            if let (Some(done), Some(of)) = (
                row.get("tokenizing").and_then(|v| v.as_u64()),
                row.get("of").and_then(|v| v.as_u64()),
            ) {
                if terminal {
                    bar.set_message(format!("(tokenizing the images: {done} of {of})"));
                } else if done == of || done % 256 < 16 {
                    eprintln!("tokenizing the images: {done} of {of}");
                }
                return;
            }
            let held: Vec<String> = row
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.strip_prefix("heldout_")?, v.as_f64()?)))
                .map(|(k, v)| format!("{} {v:.3}", k.replace('_', " ")))
                .collect();
            let step = row.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
            if !terminal && held.is_empty() {
                let loss = row.get("loss").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
                say(format!("step {step}/{total}: loss {loss:.4}"));
            }
            if !held.is_empty() {
                say(format!("held-out at step {step}: {}", held.join(", ")));
            }
        }
        TrainEvent::Checkpoint { step, path } => {
            say(format!("checkpoint at step {step}: {}", path.display()))
        }
        TrainEvent::Stopped { step, model_dir } => {
            let line = format!("stopped at step {step}; model in {}", model_dir.display());
            bar.abandon_with_message(line.clone());
            if !terminal {
                eprintln!("{line}");
            }
        }
        TrainEvent::Finished { step, model_dir } => {
            let line = format!("finished at step {step}; model in {}", model_dir.display());
            bar.finish_with_message(line.clone());
            if !terminal {
                eprintln!("{line}");
            }
        }
        // `main` prints the error once; the bar only stops.
        TrainEvent::Failed { .. } => bar.abandon(),
        _ => {}
    };
    match (generator, config) {
        (Some(g), _) => {
            train_generator(g, &args.out, args.resume, &devices[0], &mut emit, &stop)?;
        }
        (None, Some(config)) => {
            train_data_parallel(config, &args.out, args.resume, &devices, &mut emit, &stop)
                .map_err(cli_error)?;
        }
        (None, None) => unreachable!("a configuration was built above"),
    };
    Ok(())
}
