//! The kernel-facing half of the broker: libxdp's default XSK program, the
//! XSKMAP, AF_XDP socket creation and device queue counts.
//!
//! All of the broker's `unsafe` lives here, behind [`XskProgram`] (RAII over
//! libxdp's `struct xdp_program`) and functions returning [`OwnedFd`].

use std::ffi::{c_char, c_int, CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use libxdp_sys as sys;
use thiserror::Error;
use xsk_broker_protocol::{AttachMode, XdpStatistics};

/// `XDP_FLAGS_UPDATE_IF_NOEXIST` from linux/if_link.h.
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
/// `XDP_FLAGS_REPLACE` from linux/if_link.h.
const XDP_FLAGS_REPLACE: u32 = 1 << 4;
/// `XDP_FLAGS_SKB_MODE` from linux/if_link.h.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE` from linux/if_link.h.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Name of libxdp's embedded default AF_XDP program object.
const XSK_PROG_FILE: &CStr = c"xsk_def_xdp_prog.o";
/// Name of the program inside it.
const XSK_PROG_NAME: &CStr = c"xsk_def_prog";
/// Name of the XSKMAP inside it.
const XSK_MAP_NAME: &CStr = c"xsks_map";

/// A failed kernel or libxdp operation.
#[derive(Debug, Error)]
#[error("{op} on {ifname}: {source}")]
pub struct XdpError {
    /// What was being done.
    pub op: &'static str,
    /// Interface concerned.
    pub ifname: String,
    /// The errno.
    #[source]
    pub source: io::Error,
}

impl XdpError {
    fn new(op: &'static str, ifname: &str, errno: i32) -> Self {
        XdpError {
            op,
            ifname: ifname.to_owned(),
            source: io::Error::from_raw_os_error(errno.abs()),
        }
    }
}

/// libxdp's default XSK program, loaded and attached to one interface.
///
/// It owns its own duplicates of the program and XSKMAP fds (libxdp's handle
/// is closed right after attaching), so a program can also be reopened from
/// its pins after a broker restart ([`XskProgram::reopen`]). Dropping it
/// closes the fds but leaves the program attached; call
/// [`XskProgram::detach`] to remove it from the interface.
pub struct XskProgram {
    ifindex: u32,
    ifname: String,
    mode: AttachMode,
    prog_fd: OwnedFd,
    map_fd: OwnedFd,
    /// The id the kernel reported on the interface when attached or reopened
    /// (asked once: each query is a netlink dump of every interface).
    attached_id: u32,
}

/// Duplicate `fd` (close-on-exec) into an fd we own.
fn dup_owned(fd: c_int) -> io::Result<OwnedFd> {
    // SAFETY: fd is open for the duration of the call; F_DUPFD_CLOEXEC makes
    // a new fd that nothing else owns.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

impl XskProgram {
    /// Load the default XSK program with an XSKMAP of `map_entries` entries and
    /// attach it to `ifindex` in `mode`.
    pub fn attach(
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        map_entries: u32,
    ) -> Result<Self, XdpError> {
        // SAFETY: valid NUL-terminated file name; NULL section and opts are
        // allowed. The result is a pointer or an encoded error.
        let raw = unsafe {
            sys::xdp_program__find_file(
                XSK_PROG_FILE.as_ptr(),
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        };
        // SAFETY: libxdp_get_error accepts any pointer returned by libxdp.
        let err = unsafe { sys::libxdp_get_error(raw as *const _) };
        let prog = match NonNull::new(raw) {
            Some(p) if err == 0 => p,
            _ => {
                return Err(XdpError::new(
                    "load libxdp's default XSK program",
                    ifname,
                    if err != 0 { err as i32 } else { libc::ENOENT },
                ))
            }
        };
        // `guard` closes libxdp's handle (and the object's own fds) on every
        // path; we keep duplicates.
        let _guard = ProgGuard(prog);
        // SAFETY: prog is a valid, not yet loaded program; the map pointer is
        // checked for NULL before use.
        let rc = unsafe {
            let obj = sys::xdp_program__bpf_obj(prog.as_ptr());
            let map = sys::bpf_object__find_map_by_name(obj, XSK_MAP_NAME.as_ptr());
            if map.is_null() {
                -libc::ENOENT
            } else {
                sys::bpf_map__set_max_entries(map, map_entries.max(1))
            }
        };
        if rc != 0 {
            return Err(XdpError::new("size the XSKMAP", ifname, rc));
        }
        // Load the object ourselves and attach with the kernel's own
        // "only if nothing is attached" flag: no libxdp dispatcher, so no
        // CAP_SYS_ADMIN is needed and another tool's program is never replaced.
        // SAFETY: prog is valid; the object it owns is loaded in place.
        let rc = unsafe { sys::bpf_object__load(sys::xdp_program__bpf_obj(prog.as_ptr())) };
        if rc != 0 {
            return Err(XdpError::new(
                "load the XSK program into the kernel",
                ifname,
                rc,
            ));
        }
        // SAFETY: the object is loaded; the program and map fds it returns stay
        // owned by the object, which lives as long as `prog`.
        let (prog_fd, map_fd) = unsafe {
            let obj = sys::xdp_program__bpf_obj(prog.as_ptr());
            let bpf_prog = sys::bpf_object__find_program_by_name(obj, XSK_PROG_NAME.as_ptr());
            let prog_fd = if bpf_prog.is_null() {
                -libc::ENOENT
            } else {
                sys::bpf_program__fd(bpf_prog)
            };
            (
                prog_fd,
                sys::bpf_object__find_map_fd_by_name(obj, XSK_MAP_NAME.as_ptr()),
            )
        };
        if prog_fd < 0 {
            return Err(XdpError::new(
                "find the loaded XSK program",
                ifname,
                prog_fd,
            ));
        }
        if map_fd < 0 {
            return Err(XdpError::new("find the XSKMAP", ifname, map_fd));
        }
        let dup = |fd| {
            dup_owned(fd).map_err(|e| XdpError {
                op: "duplicate a BPF fd",
                ifname: ifname.to_owned(),
                source: e,
            })
        };
        let (prog_fd, map_fd) = (dup(prog_fd)?, dup(map_fd)?);
        let flags = XDP_FLAGS_UPDATE_IF_NOEXIST | mode_flags(mode);
        // SAFETY: plain netlink attach of a valid program fd; NULL opts allowed.
        let rc = unsafe {
            sys::bpf_xdp_attach(
                ifindex as c_int,
                prog_fd.as_raw_fd(),
                flags,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(XdpError::new("attach the XDP program", ifname, rc));
        }
        Ok(XskProgram {
            ifindex,
            ifname: ifname.to_owned(),
            mode,
            prog_fd,
            map_fd,
            attached_id: attached_prog_id(ifindex, mode).unwrap_or(0),
        })
    }

    /// Reopen a program this broker (or an earlier run of it) attached and
    /// pinned with [`XskProgram::pin_to`]: `BPF_OBJ_GET` on both pins (no
    /// CAP_SYS_ADMIN needed). Fails unless that very program is still attached
    /// to `ifindex` in `mode`.
    pub fn reopen(
        ifname: &str,
        ifindex: u32,
        mode: AttachMode,
        prog_pin: &std::path::Path,
        map_pin: &std::path::Path,
    ) -> Result<Self, XdpError> {
        let wrap = |op: &'static str| {
            let ifname = ifname.to_owned();
            move |source: io::Error| XdpError { op, ifname, source }
        };
        let prog_fd = obj_get(prog_pin).map_err(wrap("open the pinned XSK program"))?;
        let map_fd = obj_get(map_pin).map_err(wrap("open the pinned XSKMAP"))?;
        let id = prog_id(prog_fd.as_fd()).map_err(wrap("read the pinned program's id"))?;
        if attached_prog_id(ifindex, mode) != Some(id) {
            return Err(XdpError {
                op: "check the pinned program is still attached",
                ifname: ifname.to_owned(),
                source: io::Error::other(format!(
                    "program id {id} is not attached in {mode} mode any more"
                )),
            });
        }
        Ok(XskProgram {
            ifindex,
            ifname: ifname.to_owned(),
            mode,
            prog_fd,
            map_fd,
            attached_id: id,
        })
    }

    /// Pin the program as `prog_pin` and its XSKMAP as `map_pin` (replacing
    /// stale pins of those names). On failure neither pin is left.
    pub fn pin_to(&self, prog_pin: &std::path::Path, map_pin: &std::path::Path) -> io::Result<()> {
        let _ = std::fs::remove_file(prog_pin);
        let _ = std::fs::remove_file(map_pin);
        pin(self.prog_fd.as_fd(), prog_pin)?;
        if let Err(e) = pin(self.map_fd.as_fd(), map_pin) {
            let _ = std::fs::remove_file(prog_pin);
            return Err(e);
        }
        Ok(())
    }

    /// The mode the program is attached in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The id of the XDP program the kernel reported on the interface for
    /// this mode when it was attached or reopened (libxdp's dispatcher, if it
    /// used one, else the XSK program).
    pub fn attached_id(&self) -> u32 {
        self.attached_id
    }

    /// Point `queue_id`'s XSKMAP entry at `sock`.
    pub fn insert(&self, queue_id: u32, sock: BorrowedFd<'_>) -> Result<(), XdpError> {
        let value: c_int = sock.as_raw_fd();
        // SAFETY: key and value point to live 4-byte integers matching the
        // map's key_size and value_size.
        let rc = unsafe {
            sys::bpf_map_update_elem(
                self.map_fd.as_raw_fd(),
                &queue_id as *const u32 as *const _,
                &value as *const c_int as *const _,
                sys::BPF_ANY as u64,
            )
        };
        if rc != 0 {
            return Err(XdpError::new(
                "insert the socket into the XSKMAP",
                &self.ifname,
                rc,
            ));
        }
        Ok(())
    }

    /// A close-on-exec duplicate of the XSKMAP fd, to hand to a client (the
    /// map-path flow).
    pub fn map_fd_dup(&self) -> io::Result<OwnedFd> {
        self.map_fd.try_clone()
    }

    /// Clear `queue_id`'s XSKMAP entry. A missing entry is not an error.
    pub fn remove(&self, queue_id: u32) -> Result<(), XdpError> {
        // SAFETY: key points to a live 4-byte integer.
        let rc = unsafe {
            sys::bpf_map_delete_elem(self.map_fd.as_raw_fd(), &queue_id as *const u32 as *const _)
        };
        if rc != 0 && rc != -libc::ENOENT {
            return Err(XdpError::new("remove an XSKMAP entry", &self.ifname, rc));
        }
        Ok(())
    }

    /// Detach the program from the interface and close it. Only our own
    /// program is removed (`XDP_FLAGS_REPLACE` with its fd): if someone
    /// replaced it meanwhile, theirs stays.
    pub fn detach(self) -> Result<(), XdpError> {
        let opts = XdpAttachOpts {
            sz: std::mem::size_of::<XdpAttachOpts>(),
            old_prog_fd: self.prog_fd.as_raw_fd(),
            pad: 0,
        };
        let flags = XDP_FLAGS_REPLACE | mode_flags(self.mode);
        // SAFETY: XdpAttachOpts has the layout of bpf_xdp_attach_opts (checked
        // at compile time below) and lives across the call.
        let rc = unsafe {
            sys::bpf_xdp_detach(
                self.ifindex as c_int,
                flags,
                &opts as *const XdpAttachOpts as *const sys::bpf_xdp_attach_opts,
            )
        };
        // A vanished interface took the program with it.
        if rc != 0 && rc != -libc::ENODEV && interface_exists(self.ifindex) {
            return Err(XdpError::new("detach the XDP program", &self.ifname, rc));
        }
        Ok(())
    }
}

/// Open a pinned BPF object (`BPF_OBJ_GET`).
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let fd = unsafe { sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the fd is fresh and ours (libbpf opens it O_CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kernel id of the BPF program `fd`.
pub fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: bpf_prog_info is plain old data; all-zero is a valid value.
    let mut info: sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is writable for `len` bytes; all its pointer fields are
    // zero, so the kernel writes nothing else.
    let rc = unsafe { sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(info.id)
}

/// `pidfd_open(2)`: an fd that becomes readable when process `pid` exits.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is fresh and ours (pidfds are close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as c_int) })
}

/// `struct bpf_xdp_attach_opts` with its tail padding as a named field, so it
/// is zero as libbpf requires (Rust leaves padding bytes undefined).
#[repr(C)]
struct XdpAttachOpts {
    sz: usize,
    old_prog_fd: c_int,
    pad: c_int,
}

const _: () = assert!(
    std::mem::size_of::<XdpAttachOpts>() == std::mem::size_of::<sys::bpf_xdp_attach_opts>()
);

/// Closes a program handle on early return.
struct ProgGuard(NonNull<sys::xdp_program>);

impl Drop for ProgGuard {
    fn drop(&mut self) {
        // SAFETY: the guard owns the handle until forgotten.
        unsafe { sys::xdp_program__close(self.0.as_ptr()) }
    }
}

fn mode_flags(mode: AttachMode) -> u32 {
    match mode {
        AttachMode::Native => XDP_FLAGS_DRV_MODE,
        AttachMode::Skb => XDP_FLAGS_SKB_MODE,
    }
}

/// The id of the XDP program attached to `ifindex` in `mode`, if any.
pub fn attached_prog_id(ifindex: u32, mode: AttachMode) -> Option<u32> {
    let mut id: u32 = 0;
    // SAFETY: `id` is a valid out-pointer.
    let rc = unsafe { sys::bpf_xdp_query_id(ifindex as c_int, mode_flags(mode) as c_int, &mut id) };
    (rc == 0 && id != 0).then_some(id)
}

/// Any XDP program attached to `ifindex`, in either mode.
pub fn any_attached_prog(ifindex: u32) -> Option<(AttachMode, u32)> {
    [AttachMode::Native, AttachMode::Skb]
        .into_iter()
        .find_map(|m| attached_prog_id(ifindex, m).map(|id| (m, id)))
}

fn interface_exists(ifindex: u32) -> bool {
    nix::net::if_::if_indextoname(ifindex).is_ok()
}

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `dir` is on a bpf filesystem.
pub fn is_bpffs(dir: &std::path::Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(dir).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(i64::from(st.filesystem_type().0) == BPF_FS_MAGIC)
}

/// Pin the BPF object `fd` at `path` on a bpffs (`BPF_OBJ_PIN`).
pub fn pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: fd is a live BPF object fd and `c` a NUL-terminated path that
    // outlives the call.
    let rc = unsafe { sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

/// Create an unbound AF_XDP socket (needs CAP_NET_RAW).
pub fn create_xsk_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A C struct that `getsockopt(SOL_XDP, ...)` fills.
///
/// # Safety
///
/// Implement it only for plain old data (integers only, no padding
/// invariants), for which all-zero bytes and any bytes the kernel writes are
/// valid values.
pub(crate) unsafe trait XdpSockoptValue: Copy {}
// SAFETY: six `u64` counters.
unsafe impl XdpSockoptValue for libc::xdp_statistics {}
// SAFETY: four `xdp_ring_offset`s of four `u64` offsets each.
unsafe impl XdpSockoptValue for libc::xdp_mmap_offsets {}

/// `getsockopt(SOL_XDP, opt)` into a `T`: the value (zeros where the kernel
/// wrote nothing) and how many bytes the kernel wrote, for the caller to
/// check against what it needs.
pub(crate) fn xdp_getsockopt<T: XdpSockoptValue>(
    sock: BorrowedFd<'_>,
    opt: libc::c_int,
) -> io::Result<(T, usize)> {
    // SAFETY: `T` is plain old data (XdpSockoptValue): all-zero is valid.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes; the kernel writes at most
    // that many (any bytes are a valid `T`) and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (&mut value as *mut T).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((value, len as usize))
}

/// Read an AF_XDP socket's kernel statistics (`getsockopt(SOL_XDP,
/// XDP_STATISTICS)`). Works on the broker's copy of a leased socket: the copy
/// and the client's fd are the same kernel socket, bound or not.
pub fn xsk_statistics(sock: BorrowedFd<'_>) -> io::Result<XdpStatistics> {
    let (st, len) = xdp_getsockopt::<libc::xdp_statistics>(sock, libc::XDP_STATISTICS)?;
    let full = std::mem::size_of::<libc::xdp_statistics>();
    if len != full {
        // A kernel older than 5.9 fills only the first three counters.
        return Err(io::Error::other(format!(
            "XDP_STATISTICS returned {len} bytes, expected {full} (kernel too old?)"
        )));
    }
    Ok(XdpStatistics {
        rx_dropped: st.rx_dropped,
        rx_invalid_descs: st.rx_invalid_descs,
        tx_invalid_descs: st.tx_invalid_descs,
        rx_ring_full: st.rx_ring_full,
        rx_fill_ring_empty_descs: st.rx_fill_ring_empty_descs,
        tx_ring_empty_descs: st.tx_ring_empty_descs,
    })
}

/// Queue counts of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Rx queues (or combined channels) in use now: valid queue ids are below this.
    pub current: u32,
    /// Most the device supports (sizes the XSKMAP).
    pub max: u32,
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// A device's rx queue counts: ethtool's channel counts, falling back to the
/// `queues/rx-N` entries in sysfs for drivers without `get_channels`.
pub fn queue_counts(ifname: &str) -> io::Result<QueueCounts> {
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: zeroed ifreq is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = CString::new(ifname).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > ifr.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as c_char;
    }
    ifr.ifr_ifru.ifru_data = &mut ch as *mut EthtoolChannels as *mut c_char;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live
    // ethtool_channels struct for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc == 0 {
        let current = ch.rx_count.max(ch.combined_count);
        let max = ch.max_rx.max(ch.max_tx).max(ch.max_combined).max(current);
        if current > 0 {
            return Ok(QueueCounts { current, max });
        }
    } else {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(err);
        }
    }
    let n = sysfs_rx_queues(ifname).unwrap_or(1).max(1);
    Ok(QueueCounts { current: n, max: n })
}

/// The interface's rx queues in use (`/sys/class/net/IF/queues/rx-*`): the
/// valid queue ids are below it. Unlike the ethtool query this takes no
/// RTNL, so it does not wait behind an XDP attach on another interface.
pub fn sysfs_rx_queues(ifname: &str) -> Option<u32> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues")).ok()?;
    let n = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    u32::try_from(n).ok()
}

/// Route libxdp's and libbpf's diagnostics into our log.
pub fn route_library_logs() {
    // SAFETY: installs a callback with the signature the C side declares;
    // the C side formats each message (va_list stays in C) and calls it.
    unsafe {
        xsk_broker_route_libxdp_print(libxdp_log);
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, libbpf_log)));
}

extern "C" {
    /// csrc/libxdp_log.c: routes libxdp's messages, formatted, to `sink`.
    fn xsk_broker_route_libxdp_print(sink: unsafe extern "C" fn(c_int, *const c_char));
}

/// libxdp's `LIBXDP_WARN` and `LIBXDP_INFO` print levels.
const LIBXDP_WARN: c_int = sys::libxdp_print_level_LIBXDP_WARN as c_int;
const LIBXDP_INFO: c_int = sys::libxdp_print_level_LIBXDP_INFO as c_int;

unsafe extern "C" fn libxdp_log(level: c_int, msg: *const c_char) {
    if msg.is_null() {
        return;
    }
    // SAFETY: the C side passes a NUL-terminated buffer that lives for the
    // call.
    let msg = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .trim_end()
        .to_owned();
    // No unwinding across the C caller.
    let _ = std::panic::catch_unwind(|| match level {
        LIBXDP_WARN => tracing::warn!(target: "libxdp", "{msg}"),
        LIBXDP_INFO => tracing::debug!(target: "libxdp", "{msg}"),
        _ => tracing::trace!(target: "libxdp", "{msg}"),
    });
}

fn libbpf_log(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
        libbpf_rs::PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
        libbpf_rs::PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
    }
}
