//! `xsk-attack`: a deliberately misbehaving broker client for the confinement
//! tests. It speaks the protocol by hand and binds leased sockets with
//! whatever interface, queue and flags it is told to, so a test can check that
//! the kernel or the broker refuses what the lease does not allow.
//!
//! ```text
//! xsk-attack [--socket PATH | --lease-fd N] STEP...
//! steps (run in order, each prints one JSON line on stdout):
//!   open IFNAME QUEUE            open one queue (copy mode auto)
//!   open2 IFNAME START           open two queues from START
//!   open-copy IFNAME QUEUE COPY  open one queue with COPY: auto|copy|zero-copy
//!   bind IFINDEX QUEUE FLAGS     register a umem and rings on the leased socket and bind
//!                                (IFINDEX 0 = the ifindex the broker reported; FLAGS a
//!                                number: 2 XDP_COPY, 4 XDP_ZEROCOPY, 1 XDP_SHARED_UMEM)
//!   bind-shared QUEUE            bind the leased socket with XDP_SHARED_UMEM to a second
//!                                socket's umem (needs two leased queues: open ... 2)
//!   bind-device IFINDEX          try to re-point the leased socket at another interface
//!                                (setsockopt SO_BINDTOIFINDEX)
//!   rings RX TX                  create the leased socket's rx and tx rings with RX and TX
//!                                entries (0: leave that ring out), without a umem or bind
//!   scribble POS                 write POS into the rx ring's producer word through this
//!                                process's own mapping (the word the kernel advances)
//!   close-sockets                close this process's leased socket fds (the lease stays)
//!   release                      send release on the connection
//!   status                       send status and print how many leases it shows
//!   whoami                       print the process's uid and CapEff (from /proc/self/status)
//!   wait                         print {"step":"wait"} and wait for a line on stdin
//!   hold                         print {"step":"hold"} and sleep until killed
//! ```
//!
//! `--lease-fd N` uses an inherited connection (e.g. `{lease-fd}` under
//! `xsk-client exec`) that already said hello. Exit status: 0 when every step
//! ran (a refusal is a result, not a failure), 2 on a usage error.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde_json::{json, Value};
use xsk_broker_protocol::{
    decode_response, Channel, CopyMode, Hello, OpenRequest, Request, Response, StatusRequest,
};

const SOL_XDP: libc::c_int = 283;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_SHARED_UMEM: u16 = 1;
const FRAME: usize = 2048;
const FRAMES: usize = 16;

/// `struct xdp_umem_reg` (linux/if_xdp.h).
#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

fn errno_json(e: &std::io::Error) -> Value {
    let name = e
        .raw_os_error()
        .map(|n| format!("{:?}", nix::errno::Errno::from_raw(n)))
        .unwrap_or_default();
    json!({ "errno": e.raw_os_error(), "error": name, "message": e.to_string() })
}

fn setsockopt_u32(fd: RawFd, opt: libc::c_int, v: u32) -> std::io::Result<()> {
    // SAFETY: fd is a socket this process holds; the option value is a u32 on
    // the stack that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            opt,
            (&v as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A small umem (leaked on purpose: the process is short-lived) registered on
/// `fd`, with fill, completion and rx rings sized.
fn register_umem(fd: RawFd) -> std::io::Result<()> {
    let len = FRAME * FRAMES;
    // SAFETY: an anonymous private mapping; the result is checked.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let reg = UmemReg {
        addr: mem as u64,
        len: len as u64,
        chunk_size: FRAME as u32,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    // SAFETY: fd is a socket; reg is a valid xdp_umem_reg describing memory
    // that stays mapped for the life of the process.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_UMEM_REG,
            (&reg as *const UmemReg).cast(),
            std::mem::size_of::<UmemReg>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    setsockopt_u32(fd, XDP_UMEM_FILL_RING, FRAMES as u32)?;
    setsockopt_u32(fd, XDP_UMEM_COMPLETION_RING, FRAMES as u32)?;
    setsockopt_u32(fd, XDP_RX_RING, FRAMES as u32)
}

/// Write `pos` into the rx ring's producer word of `fd`, through a mapping
/// of this process's own (read-write, as every holder maps its rings).
fn scribble(fd: RawFd, pos: u32) -> std::io::Result<()> {
    // SAFETY: xdp_mmap_offsets is plain old data; all-zero is valid.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&mut off as *mut libc::xdp_mmap_offsets).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let page = 4096;
    // SAFETY: a new shared mapping of the socket's rx ring; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            libc::XDP_PGOFF_RX_RING,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    if off.rx.producer + 4 > page as u64 {
        return Err(std::io::Error::other(
            "the producer is not in the first page",
        ));
    }
    // SAFETY: the producer word is 4-aligned inside the page just mapped;
    // a volatile write, as the kernel reads it concurrently.
    unsafe {
        std::ptr::write_volatile(
            p.cast::<u8>().add(off.rx.producer as usize).cast::<u32>(),
            pos,
        );
        libc::munmap(p, page);
    }
    Ok(())
}

fn bind_xsk(fd: RawFd, ifindex: u32, queue: u32, flags: u16, shared: u32) -> std::io::Result<()> {
    let sa = SockaddrXdp {
        family: libc::AF_XDP as u16,
        flags,
        ifindex,
        queue_id: queue,
        shared_umem_fd: shared,
    };
    // SAFETY: fd is a socket; sa is a valid sockaddr_xdp of the length given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const SockaddrXdp).cast(),
            std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

struct Attacker {
    chan: Channel,
    sockets: Vec<OwnedFd>,
    ifindex: u32,
}

impl Attacker {
    fn call(&self, req: &Request) -> Result<(Response, Vec<OwnedFd>), String> {
        self.chan.send(req, &[]).map_err(|e| format!("send: {e}"))?;
        let got = self.chan.recv().map_err(|e| format!("recv: {e}"))?;
        let resp = decode_response(&got.body).map_err(|e| format!("decode: {e}"))?;
        Ok((resp, got.fds))
    }

    fn step(&mut self, args: &mut std::slice::Iter<'_, String>) -> Result<Value, String> {
        let Some(step) = args.next() else {
            return Err("missing step".into());
        };
        let mut next = |what: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{step}: missing {what}"))
        };
        let num = |s: String| s.parse::<u32>().map_err(|e| format!("{s:?}: {e}"));
        Ok(match step.as_str() {
            "open" => {
                let ifname = next("IFNAME")?;
                let mut req = OpenRequest::new(ifname, 1);
                req.start_queue = num(next("QUEUE")?)?;
                self.open(req)?
            }
            "open2" => {
                let ifname = next("IFNAME")?;
                let mut req = OpenRequest::new(ifname, 2);
                req.start_queue = num(next("START")?)?;
                self.open(req)?
            }
            "open-copy" => {
                let ifname = next("IFNAME")?;
                let mut req = OpenRequest::new(ifname, 1);
                req.start_queue = num(next("QUEUE")?)?;
                req.copy = match next("COPY")?.as_str() {
                    "auto" => CopyMode::Auto,
                    "copy" => CopyMode::Copy,
                    "zero-copy" => CopyMode::ZeroCopy,
                    o => return Err(format!("unknown copy mode {o:?}")),
                };
                self.open(req)?
            }
            "bind" => {
                let ifindex = num(next("IFINDEX")?)?;
                let queue = num(next("QUEUE")?)?;
                let flags = num(next("FLAGS")?)?;
                let ifindex = if ifindex == 0 { self.ifindex } else { ifindex };
                let fd = self.first_socket()?;
                let r = register_umem(fd).and_then(|()| {
                    bind_xsk(fd, ifindex, queue, u16::try_from(flags).unwrap_or(0), 0)
                });
                result(
                    "bind",
                    r,
                    json!({"ifindex": ifindex, "queue": queue, "flags": flags}),
                )
            }
            "bind-device" => {
                let ifindex = num(next("IFINDEX")?)?;
                let fd = self.first_socket()?;
                let v = ifindex as libc::c_int;
                // SAFETY: fd is a socket this process holds; the value is a
                // c_int on the stack that lives for the call.
                let rc = unsafe {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_BINDTOIFINDEX,
                        (&v as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                let r = if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                };
                result("bind-device", r, json!({"ifindex": ifindex}))
            }
            "bind-shared" => {
                let queue = num(next("QUEUE")?)?;
                if self.sockets.len() < 2 {
                    return Err("bind-shared needs two leased sockets".into());
                }
                let (owner, fd) = (self.sockets[1].as_raw_fd(), self.sockets[0].as_raw_fd());
                // The umem owner binds as granted first (its queue is the second one).
                let r = register_umem(owner)
                    .and_then(|()| bind_xsk(owner, self.ifindex, queue + 1, 2, 0))
                    .and_then(|()| setsockopt_u32(fd, XDP_RX_RING, FRAMES as u32))
                    .and_then(|()| {
                        bind_xsk(fd, self.ifindex, queue, XDP_SHARED_UMEM, owner as u32)
                    });
                result("bind-shared", r, json!({"queue": queue}))
            }
            "rings" => {
                let (rx, tx) = (num(next("RX")?)?, num(next("TX")?)?);
                let fd = self.first_socket()?;
                let r = (if rx > 0 {
                    setsockopt_u32(fd, XDP_RX_RING, rx)
                } else {
                    Ok(())
                })
                .and_then(|()| {
                    if tx > 0 {
                        setsockopt_u32(fd, XDP_TX_RING, tx)
                    } else {
                        Ok(())
                    }
                });
                result("rings", r, json!({"rx": rx, "tx": tx}))
            }
            "scribble" => {
                let pos = num(next("POS")?)?;
                let fd = self.first_socket()?;
                result("scribble", scribble(fd, pos), json!({"pos": pos}))
            }
            "close-sockets" => {
                let n = self.sockets.len();
                self.sockets.clear();
                json!({"step": "close-sockets", "ok": true, "closed": n})
            }
            "release" => match self.call(&Request::Release)? {
                (Response::Released { queues }, _) => {
                    json!({"step": "release", "ok": true, "queues": queues})
                }
                (other, _) => reply_json("release", other),
            },
            "status" => match self.call(&Request::Status(StatusRequest::default()))? {
                (Response::Status(s), _) => json!({
                    "step": "status", "ok": true,
                    "leases": s.leases.len(),
                    "holders": s.leases.iter().map(|l| l.holder.uid).collect::<Vec<_>>(),
                }),
                (other, _) => reply_json("status", other),
            },
            "whoami" => {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
                };
                json!({"step": "whoami", "uid": field("Uid:"), "cap_eff": field("CapEff:")})
            }
            "wait" => {
                println!("{}", json!({"step": "wait"}));
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                json!({"step": "waited"})
            }
            "hold" => {
                println!("{}", json!({"step": "hold"}));
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            other => return Err(format!("unknown step {other:?}")),
        })
    }

    fn open(&mut self, req: OpenRequest) -> Result<Value, String> {
        match self.call(&Request::Open(req))? {
            (Response::Opened(o), fds) => {
                self.ifindex = o.ifindex;
                self.sockets = fds;
                Ok(json!({
                    "step": "open", "ok": true, "ifname": o.ifname, "ifindex": o.ifindex,
                    "copy": o.copy,
                    "queues": o.sockets.iter().map(|s| s.queue_id).collect::<Vec<_>>(),
                }))
            }
            (other, _) => Ok(reply_json("open", other)),
        }
    }

    fn first_socket(&self) -> Result<RawFd, String> {
        self.sockets
            .first()
            .map(AsRawFd::as_raw_fd)
            .ok_or_else(|| "no leased socket: run a successful open first".to_owned())
    }
}

fn result(step: &str, r: std::io::Result<()>, extra: Value) -> Value {
    let mut v = match r {
        Ok(()) => json!({"step": step, "ok": true}),
        Err(e) => {
            let mut v = errno_json(&e);
            v["step"] = json!(step);
            v["ok"] = json!(false);
            v
        }
    };
    if let (Some(o), Value::Object(extra)) = (v.as_object_mut(), extra) {
        o.extend(extra);
    }
    v
}

fn reply_json(step: &str, resp: Response) -> Value {
    match resp {
        Response::Error(e) => {
            json!({"step": step, "ok": false, "code": e.code.to_string(), "message": e.message})
        }
        other => json!({"step": step, "ok": false, "unexpected": format!("{other:?}")}),
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("xsk-attack: {msg}\nusage: xsk-attack [--socket PATH | --lease-fd N] STEP...");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let chan = match (it.next().map(String::as_str), it.next()) {
        (Some("--socket"), Some(path)) => {
            let s = UnixStream::connect(path)
                .unwrap_or_else(|e| usage(&format!("connecting to {path}: {e}")));
            let chan = Channel::new(s);
            // A broker over a limit answers and closes before reading: the
            // send may fail, the answer is still there to read.
            let hello = Request::Hello(Hello::plain());
            let sent = chan.send(&hello, &[]);
            match chan.recv().ok().and_then(|g| decode_response(&g.body).ok()) {
                Some(Response::Hello(_)) => {}
                other => usage(&format!("hello refused: {other:?} (send: {sent:?})")),
            }
            chan
        }
        (Some("--lease-fd"), Some(n)) => {
            let fd: RawFd = n
                .parse()
                .unwrap_or_else(|e| usage(&format!("--lease-fd {n}: {e}")));
            // SAFETY: the caller says fd N is an inherited connection to the
            // broker that nothing else in this process owns.
            let s = unsafe { UnixStream::from_raw_fd(fd) };
            Channel::new(s)
        }
        _ => usage("first give --socket PATH or --lease-fd N"),
    };
    chan.stream()
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap_or_else(|e| usage(&format!("read timeout: {e}")));
    let mut a = Attacker {
        chan,
        sockets: Vec::new(),
        ifindex: 0,
    };
    while it.len() > 0 {
        match a.step(&mut it) {
            Ok(v) => println!("{v}"),
            Err(e) => usage(&e),
        }
    }
}
