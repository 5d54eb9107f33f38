//! `xsk-vhost-user`: an unprivileged vhost-user-net backend whose NIC is a
//! set of AF_XDP sockets leased from `xsk-brokerd`.
//!
//! It leases `--queues` sockets on `--ifname` from the broker, listens on
//! the vhost-user socket `--socket`, serves one VMM connection (one queue
//! pair per socket, one worker thread per pair), and when the VMM
//! disconnects stops its workers, ends the lease and exits 0.

mod guest;
mod net;
mod proxy;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use xsk_client::{BrokerClient, OpenRequest, SocketConfig, XskSocket};

/// Frames of 2 KiB in all umems together: 8 MiB, the common memlock limit,
/// leaves nothing for anyone else, so use half of it.
const TOTAL_FRAMES: u32 = 2048;

/// Unprivileged vhost-user-net backend on AF_XDP sockets leased from xsk-brokerd.
#[derive(Parser, Debug)]
#[command(name = "xsk-vhost-user", version)]
struct Args {
    /// The vhost-user Unix socket to listen on (the VMM connects to it,
    /// e.g. QEMU's `-chardev socket,path=PATH`).
    #[arg(long)]
    socket: PathBuf,
    /// The broker's control socket.
    #[arg(long, default_value = "/run/xsk-broker/broker.sock")]
    broker: PathBuf,
    /// The interface to lease queues of (with --sock-fds: whose queues the
    /// inherited sockets are for).
    #[arg(long)]
    ifname: String,
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
    if let Err(e) = run(&args) {
        eprintln!("xsk-vhost-user: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let mac = parse_mac(&args.mac)?;
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
                .open(OpenRequest::new(args.ifname.clone(), args.queues))
                .with_context(|| format!("leasing {} queue(s) of {}", args.queues, args.ifname))?;
            let info = lease.info().clone();
            let socks = lease
                .adopt_all(&config)
                .with_context(|| format!("setting up the AF_XDP sockets of {}", args.ifname))?;
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
                        format!(
                            "setting up the inherited socket of {} queue {q}",
                            args.ifname
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let copy = if args.copy { "copy" } else { "auto" };
            (
                None,
                socks,
                args.ifname.clone(),
                ifindex,
                json!(null),
                json!(copy),
                json!(null),
            )
        }
    };
    let queue_ids: Vec<u32> = socks.iter().map(|s| s.queue_id()).collect();

    let backend = net::NetBackend::new(socks, mac);
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("xsk-vhost-user".into(), backend.clone(), mem)
        .map_err(|e| anyhow::anyhow!("starting the vhost-user daemon: {e}"))?;
    let handlers = daemon.get_epoll_handlers();
    if handlers.len() != backend.pairs() {
        bail!(
            "expected {} worker threads, the library made {}",
            backend.pairs(),
            handlers.len()
        );
    }
    let ev = EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED;
    for (i, h) in handlers.iter().enumerate() {
        h.register_listener(backend.socket_fd(i), ev, backend.socket_event())
            .with_context(|| format!("polling the AF_XDP socket of queue {}", queue_ids[i]))?;
    }

    // The VMM connects to `--socket`; the library gets the other end of a
    // relay (proxy.rs) through a private abstract socket.
    if args.socket.exists() {
        std::fs::remove_file(&args.socket)
            .with_context(|| format!("removing the old {}", args.socket.display()))?;
    }
    let public = UnixListener::bind(&args.socket)
        .with_context(|| format!("listening on {}", args.socket.display()))?;
    let name = format!("xsk-vhost-user-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).context("abstract socket name")?;
    let private = UnixListener::bind_addr(&addr).context("binding the relay socket")?;
    let mut listener = Listener::from(private);
    let ready = json!({
        "event": "ready",
        "socket": args.socket,
        "ifname": ifname,
        "ifindex": ifindex,
        "mode": mode,
        "copy": copy,
        "program_id": program_id,
        "queues": queue_ids,
        "pid": std::process::id(),
    });
    if args.json {
        println!("{ready}");
    } else {
        println!(
            "ready: vhost-user socket {} on {} queues {:?}",
            args.socket.display(),
            ifname,
            queue_ids
        );
    }

    let (vmm, _) = public
        .accept()
        .with_context(|| format!("accepting the VMM on {}", args.socket.display()))?;
    drop(public);
    let lib_end = UnixStream::connect_addr(&addr).context("connecting the relay")?;
    let relay = std::thread::Builder::new()
        .name("vhost-relay-in".into())
        .spawn(move || proxy::relay(vmm, lib_end))
        .context("starting the relay thread")?;
    daemon
        .start(&mut listener)
        .map_err(|e| anyhow::anyhow!("accepting the VMM on {}: {e}", args.socket.display()))?;
    let result = daemon.wait();
    let early = relay.join().ok().and_then(|r| r.ok()).unwrap_or(0);
    if let Err(e) = &result {
        eprintln!("xsk-vhost-user: the vhost-user connection ended: {e}");
    }
    // The workers end with the process (exit below); nothing of theirs
    // outlives it: the sockets and the lease are file descriptors.
    let _ = std::fs::remove_file(&args.socket);
    let counters = backend.counters();
    // Closing the control connection ends the lease: the broker takes the
    // queues back and detaches its program if no one else uses it.
    drop(lease);
    drop(handlers);
    let freed = queue_ids.clone();
    let rx: u64 = counters.iter().map(|c| c.0).sum();
    let tx: u64 = counters.iter().map(|c| c.1).sum();
    let dropped: u64 = counters.iter().map(|c| c.2).sum();
    if args.json {
        println!(
            "{}",
            json!({"event": "done", "reason": "vmm_disconnected", "rx_packets": rx,
                   "early_vring_enables_held": early,
                   "tx_packets": tx, "dropped": dropped, "released": freed,
                   "error": result.as_ref().err().map(|e| e.to_string())})
        );
    } else {
        println!("done: the VMM disconnected; rx {rx} tx {tx} dropped {dropped}; released queues {freed:?}");
    }
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            // A VMM that quits ends the connection in the middle of nothing:
            // the library reports that as a disconnect.
            let s = e.to_string();
            if s.contains("disconnect") || s.contains("Disconnected") || s.contains("partial") {
                0
            } else {
                eprintln!("xsk-vhost-user: serving the VMM: {e}");
                1
            }
        }
    };
    // Exit here, not by returning: dropping the daemon joins the library's
    // worker threads, which wait in epoll for ever (the library gives them
    // an exit event only if the backend makes one). The sockets and the
    // (already closed) lease are file descriptors the exit closes.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
