//! `xsk-brokerd`: hands AF_XDP sockets to processes without capabilities.
//!
//! It attaches libxdp's default XSK program to an interface, creates one
//! AF_XDP socket per requested queue, inserts each unbound socket into the
//! XSKMAP and passes the fds over a Unix socket. A lease is one connection;
//! when it closes the broker removes the map entries, closes its copies and
//! detaches the program once no lease uses the interface.

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
    /// by a dead broker is replaced; a live one is an error.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// Permission bits of the control socket, in octal. Whoever can connect
    /// can lease sockets, so keep it tight.
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_mode)]
    socket_mode: u32,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    /// The XSK_BROKER_LOG environment variable is used when this is not given.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode such as 0660"))?;
    if m > 0o777 {
        return Err(format!("{s:?} has bits beyond 0777"));
    }
    Ok(m)
}

fn init_logging(level: Option<&str>) {
    let filter = level
        .map(str::to_owned)
        .or_else(|| std::env::var("XSK_BROKER_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

fn run(args: Args) -> Result<()> {
    xdp::route_library_logs();
    // Block the stop signals in every thread; one thread waits for them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM/SIGINT")?;

    let permitted = privs::check()?;
    let listener = bind_socket(&args.socket, args.socket_mode)?;
    let kept = match privs::drop_unneeded(&permitted) {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(&args.socket);
            return Err(e);
        }
    };
    let mut kept: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    kept.sort();
    info!(
        socket = %args.socket.display(), mode = format!("{:o}", args.socket_mode),
        capabilities = %kept.join(","), "xsk-brokerd {} listening", env!("CARGO_PKG_VERSION")
    );

    let broker = Arc::new(state::Broker::default());
    let socket_path = args.socket.clone();
    let waiter_broker = Arc::clone(&broker);
    std::thread::Builder::new()
        .name("xsk-signals".into())
        .spawn(move || {
            let sig = stop.wait();
            let (ifaces, queues) = waiter_broker.summary();
            info!(
                "stopping on {sig:?}: {queues} queue(s) on {ifaces} interface(s) still leased; \
                 their sockets stay with their holders"
            );
            let _ = std::fs::remove_file(&socket_path);
            std::process::exit(0);
        })
        .context("starting the signal thread")?;

    server::serve(listener, broker).context("serving the control socket")
}

fn main() {
    let args = Args::parse();
    init_logging(args.log_level.as_deref());
    if let Err(e) = run(args) {
        eprintln!("xsk-brokerd: {e:#}");
        std::process::exit(1);
    }
}
