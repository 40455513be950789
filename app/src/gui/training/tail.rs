//! Following a run that another process (or thread) writes: its `metrics.jsonl` read
//! incrementally, and the metric series the plots draw.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Reads the rows appended to a JSON-lines file since the previous read. A file that does not
/// exist yet reads as empty; a last line without its newline is kept until the rest arrives; a
/// file that shrank or was replaced (the trainer rewrites `metrics.jsonl` when it resumes) is
/// read again from the top, and the read says so.
#[derive(Debug)]
pub struct MetricsTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    identity: Option<(u64, u64)>,
}

/// What one [`MetricsTail::read_new`] found.
#[derive(Debug, Default)]
pub struct TailRead {
    /// The file was rewritten: forget the rows read before, `rows` start from its first line.
    pub restarted: bool,
    /// Complete, parseable rows (JSON objects), in file order.
    pub rows: Vec<Value>,
}

impl MetricsTail {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MetricsTail {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
            identity: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_new(&mut self) -> std::io::Result<TailRead> {
        let mut out = TailRead::default();
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.offset > 0 || !self.partial.is_empty() {
                    // Deleted: what was read no longer exists.
                    self.reset();
                    out.restarted = true;
                }
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let identity = file_identity(&meta);
        let replaced = self.identity.is_some() && identity != self.identity;
        if (replaced || meta.len() < self.offset) && (self.offset > 0 || !self.partial.is_empty()) {
            self.reset();
            out.restarted = true;
        }
        self.identity = identity;
        if meta.len() == self.offset {
            return Ok(out);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        if let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') {
            let rest = self.partial.split_off(last_newline + 1);
            let complete = std::mem::replace(&mut self.partial, rest);
            for line in complete.split(|&b| b == b'\n') {
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                // A malformed line is skipped: one bad row must not stop the view.
                if let Ok(row @ Value::Object(_)) = serde_json::from_slice::<Value>(line) {
                    out.rows.push(row);
                }
            }
        }
        Ok(out)
    }

    fn reset(&mut self) {
        self.offset = 0;
        self.partial.clear();
        self.identity = None;
    }
}

#[cfg(unix)]
fn file_identity(meta: &Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_identity(_meta: &Metadata) -> Option<(u64, u64)> {
    None
}

/// Whether a metrics column is a loss term (drawn in the loss plot).
pub fn is_loss_term(name: &str) -> bool {
    name == "loss" || name == "mse" || name.ends_with("_loss")
}

/// Every numeric column of the metric rows as `[step, value]` points, plus the latest row.
#[derive(Debug, Default, Clone)]
pub struct MetricSeries {
    series: BTreeMap<String, Vec<[f64; 2]>>,
    latest: Map<String, Value>,
}

impl MetricSeries {
    pub fn clear(&mut self) {
        self.series.clear();
        self.latest.clear();
    }

    /// Adds a row; rows without a `step` are ignored. A row at or before a step already held
    /// (a run resumed from an earlier checkpoint logs those steps again) replaces the points from
    /// that step on.
    pub fn push(&mut self, row: &Value) -> bool {
        let Some(obj) = row.as_object() else {
            return false;
        };
        let Some(step) = obj.get("step").and_then(Value::as_f64) else {
            return false;
        };
        if self
            .latest
            .get("step")
            .and_then(Value::as_f64)
            .is_some_and(|last| step <= last)
        {
            for points in self.series.values_mut() {
                points.retain(|p| p[0] < step);
            }
            self.series.retain(|_, points| !points.is_empty());
        }
        for (name, value) in obj {
            if name == "step" {
                continue;
            }
            match value.as_f64() {
                Some(v) if v.is_finite() => {
                    self.series.entry(name.clone()).or_default().push([step, v])
                }
                _ => {}
            }
        }
        self.latest = obj.clone();
        true
    }

    pub fn get(&self, name: &str) -> Option<&[[f64; 2]]> {
        self.series.get(name).map(Vec::as_slice)
    }

    /// The loss columns, `loss` (the total) first.
    pub fn loss_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .series
            .keys()
            .map(String::as_str)
            .filter(|n| is_loss_term(n))
            .collect();
        names.sort_by_key(|n| (*n != "loss", *n));
        names
    }

    /// The latest row.
    pub fn latest(&self) -> &Map<String, Value> {
        &self.latest
    }

    pub fn latest_f64(&self, name: &str) -> Option<f64> {
        self.latest.get(name).and_then(Value::as_f64)
    }

    pub fn last_step(&self) -> Option<u64> {
        self.latest.get("step").and_then(Value::as_u64)
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    fn temp_file(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sftok-gui-tail-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("metrics.jsonl")
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn steps(read: &TailRead) -> Vec<u64> {
        read.rows
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn a_file_that_appears_later_is_read_from_its_start() {
        let path = temp_file("later");
        let mut tail = MetricsTail::new(&path);
        let first = tail.read_new().unwrap();
        assert!(first.rows.is_empty() && !first.restarted);
        append(
            &path,
            "{\"step\":10,\"loss\":1.5}\n{\"step\":20,\"loss\":1.25}\n",
        );
        let read = tail.read_new().unwrap();
        assert_eq!(steps(&read), [10, 20]);
        assert!(!read.restarted);
        assert_eq!(read.rows[1]["loss"], json!(1.25));
    }

    #[test]
    fn reads_only_new_lines_and_waits_for_a_partial_last_line() {
        let path = temp_file("partial");
        append(&path, "{\"step\":1,\"loss\":3.0}\n{\"step\":2,\"lo");
        let mut tail = MetricsTail::new(&path);
        assert_eq!(steps(&tail.read_new().unwrap()), [1]);
        // Nothing new: nothing read.
        assert!(tail.read_new().unwrap().rows.is_empty());
        append(&path, "ss\":2.0}\n");
        assert_eq!(steps(&tail.read_new().unwrap()), [2]);
        // A malformed line and a blank one are skipped; CRLF line ends are fine.
        append(
            &path,
            "not json\n\n{\"step\":3,\"loss\":1.0}\r\n{\"step\":4}",
        );
        assert_eq!(steps(&tail.read_new().unwrap()), [3]);
        append(&path, "\n");
        assert_eq!(steps(&tail.read_new().unwrap()), [4]);
        assert!(tail.read_new().unwrap().rows.is_empty());
    }

    #[test]
    fn a_rewritten_file_is_read_again_from_the_top() {
        let path = temp_file("rewritten");
        append(&path, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n");
        let mut tail = MetricsTail::new(&path);
        assert_eq!(steps(&tail.read_new().unwrap()), [1, 2, 3]);
        // What resuming from step 1 does: the file is replaced by a shorter one.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, "{\"step\":1}\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let read = tail.read_new().unwrap();
        assert!(read.restarted);
        assert_eq!(steps(&read), [1]);
        // Replaced by a longer file (same or larger size): noticed through the file's identity.
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            "{\"step\":1}\n{\"step\":5}\n{\"step\":6}\n{\"step\":7}\n",
        )
        .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let read = tail.read_new().unwrap();
        if cfg!(unix) {
            assert!(read.restarted);
            assert_eq!(steps(&read), [1, 5, 6, 7]);
        }
        // Deleted: restarted, and empty until it comes back.
        std::fs::remove_file(&path).unwrap();
        let read = tail.read_new().unwrap();
        assert!(read.restarted && read.rows.is_empty());
        append(&path, "{\"step\":9}\n");
        assert_eq!(steps(&tail.read_new().unwrap()), [9]);
    }

    #[test]
    fn series_keep_numeric_columns_and_replace_relogged_steps() {
        let mut series = MetricSeries::default();
        assert!(!series.push(&json!({"loss": 1.0})));
        for step in [10, 20, 30] {
            series.push(&json!({
                "step": step, "loss": 1.0 / step as f64, "mse": 0.5, "gan_loss": 0.1,
                "lr": 1e-4, "note": "text", "restarted_codes": 0
            }));
        }
        assert_eq!(series.loss_names(), ["loss", "gan_loss", "mse"]);
        assert_eq!(series.get("loss").unwrap().len(), 3);
        assert!(series.get("note").is_none());
        // Resumed from step 10: steps 20 and 30 are logged again.
        series.push(&json!({"step": 20, "loss": 0.9, "lr": 2e-4}));
        assert_eq!(series.get("loss").unwrap(), [[10.0, 0.1], [20.0, 0.9]]);
        assert_eq!(series.get("lr").unwrap().len(), 2);
        assert_eq!(series.get("mse").unwrap(), [[10.0, 0.5]]);
        assert_eq!(series.last_step(), Some(20));
        assert_eq!(series.latest_f64("lr"), Some(2e-4));
        assert!(is_loss_term("disc_loss") && !is_loss_term("lr"));
    }
}
