//! [`XskSocket`]: an adopted, bound AF_XDP socket and its batched datapath.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ring::{ConsRing, MapError, ProdRing};
use crate::sys::{self, xdp_desc};
use crate::umem::{FramePool, Umem, UmemConfig};
use crate::CopyMode;

/// Largest ring accepted by [`SocketConfig::validate`].
pub const MAX_RING_SIZE: u32 = 1 << 20;
/// Largest frame count accepted by [`SocketConfig::validate`].
pub const MAX_FRAME_COUNT: u32 = 1 << 22;
/// Smallest receive room per frame (`frame_size - 256 - headroom`) accepted by
/// [`SocketConfig::validate`].
pub const MIN_RX_FRAME_ROOM: u32 = 64;

/// Frames one copy-mode transmit wakeup sends unless raised
/// (`TX_BATCH_SIZE` in the kernel's `net/xdp/xsk.c`).
const KERNEL_TX_BUDGET: u32 = 32;

/// Everything [`XskSocket::adopt`] needs to set up a socket.
///
/// # Defaults
///
/// [`SocketConfig::default()`] is sized for the common 8 MiB
/// `RLIMIT_MEMLOCK`:
///
/// | field | default | why |
/// |---|---|---|
/// | `umem.frame_size` | 2048 | smallest chunk the kernel accepts; fits a 1500-MTU frame (rx room 2048 - 256 = 1792 bytes) and halves the locked memory compared with 4096 |
/// | `umem.frame_count` | 2048 | 4 MiB of umem: **two** default sockets fit an 8 MiB limit per user |
/// | `umem.headroom` | 0 | |
/// | `umem.fill_size`, `umem.comp_size`, `rx_size`, `tx_size` | 512 each | their sum equals `frame_count`, so every ring can be full at once and no ring starves another (QEMU's sizing rule, at a quarter of its 32 MiB) |
/// | `copy` | `Auto` | kernel picks zero-copy where the driver supports it |
/// | `need_wakeup` | true | syscalls only when the kernel asks for them |
/// | `batch_size` | 64 | as in QEMU and libxdp's samples |
///
/// One more setting follows from `batch_size`: in copy mode the kernel
/// transmits inside the `sendto` wakeup and stops after its per-call budget
/// (32 frames). When `batch_size` is larger, [`XskSocket::adopt`] raises that
/// budget to `batch_size` (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17+; older kernels
/// keep 32), so one wakeup sends a whole batch. See
/// [`XskSocket::set_tx_budget`].
///
/// For several queues under one user's limit use
/// [`SocketConfig::with_frame_count`], e.g. `with_frame_count(1024)` (2 MiB,
/// rings of 256) for four queues in 8 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketConfig {
    /// The umem and its fill/completion rings.
    pub umem: UmemConfig,
    /// Entries in the rx ring (power of two).
    pub rx_size: u32,
    /// Entries in the tx ring (power of two).
    pub tx_size: u32,
    /// Copy or zero-copy (`XDP_COPY` / `XDP_ZEROCOPY` / neither for `Auto`).
    pub copy: CopyMode,
    /// Bind with `XDP_USE_NEED_WAKEUP`: the kernel flags the fill and tx
    /// rings when it needs a syscall to make progress, and the datapath makes
    /// one only then. Without it every transmit makes a `sendto`.
    pub need_wakeup: bool,
    /// Batch size: how many frames the fill ring is topped up by per call,
    /// and how many frames are kept back from the fill ring for transmission.
    pub batch_size: u32,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            umem: UmemConfig {
                frame_count: 2048,
                frame_size: 2048,
                headroom: 0,
                fill_size: 512,
                comp_size: 512,
            },
            rx_size: 512,
            tx_size: 512,
            copy: CopyMode::Auto,
            need_wakeup: true,
            batch_size: 64,
        }
    }
}

impl SocketConfig {
    /// The default configuration scaled to `frame_count` frames of 2048
    /// bytes: each of the four rings gets `frame_count / 4` entries (rounded
    /// down to a power of two), and the batch is `min(64, ring size)`. Call
    /// [`validate`](Self::validate) (or let `adopt` do it) to check the
    /// result, e.g. that `frame_count` is even and at least 8.
    pub fn with_frame_count(frame_count: u32) -> SocketConfig {
        let quarter = (frame_count / 4).max(1);
        let ring = 1u32 << quarter.ilog2();
        let mut c = SocketConfig::default();
        c.umem.frame_count = frame_count;
        c.umem.fill_size = ring;
        c.umem.comp_size = ring;
        c.rx_size = ring;
        c.tx_size = ring;
        c.batch_size = c.batch_size.min(ring);
        c
    }

    /// The largest frame a socket with this configuration can transmit
    /// (`frame_size - headroom`).
    pub fn max_tx_frame(&self) -> u32 {
        self.umem.frame_size.saturating_sub(self.umem.headroom)
    }

    /// The largest frame it can receive (`frame_size - 256 - headroom`);
    /// longer frames are dropped by the kernel (`rx_dropped`).
    pub fn max_rx_frame(&self) -> u32 {
        self.umem
            .frame_size
            .saturating_sub(sys::XDP_PACKET_HEADROOM)
            .saturating_sub(self.umem.headroom)
    }

    /// Check the configuration against the kernel's rules and this crate's
    /// sanity limits. Each failure names the field and the rule.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::InvalidConfig(s));
        let u = &self.umem;
        if !u.frame_size.is_power_of_two() || !(2048..=4096).contains(&u.frame_size) {
            return bad(format!(
                "umem.frame_size is {}, but must be a power of two between 2048 and 4096 \
                 (the kernel's limits for aligned chunks on 4 KiB pages)",
                u.frame_size
            ));
        }
        let rx_room =
            i64::from(u.frame_size) - i64::from(sys::XDP_PACKET_HEADROOM) - i64::from(u.headroom);
        if rx_room < i64::from(MIN_RX_FRAME_ROOM) {
            return bad(format!(
                "umem.headroom {} leaves {rx_room} bytes per received frame (frame_size {} - \
                 256 bytes kernel headroom - headroom); at least {MIN_RX_FRAME_ROOM} are needed",
                u.headroom, u.frame_size
            ));
        }
        if u.frame_count == 0 || u.frame_count > MAX_FRAME_COUNT {
            return bad(format!(
                "umem.frame_count is {}, but must be 1..={MAX_FRAME_COUNT}",
                u.frame_count
            ));
        }
        let page = sys::page_size() as u64;
        if u.umem_bytes() % page != 0 {
            return bad(format!(
                "the umem (frame_count {} * frame_size {} = {} bytes) must be a whole number \
                 of {page}-byte pages: use an even frame_count",
                u.frame_count,
                u.frame_size,
                u.umem_bytes()
            ));
        }
        for (name, v) in [
            ("umem.fill_size", u.fill_size),
            ("umem.comp_size", u.comp_size),
            ("rx_size", self.rx_size),
            ("tx_size", self.tx_size),
        ] {
            if !v.is_power_of_two() || v > MAX_RING_SIZE {
                return bad(format!(
                    "{name} is {v}, but ring sizes must be powers of two between 1 and \
                     {MAX_RING_SIZE}"
                ));
            }
        }
        let min_ring = u
            .fill_size
            .min(u.comp_size)
            .min(self.rx_size)
            .min(self.tx_size);
        if self.batch_size == 0 || self.batch_size > min_ring {
            return bad(format!(
                "batch_size is {}, but must be between 1 and the smallest ring size ({min_ring})",
                self.batch_size
            ));
        }
        let need = u64::from(u.fill_size) + u64::from(self.tx_size);
        if u64::from(u.frame_count) < need {
            return bad(format!(
                "umem.frame_count {} is smaller than fill_size {} + tx_size {} = {need}: there \
                 would not be frames enough to stock the fill ring and a full tx ring \
                 (recommended: fill + rx + tx + comp = {} frames, so no ring can starve another)",
                u.frame_count,
                u.fill_size,
                self.tx_size,
                need + u64::from(self.rx_size) + u64::from(u.comp_size)
            ));
        }
        Ok(())
    }
}

/// The kernel's per-socket counters (`getsockopt(XDP_STATISTICS)`): the
/// protocol's type, so a client's reading and the broker's status agree.
pub use xsk_broker_protocol::XdpStatistics;

/// This process's own datapath counters (no syscall to read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Frames received (handed to the `receive`/`forward` callback).
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames queued on the tx ring (by `transmit` or `forward`).
    pub tx_packets: u64,
    /// Bytes queued on the tx ring.
    pub tx_bytes: u64,
    /// Transmitted frames the kernel handed back on the completion ring.
    pub tx_completed: u64,
    /// Wakeup syscalls made (`sendto`/`recvfrom` kicks).
    pub wakeups: u64,
    /// Descriptors from the kernel (rx or completion) that pointed outside
    /// the umem or were returned twice; skipped. Should stay 0.
    pub invalid_descs: u64,
}

/// An AF_XDP socket bound to one (interface, queue), with its umem, its four
/// rings and a pool of free frames: the whole datapath of one queue.
///
/// Created by [`XskSocket::adopt`] from an unbound socket fd (from the broker);
/// no capability is needed. Dropping it unmaps the rings, closes the fd and
/// unmaps the umem. (If another process, e.g. the broker, still holds a copy
/// of the fd, the kernel keeps the socket bound and its umem pinned and
/// charged until that copy is closed too.)
///
/// The datapath methods never allocate and make no syscall per packet: a
/// wakeup syscall is made at most once per call (a few for a large copy-mode
/// transmit), and only when the kernel asks for it (`need_wakeup`).
pub struct XskSocket {
    // Field order is drop order: rings first (munmap), then the fd (close),
    // then the umem (munmap).
    rx: ConsRing<xdp_desc>,
    tx: ProdRing<xdp_desc>,
    fill: ProdRing<u64>,
    comp: ConsRing<u64>,
    fd: OwnedFd,
    umem: Umem,
    pool: FramePool,
    ifindex: u32,
    queue_id: u32,
    /// `!(frame_size - 1)`: maps an address inside a frame to the frame.
    frame_base_mask: u64,
    headroom: u64,
    max_tx_len: u32,
    fill_size: u32,
    /// Frames kept in the pool (not put on the fill ring) for transmission.
    tx_reserve: usize,
    need_wakeup: bool,
    /// Bound in zero-copy mode (from `XDP_OPTIONS` after bind).
    zero_copy: bool,
    outstanding_tx: u32,
    /// Frames one copy-mode wakeup may send (`XDP_MAX_TX_SKB_BUDGET`).
    tx_budget: u32,
    counters: Counters,
}

impl fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("queue_id", &self.queue_id)
            .field("free_frames", &self.pool.len())
            .field("outstanding_tx", &self.outstanding_tx)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Copy a frame into the umem. `dst` and `src` have the same length.
///
/// Frames of 16 to 64 bytes (minimum-size Ethernet frames and the like) are
/// copied with two fixed-size, possibly overlapping copies, which compile to
/// a few vector moves; a plain `copy_from_slice` of a length known only at
/// run time is a call to `memcpy`, which costs more than the copy itself at
/// these sizes. (With `memcpy`, txonly of 60-byte frames ran 1.3 % below the
/// C reference, which inlines its constant-size copy, in five of five
/// paired runs; with this, within noise of it.)
#[inline(always)]
fn copy_frame(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    debug_assert_eq!(dst.len(), n);
    if (32..=64).contains(&n) {
        dst[..32].copy_from_slice(&src[..32]);
        dst[n - 32..n].copy_from_slice(&src[n - 32..n]);
    } else if (16..32).contains(&n) {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..n].copy_from_slice(&src[n - 16..n]);
    } else {
        dst.copy_from_slice(src);
    }
}

/// Errno values a wakeup may return that only mean "try again later".
fn is_transient(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR)
    )
}

fn bind_hint(errno: Option<i32>, copy: CopyMode) -> &'static str {
    match (errno, copy) {
        (Some(libc::EBUSY), _) => {
            "the queue already has an AF_XDP socket bound (another lease or program holds it), \
             or this socket was bound before"
        }
        (Some(libc::ENODEV), _) => {
            "no interface with this index in the socket's network namespace; bind resolves the \
             ifindex in the namespace where the socket was created (the broker's), so use the \
             ifindex the broker reported"
        }
        (Some(libc::EOPNOTSUPP), CopyMode::ZeroCopy) | (Some(libc::EINVAL), CopyMode::ZeroCopy) => {
            "the driver does not support AF_XDP zero-copy on this queue; use CopyMode::Copy or \
             CopyMode::Auto"
        }
        (Some(libc::EOPNOTSUPP), _) => "the device does not support AF_XDP on this queue",
        (Some(libc::EINVAL), _) => {
            "the queue id is not below the device's number of queues, or the socket lacks its \
             umem/rings"
        }
        (Some(libc::EPERM), _) | (Some(libc::EACCES), _) => {
            "not permitted; binding a socket the broker created needs no capability, so a \
             security policy (LSM, seccomp) is probably refusing it"
        }
        (Some(libc::ENOMEM), _) => "the kernel is out of memory for the buffer pool",
        _ => "unexpected errno from bind",
    }
}

fn map_ring_error(fd: RawFd, op: &'static str, e: MapError) -> Error {
    match e {
        MapError::Mmap(source) => Error::Sys { op, fd, source },
        MapError::Layout(detail) => Error::UnsupportedKernel { fd, detail },
    }
}

fn domain_name(d: i32) -> &'static str {
    match d {
        libc::AF_UNIX => " (AF_UNIX)",
        libc::AF_INET => " (AF_INET)",
        libc::AF_INET6 => " (AF_INET6)",
        libc::AF_NETLINK => " (AF_NETLINK)",
        libc::AF_PACKET => " (AF_PACKET)",
        _ => "",
    }
}

/// Turns an `io::Error` of `op` on `fd` into [`Error::Sys`].
fn sys_err(op: &'static str, fd: RawFd) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Sys { op, fd, source }
}

/// Adopt step 1: the fd must be an AF_XDP socket (`SO_DOMAIN`); anything
/// else is [`Error::NotAfXdp`] saying what it is.
fn check_af_xdp(fd: BorrowedFd<'_>) -> Result<(), Error> {
    let raw = fd.as_raw_fd();
    let found = match sys::socket_domain(fd) {
        Ok(sys::AF_XDP) => return Ok(()),
        Ok(d) => format!("a socket of address family {d}{}", domain_name(d)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => "not a socket".into(),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => "not an open file descriptor".into(),
        Err(e) => return Err(sys_err("getsockopt(SO_DOMAIN)", raw)(e)),
    };
    Err(Error::NotAfXdp { fd: raw, found })
}

/// Adopt step 2: map an anonymous umem of `frame_count * frame_size` bytes
/// and register it (`XDP_UMEM_REG`). `ENOBUFS` (over `RLIMIT_MEMLOCK`)
/// becomes [`Error::Memlock`] with the limits, `EBUSY` (a umem is already
/// registered) [`Error::AlreadyConfigured`].
fn register_umem(fd: BorrowedFd<'_>, u: &UmemConfig) -> Result<Umem, Error> {
    let raw = fd.as_raw_fd();
    let umem = Umem::new(u.frame_count, u.frame_size).map_err(sys_err("mmap(umem)", raw))?;
    if let Err(e) = sys::register_umem(fd, &umem.registration(u.frame_size, u.headroom)) {
        return Err(match e.raw_os_error() {
            Some(libc::ENOBUFS) => {
                let (soft_limit, hard_limit) = sys::memlock_limit().unwrap_or((u64::MAX, u64::MAX));
                Error::Memlock {
                    fd: raw,
                    bytes: u.umem_bytes(),
                    soft_limit,
                    hard_limit,
                }
            }
            Some(libc::EBUSY) => Error::AlreadyConfigured {
                fd: raw,
                op: "setsockopt(XDP_UMEM_REG)",
                source: e,
            },
            _ => sys_err("setsockopt(XDP_UMEM_REG)", raw)(e),
        });
    }
    Ok(umem)
}

/// Adopt step 3: set the sizes of the fill, completion, rx and tx rings.
/// A ring that already exists (the socket was set up before) is
/// [`Error::AlreadyConfigured`].
fn size_rings(fd: BorrowedFd<'_>, config: &SocketConfig) -> Result<(), Error> {
    let raw = fd.as_raw_fd();
    let u = &config.umem;
    for (opt, op, entries) in [
        (
            sys::XDP_UMEM_FILL_RING,
            "setsockopt(XDP_UMEM_FILL_RING)",
            u.fill_size,
        ),
        (
            sys::XDP_UMEM_COMPLETION_RING,
            "setsockopt(XDP_UMEM_COMPLETION_RING)",
            u.comp_size,
        ),
        (sys::XDP_RX_RING, "setsockopt(XDP_RX_RING)", config.rx_size),
        (sys::XDP_TX_RING, "setsockopt(XDP_TX_RING)", config.tx_size),
    ] {
        if let Err(e) = sys::set_ring_size(fd, opt, entries) {
            // EBUSY: already bound. EINVAL with a valid power-of-two size:
            // the ring already exists.
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY | libc::EINVAL) => Error::AlreadyConfigured {
                    fd: raw,
                    op,
                    source: e,
                },
                _ => sys_err(op, raw)(e),
            });
        }
    }
    Ok(())
}

/// The four rings of a socket, mapped into this process.
struct MappedRings {
    rx: ConsRing<xdp_desc>,
    tx: ProdRing<xdp_desc>,
    fill: ProdRing<u64>,
    comp: ConsRing<u64>,
}

/// Adopt step 4: read the rings' layout (`XDP_MMAP_OFFSETS`; a layout this
/// code does not know is [`Error::UnsupportedKernel`]) and map the four
/// rings.
fn map_rings(fd: BorrowedFd<'_>, config: &SocketConfig) -> Result<MappedRings, Error> {
    let raw = fd.as_raw_fd();
    let u = &config.umem;
    let off = sys::mmap_offsets(fd).map_err(|e| {
        if e.kind() == std::io::ErrorKind::Unsupported {
            Error::UnsupportedKernel {
                fd: raw,
                detail: e.to_string(),
            }
        } else {
            sys_err("getsockopt(XDP_MMAP_OFFSETS)", raw)(e)
        }
    })?;
    let rx = ConsRing::map(fd, sys::XDP_PGOFF_RX_RING as u64, &off.rx, config.rx_size)
        .map_err(|e| map_ring_error(raw, "mmap(rx ring)", e))?;
    let tx = ProdRing::map(fd, sys::XDP_PGOFF_TX_RING as u64, &off.tx, config.tx_size)
        .map_err(|e| map_ring_error(raw, "mmap(tx ring)", e))?;
    let fill = ProdRing::map(fd, sys::XDP_UMEM_PGOFF_FILL_RING, &off.fr, u.fill_size)
        .map_err(|e| map_ring_error(raw, "mmap(fill ring)", e))?;
    let comp = ConsRing::map(
        fd,
        sys::XDP_UMEM_PGOFF_COMPLETION_RING,
        &off.cr,
        u.comp_size,
    )
    .map_err(|e| map_ring_error(raw, "mmap(completion ring)", e))?;
    Ok(MappedRings { rx, tx, fill, comp })
}

impl XskSocket {
    /// Adopt an unbound AF_XDP socket created by someone else (the broker),
    /// set it up and bind it to `(ifindex, queue_id)`. Needs no capability.
    ///
    /// Steps: validate `config`; check the fd is an AF_XDP socket
    /// (`SO_DOMAIN`); map an anonymous umem of `frame_count * frame_size`
    /// bytes and register it (`XDP_UMEM_REG`; `ENOBUFS` becomes
    /// [`Error::Memlock`]); size the fill, completion, rx and tx rings;
    /// read `XDP_MMAP_OFFSETS` and map the four rings; put frames on the fill
    /// ring (keeping `batch_size` frames back for transmission, as QEMU
    /// does); bind with `XDP_USE_NEED_WAKEUP` (if configured) and
    /// `XDP_COPY`/`XDP_ZEROCOPY` per `config.copy`; raise the copy-mode
    /// transmit budget to `batch_size` when that is above 32 (see
    /// [`SocketConfig`]). Each step is a function of its own below.
    ///
    /// `ifindex` is resolved in the network namespace the socket was created
    /// in, so pass the index the broker reports. On error the fd is closed.
    pub fn adopt(
        fd: OwnedFd,
        ifindex: u32,
        queue_id: u32,
        config: &SocketConfig,
    ) -> Result<XskSocket, Error> {
        config.validate()?;
        check_af_xdp(fd.as_fd())?;
        let umem = register_umem(fd.as_fd(), &config.umem)?;
        size_rings(fd.as_fd(), config)?;
        let rings = map_rings(fd.as_fd(), config)?;
        let mut sock = XskSocket::assemble(fd, umem, rings, ifindex, queue_id, config);
        sock.refill(config.umem.fill_size);
        sock.bind(config)?;
        sock.raise_tx_budget(config.batch_size);
        Ok(sock)
    }

    /// Adopt step 5: the socket from its parts, every umem frame free in the
    /// pool, nothing bound or in flight yet (`adopt` then puts frames on the
    /// fill ring).
    fn assemble(
        fd: OwnedFd,
        umem: Umem,
        rings: MappedRings,
        ifindex: u32,
        queue_id: u32,
        config: &SocketConfig,
    ) -> XskSocket {
        let u = &config.umem;
        XskSocket {
            rx: rings.rx,
            tx: rings.tx,
            fill: rings.fill,
            comp: rings.comp,
            fd,
            umem,
            pool: FramePool::full(u.frame_count, u.frame_size),
            ifindex,
            queue_id,
            frame_base_mask: !(u64::from(u.frame_size) - 1),
            headroom: u64::from(u.headroom),
            max_tx_len: config.max_tx_frame(),
            fill_size: u.fill_size,
            tx_reserve: config.batch_size as usize,
            need_wakeup: config.need_wakeup,
            zero_copy: false,
            outstanding_tx: 0,
            tx_budget: KERNEL_TX_BUDGET,
            counters: Counters::default(),
        }
    }

    /// Adopt step 6: bind to `(ifindex, queue_id)` with
    /// `XDP_USE_NEED_WAKEUP` (if configured) and `XDP_COPY`/`XDP_ZEROCOPY`
    /// per `config.copy` ([`Error::Bind`] with a hint per errno), then read
    /// back whether the kernel chose zero-copy (`XDP_OPTIONS`).
    fn bind(&mut self, config: &SocketConfig) -> Result<(), Error> {
        let mut flags = 0u16;
        if config.need_wakeup {
            flags |= sys::XDP_USE_NEED_WAKEUP;
        }
        match config.copy {
            CopyMode::Auto => {}
            CopyMode::Copy => flags |= sys::XDP_COPY,
            CopyMode::ZeroCopy => flags |= sys::XDP_ZEROCOPY,
        }
        let addr = sys::sockaddr_xdp {
            sxdp_family: sys::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: self.ifindex,
            sxdp_queue_id: self.queue_id,
            sxdp_shared_umem_fd: 0,
        };
        if let Err(source) = sys::bind_xdp(self.fd.as_fd(), &addr) {
            return Err(Error::Bind {
                fd: self.fd.as_raw_fd(),
                ifindex: self.ifindex,
                queue_id: self.queue_id,
                hint: bind_hint(source.raw_os_error(), config.copy),
                source,
            });
        }
        // If the mode cannot be read, assume zero-copy: it only makes the tx
        // wakeup more eager.
        self.zero_copy = sys::options(self.fd.as_fd())
            .map(|f| f & sys::XDP_OPTIONS_ZEROCOPY != 0)
            .unwrap_or(true);
        Ok(())
    }

    /// Adopt step 7: let one copy-mode wakeup send a whole batch when
    /// `batch_size` is above the kernel's default budget of 32.
    fn raise_tx_budget(&mut self, batch_size: u32) {
        if batch_size > KERNEL_TX_BUDGET {
            // Best effort: on kernels without the option (ENOPROTOOPT) the
            // budget stays 32 and only the syscall count differs. The value
            // is within the kernel's bounds (32 < batch_size <= tx_size).
            let _ = self.set_tx_budget(batch_size);
        }
    }

    /// The queue id the socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The interface index the socket is bound to (in the socket's network
    /// namespace).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The largest frame [`transmit`](Self::transmit) accepts
    /// (`frame_size - headroom`).
    pub fn max_tx_frame(&self) -> usize {
        self.max_tx_len as usize
    }

    /// Frames currently free in the pool (neither on a ring nor in flight).
    pub fn free_frames(&self) -> usize {
        self.pool.len()
    }

    /// Let one copy-mode transmit wakeup send up to `budget` frames
    /// (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17+; the kernel's default is 32).
    /// In copy mode the kernel transmits inside the `sendto` wakeup and stops
    /// after its budget, so raising it to the batch size or more cuts the
    /// syscalls per frame by that factor. [`adopt`](Self::adopt) already
    /// raises it to the configured `batch_size` when that is larger than 32.
    /// Needs no capability. The kernel accepts 32 up to the tx ring size;
    /// other values are [`Error::InvalidConfig`]. Returns `Ok(false)` if the
    /// kernel does not know the option (`ENOPROTOOPT`), in which case
    /// nothing changed.
    pub fn set_tx_budget(&mut self, budget: u32) -> Result<bool, Error> {
        match sys::set_tx_skb_budget(self.fd.as_fd(), budget) {
            Ok(()) => {
                self.tx_budget = budget;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(false),
            // The kernel answers EACCES (sic) for a budget out of range.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(Error::InvalidConfig(format!(
                "fd {}: tx budget {budget} refused by the kernel (EACCES): it must be \
                     between {KERNEL_TX_BUDGET} and the tx ring size ({})",
                self.fd.as_raw_fd(),
                self.tx.size()
            ))),
            Err(source) => Err(Error::Sys {
                op: "setsockopt(XDP_MAX_TX_SKB_BUDGET)",
                fd: self.fd.as_raw_fd(),
                source,
            }),
        }
    }

    /// Frames one copy-mode transmit wakeup may send: 32 (the kernel's
    /// default) unless [`adopt`](Self::adopt) or
    /// [`set_tx_budget`](Self::set_tx_budget) raised it.
    pub fn tx_budget(&self) -> u32 {
        self.tx_budget
    }

    /// Whether the kernel runs this socket in zero-copy mode
    /// (`getsockopt(XDP_OPTIONS)`); useful after binding with
    /// [`CopyMode::Auto`], where the kernel falls back to copy mode silently.
    pub fn is_zero_copy(&self) -> Result<bool, Error> {
        let flags = sys::options(self.fd.as_fd()).map_err(|source| Error::Sys {
            op: "getsockopt(XDP_OPTIONS)",
            fd: self.fd.as_raw_fd(),
            source,
        })?;
        Ok(flags & sys::XDP_OPTIONS_ZEROCOPY != 0)
    }

    /// Put up to `want` pool frames on the fill ring, always leaving
    /// `tx_reserve` frames in the pool. The datapath tops the fill ring up
    /// completely (not just by the frames it consumed), so the kernel can
    /// buffer up to fill_size + rx_size frames while this process lags.
    #[inline]
    fn refill(&mut self, want: u32) {
        let spare = self.pool.len().saturating_sub(self.tx_reserve);
        let want = want.min(u32::try_from(spare).unwrap_or(u32::MAX));
        if want == 0 {
            return;
        }
        let n = self.fill.free(want);
        if n == 0 {
            return;
        }
        let at = self.fill.index();
        let fill = &mut self.fill;
        self.pool.take(n as usize, |i, addr| {
            fill.write(at.wrapping_add(i as u32), addr)
        });
        self.fill.submit(n);
    }

    /// Wake the kernel for rx if it asked for it (fill ring flagged).
    #[inline]
    fn kick_rx_if_needed(&mut self) {
        if self.need_wakeup && self.fill.needs_wakeup() {
            self.counters.wakeups += 1;
            // Errors are all "try again later" here (EAGAIN, ENETDOWN, ...);
            // a broken socket shows up on the next transmit or poll.
            let _ = sys::kick_rx(self.fd.as_fd());
        }
    }

    /// Return a frame (given by any address inside it) to the pool.
    #[inline(always)]
    fn recycle(&mut self, addr: u64) {
        if !self.pool.push(addr & self.frame_base_mask) {
            self.counters.invalid_descs += 1;
        }
    }

    /// Receive up to `max` frames, calling `f` with each frame's bytes.
    ///
    /// Each frame goes back to the frame pool right after `f` returns; then
    /// the fill ring is topped up from the pool (keeping `batch_size` frames
    /// back for transmission) and, if the kernel flagged the fill ring with
    /// `XDP_RING_NEED_WAKEUP`, woken with `recvfrom(MSG_DONTWAIT)`. Returns
    /// the number of frames received; 0 means the rx ring was empty (use
    /// [`wait_readable`](Self::wait_readable) to sleep). A descriptor that
    /// points outside the umem is skipped and counted in
    /// [`Counters::invalid_descs`].
    pub fn receive<F: FnMut(&[u8])>(&mut self, max: usize, mut f: F) -> usize {
        let want = u32::try_from(max).unwrap_or(u32::MAX);
        let n = self.rx.available(want);
        let mut good = 0u32;
        if n > 0 {
            let at = self.rx.index();
            let mut bytes = 0u64;
            for i in 0..n {
                let d = self.rx.read(at.wrapping_add(i));
                match self.umem.frame(d.addr, d.len) {
                    Some(buf) => {
                        f(buf);
                        bytes += u64::from(d.len);
                        good += 1;
                        self.recycle(d.addr);
                    }
                    None => self.counters.invalid_descs += 1,
                }
            }
            self.rx.release(n);
            self.counters.rx_packets += u64::from(good);
            self.counters.rx_bytes += bytes;
        }
        self.refill(self.fill_size);
        self.kick_rx_if_needed();
        good as usize
    }

    /// Reclaim transmitted frames from the completion ring into the pool.
    /// Returns how many were reclaimed. Makes no syscall; see
    /// [`flush_tx`](Self::flush_tx) to also push out frames still queued.
    pub fn complete_tx(&mut self) -> usize {
        let n = self.comp.available(u32::MAX);
        if n == 0 {
            return 0;
        }
        let at = self.comp.index();
        for i in 0..n {
            let addr = self.comp.read(at.wrapping_add(i));
            if addr < self.umem.len() {
                self.recycle(addr);
            } else {
                self.counters.invalid_descs += 1;
            }
        }
        self.comp.release(n);
        self.outstanding_tx = self.outstanding_tx.saturating_sub(n);
        self.counters.tx_completed += u64::from(n);
        n as usize
    }

    /// Kick the kernel's tx path if the kernel wants a wakeup (or always,
    /// without need_wakeup) and there is work for it: frames waiting on the
    /// tx ring, or, in zero-copy mode, completions the driver has yet to
    /// reap (as libxdp's xdpsock does). In copy mode the kernel sends at most
    /// 32 frames per `sendto` and answers `EAGAIN` when more remain, so this
    /// repeats while the kernel makes progress.
    fn kick_tx_if_needed(&mut self) -> Result<(), Error> {
        if self.outstanding_tx == 0 || (self.need_wakeup && !self.tx.needs_wakeup()) {
            return Ok(());
        }
        let mut pending = self.tx.unconsumed();
        if pending == 0 && !self.zero_copy {
            // Copy mode completes frames without our help once sent.
            return Ok(());
        }
        loop {
            self.counters.wakeups += 1;
            match sys::kick_tx(self.fd.as_fd()) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    // Budget exhausted, completion ring full or device busy:
                    // reclaim completions, and go on only while the kernel
                    // keeps consuming.
                    self.complete_tx();
                    let now = self.tx.unconsumed();
                    if now == 0 || now >= pending {
                        return Ok(());
                    }
                    pending = now;
                }
                Err(e) if is_transient(&e) => return Ok(()),
                Err(source) => {
                    return Err(Error::Sys {
                        op: "sendto (tx wakeup)",
                        fd: self.fd.as_raw_fd(),
                        source,
                    })
                }
            }
        }
    }

    /// Push out frames still waiting on the tx ring (a wakeup if the kernel
    /// wants one) and reclaim completions. Useful after the last
    /// [`transmit`](Self::transmit) of a burst, in copy mode where the
    /// kernel transmits only inside the wakeup syscall. Same as
    /// `transmit(&[] as &[&[u8]])`.
    pub fn flush_tx(&mut self) -> Result<(), Error> {
        self.complete_tx();
        self.kick_tx_if_needed()
    }

    /// Transmit copies of `frames`, in order.
    ///
    /// First reclaims completions, then copies each frame into a free umem
    /// frame (at offset `headroom`) and puts it on the tx ring, then wakes
    /// the kernel with `sendto(MSG_DONTWAIT)` if the tx ring is flagged
    /// `XDP_RING_NEED_WAKEUP` (always, if `need_wakeup` is off).
    ///
    /// Returns how many frames, from the start of `frames`, were queued:
    /// fewer than `frames.len()` when free frames or tx-ring space ran out
    /// (call again later, e.g. after [`wait_readable`](Self::wait_readable)
    /// or [`complete_tx`](Self::complete_tx)). A frame that is empty or
    /// longer than [`max_tx_frame`](Self::max_tx_frame) stops the batch: the
    /// frames before it are queued and counted, and if it is the first frame
    /// the call returns [`Error::FrameLength`] (so retrying from the returned
    /// count reaches the error). Wakeup errnos `EAGAIN`, `EBUSY`, `ENOBUFS`
    /// and `ENETDOWN` mean "try later" and are not errors; others are
    /// [`Error::Sys`]. (The device itself may still drop frames longer than
    /// its MTU plus the Ethernet header.)
    pub fn transmit<B: AsRef<[u8]>>(&mut self, frames: &[B]) -> Result<usize, Error> {
        self.transmit_with(frames.len(), |i, buf| {
            let data = frames[i].as_ref();
            if let Some(dst) = buf.get_mut(..data.len()) {
                copy_frame(dst, data);
            }
            data.len()
        })
    }

    /// Transmit `count` frames that `fill` writes straight into umem frames,
    /// in order: for the `i`-th frame, `fill(i, buf)` gets a free frame's
    /// buffer ([`max_tx_frame`](Self::max_tx_frame) bytes, old contents) and
    /// returns the frame's length. Use it when the frames are not byte
    /// slices (e.g. guest memory read with volatile copies), so they are
    /// copied once, into the umem.
    ///
    /// Same as [`transmit`](Self::transmit) otherwise (completions first,
    /// one wakeup after): returns how many frames, from the first, were
    /// queued; a length of 0 or above the buffer's stops the batch (that
    /// frame is not sent, its umem frame goes back to the pool), and is
    /// [`Error::FrameLength`] if it is the first frame.
    pub fn transmit_with<F: FnMut(usize, &mut [u8]) -> usize>(
        &mut self,
        count: usize,
        mut fill: F,
    ) -> Result<usize, Error> {
        self.complete_tx();
        let want = count.min(self.pool.len()).min(u32::MAX as usize) as u32;
        let n = self.tx.free(want) as usize;
        let at = self.tx.index();
        let max = self.max_tx_len;
        let mut queued = 0u32;
        let mut bytes = 0u64;
        let mut bad_len = None;
        for i in 0..n {
            let Some(base) = self.pool.pop() else { break };
            let addr = base + self.headroom;
            let Some(buf) = self.umem.frame_mut(addr, max) else {
                // Unreachable: pool frames lie inside the umem and the
                // largest frame fits one. Keep the frame and stop.
                self.pool.push(base);
                break;
            };
            let len = fill(i, buf);
            if len == 0 || len > max as usize {
                self.pool.push(base);
                bad_len = Some(len);
                break;
            }
            let len = len as u32;
            self.tx.write(
                at.wrapping_add(queued),
                xdp_desc {
                    addr,
                    len,
                    options: 0,
                },
            );
            queued += 1;
            bytes += u64::from(len);
        }
        if queued > 0 {
            self.tx.submit(queued);
            self.outstanding_tx += queued;
            self.counters.tx_packets += u64::from(queued);
            self.counters.tx_bytes += bytes;
        }
        self.kick_tx_if_needed()?;
        match bad_len {
            Some(len) if queued == 0 => Err(Error::FrameLength {
                len,
                max: max as usize,
            }),
            _ => Ok(queued as usize),
        }
    }

    /// Zero-copy reflect (l2fwd): receive up to `max` frames, let `f` edit
    /// each in place, and put the frames for which `f` returns `true`
    /// straight on the tx ring, without copying. Frames for which it returns
    /// `false` go back to the pool. Only as many frames are taken from the rx
    /// ring as the tx ring has room for: when transmit falls behind, frames
    /// wait in the rx ring rather than being dropped here. Then tops up the
    /// fill ring and makes the rx/tx wakeups the kernel asks for.
    ///
    /// Returns `(received, sent)`. The frame length cannot change.
    pub fn forward<F: FnMut(&mut [u8]) -> bool>(
        &mut self,
        max: usize,
        mut f: F,
    ) -> Result<(usize, usize), Error> {
        self.complete_tx();
        let want = u32::try_from(max).unwrap_or(u32::MAX);
        // Back-pressure: take only as many frames as the tx ring can hold, so
        // a full tx ring leaves frames waiting in the rx ring (and the kernel
        // accounts for what overflows there) instead of dropping them here.
        let space = self.tx.free(want);
        let n = self.rx.available(space);
        let mut good = 0u32;
        let mut sent = 0u32;
        if n > 0 {
            let rx_at = self.rx.index();
            let tx_at = self.tx.index();
            let mut bytes = 0u64;
            let mut sent_bytes = 0u64;
            for i in 0..n {
                let d = self.rx.read(rx_at.wrapping_add(i));
                let Some(buf) = self.umem.frame_mut(d.addr, d.len) else {
                    self.counters.invalid_descs += 1;
                    continue;
                };
                good += 1;
                bytes += u64::from(d.len);
                if f(buf) {
                    self.tx.write(tx_at.wrapping_add(sent), d);
                    sent += 1;
                    sent_bytes += u64::from(d.len);
                    continue;
                }
                self.recycle(d.addr);
            }
            self.rx.release(n);
            if sent > 0 {
                self.tx.submit(sent);
                self.outstanding_tx += sent;
            }
            self.counters.rx_packets += u64::from(good);
            self.counters.rx_bytes += bytes;
            self.counters.tx_packets += u64::from(sent);
            self.counters.tx_bytes += sent_bytes;
        }
        self.refill(self.fill_size);
        self.kick_rx_if_needed();
        self.kick_tx_if_needed()?;
        Ok((good as usize, sent as usize))
    }

    /// Frames put on the tx ring whose completion has not been reclaimed yet.
    pub fn outstanding_tx(&self) -> u32 {
        self.outstanding_tx
    }

    /// Wait until the rx ring has frames, or `timeout` passes (`None`: no
    /// limit). Returns `Ok(true)` if readable, `Ok(false)` on timeout or a
    /// signal. In copy mode the kernel's `poll` also pushes out pending tx
    /// frames and, in zero-copy mode, wakes the driver.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        let ms = match timeout {
            None => -1,
            Some(d) => {
                // Round up so a short timeout does not become a busy poll.
                let ms = d.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let revents =
            sys::poll_one(self.fd.as_fd(), libc::POLLIN, ms).map_err(|source| Error::Sys {
                op: "poll",
                fd: self.fd.as_raw_fd(),
                source,
            })?;
        Ok(revents & libc::POLLIN != 0)
    }

    /// Take the socket's pending error (`getsockopt(SO_ERROR)`, which clears
    /// it). After the interface the socket is bound to is deleted (or moved
    /// to another namespace) the kernel unbinds the socket and leaves
    /// `ENETDOWN` here; such a socket carries no more traffic and `poll`
    /// no longer reports it readable, so a datapath that waits should check
    /// this rather than wait for ever.
    pub fn take_error(&self) -> Result<Option<std::io::Error>, Error> {
        use nix::sys::socket::{getsockopt, sockopt::SocketError};
        let e = getsockopt(&self.fd, SocketError).map_err(|e| Error::Sys {
            op: "getsockopt(SO_ERROR)",
            fd: self.fd.as_raw_fd(),
            source: e.into(),
        })?;
        Ok((e != 0).then(|| std::io::Error::from_raw_os_error(e)))
    }

    /// The kernel's statistics for this socket (`getsockopt(XDP_STATISTICS)`).
    pub fn statistics(&self) -> Result<XdpStatistics, Error> {
        let s = sys::statistics(self.fd.as_fd()).map_err(|source| Error::Sys {
            op: "getsockopt(XDP_STATISTICS)",
            fd: self.fd.as_raw_fd(),
            source,
        })?;
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// This process's datapath counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
}

impl XskSocket {
    /// Create an AF_XDP socket of this process's own and set it up and bind
    /// it as [`XskSocket::adopt`] does (the map-path flow). Needs
    /// CAP_NET_RAW; without it this fails with [`Error::NeedNetRaw`].
    pub fn create(ifindex: u32, queue_id: u32, config: &SocketConfig) -> Result<XskSocket, Error> {
        let fd = crate::bpf::create_xsk_socket()?;
        XskSocket::adopt(fd, ifindex, queue_id, config)
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(c: SocketConfig) -> String {
        match c.validate() {
            Err(Error::InvalidConfig(s)) => s,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn default_is_valid_and_fits_memlock() {
        let c = SocketConfig::default();
        c.validate().unwrap();
        assert_eq!(c.umem.umem_bytes(), 4 << 20);
        assert!(2 * c.umem.umem_bytes() <= 8 << 20, "two sockets fit 8 MiB");
        assert_eq!(
            c.umem.fill_size + c.umem.comp_size + c.rx_size + c.tx_size,
            c.umem.frame_count
        );
        assert_eq!(c.max_rx_frame(), 1792);
        assert_eq!(c.max_tx_frame(), 2048);
    }

    #[test]
    fn with_frame_count_scales_rings() {
        let c = SocketConfig::with_frame_count(1024);
        c.validate().unwrap();
        assert_eq!(c.umem.fill_size, 256);
        assert_eq!(c.tx_size, 256);
        assert_eq!(c.batch_size, 64);
        let c = SocketConfig::with_frame_count(64);
        c.validate().unwrap();
        assert_eq!(c.rx_size, 16);
        assert_eq!(c.batch_size, 16);
        let c = SocketConfig::with_frame_count(1000);
        c.validate().unwrap();
        assert_eq!(c.rx_size, 128);
        assert!(SocketConfig::with_frame_count(0).validate().is_err());
        assert!(SocketConfig::with_frame_count(3).validate().is_err());
    }

    #[test]
    fn frame_size_rules() {
        for fs in [0, 1024, 3000, 8192] {
            let mut c = SocketConfig::default();
            c.umem.frame_size = fs;
            assert!(invalid(c).contains("frame_size"), "{fs}");
        }
        let mut c = SocketConfig::default();
        c.umem.frame_size = 4096;
        c.validate().unwrap();
    }

    #[test]
    fn headroom_rules() {
        let mut c = SocketConfig::default();
        c.umem.headroom = 2048 - 256 - 64;
        c.validate().unwrap();
        c.umem.headroom += 1;
        assert!(invalid(c).contains("headroom"));
        c.umem.headroom = u32::MAX;
        assert!(invalid(c).contains("headroom"));
    }

    #[test]
    fn frame_count_rules() {
        let mut c = SocketConfig::default();
        c.umem.frame_count = 0;
        assert!(invalid(c).contains("frame_count"));
        c.umem.frame_count = u32::MAX;
        assert!(invalid(c).contains("frame_count"));
        c.umem.frame_count = 2047;
        assert!(invalid(c).contains("even frame_count"));
        c.umem.frame_count = 1022;
        let s = invalid(c);
        assert!(s.contains("fill_size 512 + tx_size 512"), "{s}");
        c.umem.frame_count = 1024;
        c.validate().unwrap();
    }

    #[test]
    fn ring_rules() {
        let c = SocketConfig {
            rx_size: 500,
            ..Default::default()
        };
        assert!(invalid(c).contains("rx_size is 500"));
        let mut c = SocketConfig::default();
        c.umem.comp_size = 0;
        assert!(invalid(c).contains("umem.comp_size"));
        let c = SocketConfig {
            tx_size: MAX_RING_SIZE * 2,
            ..Default::default()
        };
        assert!(invalid(c).contains("tx_size"));
        let mut c = SocketConfig::default();
        c.umem.fill_size = 1 << 31;
        assert!(invalid(c).contains("fill_size"));
    }

    #[test]
    fn batch_rules() {
        let mut c = SocketConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert!(invalid(c).contains("batch_size"));
        c.batch_size = 513;
        assert!(invalid(c).contains("smallest ring size (512)"));
        c.batch_size = 512;
        c.validate().unwrap();
    }

    #[test]
    fn adopt_rejects_non_xdp_fd() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = OwnedFd::from(a);
        let raw = fd.as_raw_fd();
        match XskSocket::adopt(fd, 1, 0, &SocketConfig::default()) {
            Err(Error::NotAfXdp { fd, found }) => {
                assert_eq!(fd, raw);
                assert!(found.contains("AF_UNIX"), "{found}");
            }
            other => panic!("expected NotAfXdp, got {other:?}"),
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        match XskSocket::adopt(OwnedFd::from(file), 1, 0, &SocketConfig::default()) {
            Err(Error::NotAfXdp { found, .. }) => assert_eq!(found, "not a socket"),
            other => panic!("expected NotAfXdp, got {other:?}"),
        }
    }

    #[test]
    fn adopt_validates_config_first() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = SocketConfig {
            rx_size: 3,
            ..Default::default()
        };
        assert!(matches!(
            XskSocket::adopt(OwnedFd::from(a), 1, 0, &c),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn copy_frame_copies_every_length() {
        for n in 0..=200usize {
            let src: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let mut dst = vec![0xaau8; n];
            copy_frame(&mut dst, &src);
            assert_eq!(dst, src, "length {n}");
        }
    }

    #[test]
    fn bind_hints() {
        assert!(bind_hint(Some(libc::EBUSY), CopyMode::Auto).contains("already"));
        assert!(bind_hint(Some(libc::EOPNOTSUPP), CopyMode::ZeroCopy).contains("CopyMode::Copy"));
        assert!(bind_hint(Some(libc::EINVAL), CopyMode::ZeroCopy).contains("zero-copy"));
        assert!(bind_hint(Some(libc::EINVAL), CopyMode::Copy).contains("queue id"));
        assert!(bind_hint(Some(libc::ENODEV), CopyMode::Copy).contains("namespace"));
    }

    #[test]
    fn socket_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<XskSocket>();
    }

    #[test]
    fn serde_shapes() {
        let s = serde_json::to_value(XdpStatistics::default()).unwrap();
        assert!(s.get("rx_fill_ring_empty_descs").is_some());
        let c = serde_json::to_value(Counters::default()).unwrap();
        assert!(c.get("wakeups").is_some());
    }
}
