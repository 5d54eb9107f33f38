//! `xsk-brokerd`: hands AF_XDP sockets to processes without capabilities.
//!
//! It attaches libxdp's default XSK program to an interface, creates one
//! AF_XDP socket per requested queue, inserts each unbound socket into the
//! XSKMAP and passes the fds over a Unix socket. A lease is one connection;
//! when it closes the broker removes the map entries, closes its copies and
//! detaches the program once no lease uses the interface.

mod activation;
mod cli;
mod confine;
mod limits;
mod metrics;
mod peercred;
mod persist;
mod policy;
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
use cli::{Args, LogFormat};
use nix::sys::signal::{SigSet, Signal};
use tracing::info;

/// Check that `dir` is (or can be made) a directory on a bpffs, and make it
/// mode 0711: clients may open pins by name but not list them.
fn prepare_bpffs_dir(dir: &Path) -> Result<()> {
    prepare_dir_on_bpffs(dir, "--bpffs-dir", 0o711)
}

/// Check that `dir` is (or can be made) a directory on a bpffs, with `mode`.
fn prepare_dir_on_bpffs(dir: &Path, option: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let probe = if dir.exists() {
        dir
    } else {
        parent.unwrap_or(Path::new("."))
    };
    let on_bpffs = xdp::is_bpffs(probe)
        .with_context(|| format!("{option}: inspecting {}", probe.display()))?;
    if !on_bpffs {
        bail!(
            "{option} {}: {} is not on a bpf filesystem; mount one first \
             (`mount -t bpf bpf /sys/fs/bpf`) or choose a directory under one",
            dir.display(),
            probe.display()
        );
    }
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(dir)
            .with_context(|| format!("{option}: creating {}", dir.display()))?;
    } else if !dir.is_dir() {
        bail!("{option} {} exists and is not a directory", dir.display());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("{option}: chmod {mode:o} {}", dir.display()))?;
    Ok(())
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
            if args.socket_owner.is_some() || args.socket_group.is_some() {
                bail!(
                    "--socket-owner/--socket-group do not apply to a socket passed by socket activation; set SocketUser= and SocketGroup= in the .socket unit instead"
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
            let owner = chown_socket(path, args)?;
            Ok(Control {
                listener,
                shown: format!("{} (mode {mode:o}{owner})", path.display()),
                remove_at_exit: Some(path.clone()),
            })
        }
    }
}

/// Give the control socket the owner and group asked for; returns a note for
/// the start-up log.
fn chown_socket(path: &Path, args: &Args) -> Result<String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let uid = match &args.socket_owner {
        None => None,
        Some(u) => Some(match u.parse::<u32>() {
            Ok(n) => Uid::from_raw(n),
            Err(_) => {
                User::from_name(u)
                    .ok()
                    .flatten()
                    .with_context(|| format!("--socket-owner {u:?}: no such user"))?
                    .uid
            }
        }),
    };
    let gid = match &args.socket_group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .ok()
                    .flatten()
                    .with_context(|| format!("--socket-group {g:?}: no such group"))?
                    .gid
            }
        }),
    };
    if uid.is_none() && gid.is_none() {
        return Ok(String::new());
    }
    if let Err(e) = nix::unistd::chown(path, uid, gid) {
        let _ = std::fs::remove_file(path);
        return Err(e)
            .with_context(|| format!("giving {} to the owner/group asked for", path.display()));
    }
    Ok(format!(
        ", owner {}, group {}",
        uid.map_or("unchanged".to_owned(), |u| u.to_string()),
        gid.map_or("unchanged".to_owned(), |g| g.to_string())
    ))
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
    let policy = match &args.policy {
        Some(path) => policy::Policy::load(path)?,
        None => policy::Policy::root_only(),
    };
    if let Some(dir) = &args.bpffs_dir {
        if !permitted.contains(&caps::Capability::CAP_CHOWN) {
            bail!(
                "--bpffs-dir needs CAP_CHOWN (to give each map pin to the uid that asked for \
                 it); grant it or run without --bpffs-dir"
            );
        }
        prepare_bpffs_dir(dir)?;
    }
    let persist = match (&args.state_dir, &args.pin_dir) {
        (Some(state), Some(pins)) => {
            prepare_dir_on_bpffs(pins, "--pin-dir", 0o700)?;
            let state = persist::StateDir::open(state).context("--state-dir")?;
            Some(state::Persist {
                state,
                pins: pins.clone(),
            })
        }
        _ => None,
    };
    // Before the control socket exists: no client meets a broker that has
    // not decided its confinement, and a refusal leaves no socket behind.
    let confinement = Arc::new(confine::Confinement::setup(args.pin_dir.as_deref()));
    match confinement.level() {
        xsk_broker_protocol::ConfinementLevel::Kernel => info!(
            confinement = %confinement.level(),
            "confinement: kernel (interface, queue and copy mode of every leased socket): {}",
            confinement.reason()
        ),
        level => {
            if args.confinement == cli::ConfinementArg::Kernel {
                bail!(
                    "--confinement kernel: full confinement is not proven, refusing to start: {}",
                    confinement.reason()
                );
            }
            tracing::warn!(
                confinement = %level,
                "confinement: interface only (SO_BINDTOIFINDEX; the holder still chooses queue \
                 and zero-copy): {}",
                confinement.reason()
            );
        }
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
        socket = %control.shown, capabilities = %kept.join(","), policy = %policy.describe(),
        confinement = %confinement.level(),
        "xsk-brokerd {} listening", env!("CARGO_PKG_VERSION")
    );

    let limits = limits_from(&args)?;
    let broker = Arc::new(
        state::Broker::new(args.bpffs_dir.clone(), persist)
            .with_limits(limits)
            .with_confinement(Arc::clone(&confinement)),
    );
    if args.state_dir.is_some() {
        let (kept, released) = broker
            .restore()
            .context("restoring the state of an earlier run (--state-dir)")?;
        info!(
            kept,
            released,
            "restored the state of an earlier run: {kept} lease(s) kept, {released} released"
        );
    }
    spawn_interface_watcher(Arc::clone(&broker)).context("starting the interface watcher")?;
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

    server::serve(control.listener, broker, Arc::new(policy)).context("serving the control socket")
}

/// The limits from the command line, checked, with the open-file limit
/// raised to fit them.
fn limits_from(args: &Args) -> Result<limits::Limits> {
    let limits = limits::Limits {
        max_connections: args.max_connections,
        max_connections_per_uid: args.max_connections_per_uid,
        max_leases_per_uid: args.max_leases_per_uid,
        max_queues_per_lease: args.max_queues_per_lease,
        idle_timeout: std::time::Duration::from_secs_f64(args.idle_timeout),
    };
    limits.check().map_err(anyhow::Error::msg)?;
    // One fd per connection, plus each lease's sockets and the broker's own.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    }
    let want = (limits.max_connections as u64).saturating_mul(2) + 64;
    if hard < want {
        tracing::warn!(
            "the open-file limit ({hard}) may not fit --max-connections {} (each connection is              an fd, each leased queue another); raise LimitNOFILE= or lower --max-connections",
            limits.max_connections
        );
    }
    info!(
        max_connections = limits.max_connections,
        max_connections_per_uid = limits.max_connections_per_uid,
        max_leases_per_uid = limits.max_leases_per_uid,
        max_queues_per_lease = limits.max_queues_per_lease,
        idle_timeout_s = limits.idle_timeout.as_secs_f64(),
        nofile = hard,
        "limits"
    );
    Ok(limits)
}

/// Once a second, end the leases of interfaces that have disappeared.
fn spawn_interface_watcher(broker: Arc<state::Broker>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("xsk-ifwatch".into())
        .stack_size(256 * 1024)
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            broker.reap_vanished_interfaces();
        })
        .map(drop)
}

fn main() {
    let args = Args::parse();
    // First, while the process has one thread and has opened nothing.
    let activation = match activation::take_listener() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "xsk-brokerd: {}",
                xsk_broker_protocol::error_chain(e.as_ref())
            );
            std::process::exit(1);
        }
    };
    if let Err(e) = init_logging(args.log_level.as_deref(), args.log_format) {
        eprintln!(
            "xsk-brokerd: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
    if let Err(e) = run(args, activation) {
        eprintln!(
            "xsk-brokerd: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}
