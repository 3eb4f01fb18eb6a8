//! The `kmsfs` command line.

pub mod args;
pub mod asymcmd;
pub mod commands;
pub mod docs;
pub mod fstab;
pub mod interrupt;
pub mod lifecycle;
pub mod mountcmd;
pub mod output;
pub mod progress;
pub mod providers;
pub mod status;
pub mod unlock;

static ARGV: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Records the command line as parsed (after any mount(8)-style rewriting), for the daemon that
/// `kmsfs mount` starts with the same arguments.
pub fn set_argv(argv: Vec<std::ffi::OsString>) {
    let _ = ARGV.set(argv);
}

/// The command line as parsed, else the process's own.
pub fn argv() -> Vec<std::ffi::OsString> {
    ARGV.get()
        .cloned()
        .unwrap_or_else(|| std::env::args_os().collect())
}
