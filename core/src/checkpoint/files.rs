//! Weight files: safetensors (ours and the official), PyTorch `.bin` (read without executing
//! pickle code), and atomic writes.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::pytorch::{RawDType, RawTensor, read_pytorch_bytes, read_pytorch_file};
use super::state::{StateDict, StoredTensor, Values};
use crate::error::{Result, SftokError};

fn weights_error(path: &Path, message: impl Into<String>) -> SftokError {
    SftokError::Weights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a safetensors or PyTorch (zip) weights file into a state dict, by content, not by name.
pub fn read_weights(path: &Path) -> Result<StateDict> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4);
    File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .map_err(|e| SftokError::io(path, e))?;
    if head.starts_with(b"PK\x03\x04") {
        // Entry by entry through the zip index (only data.pkl and the storages are inflated).
        let raw = read_pytorch_file(path).map_err(|e| weights_error(path, e.to_string()))?;
        return Ok(raw
            .into_iter()
            .map(|t| (t.name.clone(), StoredTensor::from(t)))
            .collect());
    }
    let bytes = std::fs::read(path).map_err(|e| SftokError::io(path, e))?;
    read_safetensors_bytes(&bytes).map_err(|message| {
        // A pickle opcode (PROTO) at the start: PyTorch's pre-1.6 format or a bare pickle, which
        // the PyTorch reader tells apart. (Checked only after safetensors failed: a safetensors
        // header length can start with the same byte.)
        if bytes.first() == Some(&0x80) {
            match read_pytorch_bytes(&bytes) {
                Err(e) => weights_error(path, e.to_string()),
                Ok(_) => weights_error(path, message),
            }
        } else {
            weights_error(path, message)
        }
    })
}

/// Parses safetensors bytes (float32/16, bfloat16, float64 and integer tensors).
pub fn read_safetensors_bytes(bytes: &[u8]) -> std::result::Result<StateDict, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        format!("not a readable safetensors or PyTorch file ({e}); it may be truncated")
    })?;
    let mut out = StateDict::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => RawDType::F32,
            Dtype::F16 => RawDType::F16,
            Dtype::BF16 => RawDType::BF16,
            Dtype::F64 => RawDType::F64,
            Dtype::I64 => RawDType::I64,
            Dtype::I32 => RawDType::I32,
            Dtype::I16 => RawDType::I16,
            Dtype::I8 => RawDType::I8,
            Dtype::U8 => RawDType::U8,
            Dtype::BOOL => RawDType::Bool,
            other => return Err(format!("tensor `{name}` has unsupported dtype {other:?}")),
        };
        let raw = RawTensor {
            name: name.clone(),
            dtype,
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        };
        out.insert(name, StoredTensor::from(raw));
    }
    Ok(out)
}

/// Serialises a state dict as safetensors (float32 and int64), with string metadata.
pub fn safetensors_bytes(
    tensors: &StateDict,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let (dtype, bytes) = match &t.values {
                Values::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Values::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (name.clone(), dtype, t.shape.clone(), bytes)
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| SftokError::Other(format!("cannot serialise `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| SftokError::Other(format!("cannot serialise weights: {e}")))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename, then
/// fsync of the folder. A crash at any point leaves either the old file or the new one, never a
/// half-written one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| SftokError::write(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp: PathBuf = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(SftokError::write(path, e));
    }
    Ok(())
}

/// Writes a state dict as a safetensors file, atomically.
pub fn write_safetensors(path: &Path, tensors: &StateDict) -> Result<()> {
    write_atomic(path, &safetensors_bytes(tensors, None)?)
}
