//! The allocator's pages: a run in subject batches gives back what its ingests freed.

/// Returns the freed pages jemalloc holds to the system (all arenas). The binary keeps freed
/// pages for reuse (no decay, `src/main.rs`), which a whole run's stages do. In a run in
/// subject batches the ingests free large buffers of sizes the batches do not ask for again;
/// kept, they only add to the peak (bench cohort, batches of 500: 1.28 -> 1.14 GB, time
/// unchanged). Giving back after every batch as well lowered it by 0.09 GB more but cost
/// 1.3 s of system time in faulting the pages in again. Without jemalloc as the allocator
/// (the tests), it does nothing that matters.
pub fn give_back() {
    // MALLCTL_ARENAS_ALL
    let name = c"arena.4096.purge";
    // SAFETY: a documented mallctl that reads and writes no value.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
