//! Keeping the vault's values inside the process, and there only while they are in use.
//!
//! - [`process`]: no core dumps and no debugger or `/proc/<pid>/mem` reader other than root with
//!   `CAP_SYS_PTRACE`. Called first thing by every kvfs process (supervisor, worker, and the
//!   detaching parent), because `execve` resets "dumpable" to 1.
//! - [`ZeroizingAlloc`]: a global allocator that zeroes every block as it is freed (cargo
//!   feature `zeroize-freed-memory`, on by default), so a value dropped by the cache, or a
//!   temporary copy made while parsing or rendering it, does not linger in freed heap memory
//!   where a later core, a swap page or an out-of-bounds read could find it. It catches the copies
//!   no `Zeroize` impl can reach (serde's buffers, reqwest's bodies, base64 and PEM temporaries).

use std::alloc::{GlobalAlloc, Layout, System};

/// Make this process non-dumpable and its core limit zero. Best effort: a failure is logged,
/// not fatal (the values are no less safe than before).
pub(crate) fn process() {
    // SAFETY: PR_SET_DUMPABLE takes a plain integer and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(
            "cannot mark the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
    // Non-dumpable already means no core; a zero limit also covers a core pattern that pipes to
    // a helper, and says so to anyone reading /proc/<pid>/limits.
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `none` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        tracing::warn!(
            "cannot set the core size limit to 0: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The system allocator, zeroing each block before it is returned to it.
///
/// `realloc` is deliberately left to `GlobalAlloc`'s default (allocate, copy, free the old block
/// through `dealloc`): the system's `realloc` may move the block and free the old copy without
/// zeroing it, or shrink in place and leave the tail behind.
pub struct ZeroizingAlloc<A = System>(pub A);

// SAFETY: every method forwards to the inner allocator with the caller's own arguments;
// `dealloc` only writes inside the block it is about to free, which the caller guarantees is
// ours and live.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ZeroizingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // explicit_bzero, unlike a plain memset, is never removed as a dead store before free.
        // SAFETY: `ptr` is a live block of `layout.size()` bytes (GlobalAlloc's contract).
        unsafe {
            libc::explicit_bzero(ptr.cast(), layout.size());
            self.0.dealloc(ptr, layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The system allocator, counting the blocks that reach it with a byte that is not zero.
    struct Inspecting {
        freed: AtomicUsize,
        dirty: AtomicUsize,
    }

    unsafe impl GlobalAlloc for Inspecting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the block is still live here; it is read within its bounds.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            self.freed.fetch_add(1, Ordering::Relaxed);
            if bytes.iter().any(|b| *b != 0) {
                self.dirty.fetch_add(1, Ordering::Relaxed);
            }
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[test]
    fn every_block_reaches_the_system_allocator_zeroed_even_after_a_realloc() {
        let alloc = ZeroizingAlloc(Inspecting {
            freed: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
        });
        let small = Layout::from_size_align(64, 8).unwrap();
        let large = Layout::from_size_align(4096, 8).unwrap();
        // SAFETY: fresh blocks, written and read within their bounds, each freed once.
        unsafe {
            let p = alloc.alloc(small);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xA5, small.size());
            let grown = alloc.realloc(p, small, large.size());
            assert_eq!(*grown.add(63), 0xA5, "realloc keeps the contents");
            std::ptr::write_bytes(grown, 0x5A, large.size());
            let shrunk = alloc.realloc(grown, large, small.size());
            assert_eq!(*shrunk, 0x5A);
            alloc.dealloc(shrunk, small);
        }
        assert_eq!(alloc.0.freed.load(Ordering::Relaxed), 3);
        assert_eq!(alloc.0.dirty.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_process_becomes_non_dumpable_without_a_core_limit() {
        // In a child process, so the test binary itself stays debuggable.
        // SAFETY: fork in a test; the child only calls async-signal-safe functions and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            process();
            let mut limit = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            // SAFETY: as above.
            let ok = unsafe {
                libc::prctl(libc::PR_GET_DUMPABLE) == 0
                    && libc::getrlimit(libc::RLIMIT_CORE, &mut limit) == 0
                    && limit.rlim_cur == 0
                    && limit.rlim_max == 0
            };
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
