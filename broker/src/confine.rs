//! Kernel-enforced confinement of every AF_XDP socket the broker hands out.
//!
//! A socket passed unbound is a capability: its holder chooses the interface,
//! the queue and zero-copy at bind(). Before a socket leaves the broker,
//! [`Confinement::confine`] makes the kernel hold it to its lease:
//!
//! * level `interface`, every kernel: `SO_BINDTOIFINDEX` to the granted
//!   interface. A bind to another ifindex then fails with EINVAL, and a
//!   holder without CAP_NET_RAW cannot undo it (EPERM).
//! * level `kernel`, where the kernel runs BPF LSM programs: the lease
//!   (ifindex, queue, allowed bind flags) is also recorded in the socket
//!   storage of `bpf/xsk_confine.bpf.c`, a program on `lsm/socket_bind` that
//!   refuses with EPERM any bind of the socket differing from it.
//!
//! [`Confinement::setup`] loads and attaches the program (or reuses the one
//! pinned in `--pin-dir` by an earlier run) and proves it with a canary: a
//! socket leased for queue 0 of loopback must get EPERM binding queue 1. A
//! kernel may refuse the program (EPERM at load) or accept it and enforce
//! nothing (no `bpf` in `lsm=`); only the canary decides the level.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, ObjectBuilder};
use tracing::{info, warn};
use xsk_broker_protocol::{ConfinementLevel, CopyMode};

/// The BPF object built by build.rs from bpf/xsk_confine.bpf.c.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsk_confine.bpf.o"));

const PROG_NAME: &str = "xsk_confine_bind";
const MAP_NAME: &str = "xsk_leases";
/// Pin names in `--pin-dir`; the version changes with the record layout.
const LINK_PIN: &str = "xsk-confine-v1-link";
const MAP_PIN: &str = "xsk-confine-v1-map";

/// `struct xsk_lease.allow` bits (bpf/xsk_confine.bpf.c).
const ALLOW_ZEROCOPY: u32 = 1 << 0;
const ALLOW_SHARED_UMEM: u32 = 1 << 1;

/// `SO_BINDTOIFINDEX` (asm-generic/socket.h; the libc crate does not export it).
#[cfg(not(any(target_arch = "sparc64", target_arch = "sparc")))]
const SO_BINDTOIFINDEX: libc::c_int = 62;
#[cfg(any(target_arch = "sparc64", target_arch = "sparc"))]
const SO_BINDTOIFINDEX: libc::c_int = 0x41;

/// What one socket is granted: the bind it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketGrant {
    /// The interface, in the broker's network namespace.
    pub ifindex: u32,
    /// The queue.
    pub queue: u32,
    /// The lease's copy setting: `Copy` demands `XDP_COPY` at bind; `Auto`
    /// and `ZeroCopy` allow `XDP_COPY`, `XDP_ZEROCOPY` or neither.
    pub copy: CopyMode,
    /// Whether the socket may bind with `XDP_SHARED_UMEM`.
    pub shared_umem: bool,
}

impl SocketGrant {
    /// The `struct xsk_lease` record the LSM program reads.
    fn record(&self) -> [u8; 12] {
        let mut allow = 0;
        if self.copy != CopyMode::Copy {
            allow |= ALLOW_ZEROCOPY;
        }
        if self.shared_umem {
            allow |= ALLOW_SHARED_UMEM;
        }
        let mut r = [0u8; 12];
        r[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        r[4..8].copy_from_slice(&self.queue.to_ne_bytes());
        r[8..12].copy_from_slice(&allow.to_ne_bytes());
        r
    }
}

/// Why a socket could not be confined (the grant then fails).
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `setsockopt(SO_BINDTOIFINDEX)` failed.
    #[error("cannot tie the socket to ifindex {ifindex} (SO_BINDTOIFINDEX): {source}")]
    BindToIfindex {
        /// The granted interface.
        ifindex: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Writing the lease into the LSM program's socket storage failed.
    #[error("cannot record the lease of queue {queue} for the BPF LSM program: {source}")]
    Record {
        /// The granted queue.
        queue: u32,
        /// libbpf's error (with the errno).
        #[source]
        source: libbpf_rs::Error,
    },
}

/// The LSM program in force: its socket storage, and the link that keeps it
/// attached (detached when dropped, unless pinned).
struct Lsm {
    map: MapHandle,
    _link: Link,
}

/// The confinement the broker applies to every socket it hands out.
pub struct Confinement {
    level: ConfinementLevel,
    lsm: Option<Lsm>,
    /// How the level was decided, for the start-up log and errors.
    reason: String,
}

impl Confinement {
    /// Interface pinning only, for `reason`.
    fn interface_only(reason: String) -> Confinement {
        Confinement {
            level: ConfinementLevel::Interface,
            lsm: None,
            reason,
        }
    }

    /// Set up the strongest confinement this kernel proves: reuse the LSM
    /// program pinned in `pin_dir` by an earlier run, else load and attach it
    /// (pinning it there, so it outlives this process), and run the canary.
    /// Never fails: what cannot be had is the reason for level `interface`.
    /// Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) for the program and
    /// CAP_NET_RAW for the canary socket.
    pub fn setup(pin_dir: Option<&Path>) -> Confinement {
        if let Some(dir) = pin_dir {
            match reuse_pinned(dir) {
                Ok(Some(c)) => return c,
                Ok(None) => {}
                Err(why) => {
                    warn!("{why}; removing those pins and loading the program afresh");
                    unpin(dir);
                }
            }
        }
        let lsm = match load() {
            Ok(lsm) => lsm,
            Err(why) => return Confinement::interface_only(why),
        };
        if let Err(why) = canary(&lsm.map) {
            // Dropping the link detaches the useless program.
            return Confinement::interface_only(why);
        }
        let mut lsm = lsm;
        let mut reason = "the BPF LSM program on socket_bind is loaded and attached, and the \
                          canary bind to a queue outside its lease was refused with EPERM"
            .to_owned();
        if let Some(dir) = pin_dir {
            match pin(&mut lsm, dir) {
                Ok(()) => reason.push_str(&format!(
                    "; pinned in {} so it outlives this process",
                    dir.display()
                )),
                Err(e) => warn!(
                    "cannot pin the BPF LSM program in {} ({e}); it stays in force only while \
                     this broker runs",
                    dir.display()
                ),
            }
        }
        Confinement {
            level: ConfinementLevel::Kernel,
            lsm: Some(lsm),
            reason,
        }
    }

    /// The level in force.
    pub fn level(&self) -> ConfinementLevel {
        self.level
    }

    /// How the level was decided (why not `kernel`, when it is not).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Hold `sock` (a fresh, unbound AF_XDP socket) to `grant`. Call before
    /// the socket is inserted anywhere or passed on.
    pub fn confine(&self, sock: BorrowedFd<'_>, grant: SocketGrant) -> Result<(), ConfineError> {
        bind_to_ifindex(sock, grant.ifindex).map_err(|source| ConfineError::BindToIfindex {
            ifindex: grant.ifindex,
            source,
        })?;
        if let Some(lsm) = &self.lsm {
            record(&lsm.map, sock, &grant).map_err(|source| ConfineError::Record {
                queue: grant.queue,
                source,
            })?;
        }
        Ok(())
    }
}

/// `setsockopt(SO_BINDTOIFINDEX, ifindex)`.
fn bind_to_ifindex(sock: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    let value =
        libc::c_int::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `sock` is an open fd for the call; the option value is a c_int
    // on the stack, its size passed with it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_BINDTOIFINDEX,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Write `grant` as `sock`'s record in the socket storage (key: the fd).
fn record(map: &MapHandle, sock: BorrowedFd<'_>, grant: &SocketGrant) -> libbpf_rs::Result<()> {
    let key = sock.as_raw_fd().to_ne_bytes();
    map.update(&key, &grant.record(), MapFlags::ANY)
}

/// `bind()` an AF_XDP socket with no umem: the LSM hook runs before the
/// kernel's own checks, which then fail (EINVAL: no rings) without effect.
fn bind_xdp(sock: BorrowedFd<'_>, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as libc::sa_family_t,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `addr` is a sockaddr_xdp on the stack, its size passed with it.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_xdp).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Prove the program enforces: a socket leased for queue 0 of loopback (copy
/// mode) must get EPERM binding queue 1, and must not get EPERM binding
/// queue 0 in copy mode. Err is why the level cannot be `kernel`.
fn canary(map: &MapHandle) -> Result<(), String> {
    let lo = nix::net::if_::if_nametoindex("lo").unwrap_or(1);
    let sock = crate::xdp::create_xsk_socket()
        .map_err(|e| format!("canary not run: cannot create an AF_XDP socket: {e}"))?;
    let grant = SocketGrant {
        ifindex: lo,
        queue: 0,
        copy: CopyMode::Copy,
        shared_umem: false,
    };
    record(map, sock.as_fd(), &grant)
        .map_err(|e| format!("canary not run: cannot record a lease in the socket storage: {e}"))?;
    let copy = libc::XDP_COPY;
    match bind_xdp(sock.as_fd(), lo, 1, copy) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        other => {
            let got = match other {
                Ok(()) => "success".to_owned(),
                Err(e) => e.to_string(),
            };
            return Err(format!(
                "canary failed: the BPF LSM program loaded and attached, but a bind to queue 1 \
                 of a socket leased for queue 0 was not refused with EPERM (got: {got}); the \
                 kernel does not run BPF LSM programs (is `bpf` in its lsm= boot parameter?)"
            ));
        }
    }
    match bind_xdp(sock.as_fd(), lo, 0, copy) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(
            "canary failed: the BPF LSM program refused a bind its lease allows (EPERM binding the \
             leased queue in copy mode); not using it"
                .to_owned(),
        ),
        _ => Ok(()),
    }
}

/// libbpf's messages while loading the program: debug, not warnings (a
/// refusal is expected on many kernels and reported in one line by the caller).
fn quiet_libbpf_log(_level: libbpf_rs::PrintLevel, msg: String) {
    tracing::debug!(target: "libbpf", "{}", msg.trim_end());
}

/// Load the program and attach it to `lsm/socket_bind`, with libbpf's own
/// messages turned down to debug meanwhile.
fn load() -> Result<Lsm, String> {
    let previous = libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, quiet_libbpf_log)));
    let loaded = load_and_attach();
    libbpf_rs::set_print(previous);
    loaded
}

fn load_and_attach() -> Result<Lsm, String> {
    let refused = |what: &str, e: libbpf_rs::Error| {
        use caps::{CapSet, Capability};
        let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
        let why = if has(Capability::CAP_SYS_ADMIN)
            || (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON))
        {
            "this kernel forbids BPF LSM programs (e.g. lockdown or another security module)"
        } else {
            "the broker lacks CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which loading it needs"
        };
        format!("canary not run: the kernel refused to {what} the BPF LSM program ({e}); {why}")
    };
    let open = ObjectBuilder::default()
        .open_memory(OBJECT)
        .map_err(|e| format!("cannot open the embedded BPF LSM object: {e}"))?;
    let obj = open.load().map_err(|e| refused("load", e))?;
    let prog = obj
        .progs_mut()
        .find(|p| p.name() == PROG_NAME)
        .ok_or_else(|| format!("the embedded BPF object has no program {PROG_NAME}"))?;
    let map = obj
        .maps()
        .find(|m| m.name() == MAP_NAME)
        .ok_or_else(|| format!("the embedded BPF object has no map {MAP_NAME}"))?;
    let map = MapHandle::try_from(&map).map_err(|e| format!("{MAP_NAME}: {e}"))?;
    let link = prog.attach_lsm().map_err(|e| refused("attach", e))?;
    Ok(Lsm { map, _link: link })
}

fn pin(lsm: &mut Lsm, dir: &Path) -> libbpf_rs::Result<()> {
    let (link_pin, map_pin) = pins(dir);
    lsm.map.pin(&map_pin)?;
    if let Err(e) = lsm._link.pin(&link_pin) {
        let _ = std::fs::remove_file(&map_pin);
        return Err(e);
    }
    Ok(())
}

fn pins(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(LINK_PIN), dir.join(MAP_PIN))
}

/// Whether `path` is one of the confinement pins (which the state restore
/// must leave alone: they are not an interface's).
pub fn is_pin(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n == LINK_PIN || n == MAP_PIN)
}

fn unpin(dir: &Path) {
    let (link_pin, map_pin) = pins(dir);
    for p in [link_pin, map_pin] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove the pin {}: {e}", p.display()),
        }
    }
}

/// The program pinned by an earlier run, if any, checked by the canary.
/// Ok(None): nothing pinned. Err: pins that cannot be used.
fn reuse_pinned(dir: &Path) -> Result<Option<Confinement>, String> {
    let (link_pin, map_pin) = pins(dir);
    if !link_pin.exists() && !map_pin.exists() {
        return Ok(None);
    }
    let link = Link::open(&link_pin).map_err(|e| {
        format!(
            "cannot open the pinned BPF LSM link {}: {e}",
            link_pin.display()
        )
    })?;
    let map = MapHandle::from_pinned_path(&map_pin).map_err(|e| {
        format!(
            "cannot open the pinned lease storage {}: {e}",
            map_pin.display()
        )
    })?;
    canary(&map).map_err(|why| format!("the pinned BPF LSM program fails its check: {why}"))?;
    info!(
        pin = %link_pin.display(),
        "reusing the BPF LSM program pinned by an earlier run"
    );
    Ok(Some(Confinement {
        level: ConfinementLevel::Kernel,
        lsm: Some(Lsm { map, _link: link }),
        reason: format!(
            "the BPF LSM program pinned in {} by an earlier run is attached, and the canary \
             bind to a queue outside its lease was refused with EPERM",
            dir.display()
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_the_bpf_layout() {
        let g = SocketGrant {
            ifindex: 7,
            queue: 3,
            copy: CopyMode::Copy,
            shared_umem: false,
        };
        let r = g.record();
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 7);
        assert_eq!(u32::from_ne_bytes(r[4..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 0);
        let auto = SocketGrant {
            copy: CopyMode::Auto,
            shared_umem: true,
            ..g
        };
        assert_eq!(
            u32::from_ne_bytes(auto.record()[8..12].try_into().unwrap()),
            ALLOW_ZEROCOPY | ALLOW_SHARED_UMEM
        );
    }

    fn lo_grant() -> SocketGrant {
        SocketGrant {
            ifindex: nix::net::if_::if_nametoindex("lo").unwrap(),
            queue: 0,
            copy: CopyMode::Copy,
            shared_umem: false,
        }
    }

    #[test]
    fn a_socket_that_cannot_be_tied_fails_naming_ifindex_and_errno() {
        let c = Confinement::interface_only("test".into());
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = c.confine(file.as_fd(), lo_grant()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("ifindex {}", lo_grant().ifindex)) && msg.contains("os error 88"),
            "{msg}"
        );
    }

    /// On the running kernel: a confined socket reports the granted ifindex
    /// and a bind to another interface fails with EINVAL.
    #[test]
    fn a_confined_socket_cannot_bind_another_interface() {
        let sock = match crate::xdp::create_xsk_socket() {
            Ok(s) => s,
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("SKIP: cannot create an AF_XDP socket ({e}); needs CAP_NET_RAW");
                return;
            }
            Err(e) => panic!("cannot create an AF_XDP socket ({e}); CI runs as root"),
        };
        let grant = lo_grant();
        Confinement::interface_only("test".into())
            .confine(sock.as_fd(), grant)
            .unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are writable and sized for an int option.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_BINDTOIFINDEX,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        assert_eq!(v as u32, grant.ifindex);
        // xsk_bind checks the bound device first (EINVAL); an unconfined
        // socket would get ENODEV for this ifindex, which does not exist.
        let other = grant.ifindex + 1000;
        let e = bind_xdp(sock.as_fd(), other, 0, libc::XDP_COPY).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        let unconfined = crate::xdp::create_xsk_socket().unwrap();
        let e = bind_xdp(unconfined.as_fd(), other, 0, libc::XDP_COPY).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "unconfined: {e}");
    }

    #[test]
    fn the_embedded_object_has_the_program_and_map() {
        let open = ObjectBuilder::default().open_memory(OBJECT).unwrap();
        assert!(open.progs().any(|p| p.name() == PROG_NAME));
        assert!(open.maps().any(|m| m.name() == MAP_NAME));
    }
}
