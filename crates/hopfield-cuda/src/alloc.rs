//! CPU runtime tuning: keeping freed memory in the process.
//!
//! Every candle op allocates its output. glibc's malloc hands blocks above its mmap threshold
//! straight back to the operating system when they are freed, so the next tensor of the same size
//! page-faults all its pages in again (profiles of a Hopfield forward+backward spend about a third
//! of the time in the kernel's page-fault and page-clearing code). Raising the thresholds keeps
//! those blocks for reuse; on the benchmark shapes this roughly halves the time of both
//! hopfield-rs and PyTorch (see `docs/performance.md`).

/// Tells glibc's malloc to keep freed memory for reuse (mmap threshold and trim threshold at
/// their maximum, 256 MiB top pad). Process-wide, so it is the application's choice: call it once
/// at startup. Returns whether every setting was accepted; does nothing (and returns `false`)
/// on platforms other than Linux with glibc. The same can be had without code through the
/// environment: `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`.
///
/// ```
/// let tuned = hopfield_cuda::tune_allocator();
/// assert_eq!(tuned, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tunables; any value is memory-safe.
        unsafe {
            // glibc caps the mmap threshold (32 MiB on 64-bit); fall back to the cap if the
            // maximum is refused.
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX) == 1
                || libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1;
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1;
            let pad = libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1;
            mmap && trim && pad
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
