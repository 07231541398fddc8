//! How the `adeis` command runs its work on rayon's pool, for programs that use the library.
//!
//! A UNet evaluation makes hundreds of parallel calls (the products' halves, GroupNorm and the
//! unfoldings in chunks) with serial steps between them. Between two calls rayon's idle
//! workers spin briefly, then sleep, and a sleeping worker takes a system call and a trip
//! through the scheduler to wake, each time: in a W3 gradient's profile (`perf record adeis
//! bench --workload w3 --method discrete --steps 10`) the thread running the work spent 6% of
//! its samples waiting in products for the other worker's half. [`run_with_workers_awake`]
//! keeps the other workers looking for work while the command runs, as OpenMP's threads
//! spin between parallel regions (PyTorch's CPU kernels): in five alternating rounds a W3
//! gradient (N = 10) took 0.86-1.00x the time (median 0.91x), W2's (N = 50) 0.88-0.98x. A
//! worker with nothing to do keeps looking, and only after [`SPIN_FOR`] without work (a
//! serial stretch: loading, writing pictures) does it look every [`NAP`] instead, so a long
//! serial part does not hold a core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long an idle worker keeps looking without a pause (OpenMP's default block time).
pub const SPIN_FOR: Duration = Duration::from_millis(200);
/// After that, its pause between looks.
pub const NAP: Duration = Duration::from_millis(1);

/// Runs `work` on a worker of rayon's global pool while the pool's other workers look for
/// work without sleeping (as the module says), until `work` returns or panics.
///
/// `work` running on a worker means its parallel calls split with `join` from inside the pool
/// instead of being handed to it from outside, and the caller sleeping on a latch until they
/// return (two context switches per parallel call, thousands per UNet gradient).
pub fn run_with_workers_awake<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let home = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |s| keep_looking(s, done, home));
        }
        // Set on return and on a panic alike: the scope waits for the lookers to stop.
        let _stop = SetOnDrop(done);
        work()
    })
}

struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs the pool's pending jobs as they come until `done`, pausing as the module says. On
/// `home`, the thread running the work (which takes queued jobs itself while it waits on a
/// `join`), it hands itself back to the pool instead: looping there would hold up the work
/// it waits for.
fn keep_looking<'s>(s: &rayon::Scope<'s>, done: &'s AtomicBool, home: Option<usize>) {
    if rayon::current_thread_index() == home {
        if !done.load(Ordering::Acquire) {
            s.spawn(move |s| keep_looking(s, done, home));
        }
        return;
    }
    let mut idle_since = None;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() < SPIN_FOR {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(NAP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn the_work_returns_its_value_and_its_parallel_calls_complete() {
        let sum = run_with_workers_awake(|| {
            (0..50)
                .map(|k| (0..10_000u64).into_par_iter().map(|i| i * k).sum::<u64>())
                .sum::<u64>()
        });
        assert_eq!(sum, (0..50u64).sum::<u64>() * (0..10_000u64).sum::<u64>());
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller_and_stops_the_lookers() {
        let r = std::panic::catch_unwind(|| run_with_workers_awake(|| panic!("inside")));
        assert!(r.is_err());
        // The pool is usable afterwards: no looker was left running.
        assert_eq!(run_with_workers_awake(|| 7), 7);
    }
}
