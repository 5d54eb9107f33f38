//! Getting bound sockets for `rx`, `tx` and `echo`: leased from the broker
//! (sockets, or the XSKMAP with `--via-map`), or this process's own inserted
//! in a pinned XSKMAP (`--map-path`); then the `ready` line.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xsk_client::{
    BrokerClient, Lease, MapLease, OpenMapRequest, PrivilegeReport, SocketConfig, XskMap, XskSocket,
};

use crate::args::{Common, ViaMap};
use crate::output::{Out, Ready};

/// What keeps the lease (or the pinned map) alive.
#[allow(dead_code)]
pub enum Held {
    Sockets(Lease),
    Map(MapLease),
    Pinned(XskMap),
}

impl Held {
    /// The lease's control connection, watched for the broker ending it.
    pub fn control_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Held::Sockets(l) => Some(l.control_fd()),
            Held::Map(m) => Some(m.control_fd()),
            Held::Pinned(_) => None,
        }
    }
}

/// Bound sockets, what keeps them, and where their events go.
pub struct Session {
    /// The lease (or pinned map) the sockets belong to.
    pub held: Held,
    /// The broker closed the control connection without a word (it stopped
    /// or restarts): the sockets keep working, so stop watching it.
    pub control_closed: bool,
    /// What the ready line reported.
    pub info: Ready,
    /// One bound socket per queue, in queue order.
    pub sockets: Vec<XskSocket>,
    /// Where events are printed.
    pub out: Out,
    /// When the sockets were ready.
    pub started: Instant,
}

impl Session {
    /// Print the `done` summary of `what`.
    pub fn finish(&self, what: &str) -> Result<()> {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.out.done(&self.info, &self.sockets, elapsed, what)
    }
}

/// Sockets set up by one of the three flows, before the ready line.
struct Bound {
    held: Held,
    sockets: Vec<XskSocket>,
    info: Ready,
    /// The pinned XSKMAP's path, when there is one.
    pin: Option<String>,
}

fn connect(common: &Common) -> Result<BrokerClient> {
    BrokerClient::connect(&common.lease.socket).with_context(|| {
        format!(
            "connecting to the broker at {}",
            common.lease.socket.display()
        )
    })
}

/// Check privileges and settings, get bound sockets the way the arguments
/// say, and print the ready line.
pub fn start(common: &Common) -> Result<Session> {
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
    let bound = match (&common.map_path, common.via_map) {
        (Some(path), _) => open_pinned_map(common, path, config)?,
        (None, None) => lease_sockets(common, &config)?,
        (None, Some(via)) => lease_map(common, via, config)?,
    };
    let queues: Vec<u32> = bound.sockets.iter().map(|s| s.queue_id()).collect();
    out.ready(&bound.info, &queues, &privileges, bound.pin.as_deref());
    Ok(Session {
        held: bound.held,
        control_closed: false,
        info: bound.info,
        sockets: bound.sockets,
        out,
        started: Instant::now(),
    })
}

/// `--map-path`: like QEMU's map-path=, no broker, an existing pinned
/// XSKMAP; this process creates, binds and inserts its own sockets.
fn open_pinned_map(common: &Common, path: &Path, config: SocketConfig) -> Result<Bound> {
    let ifindex =
        nix::net::if_::if_nametoindex(common.lease.ifname.as_str()).with_context(|| {
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
    Ok(Bound {
        held: Held::Pinned(map),
        sockets,
        info,
        pin: Some(path.display().to_string()),
    })
}

/// The sock-fds flow: lease sockets from the broker and adopt them.
fn lease_sockets(common: &Common, config: &SocketConfig) -> Result<Bound> {
    let broker = connect(common)?;
    let mut lease = broker.open(common.lease.request()).with_context(|| {
        format!(
            "leasing {} queue(s) of {}",
            common.lease.queues, common.lease.ifname
        )
    })?;
    let sockets = lease
        .adopt_all(config)
        .context("setting up the leased sockets")?;
    let o = lease.info();
    let info = Ready {
        ifname: o.ifname.clone(),
        ifindex: o.ifindex,
        mode: Some(o.mode),
        program_id: Some(o.program_id),
        copy: o.copy,
    };
    Ok(Bound {
        held: Held::Sockets(lease),
        sockets,
        info,
        pin: None,
    })
}

/// `--via-map`: lease the interface's XSKMAP from the broker (as the fd or
/// pinned), then create, bind and insert this process's own sockets.
fn lease_map(common: &Common, via: ViaMap, config: SocketConfig) -> Result<Bound> {
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
    Ok(Bound {
        held: Held::Map(lease),
        sockets,
        info,
        pin: m.pin_path,
    })
}
