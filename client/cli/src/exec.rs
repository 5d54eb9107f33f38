//! `xsk-client exec`, the launcher: lease sockets (or the pinned XSKMAP with
//! `--map`), replace the placeholders in PROGRAM's arguments, make every fd
//! but the leased ones close on exec, and exec PROGRAM in this process.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use serde_json::json;
use xsk_client::{BrokerClient, Lease, LeasedSocket, MapLease, OpenMapRequest};

use crate::args::{ExecArgs, LeaseArgs};

/// Exit status of `xsk-client exec` when the launcher itself fails and
/// PROGRAM is not started (as `env`, `chroot` and container runtimes do).
const EXEC_LAUNCHER_FAILED: i32 = 125;

/// The lease PROGRAM inherits: its control connection is the lease fd.
enum Held {
    Sockets(Lease),
    Map(MapLease),
}

/// What a lease gave, kept alive (and its fds open) until exec.
struct Launch {
    /// The leased sockets, in queue order (none in the map flow). Declared
    /// before `held`, so a failed exec closes them before the lease.
    sockets: Vec<LeasedSocket>,
    held: Held,
    /// The interface index the broker reported.
    ifindex: u32,
    /// This flow's own placeholders (`sock-fds`, or `map-path` and
    /// `map-start-index`) and their values.
    extra: Vec<(&'static str, String)>,
    /// This flow's fields of the `exec` JSON line.
    report: serde_json::Value,
}

impl Launch {
    /// The lease's control connection, which PROGRAM inherits.
    fn lease_fd(&self) -> BorrowedFd<'_> {
        match &self.held {
            Held::Sockets(l) => l.control_fd(),
            Held::Map(m) => m.control_fd(),
        }
    }
}

/// Lease sockets and exec the program; returns only on failure, with the
/// exit status to use.
pub fn run(a: ExecArgs) -> (i32, anyhow::Error) {
    let program = a.command[0].clone();
    let shown = program.to_string_lossy().into_owned();
    let not_started = |e: anyhow::Error| {
        (
            EXEC_LAUNCHER_FAILED,
            e.context(format!("{shown} was not started")),
        )
    };
    let launch = match refuse_foreign_placeholders(&a).and_then(|()| lease(&a.lease, a.map)) {
        Ok(l) => l,
        Err(e) => return not_started(e),
    };
    let lease_fd = launch.lease_fd().as_raw_fd();
    let vars = placeholders(&a.lease, &launch, lease_fd);
    let args: Vec<OsString> = a.command[1..]
        .iter()
        .map(|x| substitute(x, &vars))
        .collect();
    if let Err(e) = inherit_only_leased(&launch) {
        return not_started(e);
    }
    if a.json {
        print_exec_line(&shown, &args, &a.lease, &launch, lease_fd);
    }
    let err = command(&program, &args, &launch, lease_fd).exec();
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

/// A placeholder of the other flow would reach PROGRAM unreplaced: refuse.
fn refuse_foreign_placeholders(a: &ExecArgs) -> Result<()> {
    let foreign = if a.map { "{sock-fds}" } else { "{map-path}" };
    if a.command[1..]
        .iter()
        .any(|x| x.to_string_lossy().contains(foreign))
    {
        return Err(anyhow!(
            "{foreign} is only available {} --map",
            if a.map { "without" } else { "with" }
        ));
    }
    Ok(())
}

/// Connect to the broker and lease sockets, or with `map` the pinned XSKMAP.
fn lease(l: &LeaseArgs, map: bool) -> Result<Launch> {
    let broker = BrokerClient::connect(&l.socket)
        .with_context(|| format!("connecting to the broker at {}", l.socket.display()))?;
    let asked = format!(
        "leasing {} queue(s) of {} from queue {}",
        l.queues, l.ifname, l.start_queue
    );
    if map {
        lease_pinned_map(broker, l, &asked)
    } else {
        lease_sockets(broker, l, &asked)
    }
}

/// The sock-fds flow: the leased sockets themselves, unbound, for PROGRAM.
fn lease_sockets(broker: BrokerClient, l: &LeaseArgs, asked: &str) -> Result<Launch> {
    let mut lease = broker.open(l.request()).context(asked.to_owned())?;
    let info = lease.info().clone();
    let sockets = lease.take_sockets();
    let sock_fds = sockets
        .iter()
        .map(|s| s.fd.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let report = json!({
        "sock_fds": sock_fds, "mode": info.mode, "program_id": info.program_id,
    });
    Ok(Launch {
        sockets,
        held: Held::Sockets(lease),
        ifindex: info.ifindex,
        extra: vec![("sock-fds", sock_fds)],
        report,
    })
}

/// The map-path flow: the interface's XSKMAP pinned in the broker's bpffs
/// directory; PROGRAM inherits only the lease fd.
fn lease_pinned_map(broker: BrokerClient, l: &LeaseArgs, asked: &str) -> Result<Launch> {
    let req = l.request();
    let lease = broker
        .open_map(OpenMapRequest {
            ifname: req.ifname,
            queues: req.queues,
            start_queue: req.start_queue,
            mode: req.mode,
            pin: true,
        })
        .with_context(|| format!("{asked} with its XSKMAP pinned"))?;
    let info = lease.info().clone();
    let path = info.pin_path.clone().unwrap_or_default();
    let report = json!({
        "map_path": path, "map_start_index": info.start_queue, "mode": info.mode,
        "program_id": info.program_id,
    });
    Ok(Launch {
        sockets: Vec::new(),
        held: Held::Map(lease),
        ifindex: info.ifindex,
        extra: vec![
            ("map-path", path),
            ("map-start-index", info.start_queue.to_string()),
        ],
        report,
    })
}

/// Every placeholder and its value: those both flows share, then the flow's
/// own.
fn placeholders(l: &LeaseArgs, launch: &Launch, lease_fd: RawFd) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("queues", l.queues.to_string()),
        ("start-queue", l.start_queue.to_string()),
        ("ifindex", launch.ifindex.to_string()),
        ("lease-fd", lease_fd.to_string()),
    ];
    vars.extend(launch.extra.iter().cloned());
    vars
}

/// Mark every fd close-on-exec but the leased sockets and the lease fd.
fn inherit_only_leased(launch: &Launch) -> Result<()> {
    let mut keep: Vec<BorrowedFd<'_>> = launch.sockets.iter().map(|s| s.fd.as_fd()).collect();
    keep.push(launch.lease_fd());
    xsk_client::inherit_only(&keep)
        .map_err(|e| anyhow::Error::new(e).context("setting close-on-exec flags before exec"))
}

/// `--json`: the `exec` line (fds, queues, ifindex, the argv) on stdout.
fn print_exec_line(
    shown: &str,
    args: &[OsString],
    l: &LeaseArgs,
    launch: &Launch,
    lease_fd: RawFd,
) {
    let mut line = json!({
        "event": "exec", "program": shown,
        "args": args.iter().map(|x| x.to_string_lossy()).collect::<Vec<_>>(),
        "lease_fd": lease_fd, "ifname": l.ifname, "ifindex": launch.ifindex,
        "queues": (l.start_queue..l.start_queue.saturating_add(l.queues)).collect::<Vec<_>>(),
        "pid": std::process::id(),
    });
    if let (Some(o), Some(r)) = (line.as_object_mut(), launch.report.as_object()) {
        o.extend(r.clone());
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// PROGRAM with its arguments, and the environment variables that name the
/// lease fd and the flow's sockets or map.
fn command(program: &OsStr, args: &[OsString], launch: &Launch, lease_fd: RawFd) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("XSK_BROKER_LEASE_FD", lease_fd.to_string());
    for (k, v) in &launch.extra {
        let var = match *k {
            "sock-fds" => "XSK_BROKER_SOCK_FDS",
            "map-path" => "XSK_BROKER_MAP_PATH",
            _ => continue,
        };
        cmd.env(var, v);
    }
    cmd
}

/// Replace every known `{name}` placeholder in `arg`; other braces are left
/// alone (QEMU's JSON-style arguments contain them).
fn substitute(arg: &OsStr, vars: &[(&str, String)]) -> OsString {
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
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_other_braces_kept() {
        let vars = [("sock-fds", "5:6".to_owned()), ("queues", "2".to_owned())];
        let got = substitute(
            OsStr::new("af-xdp,queues={queues},sock-fds={sock-fds},x={other}"),
            &vars,
        );
        assert_eq!(got, "af-xdp,queues=2,sock-fds=5:6,x={other}");
        let got = substitute(OsStr::new(r#"{"type":"af-xdp"}{queues"#), &vars);
        assert_eq!(got, r#"{"type":"af-xdp"}{queues"#);
    }
}
