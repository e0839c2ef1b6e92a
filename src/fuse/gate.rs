//! Stopping a worker without failing a request: its session threads stop reading from
//! `/dev/fuse`, and the answers it still owes go out, before it hands the connection on.
//!
//! fuser's session threads block in `read(2)` on `/dev/fuse`, and nothing but a request wakes
//! such a read. So a closing worker lets each thread finish the request it is handling and then
//! parks it for good, and sends itself one harmless request per thread (see
//! [`wake_session_threads`]) so that idle threads get to that point too. A request read before
//! the park is answered here; one that arrives after waits in the kernel's queue for the
//! successor. Nothing is dropped either way.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub(crate) struct Gate {
    closing: AtomicBool,
    /// Session threads parked for good.
    parked: AtomicUsize,
    /// Answers owed by tasks that outlived the request handler that started them.
    in_flight: AtomicUsize,
    changed: Mutex<()>,
    wake: Condvar,
}

/// Held by a request handler for its whole run; see [`Gate::turn`].
pub(crate) struct Turn<'a> {
    gate: &'a Gate,
}

/// Held by a task that owes an answer; see [`Gate::owe`].
pub(crate) struct Owed<'a> {
    gate: &'a Gate,
}

impl Gate {
    /// Marks a request handler running on a session thread. When it ends while the gate is
    /// closing, the thread parks instead of going back to read another request.
    pub(crate) fn turn(&self) -> Turn<'_> {
        Turn { gate: self }
    }

    /// Marks an answer owed by a task (a request waiting on the vault).
    pub(crate) fn owe(&self) -> Owed<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Owed { gate: self }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Start closing; then wait until `threads` session threads are parked and no answer is
    /// owed, or `timeout` passes. `wake` is called once, after the gate is closing, to send the
    /// requests that wake idle threads. True when everything stopped in time.
    pub(crate) fn close(&self, threads: usize, wake: impl FnOnce(), timeout: Duration) -> bool {
        self.closing.store(true, Ordering::SeqCst);
        wake();
        let deadline = Instant::now() + timeout;
        let mut guard = self.changed.lock();
        loop {
            if self.parked.load(Ordering::SeqCst) >= threads
                && self.in_flight.load(Ordering::SeqCst) == 0
            {
                return true;
            }
            if self.wake.wait_until(&mut guard, deadline).timed_out() {
                return self.parked.load(Ordering::SeqCst) >= threads
                    && self.in_flight.load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// (parked threads, owed answers), for the log line of a drain that timed out.
    pub(crate) fn state(&self) -> (usize, usize) {
        (
            self.parked.load(Ordering::SeqCst),
            self.in_flight.load(Ordering::SeqCst),
        )
    }

    fn notify(&self) {
        let _guard = self.changed.lock();
        self.wake.notify_all();
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.gate.is_closing() {
            return;
        }
        self.gate.parked.fetch_add(1, Ordering::SeqCst);
        self.gate.notify();
        // This thread reads no more requests; the process exits (or is killed) soon.
        loop {
            std::thread::park();
        }
    }
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.gate.notify();
    }
}

/// Send `threads` GETATTR requests for the mount's root, each from a thread of its own, so that
/// every session thread of this process is woken by one. `AT_STATX_FORCE_SYNC` makes the kernel
/// ask the daemon even when it has the attributes cached. The threads are not joined: the last
/// requests may only be answered by the successor, after this process is gone.
pub(crate) fn wake_session_threads(root: BorrowedFd<'_>, threads: usize) {
    for _ in 0..threads {
        let Ok(fd) = root.try_clone_to_owned() else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("kvfs-wake".into())
            .spawn(move || force_getattr(fd.as_fd()));
    }
}

/// statx of `fd` itself that always reaches the daemon (fstatat has no such flag).
fn force_getattr(fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: statx is zero-initialisable plain data.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, a NUL-terminated empty path with AT_EMPTY_PATH, and a buffer of the
    // right type that outlives the call.
    unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut buf,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closing_parks_each_thread_after_its_request_and_waits_for_owed_answers() {
        let gate = Arc::new(Gate::default());
        // A task owing an answer, finished later.
        let owed = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let _owed = gate.owe();
                std::thread::sleep(Duration::from_millis(150));
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        // Two session threads: each handles one request once the gate closes.
        let handled = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(std::sync::Barrier::new(3));
        for _ in 0..2 {
            let (gate, handled, start) = (gate.clone(), handled.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                loop {
                    let _turn = gate.turn();
                    handled.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let started = Instant::now();
        let stopped = gate.close(
            2,
            || {
                start.wait();
            },
            Duration::from_secs(5),
        );
        assert!(stopped, "state {:?}", gate.state());
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "waited for the owed answer"
        );
        let seen = handled.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            handled.load(Ordering::SeqCst),
            seen,
            "parked threads handle nothing more"
        );
        owed.join().unwrap();
    }

    #[test]
    fn a_drain_that_cannot_finish_says_so() {
        let gate = Gate::default();
        let _owed = gate.owe();
        assert!(!gate.close(0, || {}, Duration::from_millis(50)));
        assert_eq!(gate.state(), (0, 1));
    }
}
