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

/// Crates whose debug and trace lines can carry secrets: fuser logs each request's plaintext
/// names, ureq's protocol layer dumps request and response bytes (data keys from a remote key
/// service). They never log below info, whatever RUST_LOG asks.
const CAPPED: &[&str] = &["fuser", "ureq", "ureq_proto", "rustls"];

/// RUST_LOG without its directives for capped crates or their modules (`ureq_proto::util=trace`
/// would otherwise win over a cap on `ureq_proto`, the longer name being the more specific).
fn without_capped(spec: &str) -> String {
    let (directives, regex) = match spec.split_once('/') {
        Some((d, r)) => (d, Some(r)),
        None => (spec, None),
    };
    let kept: Vec<&str> = directives
        .split(',')
        .filter(|d| {
            let name = d.split('=').next().unwrap_or_default().trim();
            !CAPPED
                .iter()
                .any(|c| name == *c || name.starts_with(&format!("{c}::")))
        })
        .collect();
    let mut out = kept.join(",");
    if let Some(r) = regex {
        out.push('/');
        out.push_str(r);
    }
    out
}

fn builder(default: &str) -> env_logger::Builder {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let mut b = env_logger::Builder::new();
    b.parse_filters(&without_capped(&spec));
    for c in CAPPED {
        b.filter_module(c, log::LevelFilter::Info);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_crates_lose_their_directives() {
        assert_eq!(without_capped("trace"), "trace");
        assert_eq!(
            without_capped("debug,ureq_proto::util=trace,kmsfs=trace"),
            "debug,kmsfs=trace"
        );
        assert_eq!(without_capped("fuser=debug,fuser_x=debug"), "fuser_x=debug");
        assert_eq!(without_capped("info,rustls=trace/secret"), "info/secret");
    }
}
