//! `xsk-client`: lease AF_XDP sockets from xsk-brokerd and move packets,
//! with no capabilities.
//!
//! * `rx`   receive frames (and print them with `--print-frames`)
//! * `tx`   transmit frames given as hex lines on standard input
//! * `echo` send every received frame back with MAC, IPv4 and UDP/TCP port
//!   addresses swapped
//! * `exec` lease sockets and exec a program (e.g. QEMU) that inherits them,
//!   with `{sock-fds}` etc. in its arguments replaced
//!
//! Each prints a `ready` line once its sockets are bound and a `done` summary
//! at the end; `--json` makes every line a JSON object for tools.

use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::json;
use xsk_client::{
    AttachMode, BrokerClient, CopyMode, Lease, MapLease, OpenMapRequest, OpenRequest,
    PrivilegeReport, SocketConfig, XdpMode, XskMap, XskSocket,
};

/// Lease AF_XDP sockets from xsk-brokerd and move packets without capabilities.
#[derive(Parser, Debug)]
#[command(name = "xsk-client", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The subcommands: `exec` (handled in `main` before the signal handlers are
/// registered) and the rest, which [`run`] handles.
#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Run(RunCmd),
    /// Lease sockets, then exec PROGRAM with them inherited (the sock-fds
    /// launcher). In PROGRAM's arguments `{sock-fds}` becomes the colon list
    /// of socket fds in queue order, and `{queues}`, `{start-queue}`,
    /// `{ifindex}` and `{lease-fd}` their values. With `--map`, the XSKMAP is
    /// pinned instead and `{map-path}`, `{map-start-index}` are replaced. PROGRAM inherits exactly
    /// the socket fds and the lease fd (the control connection) besides
    /// stdin/stdout/stderr; the lease lasts until PROGRAM and every process
    /// that inherited the lease fd have exited. Exit status: PROGRAM's own;
    /// 125 if the broker refused or the launcher failed (PROGRAM not
    /// started), 126 if PROGRAM could not be executed, 127 if not found.
    Exec(ExecArgs),
}

/// The subcommands that run in this process once the signal handlers are
/// registered (all but `exec`).
#[derive(Subcommand, Debug)]
enum RunCmd {
    /// Receive frames on the leased queues.
    Rx {
        #[command(flatten)]
        common: Common,
        /// Print every frame (queue, length, bytes in hex).
        #[arg(long)]
        print_frames: bool,
    },
    /// Transmit frames read from standard input, one hex-encoded frame per line.
    Tx {
        #[command(flatten)]
        common: Common,
        /// Queue index (0-based within the lease) to send on; default spreads
        /// frames over all leased queues in turn.
        #[arg(long)]
        on_queue: Option<usize>,
    },
    /// Send every received frame back with addresses swapped.
    Echo {
        #[command(flatten)]
        common: Common,
    },
    /// Write this program's man page (roff) to standard output, generated
    /// from the same definitions as `--help` (used to build the package).
    #[command(hide = true)]
    Man,
}

/// Arguments of `xsk-client exec`.
#[derive(Args, Debug)]
struct ExecArgs {
    #[command(flatten)]
    lease: LeaseArgs,
    /// Print an `exec` JSON line (fds, queues, ifindex, the argv) on stdout
    /// before exec'ing.
    #[arg(long)]
    json: bool,
    /// The map-path flow (QEMU 10.1 `map-path=`): ask for the interface's
    /// XSKMAP pinned in the broker's bpffs directory instead of sockets, and
    /// replace `{map-path}` and `{map-start-index}` (= the start queue).
    /// PROGRAM inherits only the lease fd, creates its own sockets (it needs
    /// CAP_NET_RAW and the interface's network namespace) and inserts them.
    /// The broker must run with `--bpffs-dir`.
    #[arg(long)]
    map: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<std::ffi::OsString>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Auto,
    Native,
    Skb,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CopyArg {
    Auto,
    Copy,
    ZeroCopy,
}

/// What to lease from the broker: the arguments `rx`, `tx`, `echo` and
/// `exec` share.
#[derive(Args, Debug)]
struct LeaseArgs {
    /// The broker's control socket.
    #[arg(long, default_value = "/run/xsk-broker/broker.sock")]
    socket: PathBuf,
    /// Interface, as the broker sees it.
    #[arg(long)]
    ifname: String,
    /// Number of queues.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// First queue id.
    #[arg(long, default_value_t = 0)]
    start_queue: u32,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Copy or zero-copy (the broker checks it against the XDP mode; it
    /// applies when the socket is bound).
    #[arg(long, value_enum, default_value_t = CopyArg::Auto)]
    copy: CopyArg,
}

/// Arguments of `xsk-client rx`, `tx` and `echo`.
#[derive(Args, Debug)]
struct Common {
    #[command(flatten)]
    lease: LeaseArgs,
    /// Umem frames per queue (each frame-size bytes, charged to the user's
    /// RLIMIT_MEMLOCK); the rings are sized to a quarter of it each.
    /// Default 2048 (4 MiB).
    #[arg(long)]
    frames: Option<u32>,
    /// Size of each umem frame: 2048 or 4096.
    #[arg(long)]
    frame_size: Option<u32>,
    /// Size of each of the four rings (overrides the size derived from --frames).
    #[arg(long)]
    ring_size: Option<u32>,
    /// Frames handled per batch.
    #[arg(long)]
    batch: Option<u32>,
    /// Stop after this many frames received (rx, echo).
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many seconds without traffic (once some has been seen).
    #[arg(long)]
    idle_exit: Option<f64>,
    /// Refuse to run if the process holds any capability or can create
    /// AF_XDP sockets itself (for sandboxes that must prove it).
    #[arg(long)]
    require_unprivileged: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Use the map flow (QEMU 10.1 map-path) instead of sockets from the
    /// broker: ask for the interface's XSKMAP, as the fd (`fd`) or as a pin
    /// opened by path (`pin`), then create, bind and insert this process's
    /// own sockets. Needs CAP_NET_RAW.
    #[arg(long, value_enum)]
    via_map: Option<ViaMap>,
    /// Do not ask the broker: open this pinned XSKMAP (as QEMU's
    /// `map-path=`) and insert this process's own sockets at
    /// `--start-queue` + i (QEMU's `map-start-index`). Needs CAP_NET_RAW and
    /// the interface's network namespace. For use under `xsk-client exec
    /// --map`, which holds the lease and substitutes `{map-path}`.
    #[arg(long, value_name = "PATH", conflicts_with = "via_map")]
    map_path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ViaMap {
    Fd,
    Pin,
}

/// What keeps the lease (or the pinned map) alive.
#[allow(dead_code)]
enum Held {
    Sockets(Lease),
    Map(MapLease),
    Pinned(XskMap),
}

impl Held {
    /// The lease's control connection, watched for the broker ending it.
    fn control_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Held::Sockets(l) => Some(l.control_fd()),
            Held::Map(m) => Some(m.control_fd()),
            Held::Pinned(_) => None,
        }
    }
}

impl LeaseArgs {
    /// The broker request for these arguments.
    fn request(&self) -> OpenRequest {
        OpenRequest {
            ifname: self.ifname.clone(),
            queues: self.queues,
            start_queue: self.start_queue,
            mode: match self.mode {
                ModeArg::Auto => XdpMode::Auto,
                ModeArg::Native => XdpMode::Native,
                ModeArg::Skb => XdpMode::Skb,
            },
            copy: match self.copy {
                CopyArg::Auto => CopyMode::Auto,
                CopyArg::Copy => CopyMode::Copy,
                CopyArg::ZeroCopy => CopyMode::ZeroCopy,
            },
        }
    }
}

impl Common {
    /// The socket configuration: the defaults with the given sizes applied.
    fn config(&self) -> SocketConfig {
        let mut c = match self.frames {
            Some(f) => SocketConfig::with_frame_count(f),
            None => SocketConfig::default(),
        };
        if let Some(s) = self.frame_size {
            c.umem.frame_size = s;
        }
        if let Some(r) = self.ring_size {
            c.umem.fill_size = r;
            c.umem.comp_size = r;
            c.rx_size = r;
            c.tx_size = r;
        }
        if let Some(b) = self.batch {
            c.batch_size = b;
        }
        c
    }
}

/// Prints events as text or JSON lines.
struct Out {
    json: bool,
}

impl Out {
    fn event(&self, value: serde_json::Value, text: impl FnOnce() -> String) {
        let line = if self.json { value.to_string() } else { text() };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
}

/// What the ready line reports.
struct Ready {
    ifname: String,
    ifindex: u32,
    /// Unknown with --map-path (the broker is not asked).
    mode: Option<AttachMode>,
    program_id: Option<u32>,
    copy: CopyMode,
}

impl Ready {
    fn mode_text(&self) -> String {
        self.mode
            .map_or_else(|| "unknown".to_owned(), |m| m.to_string())
    }
}

fn connect(common: &Common) -> Result<BrokerClient> {
    BrokerClient::connect(&common.lease.socket).with_context(|| {
        format!(
            "connecting to the broker at {}",
            common.lease.socket.display()
        )
    })
}

struct Session {
    _held: Held,
    /// The broker closed the control connection without a word (it stopped
    /// or restarts): the sockets keep working, so stop watching it.
    control_closed: bool,
    info: Ready,
    sockets: Vec<XskSocket>,
    out: Out,
    started: Instant,
}

fn start(common: &Common) -> Result<Session> {
    let out = Out { json: common.json };
    let privileges = PrivilegeReport::current().context("reading this process's credentials")?;
    if common.require_unprivileged && !privileges.is_unprivileged() {
        bail!(
            "--require-unprivileged: this process has CapEff {:016x} and socket(AF_XDP) {}",
            privileges.cap_eff,
            privileges
                .af_xdp_socket_error
                .as_deref()
                .unwrap_or("succeeded")
        );
    }
    let config = common.config();
    config.validate().context("invalid socket settings")?;
    let (held, sockets, info, pin) = match (&common.map_path, common.via_map) {
        (Some(path), _) => {
            // Like QEMU's map-path=: no broker, an existing pinned XSKMAP.
            let ifindex = nix::net::if_::if_nametoindex(common.lease.ifname.as_str())
                .with_context(|| {
                    format!(
                        "--map-path: interface {} not found in this network namespace (this \
                         process creates and binds the sockets, so it must run in the \
                         interface's namespace)",
                        common.lease.ifname
                    )
                })?;
            let map = XskMap::open_pinned(path)
                .with_context(|| format!("opening the pinned XSKMAP {}", path.display()))?;
            let config = SocketConfig {
                copy: common.lease.request().copy,
                ..config
            };
            let sockets = map
                .attach_new_sockets(
                    ifindex,
                    common.lease.start_queue,
                    common.lease.queues,
                    &config,
                )
                .context("creating this process's own AF_XDP sockets for the XSKMAP")?;
            let info = Ready {
                ifname: common.lease.ifname.clone(),
                ifindex,
                mode: None,
                program_id: None,
                copy: config.copy,
            };
            let pin = Some(path.display().to_string());
            (Held::Pinned(map), sockets, info, pin)
        }
        (None, None) => {
            let broker = connect(common)?;
            let mut lease = broker.open(common.lease.request()).with_context(|| {
                format!(
                    "leasing {} queue(s) of {}",
                    common.lease.queues, common.lease.ifname
                )
            })?;
            let sockets = lease
                .adopt_all(&config)
                .context("setting up the leased sockets")?;
            let o = lease.info();
            let info = Ready {
                ifname: o.ifname.clone(),
                ifindex: o.ifindex,
                mode: Some(o.mode),
                program_id: Some(o.program_id),
                copy: o.copy,
            };
            (Held::Sockets(lease), sockets, info, None)
        }
        (None, Some(via)) => {
            let broker = connect(common)?;
            let req = common.lease.request();
            let lease = broker
                .open_map(OpenMapRequest {
                    ifname: req.ifname.clone(),
                    queues: req.queues,
                    start_queue: req.start_queue,
                    mode: req.mode,
                    pin: via == ViaMap::Pin,
                })
                .with_context(|| {
                    format!(
                        "leasing {} queue(s) of {} with its XSKMAP",
                        common.lease.queues, common.lease.ifname
                    )
                })?;
            let config = SocketConfig {
                copy: req.copy,
                ..config
            };
            let m = lease.info().clone();
            let sockets = match (&m.pin_path, via) {
                (Some(path), ViaMap::Pin) => {
                    let map = XskMap::open_pinned(path)
                        .with_context(|| format!("opening the pinned XSKMAP {path}"))?;
                    lease.create_sockets(&map, &config)
                }
                _ => lease.create_sockets(lease.map(), &config),
            }
            .context("creating this process's own AF_XDP sockets for the XSKMAP")?;
            let info = Ready {
                ifname: m.ifname.clone(),
                ifindex: m.ifindex,
                mode: Some(m.mode),
                program_id: Some(m.program_id),
                copy: req.copy,
            };
            (Held::Map(lease), sockets, info, m.pin_path)
        }
    };
    let queues: Vec<u32> = sockets.iter().map(|s| s.queue_id()).collect();
    out.event(
        json!({
            "event": "ready",
            "ifname": info.ifname,
            "ifindex": info.ifindex,
            "mode": info.mode,
            "program_id": info.program_id,
            "copy": info.copy,
            "queues": queues,
            "pid": std::process::id(),
            "privileges": privileges,
            "map_pin": pin,
        }),
        || {
            format!(
                "ready: {} (ifindex {}) queues {:?}, XDP {} mode, program id {}; \
                 running as uid {} with CapEff {:016x}, own socket(AF_XDP): {}",
                info.ifname,
                info.ifindex,
                queues,
                info.mode_text(),
                info.program_id
                    .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                privileges.uid,
                privileges.cap_eff,
                privileges
                    .af_xdp_socket_error
                    .as_deref()
                    .unwrap_or("allowed")
            )
        },
    );
    Ok(Session {
        _held: held,
        control_closed: false,
        info,
        sockets,
        out,
        started: Instant::now(),
    })
}

/// Swap Ethernet source/destination, and IPv4 addresses and UDP/TCP ports
/// when present. Checksums stay valid: every swap keeps the summed words.
fn reflect(frame: &mut [u8]) {
    if frame.len() < 14 {
        return;
    }
    for i in 0..6 {
        frame.swap(i, i + 6);
    }
    if frame[12..14] != [0x08, 0x00] || frame.len() < 34 {
        return;
    }
    for i in 26..30 {
        frame.swap(i, i + 4);
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let proto = frame[23];
    if ihl >= 20 && (proto == 17 || proto == 6) && frame.len() >= l4 + 4 {
        frame.swap(l4, l4 + 2);
        frame.swap(l4 + 1, l4 + 3);
    }
}

fn parse_hex(line: &str) -> Result<Vec<u8>> {
    let s: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("bad hex at {i}")))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Wait until any socket is readable, up to `timeout`; fail if a socket
/// reports an error (its interface was deleted) or the broker ended the
/// lease with a message on the control connection.
fn wait_any(s: &mut Session, timeout: Duration) -> Result<()> {
    let control = if s.control_closed {
        None
    } else {
        s._held.control_fd()
    };
    let mut fds: Vec<PollFd<'_>> = s
        .sockets
        .iter()
        .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
        .collect();
    fds.extend(control.map(|c| PollFd::new(c, PollFlags::POLLIN)));
    let ms = PollTimeout::from(timeout.as_millis().min(60_000) as u16);
    match poll(&mut fds, ms) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e).context("poll on the AF_XDP sockets"),
    }
    let control_ready = control.is_some()
        && fds
            .last()
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
    drop(fds);
    for sock in &s.sockets {
        if let Some(e) = sock.take_error()? {
            bail!(
                "queue {} of {}: the AF_XDP socket reports an error: {e} (the interface was \
                 deleted or moved away; the socket is unbound and carries no more traffic)",
                sock.queue_id(),
                s.info.ifname
            );
        }
    }
    if control_ready {
        if let Some(c) = control {
            match broker_notice(c)? {
                Some(msg) => bail!("the broker ended the lease: {msg}"),
                None => {
                    eprintln!(
                        "xsk-client: the broker closed the lease connection (it stopped or is \
                         restarting); the sockets keep working"
                    );
                    s.control_closed = true;
                }
            }
        }
    }
    Ok(())
}

/// Read what the broker sent on a lease's control connection: `Some(message)`
/// for an error it sent (e.g. the interface disappeared), `None` if it
/// closed the connection without one.
fn broker_notice(control: std::os::fd::BorrowedFd<'_>) -> Result<Option<String>> {
    use xsk_broker_protocol::{decode_response, Channel, Response, TransportError};
    let dup = control
        .try_clone_to_owned()
        .context("duplicating the lease's control connection")?;
    let stream = std::os::unix::net::UnixStream::from(dup);
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    match Channel::new(stream).recv() {
        Ok(got) => Ok(Some(match decode_response(&got.body) {
            Ok(Response::Error(e)) => format!("{}: {}", e.code, e.message),
            Ok(other) => format!("unexpected message {other:?}"),
            Err(e) => format!("unreadable message: {e}"),
        })),
        Err(TransportError::Closed) => Ok(None),
        Err(e) => Ok(Some(format!("the control connection failed: {e}"))),
    }
}

/// Loop control shared by rx and echo.
struct Limits {
    count: Option<u64>,
    deadline: Option<Instant>,
    idle: Option<Duration>,
}

impl Limits {
    fn new(c: &Common) -> Self {
        Limits {
            count: c.count,
            deadline: c
                .duration
                .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0))),
            idle: c.idle_exit.map(|d| Duration::from_secs_f64(d.max(0.0))),
        }
    }
}

fn run_loop(
    s: &mut Session,
    limits: &Limits,
    stop: &AtomicBool,
    mut step: impl FnMut(usize, &mut XskSocket) -> Result<usize>,
) -> Result<u64> {
    let mut total: u64 = 0;
    let mut last_traffic: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut did = 0;
        for (i, sock) in s.sockets.iter_mut().enumerate() {
            did += step(i, sock)?;
        }
        total += did as u64;
        let now = Instant::now();
        if did > 0 {
            last_traffic = Some(now);
        }
        if limits.count.is_some_and(|c| total >= c) || limits.deadline.is_some_and(|d| now >= d) {
            break;
        }
        if let (Some(idle), Some(last)) = (limits.idle, last_traffic) {
            if now - last >= idle {
                break;
            }
        }
        if did == 0 {
            wait_any(s, Duration::from_millis(50))?;
        }
    }
    Ok(total)
}

/// Reclaim outstanding transmissions for up to a second.
fn drain_tx(sockets: &mut [XskSocket]) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(1);
    while sockets.iter().any(|s| s.outstanding_tx() > 0) && Instant::now() < until {
        for s in sockets.iter_mut() {
            s.flush_tx()?;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn finish(s: &mut Session, what: &str) -> Result<()> {
    let elapsed = s.started.elapsed().as_secs_f64();
    let mut per_queue = Vec::new();
    let (mut rx, mut tx) = (0u64, 0u64);
    for sock in &s.sockets {
        let c = sock.counters();
        rx += c.rx_packets;
        tx += c.tx_packets;
        let stats = sock
            .statistics()
            .with_context(|| format!("XDP_STATISTICS of queue {}", sock.queue_id()))?;
        per_queue
            .push(json!({"queue_id": sock.queue_id(), "counters": c, "xdp_statistics": stats}));
    }
    let info = &s.info;
    s.out.event(
        json!({
            "event": "done", "command": what, "rx_packets": rx, "tx_packets": tx,
            "seconds": elapsed, "mode": info.mode, "ifname": info.ifname, "queues": per_queue,
        }),
        || {
            let mut t = format!(
                "done: {what} on {} ({} mode): {rx} packets in, {tx} packets out in {elapsed:.1} s",
                info.ifname,
                info.mode_text()
            );
            for q in &per_queue {
                t.push_str(&format!(
                    "\n  queue {}: {} in, {} out",
                    q["queue_id"], q["counters"]["rx_packets"], q["counters"]["tx_packets"]
                ));
            }
            t
        },
    );
    Ok(())
}

/// Replace every known `{name}` placeholder in `arg`; other braces are left
/// alone (QEMU's JSON-style arguments contain them).
fn substitute(arg: &std::ffi::OsStr, vars: &[(&str, String)]) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out: Vec<u8> = Vec::with_capacity(arg.len());
    let bytes = arg.as_bytes();
    let mut i = 0;
    'outer: while i < bytes.len() {
        if bytes[i] == b'{' {
            for (name, value) in vars {
                let pat = format!("{{{name}}}");
                if bytes[i..].starts_with(pat.as_bytes()) {
                    out.extend_from_slice(value.as_bytes());
                    i += pat.len();
                    continue 'outer;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::ffi::OsString::from_vec(out)
}

/// Exit status of `xsk-client exec` when the launcher itself fails and
/// PROGRAM is not started (as `env`, `chroot` and container runtimes do).
const EXEC_LAUNCHER_FAILED: i32 = 125;

/// Lease sockets and exec the program; returns only on failure, with the
/// exit status to use.
fn run_exec(a: ExecArgs) -> (i32, anyhow::Error) {
    use std::os::unix::process::CommandExt;
    let l = &a.lease;
    let program = a.command[0].clone();
    let shown = program.to_string_lossy().into_owned();
    let not_started = |e: anyhow::Error| {
        (
            EXEC_LAUNCHER_FAILED,
            e.context(format!("{shown} was not started")),
        )
    };
    // A placeholder of the other flow would reach PROGRAM unreplaced: refuse.
    let foreign = if a.map { "{sock-fds}" } else { "{map-path}" };
    if a.command[1..]
        .iter()
        .any(|x| x.to_string_lossy().contains(foreign))
    {
        return not_started(anyhow::anyhow!(
            "{foreign} is only available {} --map",
            if a.map { "without" } else { "with" }
        ));
    }
    let broker = match BrokerClient::connect(&l.socket)
        .with_context(|| format!("connecting to the broker at {}", l.socket.display()))
    {
        Ok(b) => b,
        Err(e) => return not_started(e),
    };
    let asked = || {
        format!(
            "leasing {} queue(s) of {} from queue {}",
            l.queues, l.ifname, l.start_queue
        )
    };
    // Either flow yields: the placeholders' values, the fds to inherit (the
    // lease fd last), and what to report. The lease objects stay alive (and
    // their fds open) until exec.
    let socket_lease: Lease;
    let map_lease: MapLease;
    let mut sockets = Vec::new();
    let (lease_fd, ifindex, extra, report) = if a.map {
        let req = l.request();
        let lease = match broker
            .open_map(OpenMapRequest {
                ifname: req.ifname,
                queues: req.queues,
                start_queue: req.start_queue,
                mode: req.mode,
                pin: true,
            })
            .with_context(|| format!("{} with its XSKMAP pinned", asked()))
        {
            Ok(l) => l,
            Err(e) => return not_started(e),
        };
        let info = lease.info().clone();
        let path = info.pin_path.clone().unwrap_or_default();
        let report = json!({
            "map_path": path, "map_start_index": info.start_queue, "mode": info.mode,
            "program_id": info.program_id,
        });
        map_lease = lease;
        (
            map_lease.control_fd(),
            info.ifindex,
            vec![
                ("map-path", path),
                ("map-start-index", info.start_queue.to_string()),
            ],
            report,
        )
    } else {
        let mut lease = match broker.open(l.request()).with_context(asked) {
            Ok(l) => l,
            Err(e) => return not_started(e),
        };
        let info = lease.info().clone();
        sockets = lease.take_sockets();
        let sock_fds = sockets
            .iter()
            .map(|s| s.fd.as_raw_fd().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let report = json!({
            "sock_fds": sock_fds, "mode": info.mode, "program_id": info.program_id,
        });
        socket_lease = lease;
        (
            socket_lease.control_fd(),
            info.ifindex,
            vec![("sock-fds", sock_fds)],
            report,
        )
    };
    let lease_fd_num = lease_fd.as_raw_fd();
    let mut vars = vec![
        ("queues", l.queues.to_string()),
        ("start-queue", l.start_queue.to_string()),
        ("ifindex", ifindex.to_string()),
        ("lease-fd", lease_fd_num.to_string()),
    ];
    vars.extend(extra.iter().cloned());
    let args: Vec<std::ffi::OsString> = a.command[1..]
        .iter()
        .map(|x| substitute(x, &vars))
        .collect();
    let mut keep: Vec<std::os::fd::BorrowedFd<'_>> = sockets.iter().map(|s| s.fd.as_fd()).collect();
    keep.push(lease_fd);
    if let Err(e) = xsk_client::inherit_only(&keep) {
        return not_started(
            anyhow::Error::new(e).context("setting close-on-exec flags before exec"),
        );
    }
    drop(keep);
    if a.json {
        let mut line = json!({
            "event": "exec", "program": shown,
            "args": args.iter().map(|x| x.to_string_lossy()).collect::<Vec<_>>(),
            "lease_fd": lease_fd_num, "ifname": l.ifname, "ifindex": ifindex,
            "queues": (l.start_queue..l.start_queue.saturating_add(l.queues)).collect::<Vec<_>>(),
            "pid": std::process::id(),
        });
        if let (Some(o), Some(r)) = (line.as_object_mut(), report.as_object()) {
            o.extend(r.clone());
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args)
        .env("XSK_BROKER_LEASE_FD", lease_fd_num.to_string());
    for (k, v) in &extra {
        let var = match *k {
            "sock-fds" => "XSK_BROKER_SOCK_FDS",
            "map-path" => "XSK_BROKER_MAP_PATH",
            _ => continue,
        };
        cmd.env(var, v);
    }
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    // Returning drops the lease (and sockets or pin): the broker takes them back.
    (
        code,
        anyhow::Error::new(err).context(format!("cannot execute {shown}")),
    )
}

fn main() {
    let cmd = match Cli::parse().cmd {
        Cmd::Run(cmd) => cmd,
        Cmd::Exec(a) => {
            let (code, e) = run_exec(a);
            eprintln!(
                "xsk-client exec: {}",
                xsk_broker_protocol::error_chain(e.as_ref())
            );
            std::process::exit(code);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            eprintln!("xsk-client: cannot handle signal {sig}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run(cmd, &stop) {
        eprintln!(
            "xsk-client: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}

fn run(cmd: RunCmd, stop: &AtomicBool) -> Result<()> {
    match cmd {
        RunCmd::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .manual("xsk-broker")
                .render(&mut page)
                .context("rendering the man page")?;
            std::io::stdout()
                .write_all(&page)
                .context("writing the man page")
        }
        RunCmd::Rx {
            common,
            print_frames,
        } => {
            let mut s = start(&common)?;
            let limits = Limits::new(&common);
            let json = common.json;
            let batch = common.config().batch_size as usize;
            let mut left = common.count.unwrap_or(u64::MAX);
            run_loop(&mut s, &limits, stop, |_, sock| {
                let q = sock.queue_id();
                let max = batch
                    .min(usize::try_from(left).unwrap_or(usize::MAX))
                    .max(1);
                let n = sock.receive(max, |frame| {
                    if print_frames {
                        let line = if json {
                            json!({"event": "frame", "queue_id": q, "len": frame.len(), "hex": hex(frame)})
                                .to_string()
                        } else {
                            format!("queue {q} len {}: {}", frame.len(), hex(frame))
                        };
                        println!("{line}");
                    }
                });
                left = left.saturating_sub(n as u64);
                Ok(n)
            })?;
            finish(&mut s, "rx")
        }
        RunCmd::Echo { common } => {
            let mut s = start(&common)?;
            let limits = Limits::new(&common);
            let batch = common.config().batch_size as usize;
            run_loop(&mut s, &limits, stop, |_, sock| {
                let (n, _) = sock.forward(batch, |f| {
                    reflect(f);
                    true
                })?;
                Ok(n)
            })?;
            drain_tx(&mut s.sockets)?;
            finish(&mut s, "echo")
        }
        RunCmd::Tx { common, on_queue } => {
            let mut frames = Vec::new();
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.context("reading frames from standard input")?;
                if line.trim().is_empty() {
                    continue;
                }
                frames.push(parse_hex(&line).with_context(|| format!("frame on line {}", i + 1))?);
            }
            let mut s = start(&common)?;
            if let Some(q) = on_queue {
                if q >= s.sockets.len() {
                    bail!("--on-queue {q}: the lease has {} queue(s)", s.sockets.len());
                }
            }
            let n = s.sockets.len();
            let deadline = Instant::now() + Duration::from_secs(10);
            for (i, frame) in frames.iter().enumerate() {
                let idx = on_queue.unwrap_or(i % n);
                loop {
                    if s.sockets[idx].transmit(&[frame])? == 1 {
                        break;
                    }
                    if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                        bail!("queue {} stopped taking frames", s.sockets[idx].queue_id());
                    }
                    s.sockets[idx].complete_tx();
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            drain_tx(&mut s.sockets)?;
            finish(&mut s, "tx")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_swaps_and_keeps_short_frames() {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&[1; 6]);
        f[6..12].copy_from_slice(&[2; 6]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&[0x10, 0x00]);
        f[36..38].copy_from_slice(&[0x20, 0x00]);
        reflect(&mut f);
        assert_eq!(&f[0..6], &[2; 6]);
        assert_eq!(&f[26..30], &[10, 0, 0, 2]);
        assert_eq!(&f[34..38], &[0x20, 0x00, 0x10, 0x00]);
        let mut short = vec![1u8; 5];
        reflect(&mut short);
        assert_eq!(short, vec![1u8; 5]);
        assert_eq!(parse_hex("0aff").unwrap(), vec![10, 255]);
        assert!(parse_hex("abc").is_err());
    }

    #[test]
    fn placeholders_are_replaced_and_other_braces_kept() {
        let vars = [("sock-fds", "5:6".to_owned()), ("queues", "2".to_owned())];
        let got = substitute(
            std::ffi::OsStr::new("af-xdp,queues={queues},sock-fds={sock-fds},x={other}"),
            &vars,
        );
        assert_eq!(got, "af-xdp,queues=2,sock-fds=5:6,x={other}");
        let got = substitute(std::ffi::OsStr::new(r#"{"type":"af-xdp"}{queues"#), &vars);
        assert_eq!(got, r#"{"type":"af-xdp"}{queues"#);
    }
}
