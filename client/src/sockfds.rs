//! Sockets handed to a program as a `sock-fds` colon list, the way QEMU's
//! `-netdev af-xdp,...,sock-fds=A:B` takes them (and the way
//! `xsk-client exec` passes them).
//!
//! QEMU splits the list on `:` and converts each field; this module checks
//! more, and names each fault: the list must not be empty, no field may be
//! empty, every field is a decimal fd number (digits only), the count equals
//! the number of queues, no fd appears twice, and every fd is open and an
//! AF_XDP socket (`SO_DOMAIN`).
//!
//! ```no_run
//! // In a program started by `xsk-client exec ... -- prog --sock-fds {sock-fds}`:
//! let fds = xsk_client::claim_sock_fds("5:6", 2)?;
//! assert_eq!(fds.len(), 2);
//! # Ok::<(), xsk_client::SockFdsError>(())
//! ```

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::sys::{self, FdKind};

/// Why a sock-fds list was refused. Each fault has its own variant and a
/// message naming the field, the fd and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SockFdsError {
    /// The list is empty.
    #[error(
        "sock-fds is empty: expected {queues} fd number(s) separated by ':', one per queue \
         in queue order (e.g. sock-fds=5:6)"
    )]
    Empty {
        /// Queues expected.
        queues: u32,
    },
    /// A field between colons is empty (`"5::6"`, `":5"`, `"5:"`).
    #[error(
        "sock-fds {list:?}: field {field} (counting from 1) is empty; write fd numbers \
         separated by single ':' with no leading or trailing ':'"
    )]
    EmptyField {
        /// The list.
        list: String,
        /// 1-based field position.
        field: usize,
    },
    /// A field is not a decimal fd number (signs, spaces, hex, too large).
    #[error(
        "sock-fds field {field} (counting from 1) is {text:?}, not an fd number: use \
         decimal digits only, at most {max}",
        max = i32::MAX
    )]
    NotANumber {
        /// 1-based field position.
        field: usize,
        /// The field as given (truncated to 32 characters).
        text: String,
    },
    /// The number of fds differs from the number of queues.
    #[error(
        "sock-fds has {got} fd(s) but queues={queues}: give exactly one AF_XDP socket \
         fd per queue, in queue order"
    )]
    Count {
        /// fds given.
        got: usize,
        /// Queues expected.
        queues: u32,
    },
    /// The same fd appears twice.
    #[error(
        "sock-fds names fd {fd} twice (fields {first} and {second}, counting from 1): \
         every queue needs its own socket"
    )]
    Duplicate {
        /// The fd.
        fd: RawFd,
        /// First position.
        first: usize,
        /// Second position.
        second: usize,
    },
    /// The fd is not open in this process.
    #[error(
        "sock-fds field {field}: fd {fd} is not open in this process (EBADF): was it \
         inherited? A launcher must leave the socket fds without close-on-exec \
         (`xsk-client exec` does)"
    )]
    NotOpen {
        /// 1-based field position.
        field: usize,
        /// The fd.
        fd: RawFd,
    },
    /// The fd is open but not a socket.
    #[error("sock-fds field {field}: fd {fd} is {what}, not an AF_XDP socket")]
    NotSocket {
        /// 1-based field position.
        field: usize,
        /// The fd.
        fd: RawFd,
        /// What it is instead (e.g. "a regular file").
        what: String,
    },
    /// The fd is a socket of another address family.
    #[error(
        "sock-fds field {field}: fd {fd} is a socket of address family {domain} ({name}), \
         not AF_XDP ({xdp})",
        xdp = libc::AF_XDP
    )]
    NotAfXdp {
        /// 1-based field position.
        field: usize,
        /// The fd.
        fd: RawFd,
        /// Its `SO_DOMAIN`.
        domain: i32,
        /// The family's name, when known.
        name: &'static str,
    },
    /// A system call failed while checking or duplicating the fd.
    #[error("sock-fds field {field}: fd {fd}: {op} failed: {errno}")]
    Sys {
        /// 1-based field position.
        field: usize,
        /// The fd.
        fd: RawFd,
        /// The operation.
        op: &'static str,
        /// The error text (errno).
        errno: String,
    },
}

fn family_name(domain: i32) -> &'static str {
    match domain {
        libc::AF_UNIX => "AF_UNIX",
        libc::AF_INET => "AF_INET",
        libc::AF_INET6 => "AF_INET6",
        libc::AF_NETLINK => "AF_NETLINK",
        libc::AF_PACKET => "AF_PACKET",
        _ => "other",
    }
}

fn file_type_name(fmt: u32) -> &'static str {
    match fmt {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFIFO => "a pipe",
        libc::S_IFLNK => "a symbolic link",
        _ => "an anonymous inode or other non-socket file",
    }
}

/// Parse a sock-fds list syntactically: fields, numbers, count, duplicates.
/// Does not look at the fds; see [`parse_sock_fds`] for the full check.
pub fn parse_sock_fds_syntax(list: &str, queues: u32) -> Result<Vec<RawFd>, SockFdsError> {
    if list.is_empty() {
        return Err(SockFdsError::Empty { queues });
    }
    let mut fds: Vec<RawFd> = Vec::new();
    for (i, text) in list.split(':').enumerate() {
        let field = i + 1;
        if text.is_empty() {
            return Err(SockFdsError::EmptyField {
                list: list.chars().take(64).collect(),
                field,
            });
        }
        let fd = if text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<RawFd>().ok()
        } else {
            None
        };
        let Some(fd) = fd else {
            return Err(SockFdsError::NotANumber {
                field,
                text: text.chars().take(32).collect(),
            });
        };
        if let Some(first) = fds.iter().position(|&f| f == fd) {
            return Err(SockFdsError::Duplicate {
                fd,
                first: first + 1,
                second: field,
            });
        }
        fds.push(fd);
    }
    if fds.len() != queues as usize {
        return Err(SockFdsError::Count {
            got: fds.len(),
            queues,
        });
    }
    Ok(fds)
}

/// Check that `fd` (field `field`) is an open AF_XDP socket.
fn check_af_xdp(field: usize, fd: RawFd) -> Result<(), SockFdsError> {
    let kind = sys::fd_kind(fd).map_err(|e| SockFdsError::Sys {
        field,
        fd,
        op: "fstat/getsockopt(SO_DOMAIN)",
        errno: e.to_string(),
    })?;
    match kind {
        FdKind::Closed => Err(SockFdsError::NotOpen { field, fd }),
        FdKind::NotSocket(fmt) => Err(SockFdsError::NotSocket {
            field,
            fd,
            what: file_type_name(fmt).to_owned(),
        }),
        FdKind::Socket(libc::AF_XDP) => Ok(()),
        FdKind::Socket(domain) => Err(SockFdsError::NotAfXdp {
            field,
            fd,
            domain,
            name: family_name(domain),
        }),
    }
}

/// Parse and check a sock-fds list against `queues`: the syntax rules of
/// [`parse_sock_fds_syntax`], then every fd must be open in this process and
/// an AF_XDP socket. Returns the fd numbers in queue order; nothing is taken
/// over or changed.
pub fn parse_sock_fds(list: &str, queues: u32) -> Result<Vec<RawFd>, SockFdsError> {
    let fds = parse_sock_fds_syntax(list, queues)?;
    for (i, &fd) in fds.iter().enumerate() {
        check_af_xdp(i + 1, fd)?;
    }
    Ok(fds)
}

/// [`parse_sock_fds`], then take the sockets over: each is duplicated into a
/// close-on-exec [`OwnedFd`] (ready for [`XskSocket::adopt`]), and the
/// inherited fd is marked close-on-exec so it does not leak into programs
/// this one starts. The inherited fd numbers themselves stay open (this
/// function cannot prove nothing else in the process uses them), which keeps
/// the same sockets alive and costs one fd each.
///
/// [`XskSocket::adopt`]: crate::XskSocket::adopt
pub fn claim_sock_fds(list: &str, queues: u32) -> Result<Vec<OwnedFd>, SockFdsError> {
    let fds = parse_sock_fds(list, queues)?;
    let mut owned = Vec::with_capacity(fds.len());
    for (i, &fd) in fds.iter().enumerate() {
        let sys_err = |op: &'static str| {
            move |e: std::io::Error| SockFdsError::Sys {
                field: i + 1,
                fd,
                op,
                errno: e.to_string(),
            }
        };
        owned.push(sys::dup_cloexec(fd).map_err(sys_err("fcntl(F_DUPFD_CLOEXEC)"))?);
        sys::set_cloexec_raw(fd, true).map_err(sys_err("fcntl(F_SETFD, FD_CLOEXEC)"))?;
    }
    Ok(owned)
}

/// Prepare this process to exec a program that inherits exactly `keep`
/// besides standard input, output and error: every fd from 3 upwards is
/// marked close-on-exec, then close-on-exec is cleared on the fds in `keep`.
/// Used by `xsk-client exec` just before it execs.
pub fn inherit_only(keep: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if let Err(e) = sys::cloexec_from(3) {
        // Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC: walk /proc/self/fd.
        if !matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
            return Err(e);
        }
        let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|d| d.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= 3)
            .collect();
        for fd in fds {
            // The directory's own fd is gone by now: EBADF is fine.
            match sys::set_cloexec_raw(fd, true) {
                Err(e) if e.raw_os_error() != Some(libc::EBADF) => return Err(e),
                _ => {}
            }
        }
    }
    for fd in keep {
        sys::set_cloexec_raw(fd.as_raw_fd(), false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_faults_have_their_own_variants() {
        assert_eq!(
            parse_sock_fds_syntax("", 1),
            Err(SockFdsError::Empty { queues: 1 })
        );
        for (list, field) in [("5::6", 2), (":5", 1), ("5:", 2)] {
            assert!(
                matches!(parse_sock_fds_syntax(list, 2), Err(SockFdsError::EmptyField { field: f, .. }) if f == field),
                "{list}"
            );
        }
        for bad in ["x", "-3", "+3", " 3", "3 ", "0x5", "99999999999", "3.0"] {
            assert!(
                matches!(
                    parse_sock_fds_syntax(bad, 1),
                    Err(SockFdsError::NotANumber { field: 1, .. })
                ),
                "{bad:?} -> {:?}",
                parse_sock_fds_syntax(bad, 1)
            );
        }
        assert_eq!(
            parse_sock_fds_syntax("5:6:7", 2),
            Err(SockFdsError::Count { got: 3, queues: 2 })
        );
        assert_eq!(
            parse_sock_fds_syntax("5", 2),
            Err(SockFdsError::Count { got: 1, queues: 2 })
        );
        assert_eq!(
            parse_sock_fds_syntax("5:6:5", 3),
            Err(SockFdsError::Duplicate {
                fd: 5,
                first: 1,
                second: 3
            })
        );
        assert_eq!(parse_sock_fds_syntax("5:6", 2).unwrap(), vec![5, 6]);
        assert_eq!(parse_sock_fds_syntax("007", 1).unwrap(), vec![7]);
    }

    #[test]
    fn fds_must_be_open_af_xdp_sockets() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let f = file.as_raw_fd();
        let e = parse_sock_fds(&f.to_string(), 1).unwrap_err();
        assert!(
            matches!(e, SockFdsError::NotSocket { fd, .. } if fd == f),
            "{e}"
        );
        assert!(e.to_string().contains("a regular file"), "{e}");

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = parse_sock_fds(&a.as_raw_fd().to_string(), 1).unwrap_err();
        assert!(
            matches!(e, SockFdsError::NotAfXdp { domain, name: "AF_UNIX", .. } if domain == libc::AF_UNIX),
            "{e}"
        );

        // A number far above any open fd.
        let e = parse_sock_fds("1000000", 1).unwrap_err();
        assert_eq!(
            e,
            SockFdsError::NotOpen {
                field: 1,
                fd: 1_000_000
            }
        );
        assert!(e.to_string().contains("EBADF"), "{e}");

        // The count is checked before any fd is looked at.
        assert!(matches!(
            parse_sock_fds("1000000:1000001", 1),
            Err(SockFdsError::Count { .. })
        ));
    }
}
