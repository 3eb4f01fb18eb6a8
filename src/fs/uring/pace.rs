//! Pacing of the /dev/fuse thread while io_uring carries the requests. Then /dev/fuse carries
//! only FORGETs (and INTERRUPTs), and the kernel wakes the thread blocked on it for every forget
//! it queues: after each unlink, say, an inter-processor interrupt and VM exits in the path of
//! the process that unlinked. Resting a moment before serving a new batch lets forgets collect,
//! so the next read takes them all at once (`find -delete` of 10,000 files: 0.22-0.30 s ->
//! 0.16-0.18 s). Forgets only release the daemon's inode table entries (with a directory's
//! cached descriptor and name keys), a few milliseconds later; no request waits for them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A forget that starts within this time of the previous one's end is part of the same batch
/// (fuser serves a batch's forgets back to back; a new read of the device takes longer).
const BATCH_GAP: Duration = Duration::from_micros(10);
/// How long the thread rests before serving a new batch.
const REST: Duration = Duration::from_millis(2);

#[derive(Default)]
pub struct ForgetPace {
    /// When the last forget was done.
    last: Mutex<Option<Instant>>,
}

impl ForgetPace {
    /// Runs `forget`, resting first if it opens a new batch; says whether it rested.
    pub fn run(&self, forget: impl FnOnce()) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let rest = opens_batch(*last, Instant::now());
        if rest {
            std::thread::sleep(REST);
        }
        forget();
        *last = Some(Instant::now());
        rest
    }
}

/// A forget opens a batch unless the previous one was done just before it (same read).
fn opens_batch(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= BATCH_GAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_forget_of_a_read_rests() {
        let t = Instant::now();
        assert!(opens_batch(None, t));
        assert!(!opens_batch(Some(t), t + Duration::from_micros(2)));
        assert!(opens_batch(Some(t), t + BATCH_GAP));
        assert!(opens_batch(Some(t), t + Duration::from_millis(5)));
        // A clock that seems to step back never rests twice in a row.
        assert!(!opens_batch(Some(t + Duration::from_millis(1)), t));
    }

    #[test]
    fn a_batch_rests_before_its_first_forget_only() {
        let p = ForgetPace::default();
        let mut done = 0;
        let t0 = Instant::now();
        let rests = (0..50).filter(|_| p.run(|| done += 1)).count();
        assert_eq!(done, 50);
        assert!(t0.elapsed() >= REST);
        // The first rests; back-to-back ones do not (a few may if the test thread is preempted
        // for longer than the gap, never most of them).
        assert!((1..10).contains(&rests), "{rests} rests");
    }
}
