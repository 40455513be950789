//! `sftok`: the SFTok Studio desktop app (no subcommand) and command line.

use clap::Parser;
use sftok_app::cli;

fn main() -> std::process::ExitCode {
    // SAFETY: the first statement of main: no other thread exists yet.
    unsafe { sftok_core::model::blas::prefer_best_core_at_startup() };
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
