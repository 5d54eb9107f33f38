//! What a busy-polling loop does when a poll finds nothing.

/// Spin-wait backoff for a loop that busy-polls an rx ring.
/// [`after_poll`](Self::after_poll) is told how many frames a poll took of
/// the batch it asked for. A poll that drained the ring (took fewer) waits
/// with the CPU's spin-wait hint (`PAUSE` on x86), twice as long as the
/// previous time up to a limit; a poll that took a whole batch (the loop is
/// behind) starts over with no wait.
///
/// Why it matters: a loop that re-reads a drained ring as fast as it can
/// keeps pulling the ring's producer index and descriptors into its own
/// CPU's cache, so every time the kernel writes one of them (on another
/// CPU) it must first take the cache line back. Where the kernel publishes
/// every frame on its own (generic, skb-mode XDP), that costs the kernel a
/// cross-core transfer per frame. Waiting a little lets frames accumulate,
/// so each poll takes more of them for the same transfers. On the 2-vCPU VM
/// of `docs/BENCHMARKS.md`, skb-mode rxdrop ran about 1.6 times faster with
/// the default backoff than with a tight loop; see that file for every mode.
/// The cost is latency: at the default limit a frame can wait up to 128
/// spin-wait hints (about 1.1 µs there) before the loop looks again.
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
}

impl IdleBackoff {
    /// The default limit: up to 2^7 = 128 spin-wait hints per idle poll.
    pub const DEFAULT_MAX_STEP: u32 = 7;

    /// A backoff with the default limit.
    pub const fn new() -> IdleBackoff {
        IdleBackoff::with_max_step(Self::DEFAULT_MAX_STEP)
    }

    /// A backoff that waits at most 2^`max_step` spin-wait hints per idle
    /// poll (`max_step` is capped at 16). 0 means one hint every time.
    pub const fn with_max_step(max_step: u32) -> IdleBackoff {
        IdleBackoff {
            step: 0,
            max_step: if max_step > 16 { 16 } else { max_step },
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

    /// Wait, longer than last time (up to the limit).
    #[inline]
    pub fn idle(&mut self) {
        for _ in 0..self.spins() {
            std::hint::spin_loop();
        }
        if self.step < self.max_step {
            self.step += 1;
        }
    }

    /// Start over: the next [`idle`](Self::idle) waits one spin-wait hint.
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// How many spin-wait hints the next [`idle`](Self::idle) issues.
    pub fn spins(&self) -> u32 {
        1 << self.step
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

    #[test]
    fn doubles_up_to_the_limit_and_resets() {
        let mut b = IdleBackoff::with_max_step(3);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(b.spins());
            b.idle();
        }
        assert_eq!(seen, [1, 2, 4, 8, 8, 8]);
        b.reset();
        assert_eq!(b.spins(), 1);
    }

    #[test]
    fn a_drained_ring_waits_and_a_full_batch_resets() {
        let mut b = IdleBackoff::new();
        b.after_poll(0, 64);
        b.after_poll(10, 64);
        assert_eq!(b.spins(), 4);
        b.after_poll(64, 64);
        assert_eq!(b.spins(), 1);
    }

    #[test]
    fn limit_is_capped() {
        let mut b = IdleBackoff::with_max_step(99);
        for _ in 0..20 {
            b.idle();
        }
        assert_eq!(b.spins(), 1 << 16);
        assert_eq!(
            IdleBackoff::default().max_step,
            IdleBackoff::DEFAULT_MAX_STEP
        );
    }
}
