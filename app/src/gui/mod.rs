//! The desktop app (eframe/egui 0.37): open images, scrub through the decoding steps, compare two
//! checkpoints, train and fine-tune.
//!
//! Layout of the code: [`app::StudioApp`] owns the persisted [`settings::Settings`], the
//! [`gallery::Gallery`], the [`model_worker::ModelWorker`] (a thread that owns the device and the
//! models) and the [`training::TrainingPanel`] (a thread per run, the Train view's controller).
//! The views, in [`views`], draw the app's state and turn clicks into commands: reconstruct,
//! compare, generate, train. Traces come back from the worker as plain host data
//! ([`trace_data::TraceData`]) and become textures once, so scrubbing is instant.

pub mod app;
pub mod dialogs;
pub mod gallery;
pub mod generation_data;
pub mod gpu_grid;
pub mod model_worker;
pub mod palette;
pub mod settings;
pub mod textures;
pub mod token_grid;
pub mod trace_data;
pub mod training;
pub mod views;

pub use app::StudioApp;

/// Opens the window. The wgpu renderer is the default; `SFTOK_RENDERER=glow` picks OpenGL.
pub fn run() -> anyhow::Result<()> {
    run_with(None, None)
}

/// Opens the window on `view` (or the last view used).
/// `size`: the window's inner size in points (default 1280 x 820).
pub fn run_with(view: Option<settings::View>, size: Option<[f32; 2]>) -> anyhow::Result<()> {
    let wants_glow = std::env::var("SFTOK_RENDERER").is_ok_and(|r| r.eq_ignore_ascii_case("glow"));
    let first = if wants_glow {
        eframe::Renderer::Glow
    } else {
        eframe::Renderer::Wgpu
    };
    // eframe cannot open a second event loop in one process, so a failed renderer cannot be
    // retried with the other here: the message says how to choose it.
    launch(first, view, size).map_err(|e| {
        let hint = if first == eframe::Renderer::Wgpu {
            "; if no Vulkan/Metal/DX12 driver is available, try OpenGL with SFTOK_RENDERER=glow"
        } else {
            ""
        };
        anyhow::anyhow!("the window could not be opened: {e}{hint}")
    })
}

fn launch(
    renderer: eframe::Renderer,
    view: Option<settings::View>,
    size: Option<[f32; 2]>,
) -> eframe::Result {
    let options = eframe::NativeOptions {
        renderer,
        viewport: egui::ViewportBuilder::default()
            .with_title("SFTok Studio")
            .with_inner_size(size.unwrap_or([1280.0, 820.0]))
            .with_min_inner_size([720.0, 480.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "SFTok Studio",
        options,
        Box::new(move |cc| {
            let mut app = StudioApp::new(cc);
            if let Some(view) = view {
                app.settings.view = view;
            }
            Ok(Box::new(app))
        }),
    )
}
