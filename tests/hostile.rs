//! The `sftok` binary on hostile and broken inputs, made here by the test (nothing large is
//! committed): each must end in a clear error (exit status 1, a message, no panic, no signal)
//! within bounded time, under an address-space limit (`prlimit --as`, 3 GiB) so that a file
//! that makes the program allocate without bound fails the test instead of the machine.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{repo, temp_dir};

/// Address-space limit of every run: far above what a 64 px model needs, far below what the
/// hostile files asked for before their limits (12 GB for a 3 MB zip bomb).
const MEMORY_LIMIT: u64 = 3 << 30;
const TIME_LIMIT: Duration = Duration::from_secs(90);

/// Runs `sftok ARGS` under the memory limit and the time limit; returns (exit code, stderr).
fn run_hostile(args: &[&str]) -> (Option<i32>, String) {
    let bin = env!("CARGO_BIN_EXE_sftok");
    let mut cmd = if Path::new("/usr/bin/prlimit").exists() {
        let mut c = Command::new("/usr/bin/prlimit");
        c.arg(format!("--as={MEMORY_LIMIT}")).arg("--").arg(bin);
        c
    } else {
        eprintln!("prlimit not found: running without the memory limit");
        Command::new(bin)
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sftok");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            panic!("sftok {args:?} ran longer than {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

/// The run failed cleanly: status 1 (not a signal), one short message, the `expect`ed words.
fn assert_clean_error(args: &[&str], expect: &str) {
    let (code, stderr) = run_hostile(args);
    assert_eq!(code, Some(1), "sftok {args:?}: status {code:?}\n{stderr}");
    assert!(
        stderr.contains("error:") && !stderr.contains("panicked"),
        "sftok {args:?}:\n{stderr}"
    );
    assert!(
        stderr.len() < 4000,
        "sftok {args:?}: {} bytes of stderr",
        stderr.len()
    );
    assert!(
        stderr.to_lowercase().contains(&expect.to_lowercase()),
        "sftok {args:?}: expected {expect:?} in\n{stderr}"
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG header (checksums right) claiming `width` x `height` RGBA16, with no pixel data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([16, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IEND", &[]);
    out
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn hostile_images_end_in_clear_errors() {
    let dir = temp_dir("images");
    let huge = dir.join("huge.png");
    std::fs::write(&huge, png_claiming(16384, 16384)).unwrap();
    assert_clean_error(
        &["reconstruct", "--device", "cpu", path_str(&huge)],
        "huge.png",
    );

    let zero = dir.join("zero.png");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    assert_clean_error(
        &["reconstruct", "--device", "cpu", path_str(&zero)],
        "zero.png",
    );

    let fifo = dir.join("fifo.png");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    assert_clean_error(
        &["reconstruct", "--device", "cpu", path_str(&fifo)],
        "fifo.png",
    );

    let text = dir.join("text.png");
    std::fs::write(&text, "not an image at all").unwrap();
    assert_clean_error(
        &["reconstruct", "--device", "cpu", path_str(&text)],
        "text.png",
    );

    // eval over a folder of such files and one good image: a report, the bad ones listed.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("huge.png"), png_claiming(16384, 16384)).unwrap();
    std::fs::write(data.join("text.png"), "no").unwrap();
    std::fs::copy(
        repo().join("assets/samples/chelsea.png"),
        data.join("chelsea.png"),
    )
    .unwrap();
    let json = dir.join("eval.json");
    let model = repo().join("assets/models/default");
    let (code, stderr) = run_hostile(&[
        "eval",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--json",
        path_str(&json),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["images"], 1);
    assert_eq!(report["skipped"].as_array().unwrap().len(), 2, "{report}");
}

/// A deflated zip whose entries are given; the `byteorder` one inflates to `bomb` bytes.
fn torch_zip_with_bomb(bomb: usize) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.start_file("archive/data.pkl", options).unwrap();
    writer.write_all(b"\x80\x02}q\x00.").unwrap(); // an empty dict
    writer.start_file("archive/byteorder", options).unwrap();
    let block = vec![b'l'; 1 << 20];
    for _ in 0..bomb >> 20 {
        writer.write_all(&block).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[test]
fn hostile_imports_and_configs_end_in_clear_errors() {
    let dir = temp_dir("imports");
    // 3.5 GiB of inflated `byteorder` in a file of a few MB: above the memory limit if read.
    let bomb = dir.join("pytorch_model.bin");
    std::fs::write(&bomb, torch_zip_with_bomb(3584 << 20)).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 16 << 20);
    let out = dir.join("imported");
    assert_clean_error(
        &[
            "import",
            "--weights",
            path_str(&bomb),
            "--out",
            path_str(&out),
        ],
        "byteorder",
    );

    // Model directories whose config asks for absurd sizes.
    let sample = repo().join("assets/samples/chelsea.png");
    for (field, value) in [
        ("image_size", serde_json::json!(1_000_000)),
        ("num_latent_tokens", serde_json::json!(1_000_000_000u64)),
        ("quantizer.codebook_size", serde_json::json!(1e12)),
        ("quantizer.token_size", serde_json::json!(0)),
        (
            "quantizer.sinkhorn_iters",
            serde_json::json!(1_000_000_000u64),
        ),
        ("encoder.depth", serde_json::json!(1_000_000)),
    ] {
        let model = dir.join(field);
        std::fs::create_dir_all(&model).unwrap();
        let source = repo().join("assets/models/default");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
                .unwrap();
        let mut slot = &mut config;
        for part in field.split('.') {
            slot = &mut slot[part];
        }
        *slot = value;
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        std::fs::copy(
            source.join("model.safetensors"),
            model.join("model.safetensors"),
        )
        .unwrap();
        let name = field.rsplit('.').next().unwrap();
        assert_clean_error(
            &[
                "reconstruct",
                "--device",
                "cpu",
                "--model",
                path_str(&model),
                path_str(&sample),
            ],
            name,
        );
    }

    // Generator directories likewise.
    for (field, value) in [
        ("hidden_size", serde_json::json!(1_000_000_000u64)),
        ("codebook_size", serde_json::json!(1e12)),
        ("num_hidden_layers", serde_json::json!(0)),
        ("image_seq_len", serde_json::json!(-3)),
    ] {
        let generator = dir.join(format!("generator-{field}"));
        std::fs::create_dir_all(&generator).unwrap();
        let source = repo().join("assets/models/generator");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
                .unwrap();
        config[field] = value;
        std::fs::write(generator.join("config.json"), config.to_string()).unwrap();
        std::fs::write(generator.join("model.safetensors"), b"not weights").unwrap();
        assert_clean_error(
            &[
                "generate",
                "--device",
                "cpu",
                "--generator",
                path_str(&generator),
            ],
            field,
        );
    }
}
