//! The engine's threads: a fixed team that splits one loop at a time, the way OpenMP
//! runs libtorch's kernels.
//!
//! A training step of the nine models is a few hundred ops of a few microseconds to a
//! few milliseconds each. A general work-stealing pool (rayon) parks idle workers
//! within microseconds and wakes them through the kernel for every parallel op, and
//! the wake-up costs as much as a small op (measured: a 25×784·784×120 product took
//! 25 µs at best and 65 µs at the median on rayon, most of the difference in
//! `sched_yield` and futex wake-ups). Here the helpers spin on an atomic counter while
//! work keeps coming and park only after [`SPIN`] without any.
//!
//! - [`for_each`] runs `task(i)` for `i in 0..n`, thread `t` of `T` taking the
//!   contiguous range `[n·t/T, n·(t+1)/T)`; the caller is thread 0. Which thread computes
//!   an index never changes a result: the tasks write disjoint outputs.
//! - A call made inside a task, or while another thread holds the team, runs on the
//!   calling thread alone (nested loops: images of a convolution, then its products).
//! - The team has `threads() - 1` helpers: every core by default, `set_threads` (the
//!   CLI's `--threads`) before the first parallel op to change it.
//! - Injected faults (`faults`, thread-local) travel with the task to the helpers.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper spins for new work before it parks.
const SPIN: Duration = Duration::from_millis(2);

static THREADS: AtomicUsize = AtomicUsize::new(0);
static TEAM: OnceLock<Team> = OnceLock::new();

thread_local! {
    /// Set on helpers and on a caller while it runs its share: nested calls are serial.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Sets the team size (counting the caller). Effective only before the first parallel
/// op; returns whether it took effect.
pub fn set_threads(n: usize) -> bool {
    THREADS.store(n.max(1), SeqCst);
    TEAM.get().is_none()
}

/// The team size: `set_threads`, else every core.
pub fn threads() -> usize {
    TEAM.get().map(|t| t.helpers + 1).unwrap_or_else(|| match THREADS.load(SeqCst) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    })
}

/// Runs `task(i)` for every `i in 0..n`, shared between the team's threads in
/// contiguous ranges. Returns when every task has finished; a panic in any task is
/// raised here.
pub fn for_each(n: usize, task: impl Fn(usize) + Sync) {
    let team = TEAM.get_or_init(|| Team::start(threads() - 1));
    if n <= 1 || team.helpers == 0 || INSIDE.with(Cell::get) {
        return (0..n).for_each(task);
    }
    let Ok(_held) = team.caller.try_lock() else {
        return (0..n).for_each(task);
    };
    team.run(n, &task);
}

/// `f(i, chunk_i)` for the consecutive `size`-long chunks of `data` (the last may be
/// shorter), shared between the team like [`for_each`].
pub fn for_each_chunk<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let size = size.max(1);
    let (len, base) = (data.len(), SendPtr(data.as_mut_ptr()));
    for_each(len.div_ceil(size), |i| {
        let start = i * size;
        // SAFETY: chunk i covers [start, start + size) ∩ [0, len), disjoint from every
        // other chunk, and `data` is borrowed mutably for the whole call.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), size.min(len - start)) };
        f(i, chunk)
    });
}

/// A raw pointer that may cross threads: for tasks writing disjoint parts of a buffer.
pub struct SendPtr<T>(pub *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: users only write disjoint elements through it while the owner waits.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub fn get(self) -> *mut T {
        self.0
    }
}

struct Team {
    helpers: usize,
    /// Held by the thread whose loop the team is running.
    caller: Mutex<()>,
    shared: &'static Shared,
}

/// What the caller hands to the helpers. `job` is written only while every helper is
/// idle (between `done` reaching `helpers` and the next `generation` bump).
struct Shared {
    generation: AtomicU64,
    job: UnsafeCell<Job>,
    done: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the caller only while no helper reads it (see above).
unsafe impl Sync for Shared {}

#[derive(Clone, Copy)]
struct Job {
    task: *const (),
    call: unsafe fn(*const (), usize),
    n: usize,
    threads: usize,
    faults: u32,
}

unsafe fn call_task<F: Fn(usize)>(task: *const (), i: usize) {
    (*(task as *const F))(i)
}

fn range(job: &Job, t: usize) -> std::ops::Range<usize> {
    job.n * t / job.threads..job.n * (t + 1) / job.threads
}

impl Team {
    fn start(helpers: usize) -> Team {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(Job {
                task: std::ptr::null(),
                call: call_task::<fn(usize)>,
                n: 0,
                threads: 1,
                faults: 0,
            }),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for h in 0..helpers {
            std::thread::Builder::new()
                .name(format!("engine-{}", h + 1))
                .spawn(move || helper(shared, h + 1))
                .expect("spawning an engine thread");
        }
        Team { helpers, caller: Mutex::new(()), shared }
    }

    fn run<F: Fn(usize) + Sync>(&self, n: usize, task: &F) {
        let s = self.shared;
        let job = Job {
            task: task as *const F as *const (),
            call: call_task::<F>,
            n,
            threads: self.helpers + 1,
            faults: super::faults::active(),
        };
        // SAFETY: every helper finished the previous job (`done` was awaited) and none
        // reads `job` before the generation below changes.
        unsafe { *s.job.get() = job };
        s.done.store(0, SeqCst);
        s.generation.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // Wait for the helpers even when the caller's share panics: they borrow `task`.
        struct Join<'a>(&'a Shared, usize);
        impl Drop for Join<'_> {
            fn drop(&mut self) {
                while self.0.done.load(SeqCst) < self.1 {
                    std::hint::spin_loop();
                }
            }
        }
        let join = Join(s, self.helpers);
        INSIDE.with(|c| c.set(true));
        let _inside = Reset;
        range(&job, 0).for_each(task);
        drop(join);
        if s.panicked.swap(false, SeqCst) {
            panic!("an engine thread panicked in a parallel op");
        }
    }
}

/// Clears the caller's `INSIDE` flag, also on unwinding.
struct Reset;
impl Drop for Reset {
    fn drop(&mut self) {
        INSIDE.with(|c| c.set(false));
    }
}

fn helper(s: &'static Shared, t: usize) {
    INSIDE.with(|c| c.set(true));
    let mut seen = 0;
    loop {
        let idle = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(SeqCst) == seen {
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && idle.elapsed() > SPIN {
                let mut g = s.park.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.generation.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
            }
            std::hint::spin_loop();
        }
        seen = s.generation.load(SeqCst);
        // SAFETY: the caller wrote the job before bumping the generation and waits for
        // `done` before touching it again; `task` outlives the caller's wait.
        let job = unsafe { *s.job.get() };
        let result = std::panic::catch_unwind(|| {
            let _faults = super::faults::carry(job.faults);
            for i in range(&job, t) {
                unsafe { (job.call)(job.task, i) }
            }
        });
        if result.is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.done.fetch_add(1, SeqCst);
    }
}
