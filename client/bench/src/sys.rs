//! The two raw socket calls the benchmark makes itself: busy-poll socket
//! options, and the explicit `recvfrom` that drives busy polling.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SO_PREFER_BUSY_POLL` (`asm-generic/socket.h`).
pub const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// `SO_BUSY_POLL_BUDGET` (`asm-generic/socket.h`).
pub const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// `setsockopt(fd, SOL_SOCKET, name, &value)` with an `int` value.
pub fn set_int_sockopt(fd: BorrowedFd<'_>, name: libc::c_int, value: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `v` is a live c_int and its exact size is passed; the kernel
    // only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&v as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)`: with `SO_BUSY_POLL`
/// set, the kernel busy-polls the queue's NAPI context inside this call
/// (as libxdp's xdpsock does when its receive ring is empty). Errors are
/// "try again" only and are ignored.
#[inline]
pub fn kick_rx(fd: BorrowedFd<'_>) {
    // SAFETY: a zero-length receive with null buffer and address is valid;
    // the kernel writes nothing.
    unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
}
