//! `xsk-vm-bench`: one TCG guest's networking through each VM backend, in
//! alternating rounds, on the test bed's veth pair (the peer namespace runs
//! `iperf3 -s`):
//!
//! * `vhost-user`: Debian's stock QEMU (`/usr/bin/qemu-system-x86_64`,
//!   `-netdev vhost-user`) and `xsk-vhost-user`, which leases the veth's
//!   queue from `xsk-brokerd`; both as uid nobody with no capability;
//! * `vhost-user-q10`: the same with the source-built QEMU below (10.0),
//!   the like-for-like comparison with its af-xdp netdev;
//! * `af-xdp`: QEMU built from Debian's source by `scripts/build-qemu
//!   sock-fds` (`-netdev af-xdp,...,inhibit=on,sock-fds=...`) under
//!   `xsk-client exec`, as nobody with CAP_IPC_LOCK only (its 32 MiB umem);
//! * `tap`: stock QEMU's `-netdev tap` (vhost off, QEMU's own virtio-net
//!   device) on a tap bridged with the veth's host end, the reference users
//!   know; QEMU as root (/dev/net/tun is 0600 here);
//! * `tap-q10`: the same tap with the source-built QEMU, which tells the
//!   QEMU versions' TCG speed apart from the backends.
//!
//! Every run boots the same guest (`net_guest()`, tests/guest/qemu-net.sh in
//! `net.bench=` mode, one vCPU, one queue pair, the same virtio-net-pci
//! options) and runs the phases tcp-up, tcp-down (iperf3 TCP guest → peer and
//! peer → guest), udp-up and udp-down (UDP at an unbounded rate with small
//! datagrams, counted at the receiver). Around each phase it samples the CPU
//! time of every QEMU and backend thread and the peer's packet counters.
//!
//! With `--count`, one more run each of vhost-user-q10 and af-xdp counts the
//! syscalls (`raw_syscalls:sys_enter`, and by name) and the libc allocations
//! (uprobes on malloc, calloc, realloc) of the process that moves the
//! packets (xsk-vhost-user; QEMU) with `perf stat` during each phase, per
//! packet the peer sent or received. With `--profile`, one more
//! vhost-user-q10 and af-xdp run under `perf record -a -g` during tcp-up and tcp-down.
//!
//! `--msix` gives the NIC of the QEMU 10 backends MSI-X (stock QEMU 7.2
//! keeps INTx: it crashes starting a vhost-user NIC with MSI-X under TCG).
//!
//! Results: one JSON line per phase in `OUT/results.jsonl`, the summary in
//! `OUT/summary.json`, perf output in `OUT/`. `scripts/bench-vm` builds and
//! runs it. Root only; not a test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use xsk_testbed::{
    line_reader, net_guest, net_guest_boot_args, nobody_ids, serial_guard, spawn_nobody_with_caps,
    spawn_unprivileged, tcg_shared_memory_machine_args, workspace_bin, BrokerProcess, IperfServer,
    TempDir, Testbed, NET_GUEST_MAC as GUEST_MAC, PEER_IP,
};

const CAP_IPC_LOCK: u32 = 14;
/// Debian's QEMU (package qemu-system-x86).
const STOCK_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The tap and bridge of the tap runs (in the test bed's xsk namespace).
const TAP: &str = "vmbtap0";
const BRIDGE: &str = "vmbbr0";
const PHASES: [&str; 4] = ["tcp-up", "tcp-down", "udp-up", "udp-down"];
/// Boot, four phases and power-off, with room for a busy machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(400);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    VhostUser,
    VhostUserQ10,
    AfXdp,
    Tap,
    TapQ10,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::VhostUser => "vhost-user",
            Backend::VhostUserQ10 => "vhost-user-q10",
            Backend::AfXdp => "af-xdp",
            Backend::Tap => "tap",
            Backend::TapQ10 => "tap-q10",
        }
    }

    fn parse(s: &str) -> Result<Backend> {
        Ok(match s {
            "vhost-user" => Backend::VhostUser,
            "vhost-user-q10" => Backend::VhostUserQ10,
            "af-xdp" => Backend::AfXdp,
            "tap" => Backend::Tap,
            "tap-q10" => Backend::TapQ10,
            _ => bail!("unknown backend {s:?} (vhost-user, vhost-user-q10, af-xdp, tap, tap-q10)"),
        })
    }
}

struct Args {
    rounds: u32,
    seconds: u32,
    udplen: u32,
    backends: Vec<Backend>,
    qemu10: PathBuf,
    out: PathBuf,
    count: bool,
    profile: bool,
    msix: bool,
}

const USAGE: &str = "xsk-vm-bench [--rounds N] [--seconds S] [--udp-len BYTES] \
[--backends vhost-user,vhost-user-q10,af-xdp,tap,tap-q10] [--qemu10 PATH] [--out DIR] [--count] [--profile] [--msix]";

fn parse_args() -> Result<Args> {
    let root = repo_root();
    let mut a = Args {
        rounds: 5,
        seconds: 5,
        udplen: 64,
        backends: vec![
            Backend::VhostUser,
            Backend::VhostUserQ10,
            Backend::AfXdp,
            Backend::Tap,
            Backend::TapQ10,
        ],
        qemu10: root.join("target/qemu/sock-fds/bin/qemu-system-x86_64"),
        out: root.join("target/bench-vm"),
        count: false,
        profile: false,
        msix: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        match k.as_str() {
            "--count" => a.count = true,
            "--profile" => a.profile = true,
            "--msix" => a.msix = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => {
                let v = it
                    .next()
                    .with_context(|| format!("{k} needs a value; {USAGE}"))?;
                let num = || -> Result<u32> { v.parse().with_context(|| format!("{k} {v}")) };
                match k.as_str() {
                    "--rounds" => a.rounds = num()?,
                    "--seconds" => a.seconds = num()?,
                    "--udp-len" => a.udplen = num()?,
                    "--backends" => {
                        a.backends = v.split(',').map(Backend::parse).collect::<Result<_>>()?
                    }
                    "--qemu10" => a.qemu10 = PathBuf::from(v),
                    "--out" => a.out = PathBuf::from(v),
                    _ => bail!("unknown option {k}; {USAGE}"),
                }
            }
        }
    }
    if a.seconds < 2 {
        bail!("--seconds {}: at least 2", a.seconds);
    }
    Ok(a)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// User and system CPU time (clock ticks) of each thread of `pid`, by thread
/// id, with the thread's name.
fn thread_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        // Fields after "(comm) ": state is the first; utime and stime are
        // fields 14 and 15 of the whole line.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        out.insert(tid, (comm.trim().to_owned(), t(11) + t(12)));
    }
    out
}

/// CPU use between two samples, in cores (1.0 = one CPU busy all the time),
/// summed per thread name.
fn cpu_by_name(
    a: &BTreeMap<u32, (String, u64)>,
    b: &BTreeMap<u32, (String, u64)>,
    secs: f64,
) -> BTreeMap<String, f64> {
    let hz = 100.0; // USER_HZ
    let mut out = BTreeMap::new();
    for (tid, (name, t1)) in b {
        let t0 = a.get(tid).map(|x| x.1).unwrap_or(0);
        *out.entry(name.clone()).or_insert(0.0) += (t1.saturating_sub(t0)) as f64 / hz / secs;
    }
    out
}

/// The peer's (rx_packets, tx_packets).
fn peer_packets(tb: &Testbed) -> Result<(u64, u64)> {
    let read = |what: &str| -> Result<u64> {
        let s = tb.peer.run([
            "cat",
            &format!("/sys/class/net/{}/statistics/{what}", tb.peer_if),
        ])?;
        s.trim().parse().with_context(|| format!("{what}: {s:?}"))
    };
    Ok((read("rx_packets")?, read("tx_packets")?))
}

/// Everything measured around one phase.
struct Snap {
    at: Instant,
    qemu: BTreeMap<u32, (String, u64)>,
    backend: BTreeMap<u32, (String, u64)>,
    peer: (u64, u64),
}

fn snap(tb: &Testbed, qemu: u32, backend: Option<u32>) -> Result<Snap> {
    Ok(Snap {
        at: Instant::now(),
        qemu: thread_ticks(qemu),
        backend: backend.map(thread_ticks).unwrap_or_default(),
        peer: peer_packets(tb)?,
    })
}

/// A child whose stdout lines are read on a thread and stderr collected.
struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    fn new(name: &str, mut child: Child) -> Proc {
        let lines = line_reader(child.stdout.take().expect("piped stdout"));
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Proc {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Result<String> {
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_owned();
                self.seen.push(l.clone());
                Ok(l)
            }
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = self
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap_or_default())
                    .unwrap_or_default();
                let tail: Vec<&String> = self.seen.iter().rev().take(40).rev().collect();
                Err(anyhow!(
                    "{}: no more output ({e:?}); last lines:\n{}\nstderr:\n{err}",
                    self.name,
                    tail.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
        }
    }

    fn wait_prefix(&mut self, prefix: &str, deadline: Instant) -> Result<String> {
        self.wait_for(|l| l.starts_with(prefix), deadline)
    }

    fn wait_for(&mut self, f: impl Fn(&str) -> bool, deadline: Instant) -> Result<String> {
        loop {
            let l = self.next_line(deadline)?;
            if f(&l) {
                return Ok(l);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process killed on drop (perf).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn piped(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

/// The bench's world: test bed, broker, a tap bridged with the veth's host
/// end (enslaved only during tap runs), binaries.
/// Fields drop in order: the broker before the namespaces, the directory last.
struct Bed {
    broker: BrokerProcess,
    tb: Testbed,
    _dir: TempDir,
    run_dir: PathBuf,
    guest: PathBuf,
    vhost_bin: PathBuf,
    client_bin: PathBuf,
    qemu10: PathBuf,
}

impl Bed {
    fn new(qemu10: &Path) -> Result<Bed> {
        let guest = net_guest().to_path_buf();
        let tb = Testbed::new(1).context("building the veth test bed")?;
        let dir = TempDir::new("xsk-vm-bench")?;
        let policy = json!({"version": 1, "rules": [{"name": "vm-bench", "users": ["nobody"],
            "interfaces": [tb.xsk_if], "max_queues": 1}]});
        let policy_path = dir.join("policy.json");
        std::fs::write(&policy_path, policy.to_string())?;
        let broker = BrokerProcess::spawn_with_args(
            &tb.xsk,
            dir.path(),
            &["--policy", policy_path.to_str().unwrap()],
        )
        .context("starting xsk-brokerd")?;
        let (nobody, nogroup) = nobody_ids()?;
        let run_dir = dir.join("run");
        std::fs::create_dir(&run_dir)?;
        nix::unistd::chown(&run_dir, Some(nobody), Some(nogroup))?;
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))?;
        // The tap (owned by nobody, so QEMU needs no capability) and the bridge.
        let x = &tb.xsk;
        x.ip(["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        x.ip(["link", "add", BRIDGE, "type", "bridge"])?;
        for dev in [TAP, BRIDGE] {
            let _ = x.run([
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
            ]);
        }
        x.ip(["link", "set", TAP, "master", BRIDGE])?;
        x.ip(["link", "set", TAP, "up"])?;
        x.ip(["link", "set", BRIDGE, "up"])?;
        Ok(Bed {
            broker,
            tb,
            _dir: dir,
            run_dir,
            guest,
            vhost_bin: workspace_bin("xsk-vhost-user")?,
            client_bin: workspace_bin("xsk-client")?,
            qemu10: qemu10.to_path_buf(),
        })
    }

    /// QEMU's arguments: the same machine, guest and NIC options for every
    /// backend but the `-netdev` (and, for vhost-user, its chardev).
    fn qemu_args(&self, netdev: &[String], phases: &str, a: &Args, msix: bool) -> Vec<String> {
        let (seconds, udplen) = (a.seconds, a.udplen);
        // Thread names ("CPU 0/TCG"), for the CPU accounting.
        let mut v = vec!["-name".to_owned(), "vm-bench,debug-threads=on".to_owned()];
        v.extend(tcg_shared_memory_machine_args(1));
        v.extend(net_guest_boot_args(
            &self.guest,
            &format!("net.seconds={seconds} net.bench={phases} net.udplen={udplen}"),
        ));
        v.extend(netdev.iter().cloned());
        // `vectors=0` (INTx) for every backend: Debian's QEMU 7.2 crashes
        // starting a vhost-user NIC with MSI-X under TCG (see
        // tests/tests/vhost_user.rs), and the guest must be the same.
        // `--msix` gives the QEMU 10 backends MSI-X instead.
        let vectors = if msix { "" } else { "vectors=0," };
        v.extend([
            "-device".to_owned(),
            format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC},{vectors}romfile="),
        ]);
        v
    }
}

/// What to do to the packet-moving process during a phase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Count,
    Profile,
}

/// One guest run of `backend`: the phases' results (JSON), and what the
/// `extra` measurement produced.
fn run_guest(bed: &Bed, a: &Args, backend: Backend, extra: Extra, tag: &str) -> Result<Vec<Value>> {
    let tb = &bed.tb;
    let phases = PHASES.join(",");
    let msix = a.msix && !matches!(backend, Backend::VhostUser | Backend::Tap);
    let _iperf = IperfServer::start(tb)?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut backend_proc = None;
    let mut enslaved = false;
    let sock = bed.run_dir.join("vhost-net.sock");
    let qemu = match backend {
        Backend::VhostUser | Backend::VhostUserQ10 => {
            let mut cmd = Command::new(&bed.vhost_bin);
            cmd.args([
                "--socket",
                sock.to_str().unwrap(),
                "--broker",
                bed.broker.socket_path().to_str().unwrap(),
                "--ifname",
                &tb.xsk_if,
                "--queues",
                "1",
                "--mac",
                GUEST_MAC,
                "--json",
            ]);
            let mut p = Proc::new("xsk-vhost-user", spawn_unprivileged(piped(&mut cmd))?);
            p.wait_for(|l| l.contains("\"event\":\"ready\""), deadline)?;
            backend_proc = Some(p);
            let netdev = [
                "-chardev".to_owned(),
                format!("socket,id=c0,path={}", sock.display()),
                "-netdev".to_owned(),
                "vhost-user,id=n0,chardev=c0,queues=1".to_owned(),
            ];
            let mut cmd = Command::new(if backend == Backend::VhostUser {
                Path::new(STOCK_QEMU)
            } else {
                bed.qemu10.as_path()
            });
            cmd.args(bed.qemu_args(&netdev, &phases, a, msix));
            Proc::new(
                &format!("qemu ({})", backend.name()),
                spawn_unprivileged(piped(&mut cmd))?,
            )
        }
        Backend::AfXdp => {
            let mut argv: Vec<String> = [
                "exec",
                "--socket",
                bed.broker.socket_path().to_str().unwrap(),
                "--ifname",
                &tb.xsk_if,
                "--queues",
                "1",
                "--",
                bed.qemu10.to_str().unwrap(),
            ]
            .map(str::to_owned)
            .to_vec();
            let netdev = [
                "-netdev".to_owned(),
                format!(
                    "af-xdp,id=n0,ifname={},queues=1,start-queue={{start-queue}},\
                     inhibit=on,sock-fds={{sock-fds}}",
                    tb.xsk_if
                ),
            ];
            argv.extend(bed.qemu_args(&netdev, &phases, a, msix));
            let child = tb.xsk.enter_thread(|| {
                let mut cmd = Command::new(&bed.client_bin);
                cmd.args(&argv);
                spawn_nobody_with_caps(piped(&mut cmd), &[CAP_IPC_LOCK])
            })??;
            Proc::new("xsk-client exec qemu (af-xdp)", child)
        }
        Backend::Tap | Backend::TapQ10 => {
            tb.xsk.ip(["link", "set", &tb.xsk_if, "master", BRIDGE])?;
            enslaved = true;
            let netdev = [
                "-netdev".to_owned(),
                format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
            ];
            let bin = if backend == Backend::Tap {
                PathBuf::from(STOCK_QEMU)
            } else {
                bed.qemu10.clone()
            };
            let args = bed.qemu_args(&netdev, &phases, a, msix);
            let child = tb
                .xsk
                .enter_thread(|| piped(Command::new(&bin).args(&args)).spawn())??;
            Proc::new(&format!("qemu ({})", backend.name()), child)
        }
    };
    let mut result = phases_of(
        bed,
        a,
        backend,
        extra,
        tag,
        qemu,
        &mut backend_proc,
        deadline,
    );
    if let (Err(e), Some(p)) = (&result, backend_proc.as_mut()) {
        // The backend's side of a failure.
        let _ = p.child.kill();
        let _ = p.child.wait();
        let err = p
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        result = Err(anyhow!(
            "{e:#}\nxsk-vhost-user output:\n{}\nstderr:\n{err}",
            p.seen.join("\n")
        ));
    }
    if enslaved {
        tb.xsk.ip(["link", "set", &tb.xsk_if, "nomaster"])?;
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn phases_of(
    bed: &Bed,
    a: &Args,
    backend: Backend,
    extra: Extra,
    tag: &str,
    mut qemu: Proc,
    backend_proc: &mut Option<Proc>,
    deadline: Instant,
) -> Result<Vec<Value>> {
    let tb = &bed.tb;
    let qpid = qemu.child.id();
    let bpid = backend_proc.as_ref().map(|p| p.child.id());
    // The process that moves the packets: the backend, or QEMU itself.
    let mover = bpid.unwrap_or(qpid);
    let started = Instant::now();
    qemu.wait_prefix("GUEST-INIT", deadline)?;
    let boot = started.elapsed().as_secs_f64();
    let ping = qemu.wait_prefix("NET-PING", deadline)?;
    if !ping.starts_with("NET-PING ok") {
        bail!("{}: {ping}\n{}", backend.name(), qemu.seen.join("\n"));
    }
    let mut out = Vec::new();
    loop {
        let l = qemu.wait_prefix("NET-PHASE begin", deadline)?;
        let phase = l.trim_start_matches("NET-PHASE begin ").to_owned();
        let s0 = snap(tb, qpid, bpid)?;
        let helper = match extra {
            Extra::None => None,
            Extra::Count => Some(perf_stat(mover, &a.out, tag, &phase)?),
            Extra::Profile if phase.starts_with("tcp") => {
                Some(perf_record(&a.out, tag, &phase, a.seconds)?)
            }
            Extra::Profile => None,
        };
        qemu.wait_prefix("NET-PHASE end", deadline)?;
        let s1 = snap(tb, qpid, bpid)?;
        let counted = match helper {
            Some(h) if extra == Extra::Count => Some(finish_perf_stat(h, &a.out, tag, &phase)?),
            Some(mut h) => {
                let _ = h.0.wait();
                None
            }
            None => None,
        };
        let res = qemu.wait_prefix("NET-BENCH", deadline)?;
        let secs = s1.at.duration_since(s0.at).as_secs_f64();
        let qcpu = cpu_by_name(&s0.qemu, &s1.qemu, secs);
        let bcpu = cpu_by_name(&s0.backend, &s1.backend, secs);
        let kv = |k: &str| -> Option<f64> {
            res.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
        };
        if res.contains("failed") || res.contains("unknown") {
            bail!("{}: {res}\n{}", backend.name(), qemu.seen.join("\n"));
        }
        let vcpu: f64 = qcpu
            .iter()
            .filter(|(n, _)| n.starts_with("CPU "))
            .map(|x| x.1)
            .sum();
        let qemu_total: f64 = qcpu.values().sum();
        let (rx, tx) = (s1.peer.0 - s0.peer.0, s1.peer.1 - s0.peer.1);
        let mut v = json!({
            "backend": backend.name(), "tag": tag, "phase": phase,
            "mbits": kv("mbits"), "pps": kv("pps"), "sent": kv("sent"),
            "nic_rx_pps": kv("nic_rx_pps"), "nic_tx_pps": kv("nic_tx_pps"),
            "nic_rx_dropped": kv("nic_rx_dropped"), "nic_irqs": kv("nic_irqs"),
            "guest_cpu": kv("cpu"), "boot_s": boot, "window_s": secs,
            "qemu_vcpu_cpu": vcpu, "qemu_other_cpu": qemu_total - vcpu,
            "qemu_threads": qcpu, "backend_cpu": bcpu.values().sum::<f64>(),
            "backend_threads": bcpu,
            "peer_rx_packets": rx, "peer_tx_packets": tx,
        });
        if let Some(c) = counted {
            let pk = (rx + tx).max(1) as f64;
            let per: BTreeMap<String, f64> =
                c.iter().map(|(k, n)| (k.clone(), *n as f64 / pk)).collect();
            v["counts"] = json!(c);
            v["per_packet"] = json!(per);
        }
        eprintln!(
            "  {res}  vcpu {vcpu:.2} qemu-other {:.2} backend {:.2}",
            qemu_total - vcpu,
            v["backend_cpu"].as_f64().unwrap_or(0.0)
        );
        out.push(v);
        if out.len() == PHASES.len() {
            break;
        }
    }
    let exit = qemu.wait_prefix("GUEST-EXIT", deadline)?;
    if exit != "GUEST-EXIT rc=0" {
        bail!("{}: {exit}\n{}", backend.name(), qemu.seen.join("\n"));
    }
    let _ = qemu.child.wait();
    if let Some(p) = backend_proc.as_mut() {
        // It exits by itself once QEMU is gone (and ends its lease).
        let d = Instant::now() + Duration::from_secs(30);
        while p.child.try_wait()?.is_none() && Instant::now() < d {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(out)
}

/// The events `--count` counts: every syscall, the ones a datapath makes by
/// name, and libc's allocation entry points (uprobes set up by `main`).
const SYSCALLS: [&str; 12] = [
    "epoll_wait",
    "epoll_pwait",
    "read",
    "write",
    "sendto",
    "recvfrom",
    "ppoll",
    "poll",
    "futex",
    "ioctl",
    "sendmsg",
    "recvmsg",
];
const ALLOCS: [&str; 3] = ["malloc", "calloc", "realloc"];

fn perf_stat(pid: u32, out: &Path, tag: &str, phase: &str) -> Result<Killed> {
    let mut ev = vec!["raw_syscalls:sys_enter".to_owned()];
    ev.extend(SYSCALLS.iter().map(|s| format!("syscalls:sys_enter_{s}")));
    ev.extend(ALLOCS.iter().map(|s| format!("probe_libc:{s}")));
    let file = out.join(format!("perf-stat-{tag}-{phase}.csv"));
    let child = Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            &ev.join(","),
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf stat (apt-get install linux-perf)")?;
    // perf attaches asynchronously; give it a moment.
    std::thread::sleep(Duration::from_millis(100));
    Ok(Killed(child))
}

fn finish_perf_stat(
    mut h: Killed,
    out: &Path,
    tag: &str,
    phase: &str,
) -> Result<BTreeMap<String, u64>> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let _ = h.0.wait();
    let file = out.join(format!("perf-stat-{tag}-{phase}.csv"));
    let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(n) = f[0].trim().parse::<u64>() else {
            continue;
        };
        let name = f[2]
            .trim()
            .trim_start_matches("syscalls:sys_enter_")
            .trim_start_matches("probe_libc:")
            .replace("raw_syscalls:sys_enter", "syscalls");
        m.insert(name, n);
    }
    if !m.contains_key("syscalls") {
        bail!("perf stat counted nothing: {text}");
    }
    Ok(m)
}

fn perf_record(out: &Path, tag: &str, phase: &str, seconds: u32) -> Result<Killed> {
    let file = out.join(format!("perf-{tag}-{phase}.data"));
    let child = Command::new("perf")
        .args(["record", "-q", "-a", "-g", "-o"])
        .arg(&file)
        .args([
            "--",
            "sleep",
            &(seconds.saturating_sub(1)).max(1).to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record (apt-get install linux-perf)")?;
    Ok(Killed(child))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The main metric of a phase: Mbit/s for TCP, datagrams/s for UDP.
fn metric(r: &Value) -> f64 {
    let p = r["phase"].as_str().unwrap_or("");
    let k = if p.starts_with("udp") { "pps" } else { "mbits" };
    r[k].as_f64().unwrap_or(f64::NAN)
}

/// The ratios reported: ours against QEMU's af-xdp netdev on the same QEMU
/// (the comparison that matters), and against tap on each QEMU.
const RATIOS: [(Backend, Backend); 5] = [
    (Backend::VhostUserQ10, Backend::AfXdp),
    (Backend::VhostUser, Backend::AfXdp),
    (Backend::VhostUserQ10, Backend::TapQ10),
    (Backend::VhostUser, Backend::Tap),
    (Backend::Tap, Backend::TapQ10),
];

fn summarize(rows: &[Value], backends: &[Backend]) -> Value {
    let mut s = serde_json::Map::new();
    for phase in PHASES {
        let mut per = serde_json::Map::new();
        let by = |b: Backend| -> Vec<&Value> {
            rows.iter()
                .filter(|r| r["backend"] == b.name() && r["phase"] == phase && r["tag"] == "main")
                .collect()
        };
        for &b in backends {
            let rs = by(b);
            let f = |k: &str| {
                median(
                    rs.iter()
                        .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                        .collect(),
                )
            };
            per.insert(
                b.name().to_owned(),
                json!({
                    "median": median(rs.iter().map(|r| metric(r)).collect()),
                    "runs": rs.iter().map(|r| metric(r)).collect::<Vec<_>>(),
                    "guest_cpu": f("guest_cpu"), "qemu_vcpu_cpu": f("qemu_vcpu_cpu"),
                    "qemu_other_cpu": f("qemu_other_cpu"), "backend_cpu": f("backend_cpu"),
                    "mbits": f("mbits"), "pps": f("pps"),
                    "nic_rx_pps": f("nic_rx_pps"), "nic_tx_pps": f("nic_tx_pps"),
                    "nic_irqs": f("nic_irqs"),
                }),
            );
        }
        // Per-round ratios (the runs of a round are back to back).
        for (o, t) in RATIOS {
            if !backends.contains(&o) || !backends.contains(&t) {
                continue;
            }
            let ratios: Vec<f64> = by(o)
                .iter()
                .zip(&by(t))
                .map(|(o, t)| metric(o) / metric(t))
                .collect();
            per.insert(
                format!("{}/{}", o.name(), t.name()),
                json!({"median": median(ratios.clone()), "runs": ratios}),
            );
        }
        s.insert(phase.to_owned(), Value::Object(per));
    }
    Value::Object(s)
}

fn print_table(summary: &Value, backends: &[Backend], rounds: u32) {
    println!("\nmedians of {rounds} alternating rounds (TCP Mbit/s, UDP datagrams/s arriving at the receiver)");
    let mut hdr = format!("{:10}", "phase");
    for b in backends {
        hdr += &format!(" {:>15}", b.name());
    }
    let ratios: Vec<String> = RATIOS
        .iter()
        .filter(|(o, t)| backends.contains(o) && backends.contains(t))
        .map(|(o, t)| format!("{}/{}", o.name(), t.name()))
        .collect();
    for r in &ratios {
        hdr += &format!(" {r:>22}");
    }
    println!("{hdr}");
    for phase in PHASES {
        let p = &summary[phase];
        let mut line = format!("{phase:10}");
        for b in backends {
            line += &format!(
                " {:>15.1}",
                p[b.name()]["median"].as_f64().unwrap_or(f64::NAN)
            );
        }
        for r in &ratios {
            line += &format!(" {:>22.3}", p[r]["median"].as_f64().unwrap_or(f64::NAN));
        }
        println!("{line}");
    }
    println!(
        "\nmedians: guest busy share; host CPU (cores) of the QEMU vCPU thread, other QEMU \
         threads, the backend; the guest NIC's rx and tx packets/s and interrupts per phase"
    );
    for phase in PHASES {
        for b in backends {
            let x = &summary[phase][b.name()];
            let g = |k: &str| x[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "  {phase:9} {:15} guest {:.2}  vcpu {:.2}  qemu-other {:.2}  backend {:.2}  \
                 nic rx {:.0}/s tx {:.0}/s irqs {:.0}",
                b.name(),
                g("guest_cpu"),
                g("qemu_vcpu_cpu"),
                g("qemu_other_cpu"),
                g("backend_cpu"),
                g("nic_rx_pps"),
                g("nic_tx_pps"),
                g("nic_irqs"),
            );
        }
    }
}

fn setup_probes() -> Result<()> {
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .context("no libc.so.6 for the allocation probes")?;
    let _ = Command::new("perf")
        .args(["probe", "-q", "-d", "probe_libc:*"])
        .output();
    for f in ALLOCS {
        let o = Command::new("perf")
            .args(["probe", "-q", "-x", libc, f])
            .output()
            .context("perf probe")?;
        if !o.status.success() {
            bail!(
                "perf probe -x {libc} {f}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("xsk-vm-bench needs root (namespaces, veth, tap, perf)");
    }
    for b in &a.backends {
        if matches!(b, Backend::AfXdp | Backend::TapQ10 | Backend::VhostUserQ10)
            && !a.qemu10.is_file()
        {
            bail!(
                "{} is missing: scripts/bench-vm builds it (QEMU_CACHE=target/qemu-bench \
                 QEMU_EXTRA_CONFIGURE=\"--enable-vhost-user --enable-vhost-net\" \
                 scripts/build-qemu sock-fds), or pass --qemu10",
                a.qemu10.display()
            );
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let mut results = std::fs::File::create(a.out.join("results.jsonl"))?;
    let load = |_: ()| std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load(());
    let bed = Bed::new(&a.qemu10)?;
    eprintln!(
        "bench-vm: test bed {} <-> {} (peer {PEER_IP}), broker {}, guest {}",
        bed.tb.xsk_if,
        bed.tb.peer_if,
        bed.broker.socket_path().display(),
        bed.guest.display()
    );
    let mut rows = Vec::new();
    for round in 0..a.rounds {
        // Hold the end-to-end tests' lock for one round at a time, so other
        // runs on this machine neither collide with a round nor wait for the
        // whole benchmark.
        let _lock = serial_guard()?;
        for &b in &a.backends {
            eprintln!("round {} of {}: {}", round + 1, a.rounds, b.name());
            let rs = run_guest(&bed, &a, b, Extra::None, "main")
                .with_context(|| format!("round {round}, {}", b.name()))?;
            for mut r in rs {
                r["round"] = json!(round);
                writeln!(results, "{r}")?;
                rows.push(r);
            }
        }
    }
    let mut extra_rows = Vec::new();
    if a.count || a.profile {
        let _lock = serial_guard()?;
        if a.count {
            setup_probes()?;
        }
        for b in [Backend::VhostUserQ10, Backend::AfXdp] {
            if !a.backends.contains(&b) {
                continue;
            }
            for (on, e, tag) in [
                (a.count, Extra::Count, "count"),
                (a.profile, Extra::Profile, "profile"),
            ] {
                if !on {
                    continue;
                }
                let tag = format!("{tag}-{}", b.name());
                eprintln!("{tag}");
                for r in run_guest(&bed, &a, b, e, &tag)? {
                    writeln!(results, "{r}")?;
                    extra_rows.push(r);
                }
            }
        }
        if a.count {
            let _ = Command::new("perf")
                .args(["probe", "-q", "-d", "probe_libc:*"])
                .output();
        }
    }
    let summary = summarize(&rows, &a.backends);
    let counts: Vec<Value> = extra_rows
        .iter()
        .filter(|r| r.get("per_packet").is_some())
        .map(|r| {
            json!({"backend": r["backend"], "phase": r["phase"], "counts": r["counts"],
                   "per_packet": r["per_packet"],
                   "packets": r["peer_rx_packets"].as_u64().unwrap_or(0)
                       + r["peer_tx_packets"].as_u64().unwrap_or(0),
                   "metric": metric(r)})
        })
        .collect();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        .unwrap_or_default();
    let full = json!({
        "args": {"rounds": a.rounds, "seconds": a.seconds, "udp_len": a.udplen,
                 "backends": a.backends.iter().map(|b| b.name()).collect::<Vec<_>>()},
        "machine": machine, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_before": load_before.trim(), "load_after": load(()).trim(),
        "summary": summary, "counts": counts,
    });
    std::fs::write(
        a.out.join("summary.json"),
        serde_json::to_string_pretty(&full)?,
    )?;
    print_table(&summary, &a.backends, a.rounds);
    if !counts.is_empty() {
        println!(
            "\nper packet (the peer's rx + tx during the phase), process that moves the packets:"
        );
        for c in &counts {
            println!(
                "  {:10} {:9} packets {:>8} per packet: {}",
                c["backend"].as_str().unwrap_or(""),
                c["phase"].as_str().unwrap_or(""),
                c["packets"],
                c["per_packet"]
                    .as_object()
                    .map(|m| m
                        .iter()
                        .filter(|(_, v)| v.as_f64().unwrap_or(0.0) > 0.0005)
                        .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            );
        }
    }
    println!(
        "\nload before: {}  after: {}",
        load_before.trim(),
        load(()).trim()
    );
    println!("results: {}", a.out.join("results.jsonl").display());
    Ok(())
}
