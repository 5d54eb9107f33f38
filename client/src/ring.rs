//! Single-producer/single-consumer descriptor rings shared with the kernel.
//!
//! Each AF_XDP ring is a power-of-two array of descriptors plus a `producer`
//! index, a `consumer` index and a `flags` word, all in memory `mmap`ed from
//! the socket. Indices are free-running `u32`s; a slot is `index & mask`, and
//! the arithmetic is done with wrapping operations so the indices may run past
//! `u32::MAX`.
//!
//! Like libxdp, each side keeps cached copies of both indices so the steady
//! state touches the shared cache lines only when the cache runs dry:
//!
//! * [`ProdRing`] (fill, tx): `cached_cons` holds the kernel's consumer index
//!   *plus the ring size*, so `cached_cons - cached_prod` is the free space.
//!   The consumer index is re-read (Acquire) only when the cached free space
//!   is smaller than what the caller asks for.
//! * [`ConsRing`] (rx, completion): `cached_prod` is the kernel's producer
//!   index; it is re-read (Acquire) only when no cached entry is left. (An
//!   earlier version re-read it whenever fewer than the asked-for entries
//!   were cached; skipping those reads measured up to 2 % faster where the
//!   kernel publishes every frame on its own, in skb mode.)
//!
//! Memory ordering follows the kernel's contract (`xsk_queue.h`): a consumer
//! loads the producer index with Acquire before reading descriptors and
//! publishes its consumer index with Release after it is done with them; a
//! producer writes descriptors and then publishes the producer index with
//! Release, and loads the consumer index with Acquire before reusing slots.
//! The `flags` word (`XDP_RING_NEED_WAKEUP`) is read Relaxed, as libxdp does:
//! it is a hint, and a stale read only delays a wakeup until the next call
//! (the kernel's `poll()` also wakes the driver).
//!
//! Indices from the kernel are never trusted for memory safety: every slot
//! access is masked, and the number of entries a consumer sees or a producer
//! may write is clamped to the ring size.

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys::{self, xdp_ring_offset, Mmap};

/// Memory that backs a ring and keeps it alive.
#[derive(Debug)]
enum RingMemory {
    /// The kernel's ring, mapped from the socket.
    Mapped(Mmap),
    /// Heap memory standing in for the kernel in unit tests.
    #[cfg(any(test, feature = "bench-internals"))]
    Heap(Box<[u64]>),
}

impl RingMemory {
    fn base_and_len(&self) -> (*mut u8, usize) {
        match self {
            RingMemory::Mapped(m) => (m.as_ptr(), m.len()),
            #[cfg(any(test, feature = "bench-internals"))]
            RingMemory::Heap(b) => (b.as_ptr() as *mut u8, b.len() * size_of::<u64>()),
        }
    }
}

/// The raw view of one ring: pointers into its memory plus cached indices.
#[derive(Debug)]
pub(crate) struct Ring<T: Copy> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
    // Declared last: the pointers above point into this memory.
    _mem: RingMemory,
    _marker: PhantomData<T>,
}

// SAFETY: the ring owns its memory; the raw pointers are only dereferenced
// through `&self`/`&mut self` methods, and the shared indices are atomics.
unsafe impl<T: Copy + Send> Send for Ring<T> {}
// SAFETY: `&Ring` methods only perform atomic loads and reads of descriptors
// (plain `Copy` data); all mutation needs `&mut`.
unsafe impl<T: Copy + Sync> Sync for Ring<T> {}

/// Where a field of `size` bytes at `off` must fit.
fn check_field(
    what: &str,
    off: u64,
    size: usize,
    align: usize,
    len: usize,
    base: usize,
) -> Result<usize, String> {
    let off = usize::try_from(off).map_err(|_| format!("{what} offset {off} out of range"))?;
    let end = off
        .checked_add(size)
        .ok_or_else(|| format!("{what} offset {off} overflows"))?;
    if end > len {
        return Err(format!(
            "{what} at offset {off} (+{size} bytes) lies outside the {len}-byte ring mapping"
        ));
    }
    if (base + off) % align != 0 {
        return Err(format!(
            "{what} at offset {off} is not {align}-byte aligned"
        ));
    }
    Ok(off)
}

impl<T: Copy> Ring<T> {
    /// View `mem` as a ring of `size` entries laid out as `off` says. Checks
    /// that every field lies inside the memory and is aligned, so the unsafe
    /// accessors below stay in bounds whatever the kernel reported.
    fn new(mem: RingMemory, off: &xdp_ring_offset, size: u32) -> Result<Ring<T>, String> {
        if size == 0 || !size.is_power_of_two() {
            return Err(format!("ring size {size} is not a power of two"));
        }
        let (base, len) = mem.base_and_len();
        let b = base as usize;
        let a = align_of::<AtomicU32>();
        let prod = check_field("producer", off.producer, 4, a, len, b)?;
        let cons = check_field("consumer", off.consumer, 4, a, len, b)?;
        let flags = check_field("flags", off.flags, 4, a, len, b)?;
        let ring_bytes = size_of::<T>()
            .checked_mul(size as usize)
            .ok_or_else(|| "ring size overflows".to_string())?;
        let desc = check_field("descriptors", off.desc, ring_bytes, align_of::<T>(), len, b)?;
        // SAFETY (for all four): each offset was checked above to lie, with
        // its full extent, inside the `len`-byte allocation starting at the
        // non-null `base`, so the sums are in bounds and non-null.
        let at = |o: usize| unsafe { NonNull::new_unchecked(base.add(o)) };
        Ok(Ring {
            producer: at(prod).cast(),
            consumer: at(cons).cast(),
            flags: at(flags).cast(),
            descs: at(desc).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
            _mem: mem,
            _marker: PhantomData,
        })
    }

    /// Map one of the socket's rings. `pgoff` selects the ring, `off` is its
    /// layout from `XDP_MMAP_OFFSETS`.
    fn map(
        fd: BorrowedFd<'_>,
        pgoff: u64,
        off: &xdp_ring_offset,
        size: u32,
    ) -> Result<Ring<T>, MapError> {
        let len = usize::try_from(off.desc)
            .ok()
            .and_then(|d| d.checked_add(size_of::<T>().checked_mul(size as usize)?))
            .ok_or_else(|| MapError::Layout(format!("ring of {size} entries is too large")))?;
        let mem = Mmap::shared(fd, len, pgoff).map_err(MapError::Mmap)?;
        Ring::new(RingMemory::Mapped(mem), off, size).map_err(MapError::Layout)
    }

    #[inline(always)]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into `_mem`, in bounds and aligned (checked in `new`),
        // and lives as long as `self`. The kernel accesses it atomically too.
        unsafe { self.producer.as_ref() }
    }

    #[inline(always)]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    #[inline(always)]
    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }
    }

    /// Read the descriptor in slot `idx & mask`.
    #[inline(always)]
    fn read(&self, idx: u32) -> T {
        let slot = (idx & self.mask) as usize;
        // SAFETY: `slot < size`, and `new` checked that `size` descriptors fit
        // in `_mem` at `descs` with `T`'s alignment. `T` is plain data (u64 or
        // xdp_desc), valid for any bit pattern.
        unsafe { self.descs.as_ptr().add(slot).read() }
    }

    /// Write the descriptor in slot `idx & mask`.
    #[inline(always)]
    fn write(&mut self, idx: u32, val: T) {
        let slot = (idx & self.mask) as usize;
        // SAFETY: as in `read`; the slot is owned by this producer until the
        // producer index is published.
        unsafe { self.descs.as_ptr().add(slot).write(val) }
    }
}

/// Why mapping a ring failed.
#[derive(Debug)]
pub(crate) enum MapError {
    /// `mmap(2)` failed.
    Mmap(std::io::Error),
    /// The kernel's offsets do not fit the mapping.
    Layout(String),
}

/// A ring this process produces into: fill (`u64` frame addresses) or tx
/// (`xdp_desc`).
#[derive(Debug)]
pub(crate) struct ProdRing<T: Copy>(Ring<T>);

impl<T: Copy> ProdRing<T> {
    fn from_ring(mut r: Ring<T>) -> Self {
        r.cached_prod = r.producer().load(Ordering::Relaxed);
        r.cached_cons = r.consumer().load(Ordering::Acquire).wrapping_add(r.size);
        ProdRing(r)
    }

    /// Map a producer ring of the socket.
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        pgoff: u64,
        off: &xdp_ring_offset,
        size: u32,
    ) -> Result<Self, MapError> {
        Ring::map(fd, pgoff, off, size).map(Self::from_ring)
    }

    /// How many slots (at most `want`) can be written now. Re-reads the
    /// kernel's consumer index only if the cached free space is short.
    #[inline]
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let r = &mut self.0;
        let free = r.cached_cons.wrapping_sub(r.cached_prod);
        if free >= want {
            return want.min(r.size);
        }
        r.cached_cons = r.consumer().load(Ordering::Acquire).wrapping_add(r.size);
        // Clamp: a consumer index ahead of our producer would claim more than
        // `size` free slots.
        let free = r.cached_cons.wrapping_sub(r.cached_prod).min(r.size);
        free.min(want)
    }

    /// The index of the next slot to write; slots `index() .. index() + n`
    /// are writable after `free()` returned at least `n`.
    #[inline(always)]
    pub(crate) fn index(&self) -> u32 {
        self.0.cached_prod
    }

    /// Write slot `idx` (masked).
    #[inline(always)]
    pub(crate) fn write(&mut self, idx: u32, val: T) {
        self.0.write(idx, val)
    }

    /// Publish `n` written slots to the kernel (Release).
    #[inline]
    pub(crate) fn submit(&mut self, n: u32) {
        let r = &mut self.0;
        r.cached_prod = r.cached_prod.wrapping_add(n);
        r.producer().store(r.cached_prod, Ordering::Release);
    }

    /// Whether the kernel asked for a wakeup (`XDP_RING_NEED_WAKEUP`).
    #[inline]
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.0.flags().load(Ordering::Relaxed) & sys::XDP_RING_NEED_WAKEUP != 0
    }

    /// Entries published but not yet consumed by the kernel (reads the
    /// consumer index).
    #[inline]
    pub(crate) fn unconsumed(&self) -> u32 {
        let r = &self.0;
        r.cached_prod
            .wrapping_sub(r.consumer().load(Ordering::Acquire))
            .min(r.size)
    }

    /// Number of entries.
    pub(crate) fn size(&self) -> u32 {
        self.0.size
    }
}

/// A ring this process consumes from: rx (`xdp_desc`) or completion (`u64`).
#[derive(Debug)]
pub(crate) struct ConsRing<T: Copy>(Ring<T>);

impl<T: Copy> ConsRing<T> {
    fn from_ring(mut r: Ring<T>) -> Self {
        r.cached_prod = r.producer().load(Ordering::Acquire);
        r.cached_cons = r.consumer().load(Ordering::Relaxed);
        ConsRing(r)
    }

    /// Map a consumer ring of the socket.
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        pgoff: u64,
        off: &xdp_ring_offset,
        size: u32,
    ) -> Result<Self, MapError> {
        Ring::map(fd, pgoff, off, size).map(Self::from_ring)
    }

    /// How many entries (at most `want`) can be read now, starting at
    /// [`index`](Self::index). Re-reads the kernel's producer index only
    /// when no cached entry is left (as libxdp does): the producer's cache
    /// line is written by the kernel on another CPU, so every read of it that
    /// can be saved is a transfer the kernel does not wait for.
    #[inline]
    pub(crate) fn available(&mut self, want: u32) -> u32 {
        let r = &mut self.0;
        let mut entries = r.cached_prod.wrapping_sub(r.cached_cons);
        if entries == 0 {
            r.cached_prod = r.producer().load(Ordering::Acquire);
            entries = r.cached_prod.wrapping_sub(r.cached_cons);
        }
        // Clamp: never read more than a ring's worth, whatever the producer
        // index says.
        entries.min(r.size).min(want)
    }

    /// The index of the next entry to read.
    #[inline(always)]
    pub(crate) fn index(&self) -> u32 {
        self.0.cached_cons
    }

    /// Read entry `idx` (masked).
    #[inline(always)]
    pub(crate) fn read(&self, idx: u32) -> T {
        self.0.read(idx)
    }

    /// Hand `n` read entries back to the kernel (Release).
    #[inline]
    pub(crate) fn release(&mut self, n: u32) {
        let r = &mut self.0;
        r.cached_cons = r.cached_cons.wrapping_add(n);
        r.consumer().store(r.cached_cons, Ordering::Release);
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn size(&self) -> u32 {
        self.0.size
    }
}

/// Unit-test (and micro-benchmark) support: rings over heap memory, with
/// handles to play the kernel's side.
#[cfg(any(test, feature = "bench-internals"))]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod fake {
    use super::*;

    /// Layout of a fake ring: producer at 0, consumer at 64, flags at 128,
    /// descriptors at 192 (like the kernel, each on its own cache line).
    const PROD: u64 = 0;
    const CONS: u64 = 64;
    const FLAGS: u64 = 128;
    const DESC: u64 = 192;

    /// The kernel's side of a fake ring.
    pub(crate) struct Kernel<T: Copy> {
        base: *mut u8,
        mask: u32,
        _t: PhantomData<T>,
    }

    impl<T: Copy> Kernel<T> {
        fn atomic(&self, off: u64) -> &AtomicU32 {
            // SAFETY: offsets inside the heap ring, which the test keeps alive
            // while it uses this handle.
            unsafe { &*(self.base.add(off as usize) as *const AtomicU32) }
        }
        pub(crate) fn producer(&self) -> &AtomicU32 {
            self.atomic(PROD)
        }
        pub(crate) fn consumer(&self) -> &AtomicU32 {
            self.atomic(CONS)
        }
        pub(crate) fn flags(&self) -> &AtomicU32 {
            self.atomic(FLAGS)
        }
        pub(crate) fn write(&self, idx: u32, v: T) {
            // SAFETY: masked slot inside the heap ring.
            unsafe {
                (self.base.add(DESC as usize) as *mut T)
                    .add((idx & self.mask) as usize)
                    .write(v)
            }
        }
        pub(crate) fn read(&self, idx: u32) -> T {
            // SAFETY: masked slot inside the heap ring.
            unsafe {
                (self.base.add(DESC as usize) as *const T)
                    .add((idx & self.mask) as usize)
                    .read()
            }
        }
    }

    fn heap<T: Copy>(size: u32, prod: u32, cons: u32) -> (Ring<T>, Kernel<T>) {
        let bytes = DESC as usize + size as usize * size_of::<T>();
        let words = bytes.div_ceil(8);
        let mem = vec![0u64; words].into_boxed_slice();
        let off = xdp_ring_offset {
            producer: PROD,
            consumer: CONS,
            desc: DESC,
            flags: FLAGS,
        };
        let mem = RingMemory::Heap(mem);
        let base = mem.base_and_len().0;
        let ring = Ring::<T>::new(mem, &off, size).expect("fake ring layout");
        let k = Kernel {
            base,
            mask: size - 1,
            _t: PhantomData,
        };
        k.producer().store(prod, Ordering::Relaxed);
        k.consumer().store(cons, Ordering::Relaxed);
        (ring, k)
    }

    /// A producer ring whose shared indices both start at `start`.
    pub(crate) fn prod<T: Copy>(size: u32, start: u32) -> (ProdRing<T>, Kernel<T>) {
        let (r, k) = heap(size, start, start);
        (ProdRing::from_ring(r), k)
    }

    /// A consumer ring whose shared indices both start at `start`.
    pub(crate) fn cons<T: Copy>(size: u32, start: u32) -> (ConsRing<T>, Kernel<T>) {
        let (r, k) = heap(size, start, start);
        (ConsRing::from_ring(r), k)
    }

    /// Build a ring over `mem` with `off` (to test the layout checks).
    pub(crate) fn layout_check(
        words: usize,
        off: xdp_ring_offset,
        size: u32,
    ) -> Result<(), String> {
        let mem = RingMemory::Heap(vec![0u64; words].into_boxed_slice());
        Ring::<u64>::new(mem, &off, size).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::fake;
    use super::*;
    use crate::sys::xdp_desc;

    #[test]
    fn producer_wraps_past_u32_max() {
        let start = u32::MAX - 5;
        let (mut ring, k) = fake::prod::<u64>(8, start);
        assert_eq!(ring.free(100), 8, "empty ring: all 8 slots free");
        let mut next = 0u64;
        let mut kernel_idx = start;
        // Produce and consume several laps, crossing u32::MAX.
        for lap in 0..10u32 {
            let n = ring.free(5);
            assert_eq!(n, 5, "lap {lap}");
            let at = ring.index();
            for i in 0..n {
                ring.write(at.wrapping_add(i), next + u64::from(i));
            }
            ring.submit(n);
            assert_eq!(k.producer().load(Ordering::Relaxed), at.wrapping_add(n));
            // Kernel consumes them in order.
            for i in 0..n {
                assert_eq!(k.read(kernel_idx), next + u64::from(i));
                kernel_idx = kernel_idx.wrapping_add(1);
            }
            k.consumer().store(kernel_idx, Ordering::Release);
            next += u64::from(n);
        }
        assert!(ring.index() < start, "index wrapped");
    }

    #[test]
    fn producer_never_exceeds_ring_size() {
        let (mut ring, k) = fake::prod::<u64>(4, u32::MAX - 1);
        let n = ring.free(4);
        assert_eq!(n, 4);
        let at = ring.index();
        for i in 0..n {
            ring.write(at.wrapping_add(i), 1);
        }
        ring.submit(n);
        assert_eq!(ring.free(1), 0, "full ring");
        // Kernel consumes 3.
        k.consumer()
            .store((u32::MAX - 1).wrapping_add(3), Ordering::Release);
        assert_eq!(ring.free(10), 3);
        // A bogus consumer index far ahead of the producer is clamped.
        k.consumer().store(at.wrapping_add(1000), Ordering::Release);
        assert_eq!(ring.free(u32::MAX), ring.size());
        assert_eq!(ring.unconsumed(), ring.size());
    }

    #[test]
    fn producer_uses_cached_free_space() {
        let (mut ring, k) = fake::prod::<u64>(8, 0);
        assert_eq!(ring.free(2), 2);
        ring.submit(2);
        // The kernel consumes, but the cache still says 6 free: no re-read
        // needed for a request of 6...
        k.consumer().store(2, Ordering::Release);
        assert_eq!(ring.free(6), 6);
        // ...and a request of 8 re-reads and sees all 8 free.
        assert_eq!(ring.free(8), 8);
        assert_eq!(ring.unconsumed(), 0);
    }

    #[test]
    fn consumer_wraps_past_u32_max() {
        let start = u32::MAX - 2;
        let (mut ring, k) = fake::cons::<xdp_desc>(4, start);
        let mut kidx = start;
        let mut expect = 0u64;
        for _ in 0..20 {
            // Kernel produces 3.
            for i in 0..3u64 {
                k.write(
                    kidx,
                    xdp_desc {
                        addr: expect + i,
                        len: 60,
                        options: 0,
                    },
                );
                kidx = kidx.wrapping_add(1);
            }
            k.producer().store(kidx, Ordering::Release);
            let n = ring.available(64);
            assert_eq!(n, 3);
            let at = ring.index();
            for i in 0..n {
                assert_eq!(ring.read(at.wrapping_add(i)).addr, expect + u64::from(i));
            }
            ring.release(n);
            assert_eq!(k.consumer().load(Ordering::Relaxed), kidx);
            expect += 3;
        }
        assert_eq!(ring.available(64), 0);
    }

    #[test]
    fn consumer_clamps_bogus_producer() {
        let (mut ring, k) = fake::cons::<u64>(8, 10);
        // Producer claims 1000 entries: only one ring's worth is visible.
        k.producer().store(1010, Ordering::Release);
        assert_eq!(ring.available(u32::MAX), ring.size());
        assert_eq!(ring.available(3), 3);
        // A producer *behind* the consumer (wrapping difference huge) too.
        let (mut ring, k) = fake::cons::<u64>(8, 10);
        k.producer().store(5, Ordering::Release);
        assert!(ring.available(u32::MAX) <= ring.size());
    }

    #[test]
    fn consumer_partial_batches() {
        let (mut ring, k) = fake::cons::<u64>(16, 0);
        for i in 0..10 {
            k.write(i, u64::from(i));
        }
        k.producer().store(10, Ordering::Release);
        assert_eq!(ring.available(4), 4);
        ring.release(4);
        assert_eq!(ring.available(4), 4);
        assert_eq!(ring.read(ring.index()), 4);
        ring.release(4);
        assert_eq!(ring.available(4), 2);
        ring.release(2);
        assert_eq!(ring.available(4), 0);
    }

    #[test]
    fn consumer_rereads_the_producer_only_when_its_cache_is_empty() {
        let (mut ring, k) = fake::cons::<u64>(32, 0);
        k.producer().store(10, Ordering::Release);
        assert_eq!(ring.available(4), 4);
        ring.release(4);
        // The kernel publishes more, but 6 cached entries are left: those
        // come first, without touching the producer's cache line.
        k.producer().store(20, Ordering::Release);
        assert_eq!(ring.available(8), 6);
        ring.release(6);
        assert_eq!(ring.available(8), 8);
    }

    #[test]
    fn need_wakeup_flag() {
        let (ring, k) = fake::prod::<u64>(4, 0);
        assert!(!ring.needs_wakeup());
        k.flags()
            .store(sys::XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
        assert!(ring.needs_wakeup());
    }

    #[test]
    fn layout_is_checked() {
        let ok = xdp_ring_offset {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        // 192 + 8*8 = 256 bytes = 32 words.
        assert!(fake::layout_check(32, ok, 8).is_ok());
        assert!(fake::layout_check(31, ok, 8).is_err(), "descs overflow");
        let mut bad = ok;
        bad.consumer = 1 << 40;
        assert!(fake::layout_check(32, bad, 8).is_err());
        let mut bad = ok;
        bad.flags = 130;
        assert!(fake::layout_check(32, bad, 8).is_err(), "misaligned");
        let mut bad = ok;
        bad.desc = 196;
        assert!(fake::layout_check(64, bad, 8).is_err(), "misaligned descs");
        assert!(fake::layout_check(32, ok, 6).is_err(), "not a power of two");
        assert!(fake::layout_check(32, ok, 0).is_err());
    }
}
