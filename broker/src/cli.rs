//! xsk-brokerd's command line, shared with the man page generator
//! (`xsk-broker-mangen`), so the man page is the `--help` text.

use std::path::PathBuf;

use clap::Parser;

/// Privileged broker handing AF_XDP sockets to unprivileged processes.
///
/// xsk-brokerd attaches libxdp's default XSK program to an interface, creates
/// one AF_XDP socket per requested queue, inserts each unbound socket into
/// the XSKMAP and passes the fds to the client over a Unix socket. A lease is
/// one control connection: when it closes, for any reason, the broker removes
/// the map entries and detaches the program once no lease uses the interface.
///
/// It needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF (or CAP_SYS_ADMIN) and
/// drops every other capability at start, except CAP_PERFMON when given
/// (with CAP_BPF it loads the confinement program, see --confinement). The control socket is --socket
/// PATH, or the listening socket systemd passes by socket activation
/// (xsk-broker.socket, /run/xsk-broker/broker.sock). Whoever can connect to
/// it can lease queues and read the status (`xsk-brokerctl status`). Logs go
/// to standard error. SIGTERM or SIGINT stops the broker; leased sockets stay
/// with their holders, and with --state-dir and --pin-dir a broker started
/// again takes their leases over.
///
/// Environment: XSK_BROKER_LOG is the log filter when --log-level is not
/// given; LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES carry a socket-activated
/// socket (they are checked and unset).
#[derive(Parser, Debug)]
#[command(name = "xsk-brokerd", version)]
pub struct Args {
    /// Path of the Unix control socket to listen on. A stale socket file left
    /// by a dead broker is replaced; a live one is an error. Not needed when
    /// systemd passes the socket (socket activation: LISTEN_FDS/LISTEN_PID,
    /// the xsk-broker.socket unit); if given then, it must be the passed
    /// socket's path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Permission bits of the control socket, in octal [default: 0600].
    /// Whoever can connect can lease sockets and read the status, so keep it
    /// tight. Under socket activation set SocketMode= in the .socket unit
    /// instead.
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Owner of the control socket: a user name or uid. Under socket
    /// activation set SocketUser= in the .socket unit instead.
    #[arg(long, value_name = "USER")]
    pub socket_owner: Option<String>,

    /// Group of the control socket: a group name or gid (e.g. a group whose
    /// members may lease, with --socket-mode 0660). Under socket activation
    /// set SocketGroup= in the .socket unit instead.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Policy file (JSON) saying which users and groups may lease which
    /// interfaces (names or globs), how many queues, which XDP modes and copy
    /// settings, and whether they may use the map flow. Without it only root
    /// may lease or read the status. Read once at start.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Log filter: error, warn, info, debug, trace, or tracing directives
    /// such as `info,xsk_brokerd::server=debug`. When not given, the
    /// XSK_BROKER_LOG environment variable is used, else `info`.
    #[arg(long, value_name = "FILTER", value_parser = parse_filter)]
    pub log_level: Option<String>,

    /// Log format on standard error: `human` (one readable line per event)
    /// or `json` (one JSON object per line, for log collectors; grants,
    /// refusals and releases carry `event`, `pid`, `uid`, `gid`, `ifname`
    /// and `queues` fields).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Directory on a bpffs where XSKMAPs are pinned for clients that ask
    /// for a pin (`open_map` with `pin: true`, QEMU's `map-path=`). Created
    /// (mode 0711) if missing; its parent must be on a bpf filesystem. Each
    /// pin is owned by the requesting uid with mode 0600 and removed when
    /// the lease ends. Needs CAP_CHOWN, which the broker then keeps.
    #[arg(long, value_name = "DIR")]
    pub bpffs_dir: Option<PathBuf>,

    /// Directory where the broker keeps its state (`state.json`: every
    /// interface it attached the XSK program to and every lease with its
    /// holder), rewritten atomically after every grant and release, so that
    /// a restarted broker (after SIGTERM or a crash) keeps live traffic
    /// flowing, still refuses leased queues to others, releases the queues
    /// of holders that exited meanwhile and detaches programs no lease uses.
    /// Created (mode 0700) if missing. Needs --pin-dir.
    #[arg(long, value_name = "DIR", requires = "pin_dir")]
    pub state_dir: Option<PathBuf>,

    /// Directory on a bpffs where the broker pins each XSK program it
    /// attaches and its XSKMAP (as IFINDEX-MODE-prog and IFINDEX-MODE-map),
    /// so a restarted broker can reopen them without CAP_SYS_ADMIN. Created
    /// (mode 0700) if missing; its parent must be on a bpf filesystem.
    /// Needs --state-dir.
    #[arg(long, value_name = "DIR", requires = "state_dir")]
    pub pin_dir: Option<PathBuf>,

    /// Serve DPDK's AF_XDP driver on this Unix socket (SOCK_SEQPACKET): a
    /// DPDK application started with `--vdev
    /// net_af_xdp0,iface=IF,use_cni=1,dp_path=PATH` asks here for the
    /// interface's XSKMAP with the AF_XDP device plugin's handshake. The peer
    /// is identified by SO_PEERCRED and needs a policy rule with
    /// `"map_flow": true` for the interface; each connection (DPDK opens one
    /// per queue) reserves the lowest free queue of the interface until the
    /// DPDK process exits. A stale socket file is replaced.
    #[arg(long, value_name = "PATH")]
    pub dpdk_socket: Option<PathBuf>,

    /// Permission bits of the DPDK socket, in octal [default: 0600].
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, requires = "dpdk_socket")]
    pub dpdk_socket_mode: Option<u32>,

    /// Owner of the DPDK socket: a user name or uid.
    #[arg(long, value_name = "USER", requires = "dpdk_socket")]
    pub dpdk_socket_owner: Option<String>,

    /// Group of the DPDK socket: a group name or gid (e.g. the group of the
    /// DPDK applications' users, with --dpdk-socket-mode 0660).
    #[arg(long, value_name = "GROUP", requires = "dpdk_socket")]
    pub dpdk_socket_group: Option<String>,

    /// Serve Prometheus text metrics (`GET /metrics` over HTTP) on this Unix
    /// socket: leases, grants, releases, refusals by error code and each
    /// leased socket's frames received and sent and XDP_STATISTICS. A stale
    /// socket file is replaced.
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,

    /// Permission bits of the metrics socket, in octal [default: 0600].
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, requires = "metrics_socket")]
    pub metrics_socket_mode: Option<u32>,

    /// Serve the same metrics on this loopback TCP address, e.g.
    /// 127.0.0.1:9465 (port 0 picks a free port, logged at start). Only
    /// loopback addresses are accepted. The packaged service restricts
    /// address families to AF_UNIX AF_NETLINK AF_XDP: add AF_INET/AF_INET6
    /// to use this there.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_loopback)]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Most connections open at once, all users together. A connection over
    /// a limit gets a `not_permitted` error naming it and is closed at once.
    /// The broker raises its open-file limit to the hard limit at start; it
    /// needs two fds per connection (its stream, and one more while it holds
    /// a lease) plus 64 of its own. Unset, it is 4096, lowered to what the
    /// open-file limit holds; set, a limit that cannot hold it is an error.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most connections one uid may have open at once; at most
    /// --max-connections, and best well below it, so that no one user can
    /// take every connection and lock the others out. Unset, a quarter of
    /// --max-connections.
    #[arg(long, value_name = "N")]
    pub max_connections_per_uid: Option<usize>,

    /// Most leases one uid may hold at once (`not_permitted` beyond).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_leases_per_uid: usize,

    /// Most queues one lease may hold, 1..=64 (`not_permitted` beyond).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_queues_per_lease: u32,

    /// Most queues one uid may hold at once over all its leases, sockets and
    /// map leases together (`not_permitted` beyond).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_queues_per_uid: usize,

    /// Connections, out of --max-connections, that only root may take: no
    /// mix of other users' connections can lock the administrator out.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub reserved_root_connections: usize,

    /// Peers in this group (primary or supplementary) see every lease in
    /// `status`; others see only their own leases. Root always sees all.
    #[arg(long, value_name = "GROUP")]
    pub status_group: Option<String>,

    /// Seconds a connection without a lease may stay open without sending a
    /// complete request, and that any one message may take from its first
    /// byte to its last; such connections get an error and are closed. A
    /// connection holding a lease is never closed for being idle (it is the
    /// lease).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_seconds)]
    pub idle_timeout: f64,

    /// What the kernel must enforce on every socket handed out. Every socket
    /// is tied to its granted interface (SO_BINDTOIFINDEX: level
    /// `interface`). Where the kernel runs BPF LSM programs, a program on
    /// socket_bind also holds it to its queue and copy mode (level `kernel`;
    /// needs CAP_BPF and CAP_PERFMON, proven at start by a canary bind).
    /// `auto` runs at the best level proven; `kernel` refuses to start
    /// unless level `kernel` is proven. With --pin-dir the program is pinned
    /// there and reused by a restarted broker. See docs/CONFINEMENT.md.
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = ConfinementArg::Auto)]
    pub confinement: ConfinementArg,
}

/// `--confinement`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfinementArg {
    /// The best level this kernel proves (`kernel`, else `interface`).
    Auto,
    /// Level `kernel` or refuse to start.
    Kernel,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 (exclusive) and 86400"
        )),
    }
}

fn parse_loopback(s: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an ADDR:PORT such as 127.0.0.1:9465"))?;
    check_loopback(addr)?;
    Ok(addr)
}

/// Check that `addr` is a loopback address: metrics are for the local host.
pub fn check_loopback(addr: std::net::SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address; metrics are served on 127.0.0.1 or [::1] only \
             (use a local proxy or the Unix socket to export them further)"
        ))
    }
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines (control characters from peers escaped, no colours).
    Human,
    /// One JSON object per line.
    Json,
}

/// Check a log filter (`--log-level`) as tracing-subscriber reads it.
pub fn parse_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter ({e}); use e.g. info or debug"))
}

/// Parse an octal permission mode such as 0660 (at most 0777).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode such as 0660"))?;
    if m > 0o777 {
        return Err(format!("{s:?} has bits beyond 0777"));
    }
    Ok(m)
}
