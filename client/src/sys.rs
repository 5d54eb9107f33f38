//! The kernel ABI (`linux/if_xdp.h`) and the handful of syscalls the datapath
//! needs, behind small safe functions.
//!
//! Everything `unsafe` about talking to the kernel lives here: socket options
//! with C structs, `bind(2)` with a `sockaddr_xdp`, the wakeup `sendto`/`recvfrom`
//! calls, `poll(2)`, and [`Mmap`], the RAII owner of a mapping. The structs and
//! most constants come from the `libc` crate; the few it lacks are defined here.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

pub(crate) use libc::{
    sockaddr_xdp, xdp_desc, xdp_mmap_offsets, xdp_ring_offset, xdp_statistics, xdp_umem_reg,
    AF_XDP, XDP_COPY, XDP_MMAP_OFFSETS, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING, XDP_RING_NEED_WAKEUP,
    XDP_RX_RING, XDP_TX_RING, XDP_UMEM_COMPLETION_RING, XDP_UMEM_FILL_RING,
    XDP_UMEM_PGOFF_COMPLETION_RING, XDP_UMEM_PGOFF_FILL_RING, XDP_USE_NEED_WAKEUP, XDP_ZEROCOPY,
};

/// `SO_DOMAIN` (`asm/socket.h`): missing from `libc` for Linux targets.
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
pub(crate) const SO_DOMAIN: libc::c_int = 0x1029;
/// `SO_DOMAIN` (`asm-generic/socket.h`): missing from `libc` for Linux targets.
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
pub(crate) const SO_DOMAIN: libc::c_int = 39;

/// `XDP_PACKET_HEADROOM` (`linux/bpf.h`): the kernel reserves this many bytes
/// in front of every received frame, after the umem headroom.
pub(crate) const XDP_PACKET_HEADROOM: u32 = 256;

/// `XDP_STATISTICS` getsockopt (`linux/if_xdp.h`).
const XDP_STATISTICS: libc::c_int = libc::XDP_STATISTICS;
/// `XDP_OPTIONS` getsockopt (`linux/if_xdp.h`).
const XDP_OPTIONS: libc::c_int = libc::XDP_OPTIONS;
/// `XDP_OPTIONS_ZEROCOPY` flag in `struct xdp_options`.
pub(crate) const XDP_OPTIONS_ZEROCOPY: u32 = libc::XDP_OPTIONS_ZEROCOPY;

/// `getsockopt(2)` into a plain-old-data C struct. Returns the length the
/// kernel wrote.
///
/// # Safety
/// `T` must be a `repr(C)` integer-only struct (every bit pattern valid), so
/// that whatever prefix the kernel writes, and the zeroes after it, form a
/// valid `T`.
unsafe fn getsockopt_pod<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut val = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a writable buffer of `len` bytes that lives across the
    // call; the kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and then (partly) overwritten by the kernel;
    // the caller guarantees every bit pattern is a valid `T`.
    Ok((unsafe { val.assume_init() }, len as usize))
}

/// `setsockopt(2)` with a plain C value.
fn setsockopt_pod<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> io::Result<()> {
    // SAFETY: `val` points to `size_of::<T>()` readable bytes for the duration
    // of the call; the kernel only reads them.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (val as *const T).cast::<libc::c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The socket's address family (`SO_DOMAIN`).
pub(crate) fn socket_domain(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: c_int is plain data.
    let (domain, _) = unsafe { getsockopt_pod::<libc::c_int>(fd, libc::SOL_SOCKET, SO_DOMAIN)? };
    Ok(domain)
}

/// `XDP_UMEM_REG`.
pub(crate) fn register_umem(fd: BorrowedFd<'_>, reg: &xdp_umem_reg) -> io::Result<()> {
    setsockopt_pod(fd, libc::SOL_XDP, libc::XDP_UMEM_REG, reg)
}

/// One of `XDP_{RX,TX}_RING` / `XDP_UMEM_{FILL,COMPLETION}_RING`: set a ring's
/// number of entries.
pub(crate) fn set_ring_size(fd: BorrowedFd<'_>, opt: libc::c_int, entries: u32) -> io::Result<()> {
    let entries =
        libc::c_int::try_from(entries).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    setsockopt_pod(fd, libc::SOL_XDP, opt, &entries)
}

/// `XDP_MMAP_OFFSETS`. Kernels before 5.4 return the shorter v1 layout without
/// the `flags` offsets (no need_wakeup support); that is reported as
/// `ErrorKind::Unsupported`.
pub(crate) fn mmap_offsets(fd: BorrowedFd<'_>) -> io::Result<xdp_mmap_offsets> {
    // SAFETY: xdp_mmap_offsets is four structs of four u64s.
    let (off, len) =
        unsafe { getsockopt_pod::<xdp_mmap_offsets>(fd, libc::SOL_XDP, XDP_MMAP_OFFSETS)? };
    if len != size_of::<xdp_mmap_offsets>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "XDP_MMAP_OFFSETS returned {len} bytes, expected {} (a kernel older than 5.4 \
                 without ring flags)",
                size_of::<xdp_mmap_offsets>()
            ),
        ));
    }
    Ok(off)
}

/// `XDP_STATISTICS`. Fields an older kernel does not report stay zero.
pub(crate) fn statistics(fd: BorrowedFd<'_>) -> io::Result<xdp_statistics> {
    // SAFETY: xdp_statistics is six u64s; a short (v1) answer leaves zeroes.
    let (stats, _) =
        unsafe { getsockopt_pod::<xdp_statistics>(fd, libc::SOL_XDP, XDP_STATISTICS)? };
    Ok(stats)
}

/// `XDP_MAX_TX_SKB_BUDGET` (`linux/if_xdp.h`, Linux 6.17+): how many tx
/// descriptors one copy-mode `sendto` may turn into skbs (default 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Set `XDP_MAX_TX_SKB_BUDGET`. Kernels without it answer `ENOPROTOOPT`.
pub(crate) fn set_tx_skb_budget(fd: BorrowedFd<'_>, budget: u32) -> io::Result<()> {
    let budget =
        libc::c_uint::try_from(budget).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    setsockopt_pod(fd, libc::SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget)
}

/// `XDP_OPTIONS`: the `xdp_options.flags` word.
pub(crate) fn options(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: xdp_options is one u32.
    let (opts, _) = unsafe { getsockopt_pod::<libc::xdp_options>(fd, libc::SOL_XDP, XDP_OPTIONS)? };
    Ok(opts.flags)
}

/// `bind(2)` an AF_XDP socket.
pub(crate) fn bind_xdp(fd: BorrowedFd<'_>, addr: &sockaddr_xdp) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_xdp of the length passed; the kernel
    // only reads it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (addr as *const sockaddr_xdp).cast::<libc::sockaddr>(),
            size_of::<sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tx wakeup: `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`. In copy mode the
/// kernel transmits (up to a budget of descriptors) inside this call.
#[inline]
pub(crate) fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length send with null buffer and address is valid; the
    // kernel reads nothing.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Rx wakeup: `recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)`.
#[inline]
pub(crate) fn kick_rx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length receive with null buffer and address is valid;
    // the kernel writes nothing.
    let rc = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `poll(2)` one fd for `events`; returns the `revents`, or 0 on timeout or
/// `EINTR`. `timeout_ms < 0` waits forever.
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout_ms: libc::c_int,
) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(if rc == 0 { 0 } else { pfd.revents })
}

/// The current `RLIMIT_MEMLOCK` (soft, hard) in bytes; `u64::MAX` is
/// unlimited. `None` if getrlimit fails.
pub(crate) fn memlock_limit() -> Option<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    if rc != 0 {
        return None;
    }
    // rlim_t is not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let conv = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v as u64
        }
    };
    Some((conv(rl.rlim_cur), conv(rl.rlim_max)))
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        4096
    } else {
        v as usize
    }
}

/// An owned memory mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mmap` only owns an address range; it hands out no references by
// itself, and unmapping from another thread is fine.
unsafe impl Send for Mmap {}
// SAFETY: as above; `&Mmap` exposes only the pointer value and length.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// A private anonymous read/write mapping of `len` bytes, pre-faulted.
    /// The memory is zeroed and page aligned.
    pub(crate) fn anonymous(len: usize) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing; it aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::from_result(p, len)
    }

    /// A shared read/write mapping of `len` bytes of `fd` at `offset` (an
    /// AF_XDP ring, selected by its page offset), pre-faulted.
    pub(crate) fn shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: a new mapping at an address of the kernel's choosing; it
        // aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        Self::from_result(p, len)
    }

    fn from_result(p: *mut libc::c_void, len: usize) -> io::Result<Mmap> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        match NonNull::new(p.cast::<u8>()) {
            Some(ptr) => Ok(Mmap { ptr, len }),
            None => Err(io::Error::from_raw_os_error(libc::ENOMEM)),
        }
    }

    /// Start of the mapping.
    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and owns;
        // every reference handed out from it borrows `self`, so none outlives
        // this call.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast::<libc::c_void>(), self.len);
        }
    }
}

/// What an inherited fd number refers to, for validating a sock-fds list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// Not an open fd in this process.
    Closed,
    /// Open, but not a socket (the `st_mode` file type bits).
    NotSocket(u32),
    /// A socket of this address family (`SO_DOMAIN`).
    Socket(libc::c_int),
}

/// Classify fd number `fd` of this process without taking ownership of it.
pub(crate) fn fd_kind(fd: RawFd) -> io::Result<FdKind> {
    if fd < 0 {
        return Ok(FdKind::Closed);
    }
    // SAFETY: F_GETFD only reads the fd table; any integer is acceptable.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EBADF) {
            Ok(FdKind::Closed)
        } else {
            Err(e)
        };
    }
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is valid writable memory of the right type.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled `st` (and it was zeroed anyway).
    let mode = unsafe { st.assume_init() }.st_mode;
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Ok(FdKind::NotSocket(mode & libc::S_IFMT));
    }
    // SAFETY: fd was checked open just above and is only borrowed for the
    // duration of this getsockopt call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(FdKind::Socket(socket_domain(borrowed)?))
}

/// A close-on-exec duplicate of fd number `fd`, which stays open as it was.
pub(crate) fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new fd that nothing else owns.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Set or clear close-on-exec on fd number `fd`.
pub(crate) fn set_cloexec_raw(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only change the fd's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mark every fd from `first` upwards close-on-exec
/// (`close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`, Linux 5.11+).
pub(crate) fn cloexec_from(first: RawFd) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only
    // sets a flag on each open fd in the range.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
