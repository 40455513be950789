//! Helpers shared by the end-to-end tests of the `sftok` binary (each test file is its own crate
//! and uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `sftok` binary built for this test run.
pub fn sftok() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sftok"))
}

/// The repository root (the tests live beside the app crate).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh, empty folder for one test, named after the test file, `tag` and this process.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sftok-{}-{tag}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The standard error of a command that must have refused its input: exit code 1 (an error
/// message), not a panic.
pub fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a panic, not a message: {stderr}"
    );
    stderr
}
