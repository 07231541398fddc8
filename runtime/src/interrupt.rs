//! Cooperative interruption: a program (the `adeis` command installs a Ctrl-C handler) asks the
//! running work to stop; long loops poll [`check`] between steps and stop with
//! [`RuntimeError::Interrupted`], leaving nothing half-written. The library installs no handler.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::RuntimeError;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the running work to stop at its next check; returns whether it had been asked before.
pub fn request() -> bool {
    REQUESTED.swap(true, Ordering::SeqCst)
}

/// Forgets a stop that was asked for, so that the next run goes on: for a program that runs
/// again after an interrupted run (the Python package, after its KeyboardInterrupt).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// An error if a stop was asked for; `during` names the work that stops.
pub fn check(during: &str) -> Result<(), RuntimeError> {
    if requested() {
        return Err(RuntimeError::Interrupted {
            during: during.to_string(),
        });
    }
    Ok(())
}

/// As [`check`], naming the work only when it stops (no allocation on the hot path).
pub fn check_with(during: impl FnOnce() -> String) -> Result<(), RuntimeError> {
    if requested() {
        return Err(RuntimeError::Interrupted { during: during() });
    }
    Ok(())
}
