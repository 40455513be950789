//! Issue 19's heap corruption at exit: the device probe must keep mesa's EGL driver out of the
//! process, however many threads probe at once.
//!
//! The app probes the wgpu adapters from every model worker it starts. Before 2026-12-07 each
//! probe made its own wgpu instance with every backend (GL through EGL included) and dropped it;
//! the `app_ui` test binary built that way aborted at exit in 6 of 200 runs on a 2-core AMD EPYC
//! (Zen 4) ("corrupted size vs. prev_size in fastbins", "double free or corruption (fasttop)",
//! each in a thread's exit-time free of its thread-specific data or malloc cache), and in 0 of
//! 200 with the probe made once per process with the primary backends (README, issue 19). The
//! processes that aborted had `libEGL_mesa` mapped; the fixed ones do not. This test is that
//! check, in its own binary so that nothing else in the process opens a wgpu instance.

#[cfg(target_os = "linux")]
#[test]
fn concurrent_device_probes_do_not_load_egl() {
    use sftok_core::{DeviceChoice, choose_device};

    let probes: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..3)
                        .map(|_| match choose_device(DeviceChoice::Auto) {
                            Ok(chosen) => chosen.description,
                            Err(e) => format!("error: {e}"),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a probing thread panicked"))
            .collect()
    });
    // Every probe saw the same adapters, so chose the same device.
    assert!(
        probes.iter().all(|p| *p == probes[0]),
        "the probes disagree: {probes:?}"
    );
    let maps = std::fs::read_to_string("/proc/self/maps").expect("reading /proc/self/maps");
    let mut egl: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("libEGL"))
        .map(|l| l.rsplit(' ').next().unwrap_or(l))
        .collect();
    egl.sort_unstable();
    egl.dedup();
    assert!(
        egl.is_empty(),
        "the device probe loaded EGL into the process ({egl:?}); it must probe only the primary \
         backends (Vulkan, Metal, DX12), once per process (core/src/device.rs)"
    );
    eprintln!("device chosen by every probe: {}", probes[0]);
}
