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
