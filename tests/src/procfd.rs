//! Looking at another process's file descriptors: what they point to
//! (`/proc/PID/fd`), and a socket's address family (through `pidfd_getfd`).

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The open fds of process `pid` and their `readlink` targets (e.g. `socket:[123]`,
/// `/dev/null`, `pipe:[45]`).
pub fn proc_fds(pid: u32) -> Result<BTreeMap<i32, String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let e = e.with_context(|| format!("listing {dir}"))?;
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let target = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "<closed>".to_owned());
        out.insert(n, target);
    }
    Ok(out)
}

/// The address family (`SO_DOMAIN`) of socket `fd` of process `pid`, read by duplicating
/// the fd with `pidfd_getfd(2)` (needs ptrace access to `pid`, e.g. root).
pub fn proc_socket_domain(pid: u32, fd: i32) -> Result<i32> {
    // SAFETY: pidfd_open takes a pid and flags; the returned fd is fresh and ours.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(anyhow!(
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: pidfd is a fresh fd owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd returns a new fd in this process (or -1).
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(anyhow!(
            "pidfd_getfd(pid {pid}, fd {fd}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: dup is a fresh fd owned by nobody else.
    let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: domain and len are valid for writing; SO_DOMAIN is 39 on every arch the
    // tests run on (x86_64, aarch64).
    let rc = unsafe {
        libc::getsockopt(
            dup.as_raw_fd(),
            libc::SOL_SOCKET,
            39,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(anyhow!(
            "getsockopt(SO_DOMAIN) on fd {fd} of pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(domain)
}
