//! Issue 19's exit-time heap corruption, reproduced without the app: several threads probe
//! the wgpu adapters at once, as the app's model workers did, and the process then exits.
//!
//!     cargo run --release --workspace --example probe_race -- old|new [threads] [rounds]
//!
//! `old`: each probe makes its own wgpu instance with every backend (GL through EGL included)
//! and drops it, as `device::adapters` did before; `new`: `choose_device(Auto)`, which probes
//! once per process with the primary backends and keeps that instance. Run it in a loop and
//! count the runs that abort (`scripts/probe_race.sh`).

use burn::tensor::wgpu::wgpu;

fn old_probe() -> usize {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    adapters.len()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("new", String::as_str).to_string();
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mode = mode.clone();
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    match mode.as_str() {
                        "old" => {
                            old_probe();
                        }
                        _ => {
                            let _ = sftok_core::choose_device(sftok_core::DeviceChoice::Auto);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    println!("{mode}: {threads} threads x {rounds} probes done");
}
