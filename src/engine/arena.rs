//! A per-thread bump arena behind the global allocator, so a tract run makes no call to the
//! system allocator.
//!
//! tract 0.23 allocates every operator's output on every run (~430 blocks, ~38 MB per tile of
//! the seed U-Net) and has no memory arena of its own. [`ArenaAlloc`] is a global allocator that
//! serves the allocations of a thread from that thread's [`Arena`] while [`Arena::run`] is on,
//! and from the wrapped allocator otherwise. A run's allocation sequence is the same every time
//! (fixed shapes), so the arena is sized by the first run (everything it could not hold is
//! counted) and grown once; later runs touch the same addresses and reset in O(1).
//!
//! Safety net: every block taken during a run must be given back before the run ends, or the
//! next run would hand out its memory again; [`Arena::run`] aborts the process loudly if one is
//! kept, and a run that panics poisons its arena (no later run, memory never reused or freed),
//! since a caught unwind would otherwise skip that check. Blocks freed on another thread are found through a small global registry of regions.
//!
//! The binary installs it (`#[global_allocator] static A: ArenaAlloc = ArenaAlloc(System);`).
//! When it is not installed (a library user with another allocator), [`installed`] is false and
//! runners run without an arena.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::null;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

/// The global allocator: thread arenas while a run is on, `A` otherwise.
pub struct ArenaAlloc<A = System>(pub A);

/// Blocks are multiples of this, aligned to it (a cache line), so a freed block fits any later
/// request of its size class.
const GRAIN: usize = 64;
/// Size classes with a free list each; tract's runs use a few dozen distinct tensor sizes.
const BINS: usize = 48;

/// A free list of blocks of one size, linked through their first word.
struct Bin {
    size: AtomicUsize,
    head: AtomicUsize,
}

/// Memory of one arena. Its address is stable (boxed) because the allocator reaches it through
/// a thread-local pointer and the registry.
struct Region {
    base: usize,
    cap: usize,
    /// Bump offset from `base` (only the owning thread moves it).
    top: AtomicUsize,
    /// Blocks handed out and not yet given back.
    live: AtomicUsize,
    /// Highest `top` reached in the current run.
    high: AtomicUsize,
    /// Bytes (with alignment slack) the run asked for that did not fit.
    spilled: AtomicUsize,
    /// A run unwound (panicked) with blocks possibly still referenced: the memory is never
    /// handed out again nor freed.
    poisoned: AtomicBool,
    /// Freed blocks by size, reused before fresh memory: the next tensor of a shape lands
    /// where the last one was, still in cache.
    bins: [Bin; BINS],
}

impl Region {
    fn new(base: usize, cap: usize) -> Region {
        Region {
            base,
            cap,
            top: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            high: AtomicUsize::new(0),
            spilled: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            bins: [const {
                Bin {
                    size: AtomicUsize::new(0),
                    head: AtomicUsize::new(0),
                }
            }; BINS],
        }
    }

    fn contains(&self, p: *mut u8) -> bool {
        let p = p as usize;
        p >= self.base && p < self.base + self.cap
    }

    /// Empties the arena: the bump offset and every free list.
    fn reset(&self) {
        self.top.store(0, Relaxed);
        for b in &self.bins {
            b.size.store(0, Relaxed);
            b.head.store(0, Relaxed);
        }
    }

    fn take(&self, l: Layout) -> Option<*mut u8> {
        let size = l.size().checked_next_multiple_of(GRAIN)?;
        for b in &self.bins {
            let head = b.head.load(Relaxed);
            if b.size.load(Relaxed) == size && head != 0 && head % l.align() == 0 {
                // SAFETY: a free block of this region; its first word links the next one.
                b.head.store(unsafe { *(head as *const usize) }, Relaxed);
                self.live.fetch_add(1, Relaxed);
                return Some(head as *mut u8);
            }
        }
        let top = self.top.load(Relaxed);
        let start = (self.base + top).next_multiple_of(l.align().max(GRAIN));
        let end = start.checked_add(size)?;
        if end > self.base + self.cap {
            self.spilled.fetch_add(size + l.align(), Relaxed);
            return None;
        }
        let top = end - self.base;
        self.top.store(top, Relaxed);
        self.live.fetch_add(1, Relaxed);
        if top > self.high.load(Relaxed) {
            self.high.store(top, Relaxed);
        }
        Some(start as *mut u8)
    }

    /// Gives a block back. On the owning thread its space is reused: the topmost block by
    /// lowering the bump offset, others through the free list of their size.
    fn give(&self, p: *mut u8, size: usize, owner: bool) {
        let left = self.live.fetch_sub(1, Relaxed) - 1;
        if !owner {
            // Only the owner touches the lists; the block comes back at the next reset.
            return;
        }
        if left == 0 {
            self.reset();
            return;
        }
        let size = size.next_multiple_of(GRAIN);
        if p as usize + size == self.base + self.top.load(Relaxed) {
            self.top.store(p as usize - self.base, Relaxed);
            return;
        }
        let bin = self
            .bins
            .iter()
            .find(|b| b.size.load(Relaxed) == size)
            .or_else(|| self.bins.iter().find(|b| b.size.load(Relaxed) == 0));
        if let Some(b) = bin {
            b.size.store(size, Relaxed);
            // SAFETY: the block is ours again and at least GRAIN bytes long.
            unsafe { *(p as *mut usize) = b.head.load(Relaxed) };
            b.head.store(p as usize, Relaxed);
        }
        // No free bin: the block stays unused until the arena empties.
    }
}

thread_local! {
    // Const-initialised, no destructor: reading it never allocates, even inside the allocator.
    static CURRENT: Cell<*const Region> = const { Cell::new(null()) };
}

const SLOTS: usize = 64;
/// Regions of all arenas alive, so a block freed by a thread other than its arena's owner (or
/// outside the run) is still recognised as arena memory and never passed to the system.
static REGISTRY: [AtomicPtr<Region>; SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

fn current() -> *const Region {
    CURRENT.try_with(Cell::get).unwrap_or(null())
}

fn registered_region(p: *mut u8) -> Option<&'static Region> {
    if REGISTERED.load(Relaxed) == 0 {
        return None;
    }
    REGISTRY.iter().find_map(|slot| {
        let r = slot.load(Relaxed);
        // SAFETY: a registered region stays allocated until it is unregistered (Arena::drop),
        // which only happens when it holds no live block, so no pointer into it is being freed.
        (!r.is_null() && unsafe { (*r).contains(p) }).then(|| unsafe { &*r })
    })
}

// SAFETY: blocks come either from the wrapped allocator (and go back to it) or from a region,
// which hands out each block once, aligned as asked, until it is given back (Region::take/give).
unsafe impl<A: GlobalAlloc> GlobalAlloc for ArenaAlloc<A> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let r = current();
        if !r.is_null() {
            // SAFETY: CURRENT points at a live region while its Arena::run is on this thread.
            if let Some(p) = unsafe { (*r).take(l) } {
                return p;
            }
        }
        // SAFETY: our caller's contract for `alloc` (non-zero size) is passed on unchanged.
        unsafe { self.0.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let r = current();
        // SAFETY: CURRENT points at a live region while its Arena::run is on this thread.
        if !r.is_null() && unsafe { (*r).contains(p) } {
            // SAFETY: as above; `p` lies in it, so it was one of its blocks.
            unsafe { (*r).give(p, l.size(), true) };
            return;
        }
        if let Some(region) = registered_region(p) {
            region.give(p, l.size(), false);
            return;
        }
        // SAFETY: `p` is in no region, so the wrapped allocator gave it out.
        unsafe { self.0.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let r = current();
        // SAFETY: CURRENT points at a live region while its Arena::run is on this thread.
        let region = if !r.is_null() && unsafe { (*r).contains(p) } {
            // SAFETY: as above.
            Some(unsafe { &*r })
        } else {
            registered_region(p)
        };
        let Some(region) = region else {
            // SAFETY: `p` is in no region, so the wrapped allocator gave it out.
            return unsafe { self.0.realloc(p, l, new) };
        };
        let owner = std::ptr::eq(region, r);
        // The topmost block of the owner's run grows or shrinks in place.
        let grain = |n: usize| n.next_multiple_of(GRAIN);
        if owner && p as usize + grain(l.size()) == region.base + region.top.load(Relaxed) {
            let end = p as usize + grain(new);
            if end <= region.base + region.cap {
                let top = end - region.base;
                region.top.store(top, Relaxed);
                if top > region.high.load(Relaxed) {
                    region.high.store(top, Relaxed);
                }
                return p;
            }
        }
        if grain(new) <= grain(l.size()) {
            return p;
        }
        // SAFETY: same alignment as the block, non-zero size (new > old >= 1).
        let nl = unsafe { Layout::from_size_align_unchecked(new, l.align()) };
        // SAFETY: `nl` has a non-zero size.
        let q = unsafe { self.alloc(nl) };
        if !q.is_null() {
            // SAFETY: `p` holds `l.size()` bytes, `q` at least that many, and they are distinct
            // blocks; `p` is then given back with the layout it was taken with.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, l.size());
                self.dealloc(p, l);
            }
        }
        q
    }
}

/// Whether [`ArenaAlloc`] is this program's global allocator.
pub fn installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        #[repr(align(64))]
        struct Probe([u8; 256]);
        let mut probe = Probe([0; 256]);
        let region = Region::new(probe.0.as_mut_ptr() as usize, probe.0.len());
        // Swap the probe in for whatever arena is on, so the answer is the same inside a run.
        let before = CURRENT.with(|c| c.replace(&region));
        let b = std::hint::black_box(Box::new(7u64));
        let served = region.contains(&*b as *const u64 as *mut u8);
        drop(b);
        CURRENT.with(|c| c.set(before));
        served
    })
}

/// Sizes of an arena after its last run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes reserved.
    pub capacity: usize,
    /// Most bytes in use at once during the last run.
    pub high_water: usize,
    /// Bytes the last run asked for that did not fit (served by the system allocator).
    pub spilled: usize,
}

/// One thread's arena: memory reserved once, handed out during [`Arena::run`].
pub struct Arena {
    region: Box<Region>,
    slot: Option<usize>,
    /// Memory the region uses, owned here: (pointer, layout).
    memory: Option<(*mut u8, Layout)>,
}

// SAFETY: the region's memory is only handed out on the thread inside `run` (which needs
// `&mut self`); its counters are atomics.
unsafe impl Send for Arena {}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

impl Arena {
    /// An empty arena; the first [`Arena::run`] measures what the work needs.
    pub fn new() -> Arena {
        Arena {
            region: Box::new(Region::new(0, 0)),
            slot: None,
            memory: None,
        }
    }

    /// Figures of the last run.
    pub fn stats(&self) -> ArenaStats {
        ArenaStats {
            capacity: self.region.cap,
            high_water: self.region.high.load(Relaxed),
            spilled: self.region.spilled.load(Relaxed),
        }
    }

    /// Reserves `cap` bytes (through the global allocator, outside any run) and registers them.
    fn reserve(&mut self, cap: usize) {
        self.release();
        let layout = Layout::from_size_align(cap.max(64), 64).expect("arena size fits a layout");
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        *self.region = Region::new(p as usize, layout.size());
        self.memory = Some((p, layout));
        let me = &*self.region as *const Region as *mut Region;
        self.slot = REGISTRY.iter().position(|s| {
            s.compare_exchange(std::ptr::null_mut(), me, Relaxed, Relaxed)
                .is_ok()
        });
        match self.slot {
            Some(_) => {
                REGISTERED.fetch_add(1, Relaxed);
            }
            // Without a slot a block freed off-thread could not be recognised: stay empty.
            None => self.release(),
        }
    }

    fn release(&mut self) {
        if self.region.poisoned.load(Relaxed) {
            // Blocks of the unwound run may still be referenced (and freed later through the
            // registry): leak the memory and stay registered rather than free it under them.
            return;
        }
        if let Some(i) = self.slot.take() {
            REGISTRY[i].store(std::ptr::null_mut(), Relaxed);
            REGISTERED.fetch_sub(1, Relaxed);
        }
        if let Some((p, layout)) = self.memory.take() {
            // SAFETY: allocated in `reserve` with this layout; no live block (checked by run).
            unsafe { std::alloc::dealloc(p, layout) };
        }
        self.region.cap = 0;
    }

    /// Runs `f` with this thread's allocations served from the arena. An error's memory is
    /// given back before returning: the error comes back as its message.
    ///
    /// Aborts the process if `f` returns but keeps a block taken from the arena: the next run
    /// would hand out the same memory again. If `f` panics, the check cannot run (a caller may
    /// catch the unwind, and tract may still point into the arena), so the arena is poisoned:
    /// every later run is an error and its memory is never reused or freed.
    pub fn run<R>(&mut self, f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
        if self.region.poisoned.load(Relaxed) {
            anyhow::bail!(
                "internal error: an earlier tile run panicked; its arena is poisoned and this \
                 runner can run no more tiles"
            );
        }
        let spilled = self.region.spilled.load(Relaxed);
        if spilled > 0 {
            // Grown between runs, never during one: sized by what the last run needed.
            self.reserve(self.region.cap + spilled + (64 << 10));
        }
        assert!(current().is_null(), "arena runs do not nest");
        let r = &*self.region;
        r.reset();
        r.high.store(0, Relaxed);
        r.spilled.store(0, Relaxed);
        CURRENT.with(|c| c.set(r));
        // Whatever happens inside, the arena is switched off on the way out; an unwind poisons it.
        struct Off<'a>(&'a Region);
        impl Drop for Off<'_> {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(null()));
                if std::thread::panicking() {
                    self.0.poisoned.store(true, Relaxed);
                }
            }
        }
        let off = Off(r);
        let out = f();
        drop(off);
        let out = match out {
            Ok(v) => Ok(v),
            // Re-made from the system allocator; dropping `e` gives its arena blocks back.
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        let live = r.live.load(Relaxed);
        if live != 0 {
            // Straight to stderr, not the log facade: the process aborts next, whatever logger
            // is (or is not) installed.
            eprintln!(
                "unet-edge: internal error: {live} block(s) taken from a tile run's arena were \
                 not given back by the end of the run; aborting rather than reusing their memory"
            );
            std::process::abort();
        }
        out
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Unit tests run under the test harness's allocator (System), so only the parts that do not
    // need the global allocator are tested here; tests/alloc_free.rs installs ArenaAlloc.

    #[test]
    fn take_aligns_bumps_and_counts_spills() {
        let mut buf = vec![0u64; 32];
        let base = (buf.as_mut_ptr() as usize).next_multiple_of(GRAIN);
        let r = Region::new(base, 192);
        let a = r.take(Layout::from_size_align(10, 1).unwrap()).unwrap();
        let b = r.take(Layout::from_size_align(16, 16).unwrap()).unwrap();
        let c = r.take(Layout::from_size_align(40, 8).unwrap()).unwrap();
        assert_eq!(a as usize, base);
        assert_eq!(b as usize, base + GRAIN);
        assert_eq!(r.live.load(Relaxed), 3);
        assert!(r.take(Layout::from_size_align(1000, 8).unwrap()).is_none());
        assert_eq!(r.spilled.load(Relaxed), 1024 + 8);
        // A freed inner block is reused by the next request of its size class.
        r.give(b, 16, true);
        assert_eq!(r.take(Layout::from_size_align(64, 8).unwrap()), Some(b));
        r.give(b, 64, true);
        // The topmost block lowers the bump offset; the last give empties the arena.
        r.give(c, 40, true);
        assert_eq!(r.top.load(Relaxed), 2 * GRAIN);
        r.give(a, 10, true);
        assert_eq!((r.live.load(Relaxed), r.top.load(Relaxed)), (0, 0));
        assert_eq!(r.high.load(Relaxed), 3 * GRAIN);
    }

    #[test]
    fn not_installed_under_the_test_harness() {
        assert!(!installed());
        // Without the allocator a run still runs, and errors come back with their message.
        let mut a = Arena::new();
        assert_eq!(a.run(|| Ok(3)).unwrap(), 3);
        let e = a
            .run(|| -> anyhow::Result<()> { anyhow::bail!("tile 4 failed") })
            .unwrap_err();
        assert_eq!(e.to_string(), "tile 4 failed");
    }

    #[test]
    fn a_run_that_unwinds_poisons_the_arena() {
        let mut a = Arena::new();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            a.run(|| -> anyhow::Result<()> { panic!("kernel bug") })
        }));
        assert!(caught.is_err(), "the panic reaches the caller");
        assert!(
            current().is_null(),
            "the arena is switched off after the unwind"
        );
        let e = a.run(|| Ok(1)).unwrap_err().to_string();
        assert!(e.contains("poisoned"), "{e}");
        // Dropping a poisoned arena leaks its memory instead of freeing it.
        drop(a);
        let mut fresh = Arena::new();
        assert_eq!(
            fresh.run(|| Ok(2)).unwrap(),
            2,
            "other arenas are unaffected"
        );
    }
}
