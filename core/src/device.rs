//! Choosing where models run: burn's CPU backend (flex) or a GPU through burn's wgpu backend.

use burn::tensor::{Device, DeviceKind};

use crate::error::{Result, SftokError};

/// `--device auto|cpu|wgpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A real GPU adapter through wgpu when there is one, else the CPU backend.
    #[default]
    Auto,
    /// burn's pure-Rust CPU backend (flex).
    Cpu,
    /// burn's wgpu backend on the best adapter (which may be a software driver such as lavapipe).
    Wgpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            _ => Err(format!("unknown device `{s}`: use auto, cpu or wgpu")),
        }
    }
}

/// Makes freed memory stay in the process for reuse (see [`crate::kernels::memory`]).
pub fn keep_freed_memory() {
    crate::kernels::memory::keep_freed_memory();
}

/// Runs `f`, work on `device`, on a thread of rayon's global pool when `device` is burn's CPU
/// backend and the caller is not a pool thread already; otherwise runs it where it is.
///
/// Why: burn's CPU backend and this crate's CPU kernels split each operation over rayon's global
/// pool. An operation started from outside the pool hands its job to the pool and puts the caller
/// to sleep until it is done (a futex wake and a sleep per operation, thousands of them in a
/// training step, with the caller a third thread competing for the cores); a pool thread works on
/// the job itself. A stage-1 step at the demo preset on 2 cores measured 4-12 % faster this way
/// (three pairs of runs, `bench_train` on the pool and off it). GPU work stays on the caller's
/// thread, so that waiting on the GPU never holds a pool thread that CPU work could use.
pub fn on_compute_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if *device != Device::flex() || rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// A device ready to use, and words that say which it is.
#[derive(Debug, Clone)]
pub struct ChosenDevice {
    pub device: Device,
    pub description: String,
}

/// Resolves a choice to a device.
pub fn choose_device(choice: DeviceChoice) -> Result<ChosenDevice> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Wgpu => {
            let adapter = first_adapter(false).ok_or_else(|| {
                SftokError::Device(
                    "no wgpu adapter found (no GPU driver and no software Vulkan driver such as mesa's lavapipe); use --device cpu".into(),
                )
            })?;
            Ok(ChosenDevice {
                device: Device::wgpu(DeviceKind::DefaultDevice),
                description: format!("wgpu ({adapter})"),
            })
        }
        DeviceChoice::Auto => match first_adapter(true) {
            Some(adapter) => Ok(ChosenDevice {
                device: Device::wgpu(DeviceKind::DefaultDevice),
                description: format!("wgpu ({adapter})"),
            }),
            None => Ok(cpu()),
        },
    }
}

/// Devices for data-parallel training on one machine, from a comma-separated list:
/// - `cpu`: burn's CPU backend;
/// - `wgpu`: wgpu's default adapter;
/// - `wgpu:N`: the N-th discrete GPU wgpu finds (0-based, burn's `DeviceKind::DiscreteGpu(N)`);
/// - `all-gpus`: every discrete GPU wgpu finds.
///
/// Each device may appear once. The first one holds the optimiser and the checkpoints.
pub fn choose_devices(spec: &str) -> Result<Vec<ChosenDevice>> {
    let gpus = || discrete_gpus();
    let mut chosen: Vec<(String, ChosenDevice)> = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let picked: Vec<(String, ChosenDevice)> = match item {
            "" => {
                return Err(SftokError::Device(format!(
                    "empty entry in the device list `{spec}`; write e.g. wgpu:0,wgpu:1"
                )));
            }
            "cpu" | "flex" => vec![("cpu".into(), cpu())],
            "wgpu" | "gpu" => vec![("wgpu".into(), choose_device(DeviceChoice::Wgpu)?)],
            "all-gpus" => {
                let found = gpus();
                if found.is_empty() {
                    return Err(SftokError::Device(
                        "all-gpus: wgpu finds no discrete GPU on this machine; use --device cpu or wgpu".into(),
                    ));
                }
                found
                    .into_iter()
                    .enumerate()
                    .map(|(i, name)| (format!("wgpu:{i}"), discrete(i, &name)))
                    .collect()
            }
            other => match other.strip_prefix("wgpu:").map(str::parse::<usize>) {
                Some(Ok(i)) => {
                    let found = gpus();
                    let Some(name) = found.get(i) else {
                        return Err(SftokError::Device(format!(
                            "wgpu:{i}: wgpu finds {} discrete GPU{} on this machine ({}); indices start at 0",
                            found.len(),
                            if found.len() == 1 { "" } else { "s" },
                            if found.is_empty() {
                                "none".to_string()
                            } else {
                                found.join(", ")
                            }
                        )));
                    };
                    vec![(format!("wgpu:{i}"), discrete(i, name))]
                }
                _ => {
                    return Err(SftokError::Device(format!(
                        "unknown device `{other}` in `{spec}`: use cpu, wgpu, wgpu:N (the N-th discrete GPU) or all-gpus"
                    )));
                }
            },
        };
        for (key, device) in picked {
            if chosen.iter().any(|(k, _)| *k == key) {
                return Err(SftokError::Device(format!(
                    "`{key}` appears twice in the device list `{spec}`: give each device once"
                )));
            }
            chosen.push((key, device));
        }
    }
    Ok(chosen.into_iter().map(|(_, d)| d).collect())
}

fn discrete(index: usize, name: &str) -> ChosenDevice {
    ChosenDevice {
        device: Device::wgpu(DeviceKind::DiscreteGpu(index)),
        description: format!("wgpu:{index} ({name})"),
    }
}

/// Names of the discrete GPUs wgpu finds, in its order.
fn discrete_gpus() -> Vec<String> {
    use burn::tensor::wgpu::wgpu;
    adapters()
        .into_iter()
        .filter(|info| info.device_type == wgpu::DeviceType::DiscreteGpu)
        .map(|info| format!("{} via {:?}", info.name, info.backend))
        .collect()
}

/// What wgpu reports of each adapter it finds, probed once per process.
///
/// Why once, and why the probe's instance is never dropped: dropping a wgpu instance unloads
/// the drivers it opened (`libvulkan`'s ICDs, and `libEGL` for the GL backend) and terminates
/// the EGL display, which mesa shares between every user in the process; mesa's drivers (and
/// the LLVM inside lavapipe and llvmpipe) register `atexit` destructors. The app probes from
/// each model worker it starts, and the tests start several apps at once, so probes ran
/// concurrently and each unloaded what the others had opened. That was the cause of issue 19's
/// aborts at exit ("double free or corruption", "corrupted size vs. prev_size"): on a 2-core AMD
/// EPYC (Zen 4) the `app_ui` test binary with the old per-call probe aborted in 6 of 200 runs,
/// each in an exiting thread's free of its thread-specific data or malloc cache, and with this
/// probe in 0 of 200 (2026-12-07, `scripts/soak_app_ui.sh`); the failing processes had mesa's
/// EGL driver mapped, this probe keeps it out (`core/tests/device_probe.rs` checks that, and
/// fails on the old probe). Only the primary backends (Vulkan, Metal, DX12) are probed: they
/// are the ones burn's wgpu backend runs on, and they keep EGL out of the process. Enumerating
/// adapters can panic inside some drivers; a panic here means "no adapter".
fn adapters() -> Vec<burn::tensor::wgpu::wgpu::AdapterInfo> {
    use burn::tensor::wgpu::wgpu;
    static ADAPTERS: std::sync::OnceLock<Vec<wgpu::AdapterInfo>> = std::sync::OnceLock::new();
    ADAPTERS
        .get_or_init(|| {
            std::panic::catch_unwind(|| {
                let mut descriptor =
                    wgpu::InstanceDescriptor::new_without_display_handle_from_env();
                descriptor.backends = wgpu::Backends::PRIMARY;
                let instance = wgpu::Instance::new(descriptor);
                let adapters =
                    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
                let infos = adapters.into_iter().map(|a| a.get_info()).collect();
                // Kept for the process's life (see above).
                std::mem::forget(instance);
                infos
            })
            .unwrap_or_default()
        })
        .clone()
}

fn cpu() -> ChosenDevice {
    ChosenDevice {
        device: Device::flex(),
        description: format!(
            "cpu (burn flex, {} threads; kernels: {}; matrix products: {})",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            crate::kernels::instruction_set(),
            crate::kernels::blas::backend()
        ),
    }
}

/// The name of the first wgpu adapter; with `hardware_only`, software rasterisers (device type
/// CPU, such as lavapipe or llvmpipe) do not count.
fn first_adapter(hardware_only: bool) -> Option<String> {
    use burn::tensor::wgpu::wgpu;
    adapters()
        .into_iter()
        .find(|info| !hardware_only || info.device_type != wgpu::DeviceType::Cpu)
        .map(|info| format!("{} via {:?}", info.name, info.backend))
}

#[cfg(test)]
mod device_list_tests {
    use super::*;

    #[test]
    fn device_lists_are_parsed_and_checked() {
        let one = choose_devices("cpu").unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].description.starts_with("cpu"));
        for (spec, says) in [
            ("cpu,cpu", "appears twice"),
            ("cpu,", "empty entry"),
            ("tpu", "unknown device `tpu`"),
            ("wgpu:x", "unknown device `wgpu:x`"),
        ] {
            let err = choose_devices(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
        // No machine that runs the tests has 1000 GPUs: the message says how many there are.
        let err = choose_devices("wgpu:999").unwrap_err().to_string();
        assert!(err.contains("discrete GPU"), "{err}");
    }
}

#[cfg(test)]
mod compute_pool_tests {
    use super::*;

    #[test]
    fn cpu_work_moves_onto_the_pool_and_gpu_work_stays_put() {
        // This test's own thread is not one of rayon's.
        assert!(rayon::current_thread_index().is_none());
        let caller = std::thread::current().id();
        let (on_pool, nested) = on_compute_pool(&Device::flex().autodiff(), || {
            let here = std::thread::current().id();
            // A nested call (a training step calling `reconstruct`, say) stays on its thread.
            let nested = on_compute_pool(&Device::flex(), || std::thread::current().id());
            (
                rayon::current_thread_index().is_some() && here != caller,
                nested == here,
            )
        });
        assert!(on_pool, "CPU work should run on a thread of rayon's pool");
        assert!(nested, "a nested call should run where it is");
        // Naming a wgpu device starts nothing, so this needs no adapter.
        let gpu = Device::wgpu(DeviceKind::DiscreteGpu(0));
        let stayed = on_compute_pool(&gpu, || std::thread::current().id() == caller);
        assert!(stayed, "GPU work should stay on the caller's thread");
    }
}
