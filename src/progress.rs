//! Progress bars for long work and Ctrl-C handling: the first Ctrl-C asks the running loop to
//! stop at its next step (outputs are written whole, by rename, or not at all); a second one
//! exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use indicatif::{ProgressBar, ProgressStyle};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the Ctrl-C handler (once per process; later calls do nothing).
pub fn install_ctrlc() {
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting now");
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping after the current step (Ctrl-C again to exit now)");
        });
    });
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error if Ctrl-C was pressed: `during` names the work that stopped.
pub fn check_interrupt(during: &str) -> Result<(), String> {
    if interrupted() {
        Err(format!(
            "interrupted during {during}; files already written are complete, nothing is half-written"
        ))
    } else {
        Ok(())
    }
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
