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

fn cpu() -> ChosenDevice {
    ChosenDevice {
        device: Device::flex(),
        description: format!(
            "cpu (burn flex, {} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    }
}

/// The name of the first wgpu adapter; with `hardware_only`, software rasterisers (device type
/// CPU, such as lavapipe or llvmpipe) do not count.
fn first_adapter(hardware_only: bool) -> Option<String> {
    use burn::tensor::wgpu::wgpu;
    // Enumerating adapters can panic inside some drivers; a panic here means "no adapter".
    std::panic::catch_unwind(|| {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        adapters
            .into_iter()
            .map(|a| a.get_info())
            .find(|info| !hardware_only || info.device_type != wgpu::DeviceType::Cpu)
            .map(|info| format!("{} via {:?}", info.name, info.backend))
    })
    .ok()
    .flatten()
}
