//! Where log lines go: standard error (foreground and CLI), a file, or syslog (daemonized mounts).
//! Levels follow RUST_LOG. Log lines never carry plaintext or key material.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;

pub enum Target<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

fn builder(default: &str) -> env_logger::Builder {
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    // fuser logs each request's plaintext names at debug level, and ureq's protocol layer
    // dumps request and response bytes (data keys from a remote key service) at trace: never
    // below info, whatever RUST_LOG asks.
    for noisy in ["fuser", "ureq", "ureq_proto", "rustls"] {
        b.filter_module(noisy, log::LevelFilter::Info);
    }
    b
}

/// Installs the logger; `default` is the level when RUST_LOG is unset.
pub fn init(target: Target, default: &str) -> std::io::Result<()> {
    match target {
        Target::Stderr => {
            let _ = builder(default).try_init();
        }
        Target::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            let _ = builder(default)
                .target(env_logger::Target::Pipe(Box::new(f)))
                .try_init();
        }
        Target::Syslog => {
            // Parse the level the same way, then hand lines to syslog(3).
            let filter = builder(default).build();
            let level = filter.filter();
            // SAFETY: the identity string is static and NUL-terminated.
            unsafe { libc::openlog(c"kmsfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            if log::set_boxed_logger(Box::new(Syslog { filter })).is_ok() {
                log::set_max_level(level);
            }
        }
    }
    Ok(())
}

struct Syslog {
    filter: env_logger::Logger,
}

impl log::Log for Syslog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.filter.enabled(m)
    }

    fn log(&self, r: &log::Record) {
        if !self.filter.matches(r) {
            return;
        }
        let prio = match r.level() {
            log::Level::Error => libc::LOG_ERR,
            log::Level::Warn => libc::LOG_WARNING,
            log::Level::Info => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        let msg = format!("{}", r.args()).replace('\0', " ");
        if let Ok(c) = CString::new(msg) {
            // SAFETY: a constant format string and one NUL-terminated argument.
            unsafe { libc::syslog(prio, c"%s".as_ptr(), c.as_ptr()) };
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}
