//! Frames a leased socket moved, from the ring positions the kernel
//! advances: the RX ring's producer (frames delivered) and the TX ring's
//! consumer (descriptors taken for transmit). The positions are `u32`s that
//! wrap; [`SocketTraffic`] turns them into 64-bit totals by adding the
//! forward steps between samples. The broker reads them every second and at
//! each status, so no wrap is missed below 2^31 frames a second.
//!
//! A ring is mapped by the once-a-second tick the first time it exists (the
//! holder creates it after the grant; status requests only read rings
//! already mapped, so they make no `mmap` calls) and unmapped when the
//! [`SocketTraffic`] is dropped, with its lease record.

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
    /// Why the last attempt to map the ring failed, if it did.
    error: Option<String>,
}

impl RingTotal {
    /// Map the ring with `map` if it is not mapped yet and exists now; a
    /// failure is kept (for status) and the next call tries again.
    fn map_if_absent(
        &mut self,
        map: impl FnOnce() -> io::Result<Option<Box<dyn RingPosition>>>,
    ) -> Result<(), String> {
        if self.ring.is_some() {
            return Ok(());
        }
        match map() {
            Ok(r) => {
                self.ring = r;
                self.error = None;
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Read the ring, if mapped, and return the total; `None` while the
    /// ring is not mapped.
    fn read(&mut self) -> Option<u64> {
        let pos = self.ring.as_ref()?.load();
        let step = pos.wrapping_sub(self.last);
        // A step of 2^31 or more is a step backwards: the kernel never moves
        // a position back, but the holder can write the word in its own
        // mapping. It is not counted and the furthest position stays, so
        // the kernel's next write does not count frames twice.
        if step < 1 << 31 {
            self.total += u64::from(step);
            self.last = pos;
        }
        Some(self.total)
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

/// What [`SocketTraffic::read`] gives.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TrafficSample {
    /// Frames the kernel delivered to the RX ring (None: not mapped, the
    /// holder has not created it, or not yet seen).
    pub rx_packets: Option<u64>,
    /// Descriptors the kernel took from the TX ring (None: as for rx).
    pub tx_packets: Option<u64>,
    /// Why a ring could not be mapped, if one could not.
    pub error: Option<String>,
}

impl SocketTraffic {
    /// Map the rings of `sock` that exist now and are not mapped yet
    /// (through `kernel`), then read both. Each ring the holder has not
    /// created costs a refused `mmap`, so the broker calls this from its
    /// once-a-second tick, never per status request.
    pub fn sample<K: Kernel + ?Sized>(&self, kernel: &K, sock: BorrowedFd<'_>) -> TrafficSample {
        {
            let mut rings = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let _ = rings
                .rx
                .map_if_absent(|| kernel.map_ring(sock, RingKind::Rx));
            let _ = rings
                .tx
                .map_if_absent(|| kernel.map_ring(sock, RingKind::Tx));
        }
        self.read()
    }

    /// Read the rings mapped so far (no system call) and return the totals,
    /// with the last mapping error.
    pub fn read(&self) -> TrafficSample {
        let mut rings = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let errors: Vec<String> = [(&rings.rx, RingKind::Rx), (&rings.tx, RingKind::Tx)]
            .iter()
            .filter_map(|(r, kind)| {
                r.error
                    .as_ref()
                    .map(|e| format!("cannot map the {kind} ring: {e}"))
            })
            .collect();
        TrafficSample {
            rx_packets: rings.rx.read(),
            tx_packets: rings.tx.read(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        }
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
        t.map_if_absent(|| Ok(None)).unwrap();
        assert_eq!(t.read(), None, "no ring yet");
        w.store(10, Ordering::Relaxed);
        t.map_if_absent(|| ring(&w)).unwrap();
        assert_eq!(t.read(), Some(10));
        t.map_if_absent(|| unreachable!("mapped once")).unwrap();
        w.store(u32::MAX - 5, Ordering::Relaxed);
        // 10 -> 2^32 - 6 is a step of 2^32 - 16 > 2^31: backwards, ignored.
        assert_eq!(t.read(), Some(10));
        // Forward in steps below 2^31, then across the wrap.
        for pos in [1u32 << 30, 1 << 31, 3 << 30, u32::MAX - 5, 4] {
            w.store(pos, Ordering::Relaxed);
            t.read();
        }
        assert_eq!(t.read(), Some((1u64 << 32) + 4));
    }

    #[test]
    fn a_holder_writing_the_word_back_does_not_count_frames_twice() {
        let w = Arc::new(AtomicU32::new(100));
        let mut t = RingTotal::default();
        t.map_if_absent(|| ring(&w)).unwrap();
        assert_eq!(t.read(), Some(100));
        w.store(40, Ordering::Relaxed); // the holder writes it back
        assert_eq!(t.read(), Some(100));
        w.store(130, Ordering::Relaxed); // the kernel's next update
        assert_eq!(t.read(), Some(130));
    }

    #[test]
    fn a_mapping_error_is_kept_until_a_retry_maps_the_ring() {
        let mut t = RingTotal::default();
        assert!(t.map_if_absent(|| Err(io::Error::other("boom"))).is_err());
        assert_eq!((t.read(), t.error.as_deref()), (None, Some("boom")));
        let w = Arc::new(AtomicU32::new(3));
        t.map_if_absent(|| ring(&w)).unwrap();
        assert_eq!((t.read(), t.error.as_deref()), (Some(3), None));
    }
}
