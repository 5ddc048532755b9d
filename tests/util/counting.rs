//! A global allocator that counts allocations while switched on, for allocation-free tests.
//! Each test binary that uses it declares `#[global_allocator] static A: Counting = Counting;`,
//! or, to count what reaches the system past the tile runners' arenas,
//! `static A: ArenaAlloc<Counting> = ArenaAlloc(Counting);`.
//!
//! Two modes: [`count`] counts only the calling thread (safe beside other tests and the test
//! harness, which allocate on their own threads); [`start`]/[`stop`] count every thread, for code
//! that spawns its own threads, and must run in a test binary holding that one test alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Counts `alloc` and `realloc` calls (and bytes), and `dealloc` calls, while counting is on.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised with no destructor: reading it never allocates.
    static THIS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counting() -> bool {
    ON.load(Relaxed) || THIS_THREAD.with(|c| c.get())
}
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static FREES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Relaxed);
            BYTES.fetch_add(l.size(), Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if counting() {
            FREES.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if counting() {
            ALLOCS.fetch_add(1, Relaxed);
            BYTES.fetch_add(n, Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, n) }
    }
}

/// Resets the counters and starts counting on every thread.
pub fn start() {
    ALLOCS.store(0, Relaxed);
    BYTES.store(0, Relaxed);
    FREES.store(0, Relaxed);
    ON.store(true, Relaxed);
}

/// Stops counting and returns (allocations, bytes) since [`start`].
pub fn stop() -> (usize, usize) {
    ON.store(false, Relaxed);
    (ALLOCS.load(Relaxed), BYTES.load(Relaxed))
}

/// Counts the allocations `f` makes on the calling thread. Tests using it must not run
/// concurrently with each other in one binary (the counters are shared): they take a lock.
pub fn count<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCS.store(0, Relaxed);
    BYTES.store(0, Relaxed);
    FREES.store(0, Relaxed);
    THIS_THREAD.with(|c| c.set(true));
    let r = f();
    THIS_THREAD.with(|c| c.set(false));
    (r, ALLOCS.load(Relaxed), BYTES.load(Relaxed))
}

/// `dealloc` calls counted since the last [`start`] or [`count`].
#[allow(dead_code)]
pub fn frees() -> usize {
    FREES.load(Relaxed)
}
