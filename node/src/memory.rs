//! Giving freed memory back to the OS.
//!
//! A node's steady state is small, but some work allocates a lot for a moment: a Raft
//! snapshot serializes the whole desired state (tens of MB with 10,000 apps), a full
//! reconciler pass builds every Deployment's plan. glibc's malloc keeps what such a
//! burst freed, in whichever arenas it used, so the node's resident memory stays at
//! its highest point. So: large blocks are always mapped on their own (freed at once,
//! not kept in an arena; glibc would otherwise raise that threshold to the largest
//! block ever freed), there is an arena per core rather than eight per core, and after
//! a burst the arenas' free pages are returned. Elsewhere (other allocators and
//! platforms) both functions do nothing.

/// Blocks at least this large are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// Sets the allocator up, once, before the node allocates much.
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // One arena per core, not glibc's eight: the node's many short-lived threads
        // (blocking tasks) would each leave memory in an arena of their own.
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes glibc's own settings; any value is accepted or
        // refused (0 returned), never undefined.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Returns the free pages malloc holds to the OS (after a burst of work).
pub(crate) fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes malloc's own locks; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
