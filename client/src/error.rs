//! The client's error type.

use std::io;
use std::os::fd::RawFd;

/// Everything that can go wrong in the client. Messages name the fd,
/// interface index, queue and errno involved, and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The [`SocketConfig`](crate::SocketConfig) is unusable; the message
    /// names the field and the rule.
    #[error("invalid socket configuration: {0}")]
    InvalidConfig(String),

    /// The fd handed to [`XskSocket::adopt`](crate::XskSocket::adopt) is not
    /// an AF_XDP socket.
    #[error(
        "fd {fd} is not an AF_XDP socket ({found}); adopt() expects an unbound \
         socket(AF_XDP, SOCK_RAW) such as the broker hands out"
    )]
    NotAfXdp {
        /// The fd.
        fd: RawFd,
        /// What it is instead.
        found: String,
    },

    /// The socket already has a umem or rings, or is already bound: it was
    /// set up before (by an earlier `adopt`, or by whoever created it).
    #[error(
        "fd {fd}: {op} failed: {source}; the AF_XDP socket is already set up (umem, rings \
         or bind). A socket can be adopted once, and must arrive fresh: no umem, no rings, \
         unbound. Ask the broker for a new socket"
    )]
    AlreadyConfigured {
        /// The fd.
        fd: RawFd,
        /// The operation that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// Registering the umem failed with `ENOBUFS`: it does not fit the
    /// locked-memory limit.
    #[error(
        "fd {fd}: registering a {bytes}-byte umem failed (ENOBUFS): it would exceed \
         RLIMIT_MEMLOCK (soft {}, hard {}). Umem pages are locked memory charged to the \
         user, summed over all of that user's umems in all processes. Use a smaller \
         frame_count (umem = frame_count * frame_size bytes, e.g. \
         SocketConfig::with_frame_count), close other AF_XDP sockets of this user, raise \
         the limit (LimitMEMLOCK= / ulimit -l; above the hard limit this needs \
         CAP_SYS_RESOURCE), or give the process CAP_IPC_LOCK",
        fmt_limit(*.soft_limit),
        fmt_limit(*.hard_limit)
    )]
    Memlock {
        /// The fd.
        fd: RawFd,
        /// Bytes the umem needs.
        bytes: u64,
        /// Current soft limit in bytes (`u64::MAX`: unlimited or unknown).
        soft_limit: u64,
        /// Current hard limit in bytes (`u64::MAX`: unlimited or unknown).
        hard_limit: u64,
    },

    /// `bind(2)` of the AF_XDP socket failed.
    #[error("fd {fd}: binding to ifindex {ifindex} queue {queue_id} failed: {source}; {hint}")]
    Bind {
        /// The fd.
        fd: RawFd,
        /// Interface index passed to bind.
        ifindex: u32,
        /// Queue id passed to bind.
        queue_id: u32,
        /// The errno.
        #[source]
        source: io::Error,
        /// What the errno usually means here and what to do.
        hint: &'static str,
    },

    /// A system call failed.
    #[error("fd {fd}: {op} failed: {source}")]
    Sys {
        /// The operation, e.g. `"setsockopt(XDP_RX_RING)"`.
        op: &'static str,
        /// The fd (-1 if none).
        fd: RawFd,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// The kernel's AF_XDP ABI is not what this crate supports (e.g. ring
    /// offsets that do not fit their mapping, or a pre-5.4 layout).
    #[error("fd {fd}: unsupported kernel AF_XDP ABI: {detail}")]
    UnsupportedKernel {
        /// The fd.
        fd: RawFd,
        /// What did not match.
        detail: String,
    },

    /// The broker's control socket could not be reached.
    #[error(
        "cannot connect to the broker at {}: {source}; is xsk-brokerd running, and may \
         this user open its socket?",
        path.display()
    )]
    Connect {
        /// The socket path.
        path: std::path::PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// Talking to the broker failed (connection lost, bad frame, timeout).
    #[error("talking to the broker at {}: {source}", path.display())]
    Transport {
        /// The socket path.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: xsk_broker_protocol::TransportError,
    },

    /// The broker refused the request; the code is stable, the message says
    /// what to do.
    #[error("the broker refused: {0}")]
    Refused(xsk_broker_protocol::ErrorReply),

    /// The broker answered something this client did not expect.
    #[error("unexpected answer from the broker: {0}")]
    UnexpectedReply(String),

    /// The process may not create AF_XDP sockets of its own (the map flow
    /// needs that; the sock-fds flow does not).
    #[error(
        "socket(AF_XDP) failed: {source}: creating AF_XDP sockets needs CAP_NET_RAW. Give \
         this process CAP_NET_RAW (e.g. systemd AmbientCapabilities=CAP_NET_RAW), or use \
         the sock-fds flow (BrokerClient::open / xsk-client exec), where the broker creates \
         the sockets and no capability is needed"
    )]
    NeedNetRaw {
        /// The errno (EPERM).
        #[source]
        source: io::Error,
    },

    /// The map flow creates sockets in this process's network namespace, and
    /// the interface the broker reported is not there.
    #[error(
        "interface {ifname} (ifindex {ifindex} in the broker's network namespace) is not \
         ifindex {ifindex} in this process's network namespace (here: {here}). In the map \
         flow this process creates the sockets, and bind() resolves the ifindex in its own \
         namespace: run it in the broker's (the interface's) network namespace, or use the \
         sock-fds flow, which works from any namespace"
    )]
    WrongNamespace {
        /// The interface name the broker reported.
        ifname: String,
        /// Its index in the broker's namespace.
        ifindex: u32,
        /// What that index is here (`"no such interface"` or another name).
        here: String,
    },

    /// A bpf(2) command on the XSKMAP failed.
    #[error("{op} on {what} failed: {source}{}", if hint.is_empty() { String::new() } else { format!("; {hint}") })]
    Map {
        /// The bpf command.
        op: &'static str,
        /// The map (fd and key, or pin path).
        what: String,
        /// The errno.
        #[source]
        source: io::Error,
        /// What the errno usually means here.
        hint: &'static str,
    },

    /// A sock-fds list was refused; see [`SockFdsError`](crate::SockFdsError).
    #[error(transparent)]
    SockFds(#[from] crate::SockFdsError),

    /// A frame passed to [`XskSocket::transmit`](crate::XskSocket::transmit)
    /// is empty or larger than a umem frame can carry.
    #[error(
        "cannot transmit a {len}-byte frame: frames must be 1..={max} bytes \
         (frame_size - headroom); use a larger frame_size or smaller headroom"
    )]
    FrameLength {
        /// Length of the offending frame.
        len: usize,
        /// The largest frame this socket can send.
        max: usize,
    },
}

impl Error {
    /// The broker's error code, when the broker refused the request.
    pub fn broker_code(&self) -> Option<xsk_broker_protocol::ErrorCode> {
        match self {
            Error::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

fn fmt_limit(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".to_string()
    } else if v % (1024 * 1024) == 0 {
        format!("{} MiB", v / (1024 * 1024))
    } else if v % 1024 == 0 {
        format!("{} KiB", v / 1024)
    } else {
        format!("{v} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_message_names_limits() {
        let e = Error::Memlock {
            fd: 7,
            bytes: 16 << 20,
            soft_limit: 8 << 20,
            hard_limit: u64::MAX,
        };
        let s = e.to_string();
        assert!(s.contains("fd 7"), "{s}");
        assert!(s.contains("16777216-byte"), "{s}");
        assert!(s.contains("soft 8 MiB"), "{s}");
        assert!(s.contains("hard unlimited"), "{s}");
        assert!(s.contains("CAP_IPC_LOCK"), "{s}");
    }

    #[test]
    fn bind_message_names_queue() {
        let e = Error::Bind {
            fd: 3,
            ifindex: 4,
            queue_id: 1,
            source: io::Error::from_raw_os_error(libc::EBUSY),
            hint: "queue busy",
        };
        let s = e.to_string();
        assert!(s.contains("ifindex 4 queue 1"), "{s}");
        assert!(s.contains("queue busy"), "{s}");
    }
}
