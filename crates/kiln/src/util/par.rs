//! Two-way parallelism on one long-lived helper thread.
//!
//! A large batch splits its independent work (encoding documents, hashing them) in two: one
//! half on the calling thread, the other on a helper thread the process keeps. Spawning a
//! thread per batch cost ~45 µs on the 2-core machines kiln is measured on, as much as a
//! quarter of the work it took over; the helper waits on a condition variable instead.
//!
//! Why not a scoped API (`std::thread::scope`), which needs no `unsafe`: it spawns a thread
//! per call. Measured with `cargo run --release -p kiln --example par_cost` (2026-12-05, the
//! 2-vCPU VM): handing half of a job to the kept helper costs ~2–3 µs, to a scoped thread
//! ~36–42 µs; a large bulk hands over four jobs per commit, so a scoped API would add ~150 µs
//! to a ~1.1 ms 1,000-document commit. The one `unsafe` step (the job's lifetime erased for
//! the helper) is kept in [`join`], whose `Wait` guard keeps the caller's frame alive until the
//! helper is done with it, also when the caller's half panics. (A thread pool crate would hide
//! the same step, and a forked child, which inherits the pool's state but not its threads,
//! must run both halves itself: this helper knows that, see `Helper::pid`.)
//!
//! One caller uses the helper at a time; a second caller meanwhile runs both halves itself.
//! Work that keeps both threads busy for milliseconds runs inside [`apart`]: a helper woken
//! there on its caller's CPU moves to another one before it starts (two halves on one CPU
//! take turns; see `move_off`).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Helper {
    /// The process that started it: a forked child inherits this value but not the thread.
    pid: u32,
    state: Mutex<State>,
    /// Signals the helper: a job is there.
    work: Condvar,
    /// Signals the caller: the job is done.
    done: Condvar,
    /// `State::issued` and `State::finished`, readable without the lock by a thread spinning
    /// for a change (see [`SPIN`]).
    issued: AtomicU64,
    finished: AtomicU64,
}

/// How long the helper, after a job, and a caller, waiting for its job, spin before sleeping.
/// A large commit hands the helper several jobs in a row (documents, then sealing and writing,
/// then hashing) and waits for each; waking a sleeping thread took 30–80 µs on the VMs kiln is
/// measured on, against jobs of 100–400 µs.
const SPIN: std::time::Duration = std::time::Duration::from_micros(150);

/// Spins until `ready` or [`SPIN`] has passed; whether `ready` came.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let t = std::time::Instant::now();
    loop {
        if ready() {
            return true;
        }
        if t.elapsed() >= SPIN {
            return false;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

#[derive(Default)]
struct State {
    /// A caller holds the helper (from handing a job in until that job is done).
    busy: bool,
    job: Option<Job>,
    /// Jobs handed in and jobs done (one at a time, in order): a caller waits for its own
    /// job only, not for a later caller's.
    issued: u64,
    finished: u64,
    /// The job's caller expects another job soon (see [`SPIN`]).
    spin: bool,
    /// The CPU the job's caller ran on when it handed the job in, for a caller inside
    /// [`apart`] (-1: none, or unknown).
    caller_cpu: i32,
}

/// The helper, started on first use; `None` with a single core or when no thread could start.
fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();
    *HELPER.get_or_init(|| {
        if cores() < 2 {
            return None;
        }
        let h: &'static Helper = Box::leak(Box::new(Helper {
            pid: std::process::id(),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            issued: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        }));
        std::thread::Builder::new()
            .name("kiln-helper".into())
            .spawn(move || h.run())
            .ok()
            .map(|_| h)
    })
}

/// Starts the helper now (a store's open), so the first large batch does not pay for it.
pub fn warm() {
    let _ = helper();
}

/// Online cores (sysconf: `available_parallelism` reads cgroup files, ~0.1 ms on first use).
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *CORES.get_or_init(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize)
}

impl Helper {
    fn run(&self) {
        let cpus = CpuSet::of_this_thread();
        let mut st = lock(&self.state);
        loop {
            match st.job.take() {
                Some(job) => {
                    let caller = st.caller_cpu;
                    drop(st);
                    if let Some(cpus) = &cpus {
                        move_off(caller, cpus);
                    }
                    job(); // (catches its own panic: see `join`)
                    st = lock(&self.state);
                    st.busy = false;
                    st.finished += 1;
                    self.finished.store(st.finished, Ordering::Release);
                    let done = st.finished;
                    self.done.notify_all();
                    if st.spin {
                        // The next job often follows at once: wait for it awake a while.
                        drop(st);
                        spin_until(|| self.issued.load(Ordering::Acquire) > done);
                        st = lock(&self.state);
                    }
                }
                None => st = self.work.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

thread_local! {
    /// This thread is inside [`apart`].
    static APART: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, whose two-thread steps each keep both threads busy for milliseconds (an index
/// build), with the helper on another CPU than this thread's: a helper woken on this thread's
/// CPU moves off it first. Linux wakes a thread on its waker's CPU when the others look
/// unavailable, and in a VM a vCPU idle for a while is one (its host descheduled it): after a
/// pause, both halves of every step took turns on one vCPU (measured: a 10,000-document index
/// build after a 300 ms pause, 22.7 ms with the helper, 20.2 without it, 16.0 with the two
/// threads pinned apart). A move costs about as much as waking that vCPU (~1.7 ms on
/// average here), so work of many short steps (a bulk of commits: 1,000,000 documents went
/// 258k -> 211k docs/s with every step moved) does not ask for it.
pub fn apart<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            APART.set(self.0);
        }
    }
    let _restore = Restore(APART.replace(true));
    f()
}

/// The CPU this thread runs on (-1: unknown).
fn current_cpu() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_getcpu has no preconditions.
    return unsafe { libc::sched_getcpu() };
    #[cfg(not(target_os = "linux"))]
    return -1;
}

/// The CPUs a thread may run on, as read when the helper started (so that a move's "all of
/// them again" is that set, not whatever the set was in between).
#[cfg(target_os = "linux")]
struct CpuSet(libc::cpu_set_t);
#[cfg(not(target_os = "linux"))]
struct CpuSet;

impl CpuSet {
    /// This thread's set, when it has two CPUs or more (else there is nowhere to move).
    fn of_this_thread() -> Option<CpuSet> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: a plain bit array, written by the call given its size; read by count.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                let size = std::mem::size_of::<libc::cpu_set_t>();
                let ok = libc::sched_getaffinity(0, size, &mut set) == 0;
                (ok && libc::CPU_COUNT(&set) >= 2).then_some(CpuSet(set))
            }
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// Moves this thread off CPU `cpu` (its caller's) if it runs there, and says whether it did:
/// its CPU set without `cpu` for a moment (Linux migrates it at once), then `cpus` again, so
/// that the scheduler stays free to place it later (only CPUs in `cpus` are used). See
/// [`apart`].
fn move_off(cpu: i32, cpus: &CpuSet) -> bool {
    #[cfg(target_os = "linux")]
    {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if cpu < 0 || cpu as usize >= 8 * size || current_cpu() != cpu {
            return false;
        }
        // SAFETY: the sets are plain bit arrays of `size` bytes; `cpu` is below their size.
        unsafe {
            let mut others = cpus.0;
            libc::CPU_CLR(cpu as usize, &mut others);
            if libc::CPU_COUNT(&others) == 0 || libc::sched_setaffinity(0, size, &others) != 0 {
                return false;
            }
            libc::sched_setaffinity(0, size, &cpus.0);
        }
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (cpu, cpus);
        false
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `a` here and `b` on the helper thread (or both here when the helper is busy or
/// absent) and returns both results. A panic in either is resumed here, after both are done.
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    join_with(a, b, true)
}

/// [`join`] for halves that wait on the system (fsyncs): nobody spins for them.
pub fn join_io<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    join_with(a, b, false)
}

fn join_with<A, B, RA, RB>(a: A, b: B, spin: bool) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    // (In a forked child the helper thread stayed behind with the parent, and its lock may
    // have been held at the fork: not touched.)
    let Some(h) = helper().filter(|h| h.pid == std::process::id()) else {
        return both_here(a, b);
    };
    let mut st = lock(&h.state);
    if st.busy {
        drop(st);
        return both_here(a, b);
    }
    let mut out: Option<std::thread::Result<RB>> = None;
    let slot = Slot(&mut out);
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let slot = slot;
        let r = panic::catch_unwind(AssertUnwindSafe(b));
        // SAFETY: `join` does not return (nor unwind) before this job is done (`Wait`), so
        // `out` outlives this write, and nothing else touches it meanwhile.
        unsafe { *slot.0 = Some(r) };
    });
    // SAFETY: the job borrows from this frame; `Wait` below keeps the frame alive until the
    // helper has run and dropped it, also when `a` panics.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    st.busy = true;
    st.spin = spin;
    st.caller_cpu = if APART.get() { current_cpu() } else { -1 };
    st.job = Some(job);
    st.issued += 1;
    let ticket = st.issued;
    h.issued.store(ticket, Ordering::Release);
    drop(st);
    h.work.notify_one();
    let wait = Wait(h, ticket, spin);
    let ra = a();
    drop(wait);
    match out {
        Some(Ok(rb)) => (ra, rb),
        Some(Err(p)) => panic::resume_unwind(p),
        None => unreachable!("the helper finished the job without running it"),
    }
}

/// Both halves on this thread, with `join`'s promise: both run even if the first panics.
fn both_here<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB,
{
    let ra = panic::catch_unwind(AssertUnwindSafe(a));
    let rb = b();
    match ra {
        Ok(ra) => (ra, rb),
        Err(p) => panic::resume_unwind(p),
    }
}

/// The caller's result slot, written by the helper.
struct Slot<T>(*mut Option<std::thread::Result<T>>);
// SAFETY: only the helper writes through it, while the caller waits (see `join`).
unsafe impl<T: Send> Send for Slot<T> {}

/// Waits, when dropped, until the helper has finished job number `.1`.
struct Wait(&'static Helper, u64, bool);

impl Drop for Wait {
    fn drop(&mut self) {
        if self.2 && spin_until(|| self.0.finished.load(Ordering::Acquire) >= self.1) {
            return;
        }
        let mut st = lock(&self.0.state);
        while st.finished < self.1 {
            st = self.0.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// `f` of each `chunk`-sized piece of `items` (with the piece's number and the state of the
/// thread taking it, made by `init`), in order, and the two threads' states. This thread and
/// the helper take the next piece whenever they finish one, so neither waits on the other's
/// slower half.
pub fn map_chunks<T, S, R, F>(
    items: &[T],
    chunk: usize,
    init: impl Fn() -> S + Sync,
    f: F,
) -> (Vec<R>, [S; 2])
where
    T: Sync,
    S: Send,
    R: Send,
    F: Fn(&mut S, usize, &[T]) -> R + Sync,
{
    let chunk = chunk.max(1);
    let pieces = items.len().div_ceil(chunk);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut state = init();
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= pieces {
                return (done, state);
            }
            let piece = &items[i * chunk..items.len().min((i + 1) * chunk)];
            done.push((i, f(&mut state, i, piece)));
        }
    };
    let ((mut a, sa), (b, sb)) = join(work, work);
    a.extend(b);
    a.sort_unstable_by_key(|x| x.0);
    (a.into_iter().map(|x| x.1).collect(), [sa, sb])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::catch_unwind;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// The helper's move off its caller's CPU: a thread running on a CPU ends up on another
    /// one, with the CPU set it had; one not on the CPU given, or given none, stays.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_moves_off_a_cpu_and_keeps_its_cpu_set() {
        let Some(cpus) = CpuSet::of_this_thread() else {
            return; // one CPU: nowhere to go
        };
        assert!(!move_off(-1, &cpus));
        // (The scheduler may move this thread between the two reads: a few tries.)
        let moved = (0..100).any(|_| {
            let here = current_cpu();
            move_off(here, &cpus) && current_cpu() != here
        });
        assert!(moved, "never moved off its CPU");
        let after = CpuSet::of_this_thread().expect("still two CPUs or more");
        // SAFETY: compares two bit arrays.
        assert!(
            unsafe { libc::CPU_EQUAL(&cpus.0, &after.0) },
            "the CPU set changed"
        );
        // Asked to leave a CPU it is not on, it stays where it is.
        assert!((0..100).any(|_| !move_off(current_cpu() + 1, &cpus)));
    }

    /// Only work inside `apart` asks the helper to move; the mark ends with it, also when
    /// `apart` is nested or its work panics.
    #[test]
    fn apart_marks_its_work_only() {
        assert!(!APART.get());
        apart(|| {
            assert!(APART.get());
            apart(|| assert!(APART.get()));
            assert!(APART.get());
        });
        assert!(!APART.get());
        let r = catch_unwind(|| apart(|| panic!("inside")));
        assert!(r.is_err());
        assert!(!APART.get());
    }

    #[test]
    fn both_halves_run_and_return() {
        let v: Vec<u64> = (0..1000).collect();
        let (a, b) = join(
            || v[..500].iter().sum::<u64>(),
            || v[500..].iter().sum::<u64>(),
        );
        assert_eq!(a + b, v.iter().sum::<u64>());
    }

    #[test]
    fn a_panic_on_either_side_surfaces_after_both_are_done() {
        // The helper's half panics: the caller's half still completes, then the panic.
        let done_here = AtomicBool::new(false);
        let r = catch_unwind(AssertUnwindSafe(|| {
            join(
                || {
                    std::thread::sleep(Duration::from_millis(20));
                    done_here.store(true, Ordering::SeqCst);
                },
                || panic!("helper side"),
            )
        }));
        assert!(r.is_err());
        assert!(done_here.load(Ordering::SeqCst));
        // The caller's half panics: `join` unwinds only after the helper's half is done
        // (it borrows from the caller's frame).
        let done_there = AtomicBool::new(false);
        let r = catch_unwind(AssertUnwindSafe(|| {
            join(
                || panic!("caller side"),
                || {
                    std::thread::sleep(Duration::from_millis(20));
                    done_there.store(true, Ordering::SeqCst);
                },
            )
        }));
        assert!(r.is_err());
        assert!(done_there.load(Ordering::SeqCst));
        // The helper still serves after both.
        assert_eq!(join(|| 1, || 2), (1, 2));
    }

    /// Run here (the helper busy or absent), the second half still runs when the first
    /// panics, as on the helper (a test run in parallel with others found the difference).
    #[test]
    fn run_here_both_halves_finish_before_a_panic_surfaces() {
        let done = AtomicBool::new(false);
        let r = catch_unwind(AssertUnwindSafe(|| {
            both_here(|| panic!("first"), || done.store(true, Ordering::SeqCst))
        }));
        assert!(r.is_err() && done.load(Ordering::SeqCst));
    }

    #[test]
    fn callers_on_many_threads_each_get_their_own_results() {
        std::thread::scope(|s| {
            for t in 0..8u64 {
                s.spawn(move || {
                    for i in 0..200u64 {
                        let (a, b) = join(|| t * 1000 + i, || (t * 1000 + i) * 2);
                        assert_eq!((a, b), (t * 1000 + i, (t * 1000 + i) * 2));
                    }
                });
            }
        });
    }

    /// A caller waits for its own job only: here caller 1 holds a lock through its `join`,
    /// and caller 2's job, handed to the helper once caller 1's is done, needs that lock
    /// (waiting for "the helper is idle" deadlocked).
    #[test]
    fn a_caller_does_not_wait_for_the_next_callers_job() {
        use std::sync::{mpsc, Arc};
        let m = Arc::new(Mutex::new(()));
        let (tx, rx) = mpsc::channel();
        let (m1, tx1) = (m.clone(), tx.clone());
        std::thread::spawn(move || {
            let g = m1.lock().unwrap();
            join(|| std::thread::sleep(Duration::from_millis(300)), || ());
            drop(g);
            tx1.send(1).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        std::thread::spawn(move || {
            join(|| (), move || drop(m.lock().unwrap()));
            tx.send(2).unwrap();
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(x) => got.push(x),
                Err(_) => panic!("deadlocked: finished {got:?}"),
            }
        }
    }

    #[test]
    fn chunks_come_back_in_order() {
        for (n, chunk) in [
            (0, 64),
            (1, 64),
            (63, 64),
            (64, 64),
            (65, 64),
            (1000, 64),
            (10, 0),
        ] {
            let items: Vec<usize> = (0..n).collect();
            let (parts, _) = map_chunks(&items, chunk, || (), |_, _, p: &[usize]| p.to_vec());
            assert!(parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= chunk.max(1)));
            assert_eq!(parts.concat(), items, "n {n} chunk {chunk}");
        }
    }
}
