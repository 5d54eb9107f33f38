//! Read-only views of the ring positions the kernel advances in a leased
//! socket: the RX ring's producer (frames the kernel delivered) and the TX
//! ring's consumer (descriptors the kernel took for transmit). All of this
//! module's `unsafe` is the `mmap`, the loads and the `munmap` of one
//! [`RingCursor`].
//!
//! The holder creates the rings (`setsockopt(XDP_RX_RING / XDP_TX_RING)`);
//! once a ring exists, any fd of the socket may map it (kernel
//! `net/xdp/xsk.c`, `xsk_mmap`: the socket must not have been unbound by a
//! vanished device). The broker maps only the page(s) up to the word it
//! reads, `PROT_READ`. The mapping holds the socket's file, so it must be
//! dropped when the lease ends (the broker's lease table does).
//!
//! The words live in memory the holder maps read-write: the kernel rewrites
//! them from its own copy at each update, but between updates a holder may
//! write anything there. The positions are exact for a holder that follows
//! the ring protocol, and not a security boundary.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Which of a socket's rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingKind {
    /// The RX ring: its producer counts frames the kernel delivered.
    Rx,
    /// The TX ring: its consumer counts descriptors the kernel took.
    Tx,
}

impl std::fmt::Display for RingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RingKind::Rx => "rx",
            RingKind::Tx => "tx",
        })
    }
}

/// The largest offset of a ring word the broker accepts from the kernel
/// (the words are in the ring's first page; this only bounds the mapping).
const MAX_WORD_OFFSET: u64 = 1 << 20;

/// A read-only mapping of the page(s) of one ring up to the word the kernel
/// advances; unmapped on drop.
#[derive(Debug)]
pub struct RingCursor {
    base: NonNull<c_void>,
    len: usize,
    /// Byte offset of the word from `base`: 4-aligned, `+ 4 <= len`.
    word: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is only
// read, with atomic loads, so sharing or moving it between threads is sound.
unsafe impl Send for RingCursor {}
// SAFETY: as above: `&RingCursor` only ever performs atomic loads.
unsafe impl Sync for RingCursor {}

impl RingCursor {
    /// Map the word the kernel advances in `sock`'s `kind` ring: `Ok(None)`
    /// when the socket has no such ring (yet), or can no longer be mapped
    /// (its device went away).
    pub fn map(sock: BorrowedFd<'_>, kind: RingKind) -> io::Result<Option<RingCursor>> {
        let (rx_producer, tx_consumer) = mmap_offsets(sock)?;
        let (word, pgoff) = match kind {
            RingKind::Rx => (rx_producer, libc::XDP_PGOFF_RX_RING),
            RingKind::Tx => (tx_consumer, libc::XDP_PGOFF_TX_RING),
        };
        if word % 4 != 0 || word + 4 > MAX_WORD_OFFSET {
            return Err(io::Error::other(format!(
                "the kernel gave the {kind} ring's position word at offset {word}, \
                 which the broker does not map"
            )));
        }
        let word = word as usize;
        let page = page_size();
        let len = (word + 4).div_ceil(page) * page;
        // SAFETY: a new read-only shared mapping at an address the kernel
        // chooses; no existing memory is affected. The fd is open for the
        // call; the mapping keeps its own reference to the file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                sock.as_raw_fd(),
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // No such ring yet (EINVAL), or the socket was unbound by its
                // device going away (EBUSY).
                Some(libc::EINVAL) | Some(libc::EBUSY) => Ok(None),
                _ => Err(e),
            };
        }
        let Some(base) = NonNull::new(p) else {
            return Err(io::Error::other("mmap returned a null mapping"));
        };
        Ok(Some(RingCursor { base, len, word }))
    }

    /// The word's current value.
    pub fn load(&self) -> u32 {
        // SAFETY: `word` is 4-aligned and `word + 4 <= len` (checked in
        // `map`, and the mapping is page-aligned), so the pointer is a valid,
        // aligned u32 in memory mapped for as long as `self` lives. The
        // kernel and the holder write it concurrently, which is why only
        // atomic loads are used; an aligned 4-byte atomic load on read-only
        // memory is a plain load on every target the broker builds for.
        let a =
            unsafe { AtomicU32::from_ptr(self.base.as_ptr().cast::<u8>().add(self.word).cast()) };
        a.load(Ordering::Acquire)
    }
}

impl Drop for RingCursor {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `map`, owned
        // by this value and unmapped only here; no reference into it
        // outlives `self` (`load` returns the value).
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf with a valid name has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// The offsets of the RX ring's producer and the TX ring's consumer: the
/// kernel's layout, the same for every socket, so asked once.
fn mmap_offsets(sock: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    static OFFSETS: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    if let Some(o) = OFFSETS.get() {
        return Ok(*o);
    }
    let o = ask_mmap_offsets(sock)?;
    Ok(*OFFSETS.get_or_init(|| o))
}

/// `getsockopt(SOL_XDP, XDP_MMAP_OFFSETS)`.
fn ask_mmap_offsets(sock: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let (off, len) =
        crate::xdp::xdp_getsockopt::<libc::xdp_mmap_offsets>(sock, libc::XDP_MMAP_OFFSETS)
            .map_err(|e| io::Error::new(e.kind(), format!("getsockopt(XDP_MMAP_OFFSETS): {e}")))?;
    let full = std::mem::size_of::<libc::xdp_mmap_offsets>();
    if len != full {
        return Err(io::Error::other(format!(
            "getsockopt(XDP_MMAP_OFFSETS) gave {len} bytes, not {full}"
        )));
    }
    Ok((off.rx.producer, off.tx.consumer))
}
