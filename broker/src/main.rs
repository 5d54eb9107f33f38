//! `xsk-brokerd`: hands AF_XDP sockets to processes without capabilities.
//!
//! It attaches libxdp's default XSK program to an interface, creates one
//! AF_XDP socket per requested queue, inserts each unbound socket into the
//! XSKMAP and passes the fds over a Unix socket. A lease is one connection;
//! when it closes the broker removes the map entries, closes its copies and
//! detaches the program once no lease uses the interface.

mod activation;
mod metrics;
mod privs;
mod server;
mod state;
mod xdp;

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tracing::info;

/// Privileged broker handing AF_XDP sockets to unprivileged processes.
#[derive(Parser, Debug)]
#[command(name = "xsk-brokerd", version, about, long_about = None)]
struct Args {
    /// Path of the Unix control socket to listen on. A stale socket file left
    /// by a dead broker is replaced; a live one is an error. Not needed when
    /// systemd passes the socket (socket activation: LISTEN_FDS/LISTEN_PID,
    /// the xsk-broker.socket unit); if given then, it must be the passed
    /// socket's path.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Permission bits of the control socket, in octal [default: 0600].
    /// Whoever can connect can lease sockets and read the status, so keep it
    /// tight. Under socket activation set SocketMode= in the .socket unit
    /// instead.
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    socket_mode: Option<u32>,

    /// Log filter: error, warn, info, debug, trace, or tracing directives
    /// such as `info,xsk_brokerd::server=debug`. When not given, the
    /// XSK_BROKER_LOG environment variable is used, else `info`.
    #[arg(long, value_name = "FILTER", value_parser = parse_filter)]
    log_level: Option<String>,

    /// Log format on standard error: `human` (one readable line per event)
    /// or `json` (one JSON object per line, for log collectors; grants,
    /// refusals and releases carry `event`, `pid`, `uid`, `gid`, `ifname`
    /// and `queues` fields).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Directory on a bpffs where XSKMAPs are pinned for clients that ask
    /// for a pin (`open_map` with `pin: true`, QEMU's `map-path=`). Created
    /// (mode 0711) if missing; its parent must be on a bpf filesystem. Each
    /// pin is owned by the requesting uid with mode 0600 and removed when
    /// the lease ends. Needs CAP_CHOWN, which the broker then keeps.
    #[arg(long, value_name = "DIR")]
    bpffs_dir: Option<PathBuf>,

    /// Serve Prometheus text metrics (`GET /metrics` over HTTP) on this Unix
    /// socket: leases, grants, releases, refusals by error code and each
    /// leased socket's XDP_STATISTICS. A stale socket file is replaced.
    #[arg(long, value_name = "PATH")]
    metrics_socket: Option<PathBuf>,

    /// Permission bits of the metrics socket, in octal [default: 0600].
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode, requires = "metrics_socket")]
    metrics_socket_mode: Option<u32>,

    /// Serve the same metrics on this loopback TCP address, e.g.
    /// 127.0.0.1:9465 (port 0 picks a free port, logged at start). Only
    /// loopback addresses are accepted. The packaged service restricts
    /// address families to AF_UNIX AF_NETLINK AF_XDP: add AF_INET/AF_INET6
    /// to use this there.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_loopback)]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_loopback(s: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an ADDR:PORT such as 127.0.0.1:9465"))?;
    metrics::check_loopback(addr)?;
    Ok(addr)
}

/// Check that `dir` is (or can be made) a directory on a bpffs, and make it
/// mode 0711: clients may open pins by name but not list them.
fn prepare_bpffs_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let probe = if dir.exists() {
        dir
    } else {
        parent.unwrap_or(Path::new("."))
    };
    let on_bpffs = xdp::is_bpffs(probe)
        .with_context(|| format!("--bpffs-dir: inspecting {}", probe.display()))?;
    if !on_bpffs {
        bail!(
            "--bpffs-dir {}: {} is not on a bpf filesystem; mount one first \
             (`mount -t bpf bpf /sys/fs/bpf`) or choose a directory under one",
            dir.display(),
            probe.display()
        );
    }
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(dir)
            .with_context(|| format!("--bpffs-dir: creating {}", dir.display()))?;
    } else if !dir.is_dir() {
        bail!(
            "--bpffs-dir {} exists and is not a directory",
            dir.display()
        );
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("--bpffs-dir: chmod 0711 {}", dir.display()))?;
    Ok(())
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Readable lines (colored when standard error is a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

fn parse_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter ({e}); use e.g. info or debug"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode such as 0660"))?;
    if m > 0o777 {
        return Err(format!("{s:?} has bits beyond 0777"));
    }
    Ok(m)
}

fn init_logging(level: Option<&str>, format: LogFormat) -> Result<()> {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::try_new(l)
            .map_err(|e| anyhow::anyhow!("--log-level {l:?} is not a log filter ({e})"))?,
        None => match std::env::var("XSK_BROKER_LOG") {
            Ok(env) if !env.is_empty() => {
                tracing_subscriber::EnvFilter::try_new(&env).map_err(|e| {
                    anyhow::anyhow!(
                        "XSK_BROKER_LOG={env:?} is not a log filter ({e}); use e.g. info or debug"
                    )
                })?
            }
            _ => tracing_subscriber::EnvFilter::new("info"),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

/// Bind the control socket, replacing a stale socket file but never a live
/// broker's or a file that is not a socket.
fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!("another broker is already listening on {}", path.display()),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("probing {}", path.display()));
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

/// Where the control socket comes from.
struct Control {
    listener: UnixListener,
    /// Its path, for logs.
    shown: String,
    /// The socket file to remove at exit: the one the broker bound, never
    /// one the service manager owns.
    remove_at_exit: Option<PathBuf>,
}

/// Use the socket passed by socket activation, or bind `--socket`.
fn control_socket(args: &Args, activation: activation::Activation) -> Result<Control> {
    use activation::Activation;
    match activation {
        Activation::Socket {
            listener,
            path,
            name,
        } => {
            if args.socket_mode.is_some() {
                bail!(
                    "--socket-mode does not apply to a socket passed by socket activation; set SocketMode= (and SocketGroup=) in the .socket unit instead"
                );
            }
            if let Some(want) = &args.socket {
                if path.as_deref() != Some(want.as_path()) {
                    bail!(
                        "--socket {} was given, but the socket passed by socket activation is bound to {}; drop --socket or make the .socket unit's ListenStream= match",
                        want.display(),
                        path.as_deref()
                            .map_or("no path".to_owned(), |p| p.display().to_string())
                    );
                }
            }
            let shown = path
                .as_deref()
                .map_or("an unnamed socket".to_owned(), |p| p.display().to_string());
            info!(
                socket = %shown, fd_name = name.as_deref().unwrap_or(""),
                "using the listening socket passed by socket activation (fd 3)"
            );
            Ok(Control {
                listener,
                shown,
                remove_at_exit: None,
            })
        }
        other => {
            let Some(path) = &args.socket else {
                let why = match other {
                    Activation::ForOtherProcess { listen_pid } => format!(
                        " (LISTEN_FDS was set for pid {listen_pid}, not this process, pid {}, so it was ignored)",
                        std::process::id()
                    ),
                    _ => String::new(),
                };
                bail!(
                    "no control socket: pass --socket PATH, or start xsk-brokerd through systemd socket activation (xsk-broker.socket){why}"
                );
            };
            if let Activation::ForOtherProcess { listen_pid } = other {
                tracing::warn!(
                    "ignoring LISTEN_FDS: LISTEN_PID={listen_pid} names another process"
                );
            }
            let mode = args.socket_mode.unwrap_or(0o600);
            let listener = bind_socket(path, mode)?;
            Ok(Control {
                listener,
                shown: format!("{} (mode {mode:o})", path.display()),
                remove_at_exit: Some(path.clone()),
            })
        }
    }
}

/// Removes the files it names when dropped (start-up failed part way).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn run(args: Args, activation: activation::Activation) -> Result<()> {
    xdp::route_library_logs();
    // Block the stop signals in every thread; one thread waits for them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM/SIGINT")?;

    // Without a socket there is nothing to do: say so before anything else.
    if args.socket.is_none() && !matches!(activation, activation::Activation::Socket { .. }) {
        return control_socket(&args, activation).map(|_| ());
    }
    let permitted = privs::check()?;
    if let Some(dir) = &args.bpffs_dir {
        if !permitted.contains(&caps::Capability::CAP_CHOWN) {
            bail!(
                "--bpffs-dir needs CAP_CHOWN (to give each map pin to the uid that asked for \
                 it); grant it or run without --bpffs-dir"
            );
        }
        prepare_bpffs_dir(dir)?;
    }
    let control = control_socket(&args, activation)?;
    // Socket files this broker created: removed if start-up fails, and at exit.
    let mut created = RemoveOnDrop(control.remove_at_exit.iter().cloned().collect());
    let mut metrics_endpoints = Vec::new();
    if let Some(path) = &args.metrics_socket {
        let mode = args.metrics_socket_mode.unwrap_or(0o600);
        let l = bind_socket(path, mode).context("--metrics-socket")?;
        created.0.push(path.clone());
        info!(socket = %path.display(), mode = format!("{mode:o}"), "serving metrics");
        metrics_endpoints.push(metrics::Endpoint::Unix(l));
    }
    if let Some(addr) = args.metrics_listen {
        let l = std::net::TcpListener::bind(addr).with_context(|| {
            format!(
                "--metrics-listen {addr}: cannot listen (under systemd, RestrictAddressFamilies= \
                 must allow AF_INET/AF_INET6 for this)"
            )
        })?;
        let local = l.local_addr().context("--metrics-listen: local address")?;
        info!(metrics_listen = %local, "serving metrics on http://{local}/metrics");
        metrics_endpoints.push(metrics::Endpoint::Tcp(l));
    }
    let kept = privs::drop_unneeded(&permitted, args.bpffs_dir.is_some())?;
    let mut kept: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    kept.sort();
    info!(
        socket = %control.shown, capabilities = %kept.join(","),
        "xsk-brokerd {} listening", env!("CARGO_PKG_VERSION")
    );

    let broker = Arc::new(state::Broker::with_bpffs_dir(args.bpffs_dir.clone()));
    let started = std::time::Instant::now();
    for endpoint in metrics_endpoints {
        metrics::spawn(endpoint, Arc::clone(&broker), started)
            .context("starting the metrics thread")?;
    }
    let socket_files = std::mem::take(&mut created.0);
    let waiter_broker = Arc::clone(&broker);
    std::thread::Builder::new()
        .name("xsk-signals".into())
        .spawn(move || {
            let sig = match stop.wait() {
                Ok(s) => s.as_str(),
                Err(_) => "a stop signal",
            };
            let (ifaces, queues) = waiter_broker.summary();
            info!(
                "stopping on {sig}: {queues} queue(s) on {ifaces} interface(s) still leased; \
                 their sockets stay with their holders"
            );
            for p in &socket_files {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        })
        .context("starting the signal thread")?;

    server::serve(control.listener, broker).context("serving the control socket")
}

fn main() {
    let args = Args::parse();
    // First, while the process has one thread and has opened nothing.
    let activation = match activation::take_listener() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xsk-brokerd: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = init_logging(args.log_level.as_deref(), args.log_format) {
        eprintln!("xsk-brokerd: {e:#}");
        std::process::exit(1);
    }
    if let Err(e) = run(args, activation) {
        eprintln!("xsk-brokerd: {e:#}");
        std::process::exit(1);
    }
}
