//! Progress bars for long work. Interruption (Ctrl-C) is the runtime's cooperative flag,
//! which the `adeis` program sets; long loops check it between steps.

use indicatif::{ProgressBar, ProgressStyle};

use crate::Error;

/// An error if a stop was asked for: `during` names the work that stopped.
pub fn check_interrupt(during: &str) -> Result<(), Error> {
    Ok(adeis_runtime::interrupt::check(during)?)
}

/// A progress bar on stderr with the elapsed time, the ETA and a message (the loss); hidden
/// when stderr is not a terminal.
pub fn bar(len: usize, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (ETA {eta})",
        )
        .expect("a valid template"),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

/// A draw target that shows nothing (for quiet runs).
pub fn hidden() -> indicatif::ProgressDrawTarget {
    indicatif::ProgressDrawTarget::hidden()
}
