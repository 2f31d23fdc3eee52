//! How freed memory goes back to the operating system, which decides what a training
//! step pays in page faults.
//!
//! glibc returns the top of the heap to the kernel once more than `M_TRIM_THRESHOLD`
//! is free there, and serves large requests with fresh `mmap`s. A training step frees
//! its whole graph at the end (tens of megabytes for the CNNs) and allocates it again
//! in the next step, so with the defaults every step faults its activations back in
//! page by page, zero-filled by the kernel: measured 0.3–0.5 ms of the CNN's ~6 ms
//! step, mostly in `clear_page`.
//!
//! [`keep_freed_pages`] sets both thresholds high, so freed blocks are reused from the
//! heap. It is process-wide: in `parity-report` it applies to every backend alike
//! (candle's tensors and libtorch's CPU allocator go through the same `malloc`). The
//! peak resident size is unchanged by it in principle (pages stay mapped only up to
//! the high-water mark), which `parity-report bench` measures.

/// Keeps freed memory in the process for reuse (glibc; a no-op elsewhere). Returns
/// whether the allocator accepted the settings.
pub fn keep_freed_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // 32 MiB, glibc's largest mmap threshold: above any single tensor of the nine
        // models at batch 25, so their blocks come from the heap.
        const MMAP: libc::c_int = 32 << 20;
        // The heap keeps up to 1 GiB free before it gives memory back.
        const TRIM: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters, under glibc's own lock.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
