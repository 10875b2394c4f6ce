//! The allocator's pages: a run in subject batches gives back what its ingests freed, and
//! from then on what it frees.

/// Returns the freed pages jemalloc holds to the system (all arenas). The binary keeps freed
/// pages for reuse (no decay, `src/main.rs`), which a whole run's stages do. In a run in
/// subject batches the ingests free large buffers of sizes the batches do not ask for again;
/// kept, they only add to the peak (bench cohort, batches of 500: 1.28 -> 1.14 GB, time
/// unchanged). So a batched run gives them back after each file an ingest parses, after the
/// ingests and after the spill; from then on [`decay_after`] gives freed pages back as the
/// run goes. Without jemalloc as the allocator (the tests), it does nothing that matters.
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

/// How long jemalloc keeps freed pages in a run in subject batches, from the end of its
/// ingests: 200 ms. Each batch frees its tables and the next asks for buffers of other
/// sizes, so pages kept for ever add up over the batches (bench cohort, batches of 100:
/// 0.78 GB at the peak, about 0.41 GB of it in use). Measured side by side on the bench
/// cohort, peak RSS with batches of 100: never 0.78-0.80 GB, 1 s 0.74 GB, 200 ms 0.63-0.65 GB
/// for about 1 s more system time, 0 ms 0.58 GB for 15 s more; with batches of 500 (larger
/// buffers, faulted in again): never 1.12-1.14 GB, 1 s 0.94-0.99 GB, 200 ms 0.90-0.92 GB, for
/// 2-2.7 s more.
pub const BATCH_DECAY_MS: isize = 200;

/// Lets jemalloc give freed pages back to the system `ms` milliseconds after they were freed,
/// in every arena (the binary's default is never, `src/main.rs`). Without jemalloc as the
/// allocator (the tests), it does nothing that matters.
pub fn decay_after(ms: isize) {
    let mut narenas: u32 = 0;
    let mut len = std::mem::size_of::<u32>();
    // SAFETY: documented mallctls; `arenas.narenas` reads an unsigned, the decay settings
    // write an ssize_t.
    unsafe {
        if tikv_jemalloc_sys::mallctl(
            c"arenas.narenas".as_ptr(),
            (&mut narenas as *mut u32).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        ) != 0
        {
            return;
        }
        for i in 0..narenas {
            for kind in ["dirty", "muzzy"] {
                let Ok(name) = std::ffi::CString::new(format!("arena.{i}.{kind}_decay_ms")) else {
                    continue;
                };
                let mut v = ms;
                tikv_jemalloc_sys::mallctl(
                    name.as_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    (&mut v as *mut isize).cast(),
                    std::mem::size_of::<isize>(),
                );
            }
        }
    }
}
