//! What a busy-polling loop does when a poll finds nothing.

use std::time::{Duration, Instant};

/// Spin-wait backoff for a loop that busy-polls an rx ring.
///
/// [`after_poll`](Self::after_poll) is told how many frames a poll took of
/// the batch it asked for. After a poll that drained the ring (took fewer),
/// it spin-waits (the CPU's spin-wait hint, `PAUSE` on x86, between reads
/// of the monotonic clock) until a set time has passed **since that poll
/// began**: 8 ns the first time, twice as long each further time, up to a
/// limit (about 2 µs by default). A poll that took a whole batch (the loop
/// is behind) starts over with no wait.
///
/// Why it matters: a loop that re-reads a drained ring as fast as it can
/// keeps pulling the ring's producer index and descriptors into its own
/// CPU's cache, so every time the kernel writes one of them (on another
/// CPU) it must first take the cache line back. Where the kernel publishes
/// every frame on its own (generic, skb-mode XDP), that costs the kernel a
/// cross-core transfer per frame. Waiting a little lets frames accumulate,
/// so each poll takes more of them for the same transfers. On the 2-vCPU VM
/// of `docs/BENCHMARKS.md`, skb-mode rxdrop ran about 1.8 times faster with
/// the default backoff than with a tight loop; see that file for every mode.
///
/// Why by time, and from the start of the poll: the spacing of the polls
/// is what the kernel feels. Counting spin-wait hints instead would make
/// the spacing depend on how long one hint takes (from about 10 to about
/// 140 cycles, depending on the CPU) and on how long the loop's own work
/// takes: a quicker loop would poll more often and take fewer frames each
/// time. The cost is latency: at the default limit a frame can wait up to
/// about 2 µs before the loop looks again.
///
/// ```
/// use xsk_client::IdleBackoff;
/// let mut backoff = IdleBackoff::new();
/// # let mut polls = 0;
/// # let mut receive = |max: usize| { polls += 1; if polls % 3 == 0 { max } else { 0 } };
/// for _ in 0..10 {
///     let taken = receive(64); // e.g. sock.receive(64, |frame| { ... })
///     backoff.after_poll(taken, 64);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleBackoff {
    step: u32,
    max_step: u32,
    /// When the poll being accounted for began: the end of the previous
    /// wait. `None` after a reset (then the wait counts from its own start).
    poll_began: Option<Instant>,
}

impl IdleBackoff {
    /// The default limit: polls spaced by up to 2^8 × 8 ns = 2.048 µs.
    pub const DEFAULT_MAX_STEP: u32 = 8;

    /// The first wait after a full batch; each further one doubles.
    pub const UNIT: Duration = Duration::from_nanos(8);

    /// A backoff with the default limit.
    pub const fn new() -> IdleBackoff {
        IdleBackoff::with_max_step(Self::DEFAULT_MAX_STEP)
    }

    /// A backoff whose waits stop doubling at 2^`max_step` × [`UNIT`](Self::UNIT)
    /// (`max_step` is capped at 16, about 0.5 ms). 0 means 8 ns every time.
    pub const fn with_max_step(max_step: u32) -> IdleBackoff {
        IdleBackoff {
            step: 0,
            max_step: if max_step > 16 { 16 } else { max_step },
            poll_began: None,
        }
    }

    /// Account for one poll that took `taken` frames of the `asked` it could
    /// have taken: [`idle`](Self::idle) if it took fewer (the ring is
    /// drained), [`reset`](Self::reset) otherwise.
    #[inline]
    pub fn after_poll(&mut self, taken: usize, asked: usize) {
        if taken < asked {
            self.idle();
        } else {
            self.reset();
        }
    }

    /// Spin-wait until [`wait`](Self::wait) has passed since the poll just
    /// made began (the end of the previous wait), then double the next wait
    /// (up to the limit). Returns at once if the poll itself took that long.
    #[inline]
    pub fn idle(&mut self) {
        let mut now = Instant::now();
        let until = self.poll_began.unwrap_or(now) + self.wait();
        while now < until {
            std::hint::spin_loop();
            now = Instant::now();
        }
        self.poll_began = Some(now);
        if self.step < self.max_step {
            self.step += 1;
        }
    }

    /// Start over: no wait now, and the next [`idle`](Self::idle) waits
    /// [`UNIT`](Self::UNIT).
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
        self.poll_began = None;
    }

    /// How long the next [`idle`](Self::idle) spaces the polls.
    pub fn wait(&self) -> Duration {
        Self::UNIT * (1 << self.step)
    }
}

impl Default for IdleBackoff {
    fn default() -> Self {
        IdleBackoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(b: &IdleBackoff) -> u128 {
        b.wait().as_nanos()
    }

    #[test]
    fn doubles_up_to_the_limit_and_resets() {
        let mut b = IdleBackoff::with_max_step(3);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ns(&b));
            b.idle();
        }
        assert_eq!(seen, [8, 16, 32, 64, 64, 64]);
        b.reset();
        assert_eq!(ns(&b), 8);
    }

    #[test]
    fn a_drained_ring_waits_and_a_full_batch_resets() {
        let mut b = IdleBackoff::new();
        b.after_poll(0, 64);
        b.after_poll(10, 64);
        assert_eq!(ns(&b), 32);
        b.after_poll(64, 64);
        assert_eq!(ns(&b), 8);
    }

    #[test]
    fn polls_are_spaced_from_the_start_of_the_previous_poll() {
        let mut b = IdleBackoff::with_max_step(12);
        b.idle();
        for _ in 0..14 {
            let began = b.poll_began.expect("set by idle");
            let wait = b.wait();
            b.idle();
            let next_began = b.poll_began.expect("set by idle");
            assert!(next_began >= began + wait, "polls closer than {wait:?}");
        }
        // After a full batch the wait counts from its own start.
        b.reset();
        assert_eq!(b.poll_began, None);
        let t = Instant::now();
        b.idle();
        assert!(b.poll_began.expect("set by idle") >= t + IdleBackoff::UNIT);
    }

    #[test]
    fn limit_is_capped() {
        let mut b = IdleBackoff::with_max_step(99);
        for _ in 0..20 {
            b.step = b.step.max(15);
            b.idle();
        }
        assert_eq!(b.wait(), IdleBackoff::UNIT * (1 << 16));
        assert_eq!(
            IdleBackoff::default().max_step,
            IdleBackoff::DEFAULT_MAX_STEP
        );
    }
}
