//! Allocator settings for programs that use the library.
//!
//! A sampler frees each step's tensors and allocates the next step's, of the same sizes. With
//! glibc's default settings those come back as fresh pages the kernel has to zero; with
//! [`keep_freed_memory`] they come from the memory just freed. Call it first thing in `main`,
//! before other threads start (the one-arena limit applies to arenas created after it).
//!
//! glibc maps every block over 32 MiB afresh whatever its settings, and a Stable Diffusion
//! UNet's buffers are larger: the `adeis` command allocates through jemalloc instead
//! (`tikv-jemallocator`, with the options its `main.rs` gives and explains: `thp:always`,
//! `oversize_threshold:0`, 30 s decay), which took a W4 gradient from 36 to 19 s. A program
//! that runs models of that size does the same in its own crate:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
//! #[export_name = "_rjem_malloc_conf"]
//! pub static MALLOC_CONF: &[u8] =
//!     b"thp:always,oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000\0";
//! ```

/// Has glibc's allocator keep the memory a step frees for the next step's tensors. By default
/// it maps buffers from 128 KiB up afresh (raising that bound only as it sees them freed) and
/// returns freed space at the top of its heap to the system, so each network evaluation's
/// outputs came as new pages the kernel had to zero: a 50-step W2 sample took 185,000 page
/// faults, 32,000 with these settings (`perf stat -e page-faults adeis bench --workload w2
/// --method sample --steps 50`), W1's tape at N = 200 28,000 and 10,500. One arena for all
/// threads: with one per thread each kept its own freed memory, and W3's peak grew by 10-25%;
/// with one the peaks are those of the default settings. Elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters, under its own lock; allocations
    // made before keep their place, later ones follow the new parameters.
    unsafe {
        // Buffers up to 32 MiB (glibc's largest dynamic bound) from the heap, not mmap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // Return freed heap to the system only beyond 1 GiB of free space at its top.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
