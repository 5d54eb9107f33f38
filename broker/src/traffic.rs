//! Frames a leased socket moved, from the ring positions the kernel
//! advances: the RX ring's producer (frames delivered) and the TX ring's
//! consumer (descriptors taken for transmit). The positions are `u32`s that
//! wrap; [`SocketTraffic`] turns them into 64-bit totals by adding the
//! forward steps between samples. The broker samples every second and at
//! each status, so no wrap is missed below 2^31 frames a second.
//!
//! A ring is mapped the first time it is seen (the holder creates it after
//! the grant) and unmapped when the [`SocketTraffic`] is dropped, with its
//! lease record.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use crate::kernel::Kernel;
use crate::ring::RingKind;

/// A mapped ring word the kernel advances (see [`crate::ring`]).
pub trait RingPosition: Send + Sync {
    /// The word's current value.
    fn load(&self) -> u32;
}

impl RingPosition for crate::ring::RingCursor {
    fn load(&self) -> u32 {
        crate::ring::RingCursor::load(self)
    }
}

/// The total of one ring: its mapping once the ring exists, the highest
/// position seen and the frames counted so far.
#[derive(Default)]
struct RingTotal {
    ring: Option<Box<dyn RingPosition>>,
    /// The furthest position seen (positions start at 0 when the ring is
    /// created, so the first reading counts everything up to it).
    last: u32,
    total: u64,
}

impl RingTotal {
    /// Read the ring (mapping it with `map` the first time it exists) and
    /// return the total; `None` while the socket has no such ring.
    fn sample(
        &mut self,
        map: impl FnOnce() -> io::Result<Option<Box<dyn RingPosition>>>,
    ) -> io::Result<Option<u64>> {
        if self.ring.is_none() {
            match map()? {
                Some(r) => self.ring = Some(r),
                None => return Ok(None),
            }
        }
        let Some(ring) = &self.ring else {
            return Ok(None);
        };
        let pos = ring.load();
        let step = pos.wrapping_sub(self.last);
        // A step of 2^31 or more is a step backwards: the kernel never moves
        // a position back, but the holder can write the word in its own
        // mapping. It is not counted and the furthest position stays, so
        // the kernel's next write does not count frames twice.
        if step < 1 << 31 {
            self.total += u64::from(step);
            self.last = pos;
        }
        Ok(Some(self.total))
    }
}

/// Frames moved by one leased socket.
#[derive(Default)]
pub struct SocketTraffic {
    inner: Mutex<Rings>,
}

#[derive(Default)]
struct Rings {
    rx: RingTotal,
    tx: RingTotal,
}

/// What [`SocketTraffic::sample`] read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrafficSample {
    /// Frames the kernel delivered to the RX ring (None: no RX ring yet).
    pub rx_packets: Option<u64>,
    /// Descriptors the kernel took from the TX ring (None: no TX ring yet).
    pub tx_packets: Option<u64>,
    /// Why a ring could not be mapped, if one could not.
    pub error: Option<String>,
}

impl SocketTraffic {
    /// Read both rings of `sock` (mapping them through `kernel` once they
    /// exist) and return the totals.
    pub fn sample<K: Kernel + ?Sized>(&self, kernel: &K, sock: BorrowedFd<'_>) -> TrafficSample {
        let mut rings = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = TrafficSample::default();
        let mut errors = Vec::new();
        match rings.rx.sample(|| kernel.map_ring(sock, RingKind::Rx)) {
            Ok(n) => out.rx_packets = n,
            Err(e) => errors.push(format!("cannot map the rx ring: {e}")),
        }
        match rings.tx.sample(|| kernel.map_ring(sock, RingKind::Tx)) {
            Ok(n) => out.tx_packets = n,
            Err(e) => errors.push(format!("cannot map the tx ring: {e}")),
        }
        if !errors.is_empty() {
            out.error = Some(errors.join("; "));
        }
        out
    }

    /// Whether a ring is mapped (for tests).
    #[cfg(test)]
    pub fn mapped(&self) -> usize {
        let rings = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        usize::from(rings.rx.ring.is_some()) + usize::from(rings.tx.ring.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Word(Arc<AtomicU32>);
    impl RingPosition for Word {
        fn load(&self) -> u32 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn ring(w: &Arc<AtomicU32>) -> io::Result<Option<Box<dyn RingPosition>>> {
        Ok(Some(Box::new(Word(Arc::clone(w)))))
    }

    #[test]
    fn totals_count_from_ring_creation_and_across_the_wrap() {
        let w = Arc::new(AtomicU32::new(0));
        let mut t = RingTotal::default();
        assert_eq!(t.sample(|| Ok(None)).unwrap(), None, "no ring yet");
        w.store(10, Ordering::Relaxed);
        assert_eq!(t.sample(|| ring(&w)).unwrap(), Some(10));
        w.store(u32::MAX - 5, Ordering::Relaxed);
        // 10 -> 2^32 - 6 is a step of 2^32 - 16 > 2^31: backwards, ignored.
        assert_eq!(t.sample(|| unreachable!()).unwrap(), Some(10));
        // Forward in steps below 2^31, then across the wrap.
        for pos in [1u32 << 30, 1 << 31, 3 << 30, u32::MAX - 5, 4] {
            w.store(pos, Ordering::Relaxed);
            t.sample(|| unreachable!()).unwrap();
        }
        assert_eq!(t.total, (1u64 << 32) + 4);
    }

    #[test]
    fn a_holder_writing_the_word_back_does_not_count_frames_twice() {
        let w = Arc::new(AtomicU32::new(100));
        let mut t = RingTotal::default();
        assert_eq!(t.sample(|| ring(&w)).unwrap(), Some(100));
        w.store(40, Ordering::Relaxed); // the holder writes it back
        assert_eq!(t.sample(|| unreachable!()).unwrap(), Some(100));
        w.store(130, Ordering::Relaxed); // the kernel's next update
        assert_eq!(t.sample(|| unreachable!()).unwrap(), Some(130));
    }

    #[test]
    fn a_mapping_error_is_reported_and_retried() {
        let mut t = RingTotal::default();
        assert!(t.sample(|| Err(io::Error::other("boom"))).is_err());
        let w = Arc::new(AtomicU32::new(3));
        assert_eq!(t.sample(|| ring(&w)).unwrap(), Some(3));
    }
}
