//! Ctrl-C for long operations: the first SIGINT (or SIGTERM) sets a flag that the loop checks
//! between two files, so nothing is left half-done; a second one ends the process at once (the
//! operations are crash-safe, so that is also without damage).

use crate::error::{ErrorKind, KmsError};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Starts watching for SIGINT and SIGTERM.
pub fn install() {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the flag is set terminates (exit code 1).
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
}

pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// The error for an operation stopped after `done` of `total` items.
pub fn stopped(what: &str, done: u64, total: u64) -> KmsError {
    KmsError::new(
        ErrorKind::Interrupted,
        format!(
            "{what} interrupted after {done} of {total}; nothing is half-done: run the same command again to finish"
        ),
    )
}
