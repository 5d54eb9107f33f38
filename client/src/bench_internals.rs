//! The ring and frame-pool operations of the datapath over heap memory, for
//! the criterion micro-benchmarks in `client/bench/benches` (feature
//! `bench-internals`). Not a stable API: it exists to catch regressions in
//! the per-batch cost of the rings, which the end-to-end benchmark cannot
//! separate from the kernel's cost.
//!
//! Each type plays both sides of one ring: the "kernel" side writes or reads
//! the shared indices directly, and this process's side uses exactly the
//! methods [`XskSocket`](crate::XskSocket) uses.

use std::sync::atomic::Ordering;

use crate::ring::{fake, ConsRing, ProdRing};
use crate::sys::xdp_desc;
use crate::umem::FramePool;

/// An rx ring: the kernel side produces descriptors, this side consumes
/// them as `XskSocket::receive` does (`available`, `read`, `release`).
pub struct RxRing {
    ring: ConsRing<xdp_desc>,
    kernel: fake::Kernel<xdp_desc>,
    kidx: u32,
}

impl RxRing {
    /// A ring of `size` entries (a power of two).
    pub fn new(size: u32) -> RxRing {
        let (ring, kernel) = fake::cons(size, 0);
        RxRing {
            ring,
            kernel,
            kidx: 0,
        }
    }

    /// Kernel side: publish `n` descriptors (n ≤ free space).
    pub fn kernel_produce(&mut self, n: u32) {
        for i in 0..n {
            self.kernel.write(
                self.kidx.wrapping_add(i),
                xdp_desc {
                    addr: u64::from(i) * 2048 + 256,
                    len: 60,
                    options: 0,
                },
            );
        }
        self.kidx = self.kidx.wrapping_add(n);
        self.kernel.producer().store(self.kidx, Ordering::Release);
    }

    /// This side: consume up to `max` descriptors; returns how many and the
    /// sum of their addresses (so the reads cannot be optimised away).
    pub fn consume(&mut self, max: u32) -> (u32, u64) {
        let n = self.ring.available(max);
        let at = self.ring.index();
        let mut sum = 0u64;
        for i in 0..n {
            sum = sum.wrapping_add(self.ring.read(at.wrapping_add(i)).addr);
        }
        self.ring.release(n);
        (n, sum)
    }
}

/// A fill (or tx) ring: this side produces as `XskSocket`'s refill does
/// (`free`, `write`, `submit`), the kernel side consumes.
pub struct FillRing {
    ring: ProdRing<u64>,
    kernel: fake::Kernel<u64>,
    kidx: u32,
}

impl FillRing {
    /// A ring of `size` entries (a power of two).
    pub fn new(size: u32) -> FillRing {
        let (ring, kernel) = fake::prod(size, 0);
        FillRing {
            ring,
            kernel,
            kidx: 0,
        }
    }

    /// This side: put up to `n` addresses on the ring; returns how many.
    pub fn produce(&mut self, n: u32) -> u32 {
        let n = self.ring.free(n);
        let at = self.ring.index();
        for i in 0..n {
            self.ring.write(at.wrapping_add(i), u64::from(i) * 2048);
        }
        self.ring.submit(n);
        n
    }

    /// Kernel side: consume everything published; returns how many.
    pub fn kernel_consume(&mut self) -> u32 {
        let prod = self.kernel.producer().load(Ordering::Acquire);
        let n = prod.wrapping_sub(self.kidx);
        self.kidx = prod;
        self.kernel.consumer().store(prod, Ordering::Release);
        n
    }
}

/// The LIFO frame pool.
pub struct Pool(FramePool);

impl Pool {
    /// A pool holding all `frames` frames of 2048 bytes.
    pub fn new(frames: u32) -> Pool {
        Pool(FramePool::full(frames, 2048))
    }

    /// Take `n` frames (as a fill-ring refill does) and give them back one
    /// by one (as receive's recycling does); returns the sum of addresses.
    pub fn cycle(&mut self, n: usize) -> u64 {
        let mut taken = [0u64; 256];
        let n = n.min(taken.len()).min(self.0.len());
        self.0.take(n, |i, a| taken[i] = a);
        let mut sum = 0u64;
        for &a in &taken[..n] {
            sum = sum.wrapping_add(a);
            self.0.push(a);
        }
        sum
    }
}
