//! Evaluates the `pytorch-reader` crate (burn-store's PyTorch reader) on SFTok Studio's own
//! PyTorch fixtures: expected tensors (bytes), official-format .bin files against their
//! safetensors twins, refusals (malicious, legacy), and damaged files (truncated, bit-flipped):
//! does it give the right bytes, an error, or a panic?
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use pytorch_reader::PytorchReader;

fn open(path: &Path, key: Option<&str>) -> Result<Result<PytorchReader, String>, String> {
    catch_unwind(AssertUnwindSafe(|| match key {
        Some(k) => PytorchReader::with_top_level_key(path, k),
        None => PytorchReader::new(path),
    }))
    .map(|r| r.map_err(|e| e.to_string()))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn read_all(r: &PytorchReader) -> Result<HashMap<String, (String, Vec<usize>, Vec<u8>)>, String> {
    let mut out = HashMap::new();
    for (name, t) in r.tensors() {
        let bytes = catch_unwind(AssertUnwindSafe(|| t.read()))
            .map_err(|_| format!("PANIC reading {name}"))?
            .map_err(|e| format!("error reading {name}: {e}"))?;
        out.insert(
            name.clone(),
            (format!("{:?}", t.dtype()), t.shape().to_vec(), bytes),
        );
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.as_path();
    let fixtures = repo.join("core/tests/data/pytorch");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("expected.json")).map(|t| json_without_non_finite(&t)).unwrap())
            .unwrap();
    println!("## expected tensors (core/tests/data/pytorch/expected.json)");
    for (file, tensors) in expected.as_object().unwrap() {
        let key = if file == "nested.pt" { Some("state_dict") } else if file == "protocol5.pt" { Some("model") } else { None };
        match open(&fixtures.join(file), key) {
            Err(p) => println!("{file}: PANIC {p}"),
            Ok(Err(e)) => println!("{file}: error: {e}"),
            Ok(Ok(r)) => match read_all(&r) {
                Err(e) => println!("{file}: {e}"),
                Ok(got) => {
                    let mut ok = 0;
                    let mut bad = Vec::new();
                    for t in tensors.as_array().unwrap() {
                        let name = t["name"].as_str().unwrap();
                        let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
                        match got.get(name) {
                            Some((dt, s, b)) if *s == shape && hex(b) == t["hex"].as_str().unwrap() => { ok += 1; let _ = dt; }
                            Some((dt, s, b)) => bad.push(format!("{name}: {dt} {s:?} ({} bytes) vs {} {shape:?}", b.len(), t["dtype"])),
                            None => bad.push(format!("{name}: missing")),
                        }
                    }
                    println!("{file}: {ok} of {} tensors identical; {} tensors read; differences: {bad:?}", tensors.as_array().unwrap().len(), got.len());
                }
            },
        }
    }
    println!("## refusals");
    for file in ["malicious.pt", "legacy.pt"] {
        match open(&fixtures.join(file), None) {
            Err(p) => println!("{file}: PANIC {p}"),
            Ok(Err(e)) => println!("{file}: refused: {e}"),
            Ok(Ok(r)) => println!("{file}: OPENED with {} tensors ({:?})", r.len(), read_all(&r).map(|m| m.len())),
        }
    }
    println!("## official-format files (tests/data/official) against their safetensors twins");
    let official = repo.join("tests/data/official");
    for (bin, twin) in [
        ("pytorch_model.bin", repo.join("core/tests/data/parity/public/weights.safetensors")),
        ("maskgit-vqgan-teacher.bin", repo.join("core/tests/data/parity/public/teacher.safetensors")),
    ] {
        let twin_bytes = std::fs::read(&twin).unwrap();
        let st = safetensors::SafeTensors::deserialize(&twin_bytes).unwrap();
        match open(&official.join(bin), None) {
            Err(p) => println!("{bin}: PANIC {p}"),
            Ok(Err(e)) => println!("{bin}: error: {e}"),
            Ok(Ok(r)) => match read_all(&r) {
                Err(e) => println!("{bin}: {e}"),
                Ok(got) => {
                    let mut same = 0;
                    let mut diff = Vec::new();
                    for (name, (_, shape, bytes)) in &got {
                        match st.tensor(name) {
                            Ok(t) if t.shape() == shape.as_slice() && t.data() == bytes.as_slice() => same += 1,
                            Ok(_) => diff.push(name.clone()),
                            Err(_) => diff.push(format!("{name} (not in twin)")),
                        }
                    }
                    println!("{bin}: {} tensors; {same} byte-identical to {}; {} differ or missing: {:?}", got.len(), twin.display(), diff.len(), diff.iter().take(5).collect::<Vec<_>>());
                }
            },
        }
    }
    println!("## damaged copies of state_dict.pt and pytorch_model.bin");
    let tmp = std::env::temp_dir().join(format!("pytorch-reader-check-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for src in [fixtures.join("state_dict.pt"), official.join("pytorch_model.bin")] {
        let bytes = std::fs::read(&src).unwrap();
        let (mut panics, mut errors, mut opened_ok, mut read_errors) = (0, 0, 0, 0);
        let mut cases = 0;
        let mut panic_msgs: Vec<String> = Vec::new();
        let cuts: Vec<usize> = (1..64).map(|i| bytes.len() * i / 64).collect();
        let flips: Vec<usize> = (0..256).map(|i| (i * 7919 + 13) % bytes.len()).collect();
        for (kind, at) in cuts.iter().map(|&c| ("cut", c)).chain(flips.iter().map(|&f| ("flip", f))) {
            let mut b = bytes.clone();
            if kind == "cut" { b.truncate(at); } else { b[at] ^= 0xff; }
            let p = tmp.join("damaged.bin");
            std::fs::write(&p, &b).unwrap();
            cases += 1;
            match open(&p, None) {
                Err(m) => { panics += 1; if panic_msgs.len() < 3 { panic_msgs.push(format!("{kind}@{at}: {m}")); } }
                Ok(Err(_)) => errors += 1,
                Ok(Ok(r)) => match read_all(&r) {
                    Ok(_) => opened_ok += 1,
                    Err(e) if e.starts_with("PANIC") => { panics += 1; if panic_msgs.len() < 3 { panic_msgs.push(format!("{kind}@{at}: {e}")); } }
                    Err(_) => read_errors += 1,
                },
            }
        }
        println!("{}: {cases} damaged copies: {errors} refused at open, {read_errors} refused at read, {opened_ok} read without error, {panics} panics {panic_msgs:?}", src.file_name().unwrap().to_string_lossy());
    }
}

/// expected.json holds Infinity and NaN among its float values, which JSON does not; only the
/// names, shapes and bytes are compared here, so those become null.
fn json_without_non_finite(text: &str) -> String {
    text.replace("-Infinity", "null")
        .replace("Infinity", "null")
        .replace("NaN", "null")
}
