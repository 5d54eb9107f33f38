//! `xsk-bench`: packet-rate benchmark of the `xsk_client` datapath.
//!
//! Modes (the classic ones of the kernel's xdpsock sample):
//!
//! * `rxdrop`: receive and recycle every frame (`XskSocket::receive`);
//! * `txonly`: transmit 64-byte UDP frames (60 bytes plus the FCS the wire
//!   adds) as fast as the kernel takes them (`XskSocket::transmit`, one
//!   batch per call, each frame copied into the umem as a user of the
//!   library would);
//! * `l2fwd`: receive, swap the Ethernet addresses in place and send the
//!   same frame back (`XskSocket::forward`).
//!
//! Sockets come from the broker, either directly (`--ifname`, `--socket`)
//! or, as QEMU takes them, inherited from the launcher:
//!
//! ```text
//! xsk-client exec --ifname veth0 --queues 1 -- \
//!     xsk-bench rxdrop --sock-fds {sock-fds} --ifindex {ifindex} --start-queue {start-queue}
//! ```
//!
//! It runs with no capability. One thread per queue (pinned with `--cpus`);
//! each runs `--warmup` seconds, then counts for `--duration` seconds. The
//! result is ONE JSON line on stdout: mode, pps, packets, seconds, syscalls
//! (wakeups) and syscalls per million packets, and the same per queue with
//! the kernel's `XDP_STATISTICS`. The C reference (`c/xsk-bench-c.c`) prints
//! the same line.

mod alloc;
mod sys;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use xsk_client::{
    claim_sock_fds, BrokerClient, CopyMode, Counters, IdleBackoff, OpenRequest, SocketConfig,
    XdpMode, XskSocket,
};

/// Benchmark the xsk_client datapath: rxdrop, txonly or l2fwd.
#[derive(Parser, Debug)]
#[command(name = "xsk-bench", version, about)]
struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// AF_XDP socket fds inherited from the launcher, colon-separated in
    /// queue order (`{sock-fds}` of `xsk-client exec`). Without it the
    /// sockets are leased from the broker at `--socket`.
    #[arg(long)]
    sock_fds: Option<String>,
    /// Interface index to bind to (`{ifindex}` of `xsk-client exec`);
    /// required with `--sock-fds`.
    #[arg(long)]
    ifindex: Option<u32>,
    /// The broker's control socket (without `--sock-fds`).
    #[arg(long, default_value = "/run/xsk-broker/broker.sock")]
    socket: PathBuf,
    /// Interface to lease from the broker (without `--sock-fds`).
    #[arg(long)]
    ifname: Option<String>,
    /// XDP attach mode asked of the broker (without `--sock-fds`).
    #[arg(long, value_enum, default_value_t = AttachArg::Auto)]
    xdp_mode: AttachArg,
    /// Number of queues, one thread each.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// First queue id.
    #[arg(long, default_value_t = 0)]
    start_queue: u32,
    /// Frames per batch (rx peek, tx reserve, fill top-up reserve).
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Umem frames per queue (2048 bytes each, charged to RLIMIT_MEMLOCK).
    /// The four rings get a quarter each unless `--ring-size` is given.
    #[arg(long, default_value_t = 2048)]
    frames: u32,
    /// Entries in each of the fill, completion, rx and tx rings.
    #[arg(long)]
    ring_size: Option<u32>,
    /// Bind without XDP_USE_NEED_WAKEUP (a tx syscall for every batch).
    #[arg(long)]
    no_need_wakeup: bool,
    /// SO_BUSY_POLL: busy-poll for this many microseconds in the receive
    /// syscall, which the benchmark then makes whenever its rx ring is empty.
    #[arg(long)]
    busy_poll: Option<u32>,
    /// SO_BUSY_POLL_BUDGET: packets per busy-poll round (raising it above the
    /// current value needs CAP_NET_ADMIN).
    #[arg(long)]
    busy_poll_budget: Option<u32>,
    /// SO_PREFER_BUSY_POLL (needs CAP_NET_ADMIN).
    #[arg(long)]
    prefer_busy_poll: bool,
    /// XDP_MAX_TX_SKB_BUDGET: frames one copy-mode transmit syscall may send
    /// (Linux 6.17+; the kernel's default is 32, and the client raises it to
    /// --batch when that is larger; this sets it explicitly, 32 up to the ring size).
    #[arg(long)]
    tx_budget: Option<u32>,
    /// Idle backoff of rxdrop and l2fwd (`xsk_client::IdleBackoff`): after a
    /// poll that took less than a batch, spin-wait until 8 ns << step have
    /// passed since that poll began, the step growing up to N (8: 2.048 µs);
    /// a poll that takes a whole batch starts over.
    #[arg(long, default_value_t = IdleBackoff::DEFAULT_MAX_STEP, value_parser = clap::value_parser!(u32).range(0..=16))]
    idle_backoff: u32,
    /// Re-poll an empty ring at once (no idle backoff).
    #[arg(long, conflicts_with = "idle_backoff")]
    no_idle_backoff: bool,
    /// Seconds counted.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds run before counting starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// CPUs to pin the queue threads to, in order (cycled), e.g. `1` or
    /// `0,1`. Default: not pinned.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Destination MAC of txonly frames.
    #[arg(long, default_value = "ff:ff:ff:ff:ff:ff")]
    dst_mac: String,
    /// Source MAC of txonly frames.
    #[arg(long, default_value = "02:00:00:00:00:01")]
    src_mac: String,
    /// A label copied into the result line.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Rxdrop,
    Txonly,
    L2fwd,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Rxdrop => "rxdrop",
            Mode::Txonly => "txonly",
            Mode::L2fwd => "l2fwd",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AttachArg {
    Auto,
    Native,
    Skb,
}

/// Length of a txonly frame: 64 bytes on the wire minus the 4-byte FCS.
const TX_FRAME_LEN: usize = 60;

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address {s:?}: expected six hex bytes separated by ':'");
    }
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("MAC address {s:?}"))?;
    }
    Ok(m)
}

fn csum16(bytes: &[u8]) -> u16 {
    let mut s: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A 60-byte Ethernet/IPv4/UDP frame 198.18.0.1:9 -> 198.18.0.2:9 (the
/// same frame the C reference builds).
fn tx_frame(dst: [u8; 6], src: [u8; 6]) -> [u8; TX_FRAME_LEN] {
    let mut f = [0u8; TX_FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12] = 0x08;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[3] = 46;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    let c = csum16(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[35] = 9;
    f[37] = 9;
    f[39] = 26;
    f
}

/// Swap the Ethernet destination and source addresses.
#[inline(always)]
fn swap_macs(f: &mut [u8]) -> bool {
    // Fixed-size copies through a temporary, as the C reference does with
    // three 6-byte memcpy calls (both compile to a few moves).
    if let Some(h) = f.get_mut(..12) {
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&h[..6]);
        h.copy_within(6..12, 0);
        h[6..12].copy_from_slice(&dst);
    }
    true
}

impl Cli {
    fn config(&self) -> SocketConfig {
        let mut c = SocketConfig::with_frame_count(self.frames);
        if let Some(r) = self.ring_size {
            c.umem.fill_size = r;
            c.umem.comp_size = r;
            c.rx_size = r;
            c.tx_size = r;
        }
        c.batch_size = self.batch;
        c.need_wakeup = !self.no_need_wakeup;
        c.copy = CopyMode::Auto;
        c
    }

    fn check(&self) -> Result<()> {
        if self.queues == 0 {
            bail!("--queues must be at least 1");
        }
        if !(self.duration > 0.0 && self.duration.is_finite()) {
            bail!("--duration must be a positive number of seconds");
        }
        if !(self.warmup >= 0.0 && self.warmup.is_finite()) {
            bail!("--warmup must be zero or a positive number of seconds");
        }
        if self.sock_fds.is_some() && self.ifindex.is_none() {
            bail!("--sock-fds needs --ifindex (pass {{ifindex}} from xsk-client exec)");
        }
        if self.sock_fds.is_none() && self.ifname.is_none() {
            bail!("give either --sock-fds (under xsk-client exec) or --ifname (lease from the broker)");
        }
        self.config()
            .validate()
            .context("invalid --frames/--ring-size/--batch")?;
        parse_mac(&self.dst_mac).context("--dst-mac")?;
        parse_mac(&self.src_mac).context("--src-mac")?;
        Ok(())
    }
}

/// Phases the main thread steps the workers through.
const WARMUP: u32 = 0;
const MEASURE: u32 = 1;
const STOP: u32 = 2;

/// What one queue's thread measured.
struct QueueResult {
    queue_id: u32,
    cpu: Option<usize>,
    start: Counters,
    end: Counters,
    bench_kicks: u64,
    loops: u64,
    idle_loops: u64,
    seconds: f64,
    stats: Value,
}

struct Worker {
    sock: XskSocket,
    mode: Mode,
    batch: usize,
    busy_poll: bool,
    /// None: re-poll at once.
    backoff: Option<IdleBackoff>,
    frame: [u8; TX_FRAME_LEN],
    cpu: Option<usize>,
}

impl Worker {
    fn run(mut self, phase: &AtomicU32) -> Result<QueueResult> {
        if let Some(cpu) = self.cpu {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).context("--cpus")?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .with_context(|| format!("pinning queue {} to CPU {cpu}", self.sock.queue_id()))?;
        }
        // One batch of references to the txonly frame (allocated before
        // counting starts).
        let frame = self.frame;
        let batch_frames: Vec<&[u8]> = vec![&frame[..]; self.batch];
        let mut kicks = 0u64;
        // Batches run, and batches that moved no frame (spins).
        let (mut loops, mut idle) = (0u64, 0u64);
        let mut start = None;
        let mut t0 = Instant::now();
        let mut state = WARMUP;
        loop {
            // One relaxed load per batch: the phase word stays in this
            // core's cache until the main thread writes it.
            let p = phase.load(Ordering::Relaxed);
            if p != state {
                state = p;
                if p == MEASURE {
                    start = Some((self.sock.counters(), kicks, loops, idle));
                    t0 = Instant::now();
                } else {
                    break;
                }
            }
            let n = match self.mode {
                Mode::Rxdrop => self.sock.receive(self.batch, |_| {}),
                Mode::Txonly => self.sock.transmit(&batch_frames)?,
                Mode::L2fwd => self.sock.forward(self.batch, swap_macs)?.0,
            };
            if n == 0 {
                idle += 1;
            }
            if self.mode != Mode::Txonly {
                if n == 0 && self.busy_poll {
                    // The busy-poll syscall is the wait.
                    sys::kick_rx(self.sock.as_fd());
                    kicks += 1;
                } else if let Some(b) = &mut self.backoff {
                    b.after_poll(n, self.batch);
                }
            }
            loops += 1;
        }
        let seconds = t0.elapsed().as_secs_f64();
        let end = self.sock.counters();
        let (start, start_kicks, start_loops, start_idle) =
            start.unwrap_or((end, kicks, loops, idle));
        let stats = match self.sock.statistics() {
            Ok(s) => serde_json::to_value(s)?,
            Err(e) => json!({ "error": e.to_string() }),
        };
        Ok(QueueResult {
            queue_id: self.sock.queue_id(),
            cpu: self.cpu,
            start,
            end,
            bench_kicks: kicks - start_kicks,
            loops: loops - start_loops,
            idle_loops: idle - start_idle,
            seconds,
            stats,
        })
    }
}

/// The counted packets of a mode: received for rxdrop, transmitted and
/// completed by the kernel for txonly and l2fwd.
fn counted(mode: Mode, c: &Counters) -> u64 {
    match mode {
        Mode::Rxdrop => c.rx_packets,
        Mode::Txonly | Mode::L2fwd => c.tx_completed,
    }
}

fn sockets(
    cli: &Cli,
    config: &SocketConfig,
) -> Result<(Vec<XskSocket>, Option<xsk_client::Lease>)> {
    if let Some(list) = &cli.sock_fds {
        let ifindex = cli.ifindex.unwrap_or_default();
        let fds: Vec<OwnedFd> = claim_sock_fds(list, cli.queues).context("--sock-fds")?;
        let mut socks = Vec::with_capacity(fds.len());
        for (i, fd) in fds.into_iter().enumerate() {
            let q = cli.start_queue + i as u32;
            socks.push(
                XskSocket::adopt(fd, ifindex, q, config)
                    .with_context(|| format!("setting up the socket of queue {q}"))?,
            );
        }
        return Ok((socks, None));
    }
    let ifname = cli.ifname.as_deref().unwrap_or_default();
    let broker = BrokerClient::connect(&cli.socket)
        .with_context(|| format!("connecting to the broker at {}", cli.socket.display()))?;
    let mut req = OpenRequest::new(ifname, cli.queues);
    req.start_queue = cli.start_queue;
    req.mode = match cli.xdp_mode {
        AttachArg::Auto => XdpMode::Auto,
        AttachArg::Native => XdpMode::Native,
        AttachArg::Skb => XdpMode::Skb,
    };
    let mut lease = broker
        .open(req)
        .with_context(|| format!("leasing {} queue(s) of {ifname}", cli.queues))?;
    let socks = lease
        .adopt_all(config)
        .context("setting up the leased sockets")?;
    Ok((socks, Some(lease)))
}

fn set_busy_poll(cli: &Cli, sock: &XskSocket) -> Result<()> {
    let fd = sock.as_fd();
    let q = sock.queue_id();
    let hint = "raising busy-poll settings needs CAP_NET_ADMIN in the process that sets them";
    if cli.prefer_busy_poll {
        sys::set_int_sockopt(fd, sys::SO_PREFER_BUSY_POLL, 1)
            .with_context(|| format!("queue {q}: setsockopt(SO_PREFER_BUSY_POLL): {hint}"))?;
    }
    if let Some(us) = cli.busy_poll {
        sys::set_int_sockopt(fd, libc::SO_BUSY_POLL, us)
            .with_context(|| format!("queue {q}: setsockopt(SO_BUSY_POLL, {us}): {hint}"))?;
    }
    if let Some(b) = cli.busy_poll_budget {
        sys::set_int_sockopt(fd, sys::SO_BUSY_POLL_BUDGET, b)
            .with_context(|| format!("queue {q}: setsockopt(SO_BUSY_POLL_BUDGET, {b}): {hint}"))?;
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<Value> {
    cli.check()?;
    let config = cli.config();
    let (mut socks, lease) = sockets(cli, &config)?;
    for s in &mut socks {
        set_busy_poll(cli, s)?;
        if let Some(b) = cli.tx_budget {
            if !s.set_tx_budget(b)? {
                bail!("--tx-budget: this kernel has no XDP_MAX_TX_SKB_BUDGET (Linux 6.17+)");
            }
        }
    }
    let tx_budget = socks.first().map(XskSocket::tx_budget);
    let frame = tx_frame(parse_mac(&cli.dst_mac)?, parse_mac(&cli.src_mac)?);
    let phase = Arc::new(AtomicU32::new(WARMUP));
    let mut handles = Vec::new();
    for (i, sock) in socks.into_iter().enumerate() {
        let w = Worker {
            sock,
            mode: cli.mode,
            batch: cli.batch as usize,
            busy_poll: cli.busy_poll.is_some(),
            backoff: (!cli.no_idle_backoff).then(|| IdleBackoff::with_max_step(cli.idle_backoff)),
            frame,
            cpu: (!cli.cpus.is_empty()).then(|| cli.cpus[i % cli.cpus.len()]),
        };
        let phase = Arc::clone(&phase);
        handles.push(
            std::thread::Builder::new()
                .name(format!("xsk-bench-q{i}"))
                .spawn(move || w.run(&phase))
                .context("starting a queue thread")?,
        );
    }
    std::thread::sleep(Duration::from_secs_f64(cli.warmup));
    // Only the queue threads run between these two reads (this thread
    // sleeps), so the difference is what the datapath allocated.
    let allocs_at_start = alloc::allocations();
    phase.store(MEASURE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(cli.duration));
    let allocs = alloc::allocations() - allocs_at_start;
    phase.store(STOP, Ordering::Relaxed);
    let mut results = Vec::new();
    for h in handles {
        results.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("a queue thread panicked"))??,
        );
    }
    drop(lease);

    let mut per_queue = Vec::new();
    let (mut packets, mut syscalls, mut pps, mut rx, mut tx) = (0u64, 0u64, 0f64, 0u64, 0u64);
    let mut seconds = 0f64;
    let (mut life_rx, mut life_tx, mut life_sc) = (0u64, 0u64, 0u64);
    for r in &results {
        life_rx += r.end.rx_packets;
        life_tx += r.end.tx_completed;
        life_sc += r.end.wakeups;
        let p = counted(cli.mode, &r.end) - counted(cli.mode, &r.start);
        let sc = r.end.wakeups - r.start.wakeups + r.bench_kicks;
        let qrx = r.end.rx_packets - r.start.rx_packets;
        let qtx = r.end.tx_completed - r.start.tx_completed;
        packets += p;
        syscalls += sc;
        rx += qrx;
        tx += qtx;
        pps += p as f64 / r.seconds;
        seconds = f64::max(seconds, r.seconds);
        per_queue.push(json!({
            "queue_id": r.queue_id,
            "cpu": r.cpu,
            "pps": (p as f64 / r.seconds).round(),
            "packets": p,
            "rx_packets": qrx,
            "tx_completed": qtx,
            "seconds": r.seconds,
            "syscalls": sc,
            "loops": r.loops,
            "idle_loops": r.idle_loops,
            "invalid_descs": r.end.invalid_descs,
            "xdp_statistics": r.stats,
        }));
    }
    let per_m = |n: u64| {
        if packets == 0 {
            Value::Null
        } else {
            json!((n as f64 * 1e6 / packets as f64 * 100.0).round() / 100.0)
        }
    };
    Ok(json!({
        "tool": "xsk-bench",
        "impl": "rust",
        "label": cli.label,
        "mode": cli.mode.name(),
        "queues": cli.queues,
        "batch": cli.batch,
        "frames": config.umem.frame_count,
        "ring_size": config.rx_size,
        "need_wakeup": config.need_wakeup,
        "busy_poll": cli.busy_poll,
        "tx_budget": tx_budget,
        "idle_backoff": (!cli.no_idle_backoff).then_some(cli.idle_backoff),
        "pps": pps.round(),
        "packets": packets,
        "seconds": seconds,
        "rx_pps": (rx as f64 / seconds.max(1e-9)).round(),
        "tx_pps": (tx as f64 / seconds.max(1e-9)).round(),
        "syscalls": syscalls,
        "syscalls_per_mpkt": per_m(syscalls),
        "heap_allocs_while_counting": allocs,
        "lifetime": {"rx_packets": life_rx, "tx_completed": life_tx, "wakeups": life_sc},
        "per_queue": per_queue,
    }))
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!(
                "xsk-bench: {}",
                xsk_broker_protocol::error_chain(e.as_ref())
            );
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_a_valid_ip_checksum() {
        let f = tx_frame([1; 6], [2; 6]);
        assert_eq!(csum16(&f[14..34]), 0);
        assert_eq!(&f[0..6], &[1; 6]);
        let mut g = f;
        swap_macs(&mut g);
        assert_eq!(&g[0..6], &[2; 6]);
        assert_eq!(&g[6..12], &[1; 6]);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), [2, 0, 0, 0, 0, 10]);
        assert!(parse_mac("02:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
