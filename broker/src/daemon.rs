//! Start-up of `xsk-brokerd`: logging, privileges, the control socket, the
//! policy and limits, restoring an earlier run's state, then serving.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use crate::cli::{self, Args, LogFormat};
use crate::confine;
use crate::control::{bind_socket, control_socket, RemoveOnDrop};
use crate::kernel::RealKernel;
use crate::{
    activation, budget::limits_from, dpdk, logsafe, metrics, persist, policy, privs, probe, server,
    state, xdp,
};
use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};

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
    // A read-only bpffs is what a sandbox (systemd's ProtectSystem=strict)
    // shows where the directory is not made writable.
    let read_only = |e: &std::io::Error| {
        if e.raw_os_error() == Some(libc::EROFS) {
            " (read-only here: under systemd the directory must exist before the service \
             starts and be listed in ReadWritePaths=; the package's tmpfiles.d entry creates \
             /sys/fs/bpf/xsk-broker at boot, `systemd-tmpfiles --create xsk-broker.conf` now)"
                .to_owned()
        } else {
            String::new()
        }
    };
    if !dir.exists() {
        if let Err(e) = std::fs::DirBuilder::new().mode(mode).create(dir) {
            let hint = read_only(&e);
            return Err(e).with_context(|| format!("{option}: creating {}{hint}", dir.display()));
        }
    } else if !dir.is_dir() {
        bail!("{option} {} exists and is not a directory", dir.display());
    }
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)) {
        let hint = read_only(&e);
        return Err(e).with_context(|| format!("{option}: chmod {mode:o} {}{hint}", dir.display()));
    }
    Ok(())
}

/// Send log events to standard error, escaped ([`logsafe`]), in `format`,
/// at `level` (else `XSK_BROKER_LOG`, else info).
pub fn init_logging(level: Option<&str>, format: LogFormat) -> Result<()> {
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
        .with_writer(logsafe::stderr);
    match format {
        // No colours: the writer escapes every control character, ESC included.
        LogFormat::Human => builder.with_ansi(false).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

/// Run the broker: check privileges, take or bind the control socket, load
/// the policy and limits, restore an earlier run's state, serve until a
/// signal stops it.
pub fn run(args: Args, activation: activation::Activation) -> Result<()> {
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
    // Its spare fd is opened now, before any socket is ready: the fd table
    // a client (or a leak check) sees stays as it is.
    let accept_failures = server::AcceptFailures::new();
    let policy = match &args.policy {
        Some(path) => policy::Policy::load(path)?,
        None => policy::Policy::root_only(),
    };
    let policy = match &args.status_group {
        Some(g) => policy.with_status_group(g)?,
        None => policy,
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
            warn!(
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
    let dpdk_listener = match &args.dpdk_socket {
        Some(path) => {
            let mode = args.dpdk_socket_mode.unwrap_or(0o600);
            let l = dpdk::bind_dpdk_socket(
                path,
                mode,
                args.dpdk_socket_owner.as_deref(),
                args.dpdk_socket_group.as_deref(),
            )?;
            created.0.push(path.clone());
            info!(socket = %path.display(), mode = format!("{mode:o}"), "serving DPDK (use_cni)");
            Some(l)
        }
        None => None,
    };
    let kept = privs::drop_unneeded(&permitted, args.bpffs_dir.is_some())?;
    let mut kept: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    kept.sort();
    info!(
        socket = %control.shown, capabilities = %kept.join(","), policy = %policy.describe(),
        confinement = %confinement.level(),
        "xsk-brokerd {} listening", env!("CARGO_PKG_VERSION")
    );

    let limits = limits_from(&args)?;
    let kernel = RealKernel::default().with_confinement(Arc::clone(&confinement));
    let kernel = match probe::QueueProbe::open() {
        Ok(p) => kernel.with_queue_probe(p),
        Err(e) => {
            warn!(
                "cannot check queues for AF_XDP sockets left bound by earlier holders: {e}; a \
                 queue whose previous holder keeps its bound socket will be granted and the new \
                 holder's bind will fail with EBUSY"
            );
            kernel
        }
    };
    let broker =
        Arc::new(state::Broker::new(kernel, args.bpffs_dir.clone(), persist).with_limits(limits));
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
    for endpoint in metrics_endpoints {
        metrics::spawn(
            endpoint,
            Arc::clone(&broker) as Arc<dyn crate::stats::SnapshotSource>,
        )
        .context("starting the metrics thread")?;
    }
    let policy = Arc::new(policy);
    if let Some(l) = dpdk_listener {
        let broker = Arc::clone(&broker);
        let policy = Arc::clone(&policy);
        std::thread::Builder::new()
            .name("xsk-dpdk-accept".into())
            .spawn(move || {
                if let Err(e) = dpdk::serve(l, broker, policy) {
                    tracing::error!("the DPDK socket stopped: {e}");
                }
            })
            .context("starting the DPDK socket thread")?;
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
            // Holders whose sessions take events are told (a `stopping`
            // event); give their connections a moment to send it.
            if waiter_broker.announce_stopping() > 0 {
                waiter_broker.wait_stop_notices(std::time::Duration::from_millis(500));
            }
            for p in &socket_files {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        })
        .context("starting the signal thread")?;

    server::serve(control.listener, broker, policy, accept_failures)
        .context("serving the control socket")
}

/// Once a second, end the leases of interfaces that have disappeared and
/// read the leased sockets' ring positions.
fn spawn_interface_watcher(broker: Arc<state::Broker>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("xsk-ifwatch".into())
        .stack_size(256 * 1024)
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            broker.reap_vanished_interfaces();
            broker.sample_traffic();
        })
        .map(drop)
}
