//! Is a queue really free? The lease table says which queues the broker has
//! granted, but a queue is taken for as long as *any* AF_XDP socket is bound
//! to it: a holder that released its lease (or lost it in a restart) and kept
//! its bound socket still owns the queue, and the next holder's bind would
//! fail with EBUSY.
//!
//! The kernel answers without side effects: the `netdev` generic netlink
//! family's `queue-get` reports an `xsk` attribute on a queue that has an
//! AF_XDP buffer pool registered (Linux 6.15+), which is exactly the
//! condition that makes a bind fail with EBUSY. (A probe bind would answer
//! too, but the kernel frees a closed socket's pool in deferred work, so the
//! probe itself would keep the queue busy for a moment after it.) On older
//! kernels the attribute does not exist and a queue cannot be checked:
//! [`QueueProbe::open`] says so and the broker falls back to its table.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::nla::{attributes, put_attr, reply, NLM_F_REQUEST};
use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_QUEUE_GET: u8 = 10;
const NETDEV_A_QUEUE_ID: u16 = 1;
const NETDEV_A_QUEUE_IFINDEX: u16 = 2;
const NETDEV_A_QUEUE_TYPE: u16 = 3;
const NETDEV_A_QUEUE_XSK: u16 = 7;
const NETDEV_QUEUE_TYPE_RX: u32 = 0;
const NETDEV_QUEUE_TYPE_TX: u32 = 1;
/// The first kernel whose `queue-get` reports AF_XDP pools.
const FIRST_KERNEL: (u32, u32) = (6, 15);

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueUse {
    /// No AF_XDP socket is bound to the queue.
    Free,
    /// Some AF_XDP socket is bound to it.
    Bound,
}

/// A generic netlink socket that asks the `netdev` family about queues.
#[derive(Debug)]
pub struct QueueProbe {
    sock: OwnedFd,
    family: u16,
}

/// A generic netlink request: header, genl header, attributes.
fn request(family: u16, cmd: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    m.extend_from_slice(&[cmd, 1, 0, 0]); // genl cmd, version
    m.extend_from_slice(attrs);
    m
}

/// The attributes of one reply (after the genl header), or the errno of an
/// error reply.
fn reply_attrs(buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply");
    let (_, payload) = reply(buf)?;
    // The payload: the genl header (4 bytes), then the attributes.
    Ok(attributes(payload.get(4..).ok_or_else(bad)?))
}

/// Whether this kernel's release is at least `want` (major, minor).
fn kernel_at_least(want: (u32, u32)) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= want
}

impl QueueProbe {
    /// Open the probe: a generic netlink socket and the `netdev` family's id.
    /// Fails, saying why, where the kernel cannot report AF_XDP sockets per
    /// queue (before Linux 6.15, or without the `netdev` family).
    pub fn open() -> io::Result<QueueProbe> {
        if !kernel_at_least(FIRST_KERNEL) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "this kernel does not report AF_XDP sockets per queue (netdev queue-get \
                     xsk needs Linux {}.{}+)",
                    FIRST_KERNEL.0, FIRST_KERNEL.1
                ),
            ));
        }
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkGeneric,
        )?;
        let mut attrs = Vec::new();
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        let mut probe = QueueProbe { sock, family: 0 };
        let reply = probe.call(&request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &attrs))?;
        let attrs = reply_attrs(&reply).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("resolving the netdev netlink family: {e}"),
            )
        })?;
        probe.family = attrs
            .iter()
            .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() == 2)
            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
            .ok_or_else(|| io::Error::other("the netdev netlink family has no id"))?;
        Ok(probe)
    }

    fn call(&self, msg: &[u8]) -> io::Result<Vec<u8>> {
        let fd = self.sock.as_fd();
        send(fd.as_raw_fd(), msg, MsgFlags::empty())?;
        let mut buf = vec![0u8; 8192];
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// [`QueueProbe::queue_use`], asked again every few milliseconds for up
    /// to `grace` while the queue is bound: a socket closed just now (its
    /// holder exited) keeps the queue until the kernel's deferred work frees
    /// its buffer pool.
    pub fn queue_use_settled(
        &self,
        ifindex: u32,
        queue: u32,
        grace: std::time::Duration,
    ) -> io::Result<QueueUse> {
        let deadline = std::time::Instant::now() + grace;
        loop {
            let found = self.queue_use(ifindex, queue)?;
            if found == QueueUse::Free || std::time::Instant::now() >= deadline {
                return Ok(found);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Whether an AF_XDP socket is bound to `queue` of `ifindex` (its rx or
    /// tx queue of that id has a buffer pool).
    pub fn queue_use(&self, ifindex: u32, queue: u32) -> io::Result<QueueUse> {
        for kind in [NETDEV_QUEUE_TYPE_RX, NETDEV_QUEUE_TYPE_TX] {
            let mut attrs = Vec::new();
            put_attr(&mut attrs, NETDEV_A_QUEUE_IFINDEX, &ifindex.to_ne_bytes());
            put_attr(&mut attrs, NETDEV_A_QUEUE_TYPE, &kind.to_ne_bytes());
            put_attr(&mut attrs, NETDEV_A_QUEUE_ID, &queue.to_ne_bytes());
            let reply = self.call(&request(self.family, NETDEV_CMD_QUEUE_GET, &attrs))?;
            match reply_attrs(&reply) {
                Ok(attrs) if attrs.iter().any(|(k, _)| *k == NETDEV_A_QUEUE_XSK) => {
                    return Ok(QueueUse::Bound)
                }
                Ok(_) => {}
                // A tx queue id past the device's tx queues: nothing to see.
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL) && kind == NETDEV_QUEUE_TYPE_TX => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("netdev queue-get (ifindex {ifindex}, queue {queue}): {e}"),
                    ))
                }
            }
        }
        Ok(QueueUse::Free)
    }
}

/// Confine `sock` to the loopback interface (`SO_BINDTOIFINDEX` 1): used on a
/// released lease's sockets, so a holder that kept an unbound one can no
/// longer bind it to the interface it was leased on (the queue is free for
/// the next holder). A holder without CAP_NET_RAW cannot change it back.
pub fn confine_to_loopback(sock: BorrowedFd<'_>) -> io::Result<()> {
    let lo: libc::c_int = 1;
    // SAFETY: sock is a socket; the value is a c_int on the stack that lives
    // for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTOIFINDEX,
            (&lo as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("setsockopt(SO_BINDTOIFINDEX, lo): {e}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nla::NLMSG_ERROR;

    #[test]
    fn attributes_round_trip_and_align() {
        let mut a = Vec::new();
        put_attr(&mut a, CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        put_attr(&mut a, NETDEV_A_QUEUE_ID, &7u32.to_ne_bytes());
        assert_eq!(a.len(), 12 + 8);
        let mut msg = request(42, NETDEV_CMD_QUEUE_GET, &a);
        // Make it look like a reply: the same layout.
        msg[4..6].copy_from_slice(&42u16.to_ne_bytes());
        let attrs = reply_attrs(&msg).unwrap();
        assert_eq!(attrs[0], (CTRL_ATTR_FAMILY_NAME, &b"netdev\0"[..]));
        assert_eq!(attrs[1], (NETDEV_A_QUEUE_ID, &7u32.to_ne_bytes()[..]));
    }

    #[test]
    fn an_error_reply_is_its_errno_and_garbage_is_refused() {
        let mut m = request(NLMSG_ERROR, 0, &[]);
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(
            reply_attrs(&m).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        assert!(reply_attrs(&[1, 2, 3]).is_err());
        let mut long = request(42, 1, &[]);
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(reply_attrs(&long).is_err());
    }
}
