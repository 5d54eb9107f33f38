//! `xsk-vhost-user`: an unprivileged vhost-user-net backend whose NIC is a
//! set of AF_XDP sockets leased from `xsk-brokerd`.
//!
//! It leases `--queues` sockets on `--ifname` from the broker, listens on
//! the vhost-user socket `--socket` and serves a VMM connection (one queue
//! pair per socket, one worker thread per pair). When the VMM disconnects it
//! stops its workers and unmaps the guest's memory; then, with
//! `--reconnect`, it waits for the next VMM on the same socket with the same
//! sockets and lease, else it ends the lease and exits 0. SIGTERM or SIGINT
//! end it the same way at any time (lease released, socket file removed,
//! exit 0).

mod guest;
mod net;
mod proxy;

use std::io::Write;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use xsk_client::{BrokerClient, OpenRequest, SocketConfig, XskSocket};

/// Frames of 2 KiB in all umems together: 8 MiB, the common memlock limit,
/// leaves nothing for anyone else, so use half of it.
const TOTAL_FRAMES: u32 = 2048;

/// Unprivileged vhost-user-net backend on AF_XDP sockets leased from xsk-brokerd.
#[derive(Parser, Debug)]
#[command(name = "xsk-vhost-user", version, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The vhost-user Unix socket to listen on (the VMM connects to it,
    /// e.g. QEMU's `-chardev socket,path=PATH`, cloud-hypervisor's
    /// `--net vhost_user=true,socket=PATH`).
    #[arg(long, required = true)]
    socket: Option<PathBuf>,
    /// The broker's control socket.
    #[arg(long, default_value = "/run/xsk-broker/broker.sock")]
    broker: PathBuf,
    /// The interface to lease queues of (with --sock-fds: whose queues the
    /// inherited sockets are for).
    #[arg(long, required = true)]
    ifname: Option<String>,
    /// Take the sockets from the parent instead of the broker: the colon
    /// list `xsk-client exec` fills in for `{sock-fds}` (the lease stays with
    /// the fd it passes). Needs --start-queue and --ifindex from the same
    /// placeholders.
    #[arg(long, requires_all = ["ifindex"])]
    sock_fds: Option<String>,
    /// With --sock-fds: the first queue (`{start-queue}`).
    #[arg(long, default_value_t = 0)]
    start_queue: u32,
    /// With --sock-fds: the interface index (`{ifindex}`).
    #[arg(long)]
    ifindex: Option<u32>,
    /// With --sock-fds: bind in copy mode (`XDP_COPY`), as a copy lease
    /// requires.
    #[arg(long)]
    copy: bool,
    /// Queue pairs (queues 0..N of the interface).
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// The guest NIC's MAC address (reported in the device's config space).
    #[arg(long, default_value = "52:54:00:12:34:56")]
    mac: String,
    /// Print events as JSON lines.
    #[arg(long)]
    json: bool,
    /// Keep serving after the VMM disconnects: keep the lease and the
    /// sockets, drop the old guest's rings and memory, and accept the next
    /// VMM on the same --socket (a restarted VM). Without it the backend
    /// exits when its VMM disconnects. SIGTERM/SIGINT end it either way.
    #[arg(long)]
    reconnect: bool,
}

/// Other things than serving a VMM.
#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Write the man page (roff), generated from these definitions, to
    /// standard output.
    Man,
}

/// The man page of this command line.
fn write_man_page() -> Result<()> {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(Args::command())
        .manual("xsk-broker")
        .render(&mut page)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&page)
        .context("writing the man page")
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("--mac {s:?}: expected six hex bytes separated by ':'");
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .with_context(|| format!("--mac {s:?}: {p:?} is not a hex byte"))?;
    }
    if mac[0] & 1 != 0 {
        bail!("--mac {s:?} is a multicast address; use a unicast one (e.g. 52:54:00:..)");
    }
    Ok(mac)
}

fn main() {
    let args = Args::parse();
    let result = match args.cmd {
        Some(Cmd::Man) => write_man_page(),
        None => run(&args),
    };
    if let Err(e) = result {
        eprintln!("xsk-vhost-user: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    // Both are required unless a subcommand is given (clap checks).
    let (Some(socket), Some(want_if)) = (&args.socket, &args.ifname) else {
        bail!("--socket and --ifname are required");
    };
    let mac = parse_mac(&args.mac)?;
    // Block SIGTERM and SIGINT before any thread starts (threads inherit
    // the mask): one thread waits for them and stops the backend cleanly.
    let signals = stop_signals();
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;
    if args.queues == 0 || args.queues > 16 {
        bail!("--queues {}: use 1 to 16 queue pairs", args.queues);
    }
    let frames = (TOTAL_FRAMES / args.queues).max(64);
    let frames = 1u32 << frames.ilog2();
    let config = SocketConfig::with_frame_count(frames);

    // The lease: our own broker connection, or (with --sock-fds) the one
    // `xsk-client exec` keeps open for us.
    let (lease, socks, ifname, ifindex, mode, copy, program_id) = match &args.sock_fds {
        None => {
            let broker = BrokerClient::connect(&args.broker).with_context(|| {
                format!("connecting to the broker at {}", args.broker.display())
            })?;
            let mut lease = broker
                .open(OpenRequest::new(want_if.clone(), args.queues))
                .with_context(|| format!("leasing {} queue(s) of {}", args.queues, want_if))?;
            let info = lease.info().clone();
            let socks = lease
                .adopt_all(&config)
                .with_context(|| format!("setting up the AF_XDP sockets of {}", want_if))?;
            (
                Some(lease),
                socks,
                info.ifname,
                info.ifindex,
                json!(info.mode),
                json!(info.copy),
                json!(info.program_id),
            )
        }
        Some(list) => {
            let ifindex = args.ifindex.context("--sock-fds needs --ifindex")?;
            let fds = xsk_client::claim_sock_fds(list, args.queues)
                .with_context(|| format!("--sock-fds {list}"))?;
            let mut config = config;
            if args.copy {
                config.copy = xsk_client::CopyMode::Copy;
            }
            let socks = fds
                .into_iter()
                .enumerate()
                .map(|(i, fd)| {
                    let q = args.start_queue + i as u32;
                    XskSocket::adopt(fd, ifindex, q, &config).with_context(|| {
                        format!("setting up the inherited socket of {} queue {q}", want_if)
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let copy = if args.copy { "copy" } else { "auto" };
            (
                None,
                socks,
                want_if.clone(),
                ifindex,
                json!(null),
                json!(copy),
                json!(null),
            )
        }
    };
    let queue_ids: Vec<u32> = socks.iter().map(|s| s.queue_id()).collect();
    let backend = net::NetBackend::new(socks, mac);

    // The VMM connects to `--socket`; the library gets the other end of a
    // relay (proxy.rs) through a private abstract socket.
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the old {}", socket.display()))?;
    }
    let public =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    // Removes the socket file on every way out from here on.
    let _socket_file = SocketFile(socket);
    public
        .set_nonblocking(true)
        .with_context(|| format!("making {} non-blocking", socket.display()))?;
    let name = format!("xsk-vhost-user-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).context("abstract socket name")?;
    let private = UnixListener::bind_addr(&addr).context("binding the relay socket")?;
    let mut listener = Listener::from(private);
    let stop = Stop::start(signals)?;
    let ready = json!({
        "event": "ready",
        "socket": socket,
        "ifname": ifname,
        "ifindex": ifindex,
        "mode": mode,
        "copy": copy,
        "program_id": program_id,
        "queues": queue_ids,
        "reconnect": args.reconnect,
        "pid": std::process::id(),
    });
    if args.json {
        println!("{ready}");
    } else {
        println!(
            "ready: vhost-user socket {} on {} queues {:?}",
            socket.display(),
            ifname,
            queue_ids
        );
    }

    let mut connections = 0u64;
    let mut failed = None;
    let reason = loop {
        let Some(vmm) = stop.accept(&public, socket)? else {
            break "signal";
        };
        connections += 1;
        if args.json {
            println!(
                "{}",
                json!({"event": "connected", "connection": connections})
            );
        } else {
            println!("connected: VMM connection {connections}");
        }
        let (result, relayed) = serve(&backend, vmm, &addr, &mut listener, &stop)?;
        let (rx, tx, dropped) = totals(&backend);
        let error = match &result {
            Err(e) if !stop.requested() && !is_disconnect(e) => Some(e.to_string()),
            _ => None,
        };
        if args.json {
            println!(
                "{}",
                json!({"event": "disconnected", "connection": connections,
                       "early_vring_enables_held": relayed.early_enables,
                       "ring_stops": relayed.ring_stops, "rx_packets": rx,
                       "tx_packets": tx, "dropped": dropped, "error": error})
            );
        } else {
            println!(
                "disconnected: VMM connection {connections}; rx {rx} tx {tx} dropped {dropped}"
            );
        }
        if let Some(e) = error {
            eprintln!("xsk-vhost-user: serving VMM connection {connections}: {e}");
            failed = Some(e);
        }
        if stop.requested() {
            break "signal";
        }
        if !args.reconnect {
            break "vmm_disconnected";
        }
        // With --reconnect a VMM that broke the protocol does not end the
        // backend: the next one gets a fresh device.
        failed = None;
    };

    let (rx, tx, dropped) = totals(&backend);
    // Close the AF_XDP sockets (the workers that shared them are gone), then
    // the control connection, which ends the lease: the broker takes the
    // queues back and detaches its program if no one else uses it.
    drop(backend);
    drop(lease);
    if args.json {
        println!(
            "{}",
            json!({"event": "done", "reason": reason, "connections": connections,
                   "rx_packets": rx, "tx_packets": tx, "dropped": dropped,
                   "released": queue_ids, "error": failed})
        );
    } else {
        println!(
            "done: {}; rx {rx} tx {tx} dropped {dropped}; released queues {queue_ids:?}",
            if reason == "signal" {
                "stopped by a signal"
            } else {
                "the VMM disconnected"
            }
        );
    }
    match failed {
        Some(e) => bail!("serving the VMM: {e}"),
        None => Ok(()),
    }
}

/// Removes the vhost-user socket file when dropped.
struct SocketFile<'a>(&'a Path);

impl Drop for SocketFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// rx, tx and dropped frames of all queue pairs together.
fn totals(backend: &net::NetBackend) -> (u64, u64, u64) {
    backend
        .counters()
        .iter()
        .fold((0, 0, 0), |(r, t, d), c| (r + c.0, t + c.1, d + c.2))
}

/// Whether the library's error only says the VMM went away (a VMM that
/// quits ends the connection in the middle of nothing).
fn is_disconnect(e: &vhost_user_backend::Error) -> bool {
    use vhost::vhost_user::Error as E;
    matches!(
        e,
        vhost_user_backend::Error::HandleRequest(
            E::Disconnected | E::PartialMessage | E::SocketBroken(_)
        )
    )
}

/// Serve one VMM connection on a fresh device: a new daemon (new vrings, no
/// guest memory, new worker threads polling the AF_XDP sockets), which is
/// torn down when the connection ends: its workers get their exit events and
/// are joined, and the guest memory it mapped is unmapped. The sockets, the
/// umem and the lease stay for the next VMM. Returns the library's result
/// and what the relay saw.
fn serve(
    backend: &net::NetBackend,
    vmm: UnixStream,
    addr: &SocketAddr,
    listener: &mut Listener,
    stop: &Stop,
) -> Result<(Result<(), vhost_user_backend::Error>, proxy::Relayed)> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    backend
        .prepare_exit_events()
        .context("creating the worker threads' exit eventfds")?;
    let mut daemon = VhostUserDaemon::new("xsk-vhost-user".into(), backend.clone(), mem)
        .map_err(|e| anyhow::anyhow!("starting the vhost-user daemon: {e}"))?;
    let handlers = daemon.get_epoll_handlers();
    // Every worker took an exit event (see prepare_exit_events).
    if handlers.len() != backend.pairs() {
        bail!(
            "expected {} worker threads, the library made {}",
            backend.pairs(),
            handlers.len()
        );
    }
    for (i, h) in handlers.iter().enumerate() {
        backend
            .attach(i, h)
            .with_context(|| format!("polling the AF_XDP socket of queue pair {i}"))?;
    }
    drop(handlers);
    stop.watch(&vmm)?;
    let lib_end = UnixStream::connect_addr(addr).context("connecting the relay")?;
    let relay = std::thread::Builder::new()
        .name("vhost-relay-in".into())
        .spawn(move || proxy::relay(vmm, lib_end))
        .context("starting the relay thread")?;
    let result = match daemon.start(listener) {
        Ok(()) => daemon.wait(),
        Err(e) => Err(e),
    };
    stop.unwatch();
    let relayed = relay.join().ok().and_then(|r| r.ok()).unwrap_or_default();
    // Dropping the daemon sends each worker its exit event and joins it.
    drop(daemon);
    // The backend's last reference to this VMM's guest memory: unmap it.
    let _ = backend.update_memory(GuestMemoryAtomic::new(GuestMemoryMmap::new()));
    Ok((result, relayed))
}

/// SIGTERM and SIGINT, blocked in every thread and taken by one.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// A stop request (SIGTERM or SIGINT): wakes the accept wait and ends the
/// VMM connection being served.
struct Stop {
    requested: AtomicBool,
    /// Readable once a stop was requested.
    wake: UnixStream,
    /// The VMM connection being served, to shut down on a stop.
    conn: Mutex<Option<UnixStream>>,
}

impl Stop {
    /// Take `signals` (already blocked in every thread) on a thread of
    /// their own.
    fn start(signals: SigSet) -> Result<Arc<Stop>> {
        let (wake, poke) = UnixStream::pair().context("creating the stop socket pair")?;
        let stop = Arc::new(Stop {
            requested: AtomicBool::new(false),
            wake,
            conn: Mutex::new(None),
        });
        let s = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if signals.wait().is_ok() {
                    s.requested.store(true, Ordering::SeqCst);
                    let _ = (&poke).write_all(b"x");
                    if let Some(c) = s.conn.lock().unwrap().as_ref() {
                        let _ = c.shutdown(Shutdown::Both);
                    }
                }
                // Keep `poke` open: its end stays readable.
                std::thread::park();
            })
            .context("starting the signal thread")?;
        Ok(stop)
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The next VMM on `public`, or `None` once a stop is requested.
    fn accept(&self, public: &UnixListener, path: &Path) -> Result<Option<UnixStream>> {
        loop {
            if self.requested() {
                return Ok(None);
            }
            let mut fds = [
                PollFd::new(public.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => bail!("waiting for a VMM on {}: poll: {e}", path.display()),
            }
            if self.requested() {
                return Ok(None);
            }
            match public.accept() {
                Ok((vmm, _)) => {
                    vmm.set_nonblocking(false)
                        .context("making the VMM connection blocking")?;
                    return Ok(Some(vmm));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ECONNABORTED and the like: that VMM gave up; wait for the next.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("accepting a VMM on {}", path.display()))
                }
            }
        }
    }

    /// Shut `vmm` down on a stop request (at once if one came already).
    fn watch(&self, vmm: &UnixStream) -> Result<()> {
        let c = vmm.try_clone().context("duplicating the VMM connection")?;
        let mut conn = self.conn.lock().unwrap();
        if self.requested() {
            let _ = c.shutdown(Shutdown::Both);
        }
        *conn = Some(c);
        Ok(())
    }

    fn unwatch(&self) {
        self.conn.lock().unwrap().take();
    }
}
