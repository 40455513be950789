//! Import of the official formats: `pytorch_model.bin` (zip + pickle, read without running it),
//! the official nested config.json and the teacher `.bin`, into a model directory that reproduces
//! the official outputs; and the messages for files that do not fit.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use sftok_core::SftokError;
use sftok_core::checkpoint::files::read_safetensors_bytes;
use sftok_core::checkpoint::{build_sftok, import_official, load_model_dir};
use sftok_core::config::SftokConfig;
use sftok_core::reconstruct::{ReconstructOptions, generate};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn official_dir() -> PathBuf {
    repo().join("tests/data/official")
}

fn parity_dir() -> PathBuf {
    repo().join("core/tests/data/parity/public")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sftok-import-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn official_bin_and_config_import_and_reproduce_the_official_reconstruction() {
    let device = Device::flex();
    let out = temp_dir("bin");
    let fallback = SftokConfig::sftok_b();
    let loaded = import_official(
        &official_dir().join("pytorch_model.bin"),
        Some(&official_dir().join("config.json")),
        &fallback,
        Some(&official_dir().join("maskgit-vqgan-teacher.bin")),
        &out,
        &device,
    )
    .expect("import succeeds");
    assert_eq!(loaded.config.image_size, 64);
    assert!(loaded.teacher.is_some());

    // The written directory loads with one call and decodes exactly as the official code.
    let reloaded = load_model_dir(&out, &device).expect("model directory loads");
    let io = read_safetensors_bytes(&std::fs::read(parity_dir().join("io.safetensors")).unwrap())
        .unwrap();
    let zq = &io["quant_z_codebook"];
    let zq = Tensor::<4>::from_data(TensorData::new(zq.as_f32(), zq.shape.clone()), &device);
    let trace = generate(
        &reloaded.model,
        zq,
        &ReconstructOptions {
            steps: 8,
            step_images: false,
            ..Default::default()
        },
    );
    let ids: Vec<i64> = trace.final_ids.iter().flatten().copied().collect();
    assert_eq!(ids, io["gen_T8_ids"].as_i64());
    let got = trace
        .pixels
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let want = io["gen_T8_pixels"].as_f32();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 5e-4, "pixels differ by {worst}");
}

#[test]
fn a_checkpoint_of_the_wrong_size_names_each_key_and_shape() {
    let weights = parity_dir().join("weights.safetensors");
    let tensors = read_safetensors_bytes(&std::fs::read(&weights).unwrap()).unwrap();
    let err = build_sftok(&SftokConfig::tiny(), tensors, &Device::flex(), &weights).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SftokError::KeyMismatch { .. }), "{msg}");
    assert!(msg.contains("mis-shaped"), "{msg}");
    assert!(
        msg.contains(
            "encoder.patch_embed.weight: file has [64, 3, 16, 16], model expects [32, 3, 8, 8]"
        ),
        "{msg}"
    );
}

#[test]
fn missing_and_unexpected_keys_are_listed() {
    let weights = parity_dir().join("weights.safetensors");
    let mut tensors = read_safetensors_bytes(&std::fs::read(&weights).unwrap()).unwrap();
    let config = SftokConfig::from_file(&parity_dir().join("config.json")).unwrap();
    tensors.remove("decoder.ln_post.weight");
    let extra = tensors["decoder.ln_post.bias"].clone();
    tensors.insert("decoder.not_a_key".into(), extra);
    let msg = build_sftok(&config, tensors, &Device::flex(), &weights)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("missing key") && msg.contains("decoder.ln_post.weight [64]"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected key") && msg.contains("decoder.not_a_key [64]"),
        "{msg}"
    );
}

#[test]
fn import_checks_its_inputs_first_and_recognises_a_teacher_given_as_weights() {
    let device = Device::flex();
    let out = temp_dir("inputs");
    let fallback = SftokConfig::sftok_b();
    let msg = import_official(
        &official_dir().join("pytorch_model.bin"),
        Some(&official_dir().join("config.json")),
        &fallback,
        Some(Path::new("/no/such/teacher.bin")),
        &out,
        &device,
    )
    .unwrap_err();
    // The library names the file, not a flag (the command line adds its flag).
    assert!(
        matches!(
            &msg,
            sftok_core::SftokError::Import(e)
                if e.input() == sftok_core::checkpoint::model_dir::ImportInput::Teacher
        ),
        "{msg}"
    );
    let msg = msg.to_string();
    assert!(
        msg.contains("the teacher weights file /no/such/teacher.bin does not exist")
            && !msg.contains("--"),
        "{msg}"
    );
    let msg = import_official(
        &official_dir().join("maskgit-vqgan-teacher.bin"),
        Some(&official_dir().join("config.json")),
        &fallback,
        None,
        &out,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("looks like a MaskGIT-VQGAN teacher"), "{msg}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn a_bare_pickle_is_told_from_a_legacy_torch_file() {
    let dir = temp_dir("pickles");
    std::fs::create_dir_all(&dir).unwrap();
    let bare = dir.join("bare.bin");
    std::fs::write(&bare, b"\x80\x02}q\x00.").unwrap();
    let msg = sftok_core::checkpoint::files::read_weights(&bare)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bare pickle") && !msg.contains("legacy"),
        "{msg}"
    );
    // torch < 1.6 starts with the pickled magic number 0x1950a86a20f9469cfc6c.
    let legacy = dir.join("legacy.bin");
    std::fs::write(
        &legacy,
        b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.",
    )
    .unwrap();
    let msg = sftok_core::checkpoint::files::read_weights(&legacy)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("legacy"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_index_offset_other_than_zero_is_refused_not_a_panic() {
    use sftok_core::checkpoint::state::{StoredTensor, Values};
    let weights = parity_dir().join("weights.safetensors");
    let mut tensors = read_safetensors_bytes(&std::fs::read(&weights).unwrap()).unwrap();
    let config = SftokConfig::from_file(&parity_dir().join("config.json")).unwrap();
    tensors.insert(
        "quantize.index_offset".into(),
        StoredTensor {
            shape: vec![1],
            values: Values::I64(vec![1 << 40]),
        },
    );
    let msg = build_sftok(&config, tensors, &Device::flex(), &weights)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("quantize.index_offset is 1099511627776"),
        "{msg}"
    );
}

#[test]
fn a_run_folder_loads_as_the_model_it_publishes() {
    let run = temp_dir("run-folder");
    let model = run.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "teacher.safetensors"] {
        let src = repo().join("assets/models/default").join(f);
        std::fs::copy(src, model.join(f)).unwrap();
    }
    // A run's own config.json is a training configuration, not a model's.
    std::fs::write(run.join("config.json"), "{\"stage\": \"stage1\"}").unwrap();
    let loaded = load_model_dir(&run, &Device::flex()).expect("the run's model/ is used");
    assert!(loaded.teacher.is_some());
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn a_truncated_safetensors_file_is_a_clear_error() {
    let dir = temp_dir("truncated");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "teacher.safetensors"] {
        let src = repo().join("assets/models/default").join(f);
        std::fs::copy(src, dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_model_dir(&dir, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn a_missing_model_directory_says_what_a_model_directory_is() {
    let msg = load_model_dir(Path::new("/nonexistent/model"), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("does not exist") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn cmyk_and_grey_jpegs_become_rgb() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/images");
    for name in ["cmyk.jpg", "grey.jpg", "rgb.png"] {
        let image = sftok_core::image_io::load_rgb(&dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(image.dimensions(), (40, 32), "{name}");
    }
    // The CMYK file holds the same picture: its top-right corner is bright red-ish, as drawn.
    let cmyk = sftok_core::image_io::load_rgb(&dir.join("cmyk.jpg")).unwrap();
    let p = cmyk.get_pixel(39, 0).0;
    assert!(p[0] > 180 && p[1] < 60, "{p:?}");
}

#[test]
fn a_damaged_storage_in_an_official_file_is_refused_not_imported() {
    use sftok_core::checkpoint::pytorch::read_pytorch_bytes;
    let bytes = std::fs::read(official_dir().join("pytorch_model.bin")).unwrap();
    assert!(read_pytorch_bytes(&bytes).is_ok());
    // Where each storage's data lies in the file, from the zip's central directory.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
    let storages: Vec<(String, usize, usize)> = (0..zip.len())
        .map(|i| {
            let f = zip.by_index(i).unwrap();
            (
                f.name().to_string(),
                f.data_start() as usize,
                f.size() as usize,
            )
        })
        .filter(|(name, _, size)| name.contains("/data/") && *size >= 64)
        .collect();
    assert!(storages.len() >= 16, "{}", storages.len());
    // One byte flipped inside each of 16 storages: the zip CRC of a storage its views cover must
    // catch it, where wrong weights would load.
    for (name, start, size) in storages.iter().take(16) {
        let mut copy = bytes.clone();
        copy[start + size / 2] ^= 0x5a;
        match read_pytorch_bytes(&copy) {
            Err(e) => assert!(e.to_string().contains(name.as_str()), "names {name}: {e}"),
            Ok(_) => panic!("{name} damaged at byte {} loaded", start + size / 2),
        }
    }
}
