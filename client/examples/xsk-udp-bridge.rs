//! `xsk-udp-bridge`: an emulator-like program that takes AF_XDP sockets the
//! way QEMU's `-netdev af-xdp,ifname=IF,queues=N,sock-fds=A:B` does, and
//! bridges every queue to a local UDP socket: each datagram is one Ethernet
//! frame, in both directions.
//!
//! Queue mapping: the socket for queue `start_queue + i` (the `i`-th fd of
//! `--sock-fds`) is bridged to a UDP socket bound to `--udp-local` (port 0:
//! an ephemeral port, reported in the `ready` line) and connected to
//! `--udp-remote` with its port plus `i`:
//!
//! * a frame received on queue `start_queue + i` is sent as one datagram to
//!   `REMOTE_ADDR:(REMOTE_PORT + i)`;
//! * a datagram arriving at the `i`-th local UDP socket from that remote
//!   address is transmitted as one frame on queue `start_queue + i`.
//!
//! It needs no capability: run it under the launcher, e.g.
//!
//! ```text
//! xsk-client exec --ifname eth0 --queues 2 -- \
//!     xsk-udp-bridge --ifname eth0 --ifindex {ifindex} --queues {queues} \
//!     --start-queue {start-queue} --sock-fds {sock-fds} --udp-remote 127.0.0.1:9000
//! ```
//!
//! It prints one JSON line `{"event":"ready",...}` once bound (with every
//! queue's local and remote UDP address) and `{"event":"done",...}` with
//! per-queue counters when it gets SIGTERM or SIGINT.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::json;
use xsk_client::{claim_sock_fds, PrivilegeReport, SocketConfig, XskSocket};

/// Bridge AF_XDP queues (passed as sock-fds, like QEMU) to local UDP sockets.
#[derive(Parser, Debug)]
#[command(name = "xsk-udp-bridge")]
struct Args {
    /// Interface name (as QEMU's `ifname=`).
    #[arg(long)]
    ifname: String,
    /// Interface index to bind to. AF_XDP resolves it in the network
    /// namespace the sockets were created in (the broker's); default: look
    /// `--ifname` up in this process's namespace, as QEMU does.
    #[arg(long)]
    ifindex: Option<u32>,
    /// Number of queues (as QEMU's `queues=`).
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// First queue id (as QEMU's `start-queue=`).
    #[arg(long, default_value_t = 0)]
    start_queue: u32,
    /// The AF_XDP socket fds, colon-separated, in queue order (as QEMU's
    /// `sock-fds=`).
    #[arg(long)]
    sock_fds: String,
    /// Remote UDP address of queue 0 of the bridge; queue i uses port + i.
    #[arg(long)]
    udp_remote: SocketAddr,
    /// Local UDP address to bind each queue's socket to (port 0: ephemeral;
    /// else queue i uses port + i).
    #[arg(long, default_value = "127.0.0.1:0")]
    udp_local: SocketAddr,
    /// Umem frames per queue (each 2048 bytes of RLIMIT_MEMLOCK).
    #[arg(long, default_value_t = 256)]
    frames: u32,
}

struct Queue {
    xsk: XskSocket,
    udp: UdpSocket,
    remote: SocketAddr,
    to_udp: u64,
    to_udp_errors: u64,
    from_udp: u64,
    from_udp_dropped: u64,
}

fn offset(addr: SocketAddr, i: u32) -> Result<SocketAddr> {
    if addr.port() == 0 {
        return Ok(addr);
    }
    let port = u16::try_from(u32::from(addr.port()) + i)
        .ok()
        .with_context(|| format!("{addr} plus {i} is beyond port 65535"))?;
    Ok(SocketAddr::new(addr.ip(), port))
}

fn setup(a: &Args) -> Result<Vec<Queue>> {
    if a.queues == 0 {
        bail!("--queues must be at least 1");
    }
    let ifindex = match a.ifindex {
        Some(i) => i,
        None => nix::net::if_::if_nametoindex(a.ifname.as_str()).with_context(|| {
            format!(
                "interface {} not found in this network namespace; pass --ifindex \
                 (the launcher's {{ifindex}}) when running in another namespace than the broker",
                a.ifname
            )
        })?,
    };
    let fds = claim_sock_fds(&a.sock_fds, a.queues).context("--sock-fds")?;
    let config = SocketConfig::with_frame_count(a.frames);
    let mut queues = Vec::with_capacity(fds.len());
    for (i, fd) in fds.into_iter().enumerate() {
        let i = i as u32;
        let queue_id = a.start_queue + i;
        let xsk = XskSocket::adopt(fd, ifindex, queue_id, &config)
            .with_context(|| format!("setting up the socket of queue {queue_id}"))?;
        let local = offset(a.udp_local, i)?;
        let remote = offset(a.udp_remote, i)?;
        let udp = UdpSocket::bind(local).with_context(|| format!("binding UDP {local}"))?;
        udp.connect(remote)
            .with_context(|| format!("connecting UDP to {remote}"))?;
        udp.set_nonblocking(true)?;
        queues.push(Queue {
            xsk,
            udp,
            remote,
            to_udp: 0,
            to_udp_errors: 0,
            from_udp: 0,
            from_udp_dropped: 0,
        });
    }
    Ok(queues)
}

/// Move what is ready in both directions; returns how many frames moved.
fn step(q: &mut Queue, buf: &mut [u8], batch: &mut Vec<Vec<u8>>) -> Result<usize> {
    let udp = &q.udp;
    let (mut sent, mut errors) = (0u64, 0u64);
    let n = q.xsk.receive(64, |frame| match udp.send(frame) {
        Ok(_) => sent += 1,
        Err(_) => errors += 1,
    });
    q.to_udp += sent;
    q.to_udp_errors += errors;

    batch.clear();
    while batch.len() < 64 {
        match q.udp.recv(buf) {
            Ok(len) => batch.push(buf[..len].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // ECONNREFUSED from an earlier send to a closed port, and the like.
            Err(_) => break,
        }
    }
    let mut done = 0;
    while done < batch.len() {
        match q.xsk.transmit(&batch[done..]) {
            Ok(0) => {
                // No free frame or tx slot: drop the rest, as a NIC would.
                q.from_udp_dropped += (batch.len() - done) as u64;
                break;
            }
            Ok(k) => done += k,
            // An empty or oversized datagram: skip it.
            Err(xsk_client::Error::FrameLength { .. }) => {
                q.from_udp_dropped += 1;
                done += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    q.from_udp += done as u64;
    q.xsk.flush_tx()?;
    Ok(n + batch.len())
}

fn run(a: Args, stop: &AtomicBool) -> Result<()> {
    let mut queues = setup(&a)?;
    let privileges = PrivilegeReport::current().context("reading credentials")?;
    let info: Vec<_> = queues
        .iter()
        .map(|q| {
            json!({
                "queue_id": q.xsk.queue_id(),
                "local": q.udp.local_addr().map(|x| x.to_string()).unwrap_or_default(),
                "remote": q.remote.to_string(),
            })
        })
        .collect();
    println!(
        "{}",
        json!({"event": "ready", "ifname": a.ifname, "queues": info, "privileges": privileges,
               "pid": std::process::id()})
    );
    let mut buf = vec![0u8; 65536];
    let mut batch = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0;
        for q in queues.iter_mut() {
            moved += step(q, &mut buf, &mut batch)?;
        }
        if moved == 0 {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(queues.len() * 2);
            for q in &queues {
                fds.push(PollFd::new(q.xsk.as_fd(), PollFlags::POLLIN));
                fds.push(PollFd::new(q.udp.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(50u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
        }
    }
    let per_queue: Vec<_> = queues
        .iter()
        .map(|q| {
            json!({
                "queue_id": q.xsk.queue_id(),
                "frames_to_udp": q.to_udp,
                "udp_send_errors": q.to_udp_errors,
                "frames_from_udp": q.from_udp,
                "frames_from_udp_dropped": q.from_udp_dropped,
                "counters": q.xsk.counters(),
            })
        })
        .collect();
    println!("{}", json!({"event": "done", "queues": per_queue}));
    Ok(())
}

fn main() {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("xsk-udp-bridge: cannot handle signal {sig}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run(args, &stop) {
        eprintln!("xsk-udp-bridge: {e:#}");
        std::process::exit(1);
    }
}
