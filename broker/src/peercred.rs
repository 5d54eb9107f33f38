//! Who is on the other end of a control connection.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::policy::Identity;
use crate::state::Peer;

/// Most supplementary groups read from `SO_PEERGROUPS` (NGROUPS_MAX is 65536;
/// a peer with more is matched on the first this many).
const MAX_GROUPS: usize = 1024;

/// The peer's pid/uid/gid (`SO_PEERCRED`) and supplementary groups
/// (`SO_PEERGROUPS`), as they were when it connected.
pub fn peer_of(fd: BorrowedFd<'_>) -> (Peer, Identity) {
    let peer = match getsockopt(&fd, PeerCredentials) {
        Ok(c) => Peer {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        },
        // Unknown credentials match no rule: uid u32::MAX is never root.
        Err(_) => Peer {
            pid: -1,
            uid: u32::MAX,
            gid: u32::MAX,
        },
    };
    let identity = Identity {
        uid: peer.uid,
        gid: peer.gid,
        groups: peer_groups(fd),
    };
    (peer, identity)
}

fn peer_groups(fd: BorrowedFd<'_>) -> Vec<u32> {
    let mut groups = vec![0u32; MAX_GROUPS];
    let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
    // SAFETY: the buffer is writable for `len` bytes and `len` points to its
    // size; the kernel writes at most that many bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        // ERANGE (more groups than we read) or an old kernel: no supplementary
        // groups is the safe answer (it can only refuse more).
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<u32>());
    groups
}

/// `SO_PEERPIDFD` (Linux 6.5+; the same value on every architecture but
/// parisc, alpha, mips and sparc, none of which this builds for).
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for the process that connected on `fd`: `SO_PEERPIDFD`, taken
/// by the kernel at connect time, so it names that process even if it has
/// exited and its pid was reused since. Before Linux 6.5 (`ENOPROTOOPT`),
/// `pidfd_open(pid)` of the `SO_PEERCRED` pid, which could name a newer
/// process if the peer exited and its pid was reused between connect and
/// this call.
pub fn peer_pidfd(fd: BorrowedFd<'_>, pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` is a writable c_int and `len` its size; the kernel
    // writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 && pidfd >= 0 {
        // SAFETY: the kernel just installed `pidfd` in this process's fd
        // table for the caller; nothing else owns it.
        return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd) });
    }
    let err = std::io::Error::last_os_error();
    if rc == 0 || err.raw_os_error() != Some(libc::ENOPROTOOPT) {
        return Err(if rc == 0 {
            std::io::Error::other("SO_PEERPIDFD returned no pidfd")
        } else {
            err
        });
    }
    pidfd_open(pid)
}

/// `pidfd_open(pid)`: a pidfd for process `pid` (of the broker's pid
/// namespace), close-on-exec.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if pid <= 0 {
        return Err(std::io::Error::other(format!(
            "the peer's pid is {pid} (not visible in the broker's pid namespace)"
        )));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as libc::c_int) })
}
