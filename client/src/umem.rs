//! The umem: the packet-buffer area shared with the kernel, and the pool of
//! frames this process currently owns.

use std::io;

use crate::sys::{xdp_umem_reg, Mmap};

/// Size and ring geometry of a socket's umem (its packet-buffer area).
///
/// The umem is `frame_count * frame_size` bytes of anonymous memory, and it is
/// **locked memory**: registering it charges those bytes to the calling user's
/// `RLIMIT_MEMLOCK` (summed over all of that user's processes) unless the
/// process has `CAP_IPC_LOCK`. See [`SocketConfig`](crate::SocketConfig) for
/// the defaults and the budget they fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Number of frames (chunks) in the umem.
    /// `frame_count * frame_size` must be a multiple of the page size.
    pub frame_count: u32,
    /// Size of one frame in bytes: a power of two in 2048..=4096.
    pub frame_size: u32,
    /// Bytes the kernel leaves free at the start of every received frame, in
    /// addition to its own `XDP_PACKET_HEADROOM` (256). Transmitted frames are
    /// also written at this offset. The largest received frame is
    /// `frame_size - 256 - headroom` bytes; the largest transmitted frame is
    /// `frame_size - headroom` bytes.
    pub headroom: u32,
    /// Entries in the fill ring (power of two): frames lent to the kernel for
    /// reception.
    pub fill_size: u32,
    /// Entries in the completion ring (power of two): transmitted frames the
    /// kernel hands back.
    pub comp_size: u32,
}

impl UmemConfig {
    /// The umem size in bytes (`frame_count * frame_size`), i.e. the amount
    /// of locked memory it needs.
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.frame_count) * u64::from(self.frame_size)
    }
}

/// The mapped packet-buffer area.
#[derive(Debug)]
pub(crate) struct Umem {
    map: Mmap,
    /// Usable length in bytes (`frame_count * frame_size`), ≤ the mapping.
    len: u64,
    /// `frame_size - 1`.
    frame_mask: u64,
}

impl Umem {
    /// Map `frame_count * frame_size` bytes of zeroed, page-aligned memory.
    pub(crate) fn new(frame_count: u32, frame_size: u32) -> io::Result<Umem> {
        let len = u64::from(frame_count) * u64::from(frame_size);
        let map_len =
            usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let map = Mmap::anonymous(map_len)?;
        Ok(Umem {
            map,
            len,
            frame_mask: u64::from(frame_size) - 1,
        })
    }

    /// The `XDP_UMEM_REG` argument describing this area.
    pub(crate) fn registration(&self, frame_size: u32, headroom: u32) -> xdp_umem_reg {
        xdp_umem_reg {
            addr: self.map.as_ptr() as u64,
            len: self.len,
            chunk_size: frame_size,
            headroom,
            flags: 0,
            tx_metadata_len: 0,
        }
    }

    /// Length in bytes (`frame_count * frame_size`).
    #[inline(always)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether `[addr, addr + len)` lies inside the umem and inside one frame.
    #[inline(always)]
    fn in_bounds(&self, addr: u64, len: u32) -> bool {
        let end = addr.wrapping_add(u64::from(len));
        // `end >= addr` rules out wrap-around; `end <= self.len` keeps it in
        // the mapping; the frame check keeps it inside one chunk (the kernel
        // never produces a descriptor that crosses a chunk in aligned mode).
        end >= addr
            && end <= self.len
            && (addr & self.frame_mask) + u64::from(len) <= self.frame_mask + 1
    }

    /// The bytes `[addr, addr + len)`, or `None` if that range is not inside
    /// the umem and inside one frame.
    #[inline(always)]
    pub(crate) fn frame(&self, addr: u64, len: u32) -> Option<&[u8]> {
        if !self.in_bounds(addr, len) {
            return None;
        }
        // SAFETY: the range lies inside the mapping (checked above; `addr` <
        // `self.len` ≤ mapping length, so it also fits `usize`). The frame is
        // owned by this process while its descriptor is held (the kernel does
        // not write a frame between handing it out on rx/completion and
        // getting it back on fill/tx), and the slice borrows `self`.
        Some(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(addr as usize), len as usize)
        })
    }

    /// Mutable access to `[addr, addr + len)`, or `None` if out of bounds.
    #[inline(always)]
    pub(crate) fn frame_mut(&mut self, addr: u64, len: u32) -> Option<&mut [u8]> {
        if !self.in_bounds(addr, len) {
            return None;
        }
        // SAFETY: as in `frame`; `&mut self` makes the slice unique on our
        // side, and the kernel does not touch a frame this process owns.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.map.as_ptr().add(addr as usize), len as usize)
        })
    }
}

/// The frames this process owns and may lend out: a LIFO stack of frame base
/// addresses (offsets into the umem), so the most recently used — and most
/// likely cache-hot — frame is reused first. Its capacity is fixed at the
/// frame count, so pushing never allocates; a push beyond it (only possible
/// if the kernel returned a frame twice) is refused.
#[derive(Debug)]
pub(crate) struct FramePool {
    frames: Vec<u64>,
    capacity: usize,
}

impl FramePool {
    /// A pool holding every frame of a `frame_count * frame_size` umem, with
    /// frame 0 on top.
    pub(crate) fn full(frame_count: u32, frame_size: u32) -> FramePool {
        let capacity = frame_count as usize;
        let mut frames = Vec::with_capacity(capacity);
        frames.extend(
            (0..u64::from(frame_count))
                .rev()
                .map(|i| i * u64::from(frame_size)),
        );
        FramePool { frames, capacity }
    }

    /// Frames available.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Take the most recently returned frame.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<u64> {
        self.frames.pop()
    }

    /// Return a frame. Returns `false` (and drops it) if the pool is already
    /// full, which means the frame was handed back twice.
    #[inline(always)]
    pub(crate) fn push(&mut self, frame: u64) -> bool {
        if self.frames.len() < self.capacity {
            self.frames.push(frame);
            true
        } else {
            false
        }
    }

    /// Remove the top `n` frames (n ≤ len) and pass each to `f`, top first.
    #[inline]
    pub(crate) fn take(&mut self, n: usize, mut f: impl FnMut(usize, u64)) {
        let keep = self.frames.len().saturating_sub(n);
        for (i, &a) in self.frames[keep..].iter().rev().enumerate() {
            f(i, a);
        }
        self.frames.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_lifo_and_bounded() {
        let mut p = FramePool::full(4, 2048);
        assert_eq!(p.len(), 4);
        assert_eq!(p.pop(), Some(0));
        assert_eq!(p.pop(), Some(2048));
        assert!(p.push(2048));
        assert_eq!(p.pop(), Some(2048));
        assert!(p.push(0));
        assert!(p.push(2048));
        assert!(!p.push(4096), "over capacity is refused");
        assert_eq!(p.len(), 4);
        let mut got = vec![];
        p.take(3, |i, a| got.push((i, a)));
        assert_eq!(got, vec![(0, 2048), (1, 0), (2, 4096)]);
        assert_eq!(p.len(), 1);
        p.take(5, |_, _| {});
        assert_eq!(p.len(), 0);
        assert_eq!(p.pop(), None);
    }

    #[test]
    fn umem_bounds() {
        let mut u = Umem::new(4, 2048).unwrap();
        assert_eq!(u.frame(0, 2048).map(<[u8]>::len), Some(2048));
        assert_eq!(u.frame(2048 + 256, 60).map(<[u8]>::len), Some(60));
        assert!(u.frame(3 * 2048 + 100, 1948).is_some());
        assert!(u.frame(3 * 2048 + 100, 1949).is_none(), "past the end");
        assert!(u.frame(100, 2000).is_none(), "crosses a frame");
        assert_eq!(u.frame(8192, 0).map(<[u8]>::len), Some(0));
        assert!(u.frame(8193, 1).is_none());
        assert!(u.frame(u64::MAX - 3, 10).is_none(), "wraps");
        let f = u.frame_mut(2048, 4).unwrap();
        f.copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(u.frame(2048, 4).unwrap(), &[1, 2, 3, 4]);
    }
}
