//! A one-line progress display (count, percent, rate, ETA) on a terminal; silent otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    total: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: u64, quiet: bool) -> Progress {
        Progress {
            label,
            total,
            start: Instant::now(),
            last: None,
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// A counter without a known total.
    pub fn counter(label: &'static str, quiet: bool) -> Progress {
        Progress::new(label, u64::MAX, quiet)
    }

    /// The line for `done` of `total` after `elapsed`.
    pub fn line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        if total == u64::MAX {
            return format!("{label} {done} {rate:.0}/s");
        }
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let eta = if rate > 0.0 {
            (total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        format!("{label} {done}/{total} {pct:>3}% {rate:.0}/s ETA {eta:.0}s")
    }

    pub fn update(&mut self, done: u64) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
                && done < self.total
        {
            return;
        }
        self.last = Some(Instant::now());
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r\x1b[2K{}",
            Self::line(self.label, done, self.total, self.start.elapsed())
        );
        let _ = e.flush();
    }

    pub fn finish(&mut self) {
        if self.enabled {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_rate_and_eta() {
        assert_eq!(
            Progress::line("rewrap", 50, 100, Duration::from_secs(5)),
            "rewrap 50/100  50% 10/s ETA 5s"
        );
        assert_eq!(
            Progress::line("rewrap", 0, 0, Duration::ZERO),
            "rewrap 0/0 100% 0/s ETA 0s"
        );
    }
}
