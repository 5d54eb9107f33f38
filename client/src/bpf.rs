//! The XSKMAP of the map-path flow, through the `bpf(2)` syscall directly
//! (no libbpf in the client): open a pin (`BPF_OBJ_GET`), insert and remove
//! sockets (`BPF_MAP_UPDATE_ELEM` / `BPF_MAP_DELETE_ELEM`). Everything
//! `unsafe` about it is in this module.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::Error;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_ANY: u64 = 0;

/// `union bpf_attr` as used by the map element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` as used by `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf(cmd, attr, sizeof *attr)`.
///
/// # Safety
/// `attr` must be the `bpf_attr` layout `cmd` expects, and every pointer in
/// it must be valid for the kernel to read for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let rc = libc::syscall(
        libc::SYS_bpf,
        cmd,
        (attr as *mut T).cast::<libc::c_void>(),
        std::mem::size_of::<T>() as libc::c_uint,
    );
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// An XSKMAP: queue id -> AF_XDP socket. Obtained from the broker (an fd over
/// the control socket, [`crate::MapLease::map`]) or opened from its pin with
/// [`XskMap::open_pinned`].
#[derive(Debug)]
pub struct XskMap {
    fd: OwnedFd,
}

impl XskMap {
    /// Wrap a map fd received from the broker.
    pub fn from_fd(fd: OwnedFd) -> XskMap {
        XskMap { fd }
    }

    /// Open a pinned map by path (`BPF_OBJ_GET`, what QEMU does with
    /// `map-path=`): needs read and write permission on the pin.
    pub fn open_pinned(path: impl AsRef<Path>) -> Result<XskMap, Error> {
        let path = path.as_ref();
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Map {
            op: "BPF_OBJ_GET",
            what: path.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
            hint: "",
        })?;
        let mut attr = ObjAttr {
            pathname: c.as_ptr() as u64,
            ..ObjAttr::default()
        };
        // SAFETY: ObjAttr is the BPF_OBJ_GET layout; `c` outlives the call.
        let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) }.map_err(|source| {
            let hint = match source.raw_os_error() {
                Some(libc::EACCES) => {
                    "the pin is owned by the uid that asked the broker for it, mode 0600: \
                     open it as that user"
                }
                Some(libc::ENOENT) => {
                    "no such pin: is the lease still alive (the broker removes the pin when \
                     it ends), and is this the same bpffs mount as the broker's?"
                }
                Some(libc::EPERM) => {
                    "bpf(2) refused: on kernels before 6.5, kernel.unprivileged_bpf_disabled \
                     forbids every bpf command without CAP_BPF"
                }
                _ => "",
            };
            Error::Map {
                op: "BPF_OBJ_GET",
                what: path.display().to_string(),
                source,
                hint,
            }
        })?;
        // SAFETY: the kernel returned a fresh fd that nothing else owns.
        Ok(XskMap {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Point map entry `key` (a queue id) at the AF_XDP socket `sock`.
    pub fn insert(&self, key: u32, sock: BorrowedFd<'_>) -> Result<(), Error> {
        let value: u32 = sock.as_raw_fd() as u32;
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: BPF_ANY,
            ..ElemAttr::default()
        };
        // SAFETY: ElemAttr is the element-command layout; key and value are
        // live u32s (the XSKMAP's key and value sizes) for the call.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map_err(|source| {
            let hint = match source.raw_os_error() {
                Some(libc::E2BIG) => "the key is beyond the map's size (the queue count)",
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
                    "the fd is not an AF_XDP socket, or the map is not an XSKMAP"
                }
                _ => "",
            };
            Error::Map {
                op: "BPF_MAP_UPDATE_ELEM",
                what: format!("XSKMAP fd {} key {key}", self.fd.as_raw_fd()),
                source,
                hint,
            }
        })?;
        Ok(())
    }

    /// Clear map entry `key`. A missing entry is not an error.
    pub fn remove(&self, key: u32) -> Result<(), Error> {
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            ..ElemAttr::default()
        };
        // SAFETY: as in insert; the key is a live u32.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(Error::Map {
                op: "BPF_MAP_DELETE_ELEM",
                what: format!("XSKMAP fd {} key {key}", self.fd.as_raw_fd()),
                source,
                hint: "",
            }),
        }
    }
}

impl XskMap {
    /// For `i` in `0..queues`: create an AF_XDP socket (needs CAP_NET_RAW),
    /// set it up and bind it to `(ifindex, start_queue + i)` with `config`,
    /// and insert it at key `start_queue + i` (what QEMU does with
    /// `map-path=` and `map-start-index=`). `ifindex` is resolved in this
    /// process's network namespace. On error the entries already inserted
    /// are removed again.
    pub fn attach_new_sockets(
        &self,
        ifindex: u32,
        start_queue: u32,
        queues: u32,
        config: &crate::SocketConfig,
    ) -> Result<Vec<crate::XskSocket>, Error> {
        let mut sockets: Vec<crate::XskSocket> = Vec::with_capacity(queues as usize);
        for i in 0..queues {
            let q = start_queue.checked_add(i).ok_or_else(|| {
                Error::InvalidConfig(format!("start_queue {start_queue} + {i} overflows"))
            })?;
            let done = crate::XskSocket::create(ifindex, q, config)
                .and_then(|s| self.insert(q, s.as_fd()).map(|()| s));
            match done {
                Ok(s) => sockets.push(s),
                Err(e) => {
                    for s in &sockets {
                        let _ = self.remove(s.queue_id());
                    }
                    return Err(e);
                }
            }
        }
        Ok(sockets)
    }
}

impl AsFd for XskMap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Create an unbound AF_XDP socket of this process's own (needs CAP_NET_RAW).
pub(crate) fn create_xsk_socket() -> Result<OwnedFd, Error> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let source = io::Error::last_os_error();
        return Err(if source.raw_os_error() == Some(libc::EPERM) {
            Error::NeedNetRaw { source }
        } else {
            Error::Sys {
                op: "socket(AF_XDP)",
                fd: -1,
                source,
            }
        });
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
