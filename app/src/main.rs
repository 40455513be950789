//! `sftok`: the SFTok Studio desktop app (no subcommand) and command line.

use clap::Parser;
use sftok_app::cli;

fn main() -> std::process::ExitCode {
    // SAFETY: the first statements of main: no other thread exists yet.
    unsafe {
        sftok_core::kernels::blas::prefer_best_core_at_startup();
        give_a_runtime_dir();
    }
    // Before any model runs: reuse freed layer outputs instead of faulting in fresh pages.
    sftok_core::device::keep_freed_memory();
    let args = cli::Cli::parse();
    let result = match args.command {
        Some(command) => cli::run(command),
        None => sftok_app::gui::run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Without a usable `XDG_RUNTIME_DIR` (a plain SSH or container session) the Vulkan driver prints
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment." twice while the GPU is
/// probed, which reads as a failure of the command (issue 18). A private, empty directory is
/// what the variable promises, so one is made for this process.
///
/// # Safety
/// No other thread may be running (this changes the environment).
unsafe fn give_a_runtime_dir() {
    let usable = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .is_some_and(|d| d.is_dir());
    if usable {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc_getuid() };
        let dir = std::env::temp_dir().join(format!("sftok-runtime-{uid}"));
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
        {
            // SAFETY: the caller guarantees a single thread.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
}

#[cfg(unix)]
unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}
