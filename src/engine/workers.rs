//! Worker threads started once and reused for every frame.
//!
//! Spawning threads per frame allocates (thread handles, stacks) and moves each tile runner to a
//! fresh thread, where tract's thread-local matmul scratch space is allocated anew. Here each
//! worker index always runs on the same thread, and handing out a job is a mutex, a condition
//! variable and a pointer: no allocation.

use anyhow::{anyhow, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// A job borrowed from the caller of [`Workers::run`], its lifetime erased: `run` does not
/// return before every worker has finished with it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) -> Result<()> + Sync + 'static));
// SAFETY: the job is `Sync`, and it outlives its use (see `Workers::run`).
unsafe impl Send for JobPtr {}

#[derive(Default)]
struct State {
    job: Option<(JobPtr, usize)>,
    result: Option<Result<()>>,
    quit: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<State>,
    changed: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock, so a poisoned lock only means a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(g).unwrap_or_else(PoisonError::into_inner)
    }
}

/// Threads that run `job(1)`, `job(2)`, … while the caller runs `job(0)`.
pub struct Workers {
    slots: Vec<Arc<Slot>>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads (so `n + 1` jobs run at once, the caller's included).
    pub fn new(n: usize) -> Result<Workers> {
        let mut w = Workers {
            slots: Vec::with_capacity(n),
            handles: Vec::with_capacity(n),
        };
        for i in 0..n {
            let slot = Arc::new(Slot::default());
            let s = slot.clone();
            let h = std::thread::Builder::new()
                .name(format!("unet-edge-tiles-{}", i + 1))
                .spawn(move || work(&s))
                .map_err(|e| anyhow!("cannot start tile worker thread {}: {e}", i + 1))?;
            w.slots.push(slot);
            w.handles.push(h);
        }
        Ok(w)
    }

    /// Runs `job(0)` here and `job(i)` on worker `i` for `i` in `1..jobs`, and returns when all
    /// are done: the first error, if any. `jobs` is at most the worker threads + 1.
    pub fn run(&self, jobs: usize, job: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<()> {
        assert!(jobs <= self.slots.len() + 1, "more jobs than workers");
        // SAFETY: only the lifetime is erased; `Join` below waits for every posted job before
        // this function returns or unwinds, so the workers never use `job` after it is gone.
        let ptr = JobPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) -> Result<()> + Sync + '_),
                *const (dyn Fn(usize) -> Result<()> + Sync + 'static),
            >(job)
        });
        let posted = &self.slots[..jobs.saturating_sub(1)];
        for (i, slot) in posted.iter().enumerate() {
            slot.lock().job = Some((ptr, i + 1));
            slot.changed.notify_all();
        }
        // Waits for the posted jobs even if `job(0)` panics here.
        let mut join = Join {
            slots: posted,
            waited: false,
        };
        let mine = if jobs > 0 { job(0) } else { Ok(()) };
        let theirs = join.wait();
        mine.and(theirs)
    }
}

/// The posted jobs of one [`Workers::run`].
struct Join<'a> {
    slots: &'a [Arc<Slot>],
    waited: bool,
}

impl Join<'_> {
    /// Waits for every posted job; the first error.
    fn wait(&mut self) -> Result<()> {
        self.waited = true;
        let mut first = Ok(());
        for slot in self.slots {
            let mut g = slot.lock();
            while g.result.is_none() {
                g = slot.wait(g);
            }
            let r = g.result.take().expect("checked");
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Join<'_> {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.wait();
        }
    }
}

fn work(slot: &Slot) {
    loop {
        let mut g = slot.lock();
        while g.job.is_none() && !g.quit {
            g = slot.wait(g);
        }
        if g.quit {
            return;
        }
        let (JobPtr(job), i) = g.job.take().expect("checked");
        drop(g);
        // SAFETY: `Workers::run` keeps the job alive until this result is taken.
        let job = unsafe { &*job };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i)))
            .unwrap_or_else(|_| Err(anyhow!("tile worker {i} panicked")));
        slot.lock().result = Some(r);
        slot.changed.notify_all();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.lock().quit = true;
            slot.changed.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[test]
    fn every_index_runs_once_per_call_on_a_fixed_thread() {
        let w = Workers::new(3).unwrap();
        let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        let names = Mutex::new(vec![String::new(); 4]);
        for round in 0..5 {
            w.run(4, &|i| {
                hits[i].fetch_add(1, SeqCst);
                let name = std::thread::current().name().unwrap_or("").to_string();
                let mut n = names.lock().unwrap();
                if round == 0 {
                    n[i] = name;
                } else {
                    assert_eq!(n[i], name, "job {i} moved threads");
                }
                Ok(())
            })
            .unwrap();
        }
        assert!(hits.iter().all(|h| h.load(SeqCst) == 5));
        assert_eq!(names.lock().unwrap()[2], "unet-edge-tiles-2");
        // Fewer jobs than workers leaves the rest idle.
        w.run(2, &|i| {
            assert!(i < 2);
            hits[i].fetch_add(1, SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(hits[1].load(SeqCst), 6);
        assert_eq!(hits[3].load(SeqCst), 5);
    }

    #[test]
    fn errors_and_panics_come_back_after_all_jobs_finish() {
        let w = Workers::new(2).unwrap();
        let done = AtomicUsize::new(0);
        let e = w
            .run(3, &|i| {
                std::thread::sleep(std::time::Duration::from_millis(20 * i as u64));
                done.fetch_add(1, SeqCst);
                match i {
                    1 => anyhow::bail!("tile run failed"),
                    2 => panic!("boom"),
                    _ => Ok(()),
                }
            })
            .unwrap_err();
        assert_eq!(done.load(SeqCst), 3);
        assert_eq!(e.to_string(), "tile run failed");
        // The pool is still usable after a worker's job panicked.
        w.run(3, &|_| Ok(())).unwrap();
    }
}
