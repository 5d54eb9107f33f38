//! Capability-free AF_XDP client.
//!
//! A privileged broker (`xsk-brokerd`) creates AF_XDP sockets, attaches the
//! XDP program and inserts each *unbound* socket into its XSKMAP. This crate
//! takes such a socket fd and runs the datapath with no capability at all:
//! [`XskSocket::adopt`] registers a umem, sizes and maps the four rings
//! (fill, completion, rx, tx) and binds; then [`XskSocket::receive`],
//! [`XskSocket::transmit`] and [`XskSocket::forward`] move frames in batches.
//!
//! The datapath is pure Rust over `mmap`, using the kernel ABI of
//! `linux/if_xdp.h` directly (no libxdp, no libbpf): single-producer /
//! single-consumer rings with cached indices, a LIFO pool of free frames,
//! no allocation and no syscall per packet, and wakeup syscalls only when
//! the kernel asks for them (`XDP_USE_NEED_WAKEUP`).
//!
//! # Rings and memory ordering
//!
//! Ring indices are free-running `u32`s accessed as `AtomicU32`s in the
//! mapped memory. A consumer loads the kernel's producer index with Acquire
//! and publishes its consumer index with Release; a producer publishes its
//! producer index with Release and loads the kernel's consumer index with
//! Acquire. Cached copies of both indices (as in libxdp) keep the shared
//! cache lines out of the steady state. The `XDP_RING_NEED_WAKEUP` flag is
//! read Relaxed, like libxdp: a stale read delays a wakeup only until the
//! next call, and `poll(2)` on the socket also wakes the kernel. Kernel
//! indices are never trusted for memory safety: slots are masked, counts are
//! clamped to the ring size, and every rx/completion address is checked
//! against the umem before a slice is made.
//!
//! # Locked memory
//!
//! The umem is locked memory charged to the user's `RLIMIT_MEMLOCK`, summed
//! over all of that user's processes (unless `CAP_IPC_LOCK`). The default
//! [`SocketConfig`] uses 4 MiB per socket, so two sockets fit the common
//! 8 MiB limit; use [`SocketConfig::with_frame_count`] for more queues.
//! Running out is reported as [`Error::Memlock`] with the limits and what to
//! do.
//!
//! # Example
//!
//! ```no_run
//! use std::os::fd::OwnedFd;
//! use std::time::Duration;
//! use xsk_client::{SocketConfig, XskSocket};
//!
//! # fn fd_from_broker() -> (OwnedFd, u32, u32) { unimplemented!() }
//! let (fd, ifindex, queue_id) = fd_from_broker();
//! let mut sock = XskSocket::adopt(fd, ifindex, queue_id, &SocketConfig::default())?;
//! loop {
//!     if sock.receive(64, |frame| println!("{} bytes", frame.len())) == 0 {
//!         sock.wait_readable(Some(Duration::from_millis(100)))?;
//!     }
//! }
//! # Ok::<(), xsk_client::Error>(())
//! ```

#![deny(missing_docs)]

mod backoff;
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_internals;
mod bpf;
mod broker;
mod error;
mod privileges;
mod ring;
mod socket;
mod sockfds;
mod sys;
mod umem;

pub use backoff::IdleBackoff;
pub use bpf::XskMap;
pub use broker::{BrokerClient, Lease, LeasedSocket, MapLease};
pub use error::Error;
pub use privileges::PrivilegeReport;
pub use socket::{
    Counters, SocketConfig, XdpStatistics, XskSocket, MAX_FRAME_COUNT, MAX_RING_SIZE,
    MIN_RX_FRAME_ROOM,
};
pub use sockfds::{
    claim_sock_fds, inherit_only, parse_sock_fds, parse_sock_fds_syntax, SockFdsError,
};
pub use umem::UmemConfig;
pub use xsk_broker_protocol::{
    AttachMode, CopyMode, ErrorClass, ErrorCode, MapOpened, OpenMapRequest, OpenRequest, Opened,
    XdpMode,
};
