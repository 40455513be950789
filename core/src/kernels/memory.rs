//! The allocator setting the kernels' output buffers need on the CPU.

/// Makes freed memory stay in the process for reuse, for programs that run the model on the CPU
/// (the `sftok` binary and the benchmarks call it first thing; it changes nothing else).
///
/// Why: each layer's output on the CPU is a fresh buffer, up to 32 MiB at batch 8. By default
/// glibc's malloc serves buffers that large with `mmap` and trims freed memory at the top of the
/// heap, so the next layer's output is faulted in and zeroed by the kernel page by page again.
/// `perf stat` on one SFTok-B transformer block at batch 8 (`probe_vit 8`): 389 000 page faults
/// and 1.2-1.3 s of system time in 14.0-14.4 s of CPU time; with the thresholds below, 99 000 and
/// 0.3-0.4 s.
/// The price is that the process keeps its peak memory until it exits, which a long inference or
/// training run reaches anyway. Other allocators and platforms: nothing to do.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets allocator parameters; called before the heavy
            // allocations. 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}
