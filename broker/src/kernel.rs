//! The seam between the broker's rules and the kernel: every kernel
//! operation the lease table needs, behind one trait. [`RealKernel`] does
//! them for real (libxdp, bpf(2), AF_XDP sockets, netlink, /proc); the unit
//! tests of the grant rules run against a fake (`kernel::fake`, test only)
//! without root.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use xsk_broker_protocol::{AttachMode, ConfinementLevel, XdpStatistics};

use crate::confine::{Confinement, SocketGrant};
use crate::probe::{self, QueueProbe, QueueUse};
use crate::ring::{RingCursor, RingKind};
use crate::traffic::RingPosition;
use crate::xdp::{self, QueueCounts, XdpError, XskProgram};

/// A kernel in memory for the unit tests.
#[cfg(test)]
pub mod fake;

/// An XDP program the broker attached to an interface, with its XSKMAP.
pub trait Program: Send + Sync {
    /// The mode it is attached in.
    fn mode(&self) -> AttachMode;
    /// The program id the kernel reports on the interface.
    fn attached_id(&self) -> u32;
    /// Point the XSKMAP entry of `queue` at `sock`.
    fn insert(&self, queue: u32, sock: BorrowedFd<'_>) -> Result<(), XdpError>;
    /// Clear the XSKMAP entry of `queue` (absent is fine).
    fn remove(&self, queue: u32) -> Result<(), XdpError>;
    /// A new fd of the XSKMAP, for a map lease.
    fn map_fd_dup(&self) -> io::Result<OwnedFd>;
    /// Pin the program and its map on a bpffs.
    fn pin_to(&self, prog_pin: &Path, map_pin: &Path) -> io::Result<()>;
    /// Detach the program from its interface.
    fn detach(self) -> Result<(), XdpError>;
}

/// The kernel operations the broker needs.
pub trait Kernel: Send + Sync + 'static {
    /// The program type [`Kernel::attach`] gives.
    type Program: Program;

    /// The index and canonical name of the interface called `name` (its
    /// name or one of its alternative names).
    fn resolve(&self, name: &str) -> Result<(u32, String), nix::errno::Errno>;
    /// The name of interface `ifindex`, if it exists.
    fn name_of(&self, ifindex: u32) -> Option<String>;
    /// The indexes of every interface in the broker's namespace.
    fn interfaces(&self) -> io::Result<HashSet<u32>>;
    /// The interface's rx queue counts (in use, and the most the device
    /// supports), as the driver reports them (ethtool; takes RTNL).
    fn queue_counts(&self, ifname: &str) -> io::Result<QueueCounts>;
    /// The interface's rx queues in use, read without RTNL (sysfs).
    fn rx_queues(&self, ifname: &str) -> io::Result<u32>;
    /// Whether an AF_XDP socket is bound to the queue, waiting up to `grace`
    /// for one closed just now to let go; None where the kernel cannot tell.
    fn queue_use(&self, ifindex: u32, queue: u32, grace: Duration) -> Option<io::Result<QueueUse>>;
    /// An XDP program attached to the interface, in any mode: (mode, id).
    fn attached_program(&self, ifindex: u32) -> Option<(AttachMode, u32)>;
    /// Load the XSK program with an XSKMAP of `entries` and attach it.
    fn attach(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        entries: u32,
    ) -> Result<Self::Program, XdpError>;
    /// Reopen a program an earlier run attached and pinned.
    fn reopen(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        prog_pin: &Path,
        map_pin: &Path,
    ) -> Result<Self::Program, XdpError>;
    /// A new AF_XDP socket, confined to `grant` as far as the kernel allows.
    fn create_socket(&self, grant: SocketGrant) -> Result<OwnedFd, String>;
    /// Confine a released lease's socket so that it can no longer be bound
    /// to its interface.
    fn retire_socket(&self, sock: BorrowedFd<'_>) -> io::Result<()>;
    /// A socket's kernel statistics.
    fn statistics(&self, sock: BorrowedFd<'_>) -> io::Result<XdpStatistics>;
    /// Map, read-only, the position the kernel advances in `sock`'s `kind`
    /// ring (RX producer, TX consumer); `Ok(None)` while the socket has no
    /// such ring.
    fn map_ring(
        &self,
        sock: BorrowedFd<'_>,
        kind: RingKind,
    ) -> io::Result<Option<Box<dyn RingPosition>>>;
    /// Pin a map fd at `path` on a bpffs.
    fn pin(&self, fd: BorrowedFd<'_>, path: &Path) -> io::Result<()>;
    /// What the kernel enforces on sockets handed out, where set up.
    fn confinement_level(&self) -> Option<ConfinementLevel>;
    /// An fd that becomes readable when process `pid` exits, if it runs and
    /// (when known) started at `start_time`.
    fn holder(&self, pid: i32, start_time: Option<u64>) -> Option<OwnedFd>;
    /// The start time of process `pid` (from /proc), if visible.
    fn start_time(&self, pid: i32) -> Option<u64>;
}

impl Program for XskProgram {
    fn mode(&self) -> AttachMode {
        XskProgram::mode(self)
    }
    fn attached_id(&self) -> u32 {
        XskProgram::attached_id(self)
    }
    fn insert(&self, queue: u32, sock: BorrowedFd<'_>) -> Result<(), XdpError> {
        XskProgram::insert(self, queue, sock)
    }
    fn remove(&self, queue: u32) -> Result<(), XdpError> {
        XskProgram::remove(self, queue)
    }
    fn map_fd_dup(&self) -> io::Result<OwnedFd> {
        XskProgram::map_fd_dup(self)
    }
    fn pin_to(&self, prog_pin: &Path, map_pin: &Path) -> io::Result<()> {
        XskProgram::pin_to(self, prog_pin, map_pin)
    }
    fn detach(self) -> Result<(), XdpError> {
        XskProgram::detach(self)
    }
}

/// The kernel itself.
#[derive(Default)]
pub struct RealKernel {
    probe: Option<QueueProbe>,
    confinement: Option<Arc<Confinement>>,
}

impl RealKernel {
    /// Check queues for bound sockets with `probe` ([`QueueProbe`]).
    pub fn with_queue_probe(mut self, probe: QueueProbe) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Confine every socket created with `confinement`.
    pub fn with_confinement(mut self, confinement: Arc<Confinement>) -> Self {
        self.confinement = Some(confinement);
        self
    }
}

impl Kernel for RealKernel {
    type Program = XskProgram;

    fn resolve(&self, name: &str) -> Result<(u32, String), nix::errno::Errno> {
        let ifindex = nix::net::if_::if_nametoindex(name)?;
        let canonical = nix::net::if_::if_indextoname(ifindex)?;
        Ok((ifindex, canonical.to_string_lossy().into_owned()))
    }

    fn name_of(&self, ifindex: u32) -> Option<String> {
        nix::net::if_::if_indextoname(ifindex)
            .ok()
            .map(|n| n.to_string_lossy().into_owned())
    }

    fn interfaces(&self) -> io::Result<HashSet<u32>> {
        Ok(nix::net::if_::if_nameindex()?
            .iter()
            .map(|i| i.index())
            .collect())
    }

    fn queue_counts(&self, ifname: &str) -> io::Result<QueueCounts> {
        xdp::queue_counts(ifname)
    }

    fn rx_queues(&self, ifname: &str) -> io::Result<u32> {
        match xdp::sysfs_rx_queues(ifname) {
            Some(n) if n > 0 => Ok(n),
            // No sysfs view of the device: ask the driver.
            _ => Ok(xdp::queue_counts(ifname)?.current),
        }
    }

    fn queue_use(&self, ifindex: u32, queue: u32, grace: Duration) -> Option<io::Result<QueueUse>> {
        let probe = self.probe.as_ref()?;
        Some(probe.queue_use_settled(ifindex, queue, grace))
    }

    fn attached_program(&self, ifindex: u32) -> Option<(AttachMode, u32)> {
        xdp::any_attached_prog(ifindex)
    }

    fn attach(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        entries: u32,
    ) -> Result<XskProgram, XdpError> {
        XskProgram::attach(ifname, ifindex, mode, entries)
    }

    fn reopen(
        &self,
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        prog_pin: &Path,
        map_pin: &Path,
    ) -> Result<XskProgram, XdpError> {
        XskProgram::reopen(ifname, ifindex, mode, prog_pin, map_pin)
    }

    fn create_socket(&self, grant: SocketGrant) -> Result<OwnedFd, String> {
        let q = grant.queue;
        let fd = xdp::create_xsk_socket()
            .map_err(|e| format!("cannot create an AF_XDP socket for queue {q}: {e}"))?;
        if let Some(c) = &self.confinement {
            c.confine(fd.as_fd(), grant)
                .map_err(|e| format!("queue {q}: {e}"))?;
        }
        Ok(fd)
    }

    fn retire_socket(&self, sock: BorrowedFd<'_>) -> io::Result<()> {
        probe::confine_to_loopback(sock)
    }

    fn statistics(&self, sock: BorrowedFd<'_>) -> io::Result<XdpStatistics> {
        xdp::xsk_statistics(sock)
    }

    fn map_ring(
        &self,
        sock: BorrowedFd<'_>,
        kind: RingKind,
    ) -> io::Result<Option<Box<dyn RingPosition>>> {
        Ok(RingCursor::map(sock, kind)?.map(|c| Box::new(c) as Box<dyn RingPosition>))
    }

    fn pin(&self, fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        xdp::pin(fd, path)
    }

    fn confinement_level(&self) -> Option<ConfinementLevel> {
        self.confinement.as_ref().map(|c| c.level())
    }

    fn holder(&self, pid: i32, start_time: Option<u64>) -> Option<OwnedFd> {
        if pid <= 0 {
            return None;
        }
        let fd = xdp::pidfd_open(pid).ok()?;
        // Checked after opening: the pidfd then refers to the process checked.
        // Where /proc hides other users' processes (systemd ProtectProc=invisible)
        // the start time cannot be read: the pid alone is trusted then, which
        // errs on the side of keeping the queues reserved.
        match (start_time, crate::persist::start_time(pid)) {
            (Some(want), Some(have)) => (want == have).then_some(fd),
            _ => Some(fd),
        }
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        crate::persist::start_time(pid)
    }
}
