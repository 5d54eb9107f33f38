//! End-to-end test of `xsk-vhost-user` with Debian's stock QEMU
//! (`/usr/bin/qemu-system-x86_64` from qemu-system-x86, which has no af-xdp
//! netdev): the backend, as uid nobody with no capability at all, leases a
//! queue of the test bed's veth from the broker and serves QEMU's
//! `-netdev vhost-user`; QEMU, also nobody with no capability, boots the tiny
//! test guest (tests/guest/qemu-net.sh, built by `scripts/build-guest`),
//! which pings the peer and runs TCP both ways. When QEMU quits, the backend
//! exits 0 and the broker ends the lease. Also: the guest resets its NIC
//! (reloads virtio_net) and gets traffic again; with `--reconnect` a killed
//! QEMU is followed by a new one on the same backend process; SIGTERM and
//! SIGINT end the backend cleanly.
//!
//! Slow (the guest runs under TCG). Under CI=true a failure to build or boot
//! fails the test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xsk_testbed::{
    built_qemu, cap_eff, iperf_mbits, net_guest, net_guest_boot_args, nobody_ids, proc_status_uid,
    require_root, serial_guard, spawn_unprivileged, spread_over_queues,
    tcg_shared_memory_machine_args, wait_until, workspace_bin, BrokerProcess, IperfServer,
    LineProc, TempDir, Testbed, NET_GUEST_MAC as GUEST_MAC, SPREAD_MIN,
};

/// Debian's QEMU (package qemu-system-x86).
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Boot, ping and two iperf3 runs under TCG on a busy 2-core machine.
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest of tests/qemu.rs (same spec, so the same cached build), built
/// once per test process (build-guest must not run twice at once).
/// The guest: [`net_guest`].
fn guest() -> PathBuf {
    net_guest().to_path_buf()
}

/// Start `cmd` as nobody with no capabilities, its output watched.
fn spawn(name: &'static str, cmd: &mut Command) -> LineProc {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child =
        spawn_unprivileged(cmd).unwrap_or_else(|e| panic!("starting {name} as nobody: {e:#}"));
    LineProc::new(name, child)
}

/// QEMU's arguments for the vhost-user NIC on `sock` (README.md shows the same).
/// `append` adds to the kernel command line (e.g. `net.reset=1`).
fn qemu_args(guest: &Path, sock: &Path, queues: u32, append: &str) -> Vec<String> {
    // `vectors=0`: no MSI-X. Debian's QEMU 7.2 under TCG crashes in
    // msix_set_vector_notifiers when it starts a vhost-user NIC with MSI-X
    // (SIGSEGV from vhost_net_start); INTx works.
    let mq = if queues > 1 {
        ",mq=on,vectors=0"
    } else {
        ",vectors=0"
    };
    let mut v = tcg_shared_memory_machine_args(queues);
    v.extend(
        [
            "-chardev",
            &format!("socket,id=c0,path={}", sock.display()),
            "-netdev",
            &format!("vhost-user,id=n0,chardev=c0,queues={queues}"),
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}{mq},romfile="),
        ]
        .map(str::to_owned),
    );
    v.extend(net_guest_boot_args(
        guest,
        &format!("net.streams={queues} {append}"),
    ));
    v
}

/// The next JSON line of `p` whose `event` is `name`.
fn wait_event(p: &mut LineProc, name: &str) -> Value {
    p.wait_event(name, Duration::from_secs(30))
}

/// How the backend gets its sockets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// It leases them from the broker itself.
    Broker,
    /// `xsk-client exec` leases them and passes `--sock-fds {sock-fds}`.
    Exec,
}

/// The test bed, a broker whose policy lets nobody lease `queues` queues of
/// its xsk end, and where nobody may create the vhost-user socket.
struct Bed {
    // Dropped in this order: the broker before the namespaces it runs in.
    broker: BrokerProcess,
    _dir: TempDir,
    tb: Testbed,
    /// The vhost-user socket's path (in a directory of nobody's).
    sock: PathBuf,
    nobody: nix::unistd::Uid,
    /// The QEMU binary: Debian's ([`QEMU`]) unless a test says otherwise.
    qemu: PathBuf,
}

impl Bed {
    fn new(queues: u32) -> Bed {
        let tb = Testbed::new(queues).expect("building the veth test bed");
        let dir = TempDir::new("xsk-vhost").expect("temp dir");
        let policy = serde_json::json!({
            "version": 1,
            "rules": [{
                "name": "vhost-test",
                "users": ["nobody"],
                "interfaces": [tb.xsk_if],
                "max_queues": queues,
            }]
        });
        let policy_path = dir.join("policy.json");
        std::fs::write(&policy_path, policy.to_string()).unwrap();
        let broker = BrokerProcess::spawn_with_args(
            &tb.xsk,
            dir.path(),
            &["--policy", policy_path.to_str().unwrap()],
        )
        .expect("starting xsk-brokerd");
        // A directory nobody may create the vhost-user socket in.
        let (nobody, nogroup) = nobody_ids().unwrap();
        let run_dir = dir.join("run");
        std::fs::create_dir(&run_dir).unwrap();
        nix::unistd::chown(&run_dir, Some(nobody), Some(nogroup)).unwrap();
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let sock = run_dir.join("vhost-net.sock");
        Bed {
            broker,
            _dir: dir,
            tb,
            sock,
            nobody,
            qemu: PathBuf::from(QEMU),
        }
    }

    /// `iperf3 -s` in the peer namespace.
    fn iperf(&self) -> IperfServer {
        IperfServer::start(&self.tb).expect("iperf3 server")
    }

    /// Start xsk-vhost-user as nobody, leasing `queues` queues from the
    /// broker itself, with `extra` arguments; wait for its ready line.
    fn backend(&self, queues: u32, extra: &[&str]) -> (LineProc, Value) {
        let bin = workspace_bin("xsk-vhost-user").unwrap();
        let mut b = spawn(
            "xsk-vhost-user",
            Command::new(bin)
                .args(["--socket", self.sock.to_str().unwrap(), "--broker"])
                .arg(self.broker.socket_path())
                .args(["--ifname", &self.tb.xsk_if, "--queues", &queues.to_string()])
                .args(["--mac", GUEST_MAC, "--json"])
                .args(extra),
        );
        let ready = wait_event(&mut b, "ready");
        assert_eq!(proc_status_uid(b.pid()).unwrap(), self.nobody.as_raw());
        assert_eq!(cap_eff(b.pid()).unwrap(), 0, "the backend's CapEff");
        (b, ready)
    }

    /// Start QEMU as nobody on the vhost-user socket; `append` adds to the
    /// guest's kernel command line.
    fn qemu(&self, queues: u32, append: &str) -> LineProc {
        spawn(
            "qemu",
            Command::new(&self.qemu).args(qemu_args(&guest(), &self.sock, queues, append)),
        )
    }
}

/// [`run_with`] with Debian's QEMU and the guest's default script.
fn run(test: &str, queues: u32, via: Via) {
    run_with(test, Path::new(QEMU), queues, via, "");
}

/// What [`run_with`] returns: the guest's console and the backend's
/// `disconnected` event.
struct Ran {
    console: Vec<String>,
    disconnected: Value,
}

/// Boot the guest through the backend (its sockets leased `via`), with
/// `append` on its kernel command line; check its ping, TCP both ways and
/// the end of the lease after QEMU quits (`None` if the test is skipped).
fn run_with(test: &str, qemu: &Path, queues: u32, via: Via, append: &str) -> Option<Ran> {
    if !require_root(test) {
        return None;
    }
    assert!(
        qemu.is_file(),
        "{} is missing: scripts/install-deps installs qemu-system-x86",
        qemu.display()
    );
    // Built (once per process) before the e2e lock is taken.
    guest();
    let backend_bin = workspace_bin("xsk-vhost-user").unwrap();

    let _lock = serial_guard().expect("e2e lock");
    let mut bed = Bed::new(queues);
    bed.qemu = qemu.to_path_buf();
    let (tb, broker, sock, nobody) = (&bed.tb, &bed.broker, &bed.sock, bed.nobody);

    let iperf = bed.iperf();

    let xdp_before = tb.xsk_rx_queue_xdp_packets().unwrap();
    let started = Instant::now();
    let q = queues.to_string();
    let sock_s = sock.to_str().unwrap();
    let (mut backend, ready) = match via {
        Via::Broker => bed.backend(queues, &[]),
        Via::Exec => {
            let client = workspace_bin("xsk-client").unwrap();
            let mut cmd = Command::new(client);
            cmd.args([
                "exec",
                "--socket",
                broker.socket_path().to_str().unwrap(),
                "--ifname",
                &tb.xsk_if,
                "--queues",
                &q,
                "--",
                backend_bin.to_str().unwrap(),
                "--socket",
                sock_s,
                "--ifname",
                &tb.xsk_if,
                "--queues",
                &q,
                "--sock-fds",
                "{sock-fds}",
                "--start-queue",
                "{start-queue}",
                "--ifindex",
                "{ifindex}",
                "--mac",
                GUEST_MAC,
                "--json",
            ]);
            // xsk-client exec looks the interface up in its own namespace.
            let mut p = tb
                .xsk
                .enter_thread(|| spawn("xsk-client exec xsk-vhost-user", &mut cmd))
                .expect("entering the xsk namespace");
            let ready = wait_event(&mut p, "ready");
            (p, ready)
        }
    };
    assert_eq!(
        ready["queues"],
        serde_json::json!((0..queues).collect::<Vec<_>>())
    );
    let bpid = backend.child.id();
    assert_eq!(proc_status_uid(bpid).unwrap(), nobody.as_raw());
    assert_eq!(cap_eff(bpid).unwrap(), 0, "the backend's CapEff");
    let st = broker.status();
    assert_eq!(st["leases"][0]["holder"]["pid"], bpid, "{st:#}");

    let mut qemu = bed.qemu(queues, append);
    let qpid = qemu.child.id();
    let init = qemu.wait_line("GUEST-INIT", GUEST_TIMEOUT);
    eprintln!("{init} (booted in {:.1}s)", started.elapsed().as_secs_f64());
    assert_eq!(proc_status_uid(qpid).unwrap(), nobody.as_raw());
    assert_eq!(cap_eff(qpid).unwrap(), 0, "QEMU's CapEff");
    let nic = qemu.wait_line("NET-NIC", GUEST_TIMEOUT);
    assert!(
        nic.contains(&format!("mac={GUEST_MAC} rx_queues={queues} ")),
        "{nic}"
    );
    let ping = qemu.wait_line("NET-PING", GUEST_TIMEOUT);
    if !ping.starts_with("NET-PING ok") {
        let _ = backend.child.kill();
        let (_, e) = backend.wait_exit(Duration::from_secs(5));
        eprintln!("backend stderr:\n{e}\nbackend stdout: {:?}", backend.seen);
        let _ = qemu.child.kill();
        let (_, e) = qemu.wait_exit(Duration::from_secs(5));
        eprintln!("qemu stderr:\n{e}");
    }
    assert!(
        ping.starts_with("NET-PING ok"),
        "{ping}\n{}",
        qemu.seen.join("\n")
    );
    spread_over_queues(tb, queues).expect("sending 64 UDP flows from the peer");
    let up = qemu.wait_line("NET-IPERF up", GUEST_TIMEOUT);
    let down = qemu.wait_line("NET-IPERF down", GUEST_TIMEOUT);
    // Read while the backend still holds the lease (QEMU runs).
    let during = broker.status();
    let rxirq = qemu.wait_line("NET-RXIRQ", GUEST_TIMEOUT);
    let exit = qemu.wait_line("GUEST-EXIT", GUEST_TIMEOUT);
    let (qst, qerr) = qemu.wait_exit(Duration::from_secs(60));
    eprintln!(
        "vhost-user queues={queues}: guest TCP to the peer {} Mbit/s, from the peer {} Mbit/s \
         (TCG), {rxirq}, {:.1}s in all",
        iperf_mbits(&up),
        iperf_mbits(&down),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(exit, "GUEST-EXIT rc=0", "{}", qemu.seen.join("\n"));
    assert!(qst.success(), "QEMU: {qst}; stderr:\n{qerr}");
    assert!(
        iperf_mbits(&up) > 0.0 && iperf_mbits(&down) > 0.0,
        "{up} / {down}"
    );
    drop(iperf);
    // The peer's traffic reached the guest on every queue pair (the veth's
    // XDP counted packets on each rx queue, whose sockets the backend reads;
    // spread_over_queues made sure every queue got some).
    let xdp_after = tb.xsk_rx_queue_xdp_packets().unwrap();
    for q in 0..queues as usize {
        assert!(
            xdp_after[q] >= xdp_before[q] + SPREAD_MIN,
            "queue {q}: the veth's XDP saw {xdp_before:?} -> {xdp_after:?} packets"
        );
    }

    // QEMU quit: the backend says so, ends its lease and exits 0.
    let done = wait_event(&mut backend, "done");
    let (bst, berr) = backend.wait_exit(Duration::from_secs(30));
    assert!(bst.success(), "xsk-vhost-user: {bst}; stderr:\n{berr}");
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(
        done["released"],
        serde_json::json!((0..queues).collect::<Vec<_>>())
    );
    assert!(done["rx_packets"].as_u64().unwrap() > 1000, "{done}");
    assert!(done["tx_packets"].as_u64().unwrap() > 1000, "{done}");
    // Issue 15: status showed the frames the backend's sockets moved, as
    // the kernel counts them in their rings (not as the backend says).
    let sum = |name: &str| -> u64 {
        let socks = during["leases"][0]["sockets"].as_array().unwrap();
        assert_eq!(socks.len(), queues as usize, "{during:#}");
        socks
            .iter()
            .map(|s| {
                s[name]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no {name} in {s}"))
            })
            .sum()
    };
    let (rx, tx) = (sum("rx_packets"), sum("tx_packets"));
    eprintln!(
        "status during the run: rx_packets {rx}, tx_packets {tx}; the backend's own count at \
         the end: rx {}, tx {}",
        done["rx_packets"], done["tx_packets"]
    );
    assert!(rx > 1000 && tx > 1000, "rx {rx}, tx {tx}: {during:#}");
    // Read before the end, they cannot exceed what the backend handled in
    // all (in a quiet run they are equal).
    assert!(
        rx <= done["rx_packets"].as_u64().unwrap() && tx <= done["tx_packets"].as_u64().unwrap(),
        "rx {rx}, tx {tx}: {done}"
    );
    wait_until(
        "the XDP program to be detached after the backend exited",
        Duration::from_secs(10),
        || tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    let after = broker.status();
    assert_eq!(after["leases"], serde_json::json!([]), "{after:#}");
    assert!(!sock.exists(), "the vhost-user socket is left behind");
    let disconnected = backend
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "disconnected")
        .unwrap_or_else(|| panic!("no disconnected event:\n{}", backend.output()));
    eprintln!("{disconnected}");
    Some(Ran {
        console: std::mem::take(&mut qemu.seen),
        disconnected,
    })
}

/// One queue pair: stock QEMU's guest pings the peer and moves TCP both ways
/// through xsk-vhost-user; both run as nobody with no capability; the
/// backend exits and the lease ends when QEMU quits.
#[test]
fn vhost_user_stock_qemu_guest_pings_and_runs_tcp_both_ways() {
    run(
        "vhost_user_stock_qemu_guest_pings_and_runs_tcp_both_ways",
        1,
        Via::Broker,
    );
}

/// Two queue pairs (`VIRTIO_NET_F_MQ`, two vCPUs, two TCP streams each way):
/// the guest brings up both pairs and traffic arrives on both queues.
#[test]
fn vhost_user_stock_qemu_two_queue_pairs() {
    run("vhost_user_stock_qemu_two_queue_pairs", 2, Via::Broker);
}

/// QEMU 10.0 (built from Debian trixie's source, scripts/build-qemu
/// sock-fds: the version bookworm-backports ships), which asks for a reply to
/// the early `SET_VRING_ENABLE` (`NEED_REPLY`; 7.2 does not) and for
/// 1,024-entry virtqueues: the same guest, ping and TCP both ways, as nobody
/// with no capability. Until the relay answered those itself, QEMU 10 lost
/// the connection at start.
#[test]
fn vhost_user_qemu_10_guest_pings_and_runs_tcp_both_ways() {
    let test = "vhost_user_qemu_10_guest_pings_and_runs_tcp_both_ways";
    if !require_root(test) {
        return;
    }
    // Built (once, cached) before the e2e lock is taken.
    let qemu = built_qemu("sock-fds");
    run_with(test, &qemu, 1, Via::Broker, "");
}

/// Under `xsk-client exec`: the launcher leases the socket and passes it as
/// `--sock-fds {sock-fds}` (and the lease fd); same traffic; the lease ends
/// when the backend exits after QEMU.
#[test]
fn vhost_user_under_xsk_client_exec_sock_fds() {
    run("vhost_user_under_xsk_client_exec_sock_fds", 1, Via::Exec);
}

/// The guest resets its virtio device (unloads and reloads virtio_net: the
/// driver resets the device on removal and QEMU stops the vhost-user rings,
/// then starts them anew on probe) with two queue pairs: the new NIC pings
/// the peer and moves TCP both ways through the same backend connection.
/// (Measured: 8 ring stops with the reload, 4 — QEMU's quit only — with an
/// `ip link` down/up cycle instead, which does not reset the device.)
#[test]
fn vhost_user_guest_device_reset_gets_traffic_again() {
    let queues = 2;
    let Some(Ran {
        console,
        disconnected,
    }) = run_with(
        "vhost_user_guest_device_reset_gets_traffic_again",
        Path::new(QEMU),
        queues,
        Via::Broker,
        "net.reset=1",
    )
    else {
        return;
    };
    let reset = console
        .iter()
        .find(|l| l.starts_with("NET-RESET"))
        .unwrap_or_else(|| panic!("no NET-RESET line:\n{}", console.join("\n")));
    let (old, new) = reset
        .strip_prefix("NET-RESET ok ifindex=")
        .and_then(|r| r.split_once("->"))
        .unwrap_or_else(|| panic!("{reset}"));
    assert_ne!(old, new, "virtio_net was not reloaded: {reset}");
    assert!(
        console.iter().any(|l| l.starts_with("NET-REPING ok")),
        "{}",
        console.join("\n")
    );
    // The backend saw QEMU stop every ring twice: at the reset and when it
    // quit (an `ip link` down/up cycle stops none: it resets nothing).
    let rings = 2 * u64::from(queues);
    assert!(
        disconnected["ring_stops"].as_u64().unwrap() >= 2 * rings,
        "{disconnected}"
    );
}

/// The backend's threads whose name is `comm`.
fn threads_named(pid: u32, comm: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            let p = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(p).is_ok_and(|c| c.trim_end() == comm)
        })
        .count()
}

/// Mappings of memfd files (QEMU's `memory-backend-memfd` guest memory) in
/// process `pid`.
fn memfd_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/memfd:"))
        .count()
}

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// `--reconnect`: QEMU #1 boots, pings and is killed mid-run; the backend
/// stays, with its lease and socket, has stopped its worker threads and
/// unmapped the dead guest's memory; QEMU #2 boots on the same socket, pings
/// and moves TCP both ways through the same backend process; SIGTERM then
/// ends the backend: exit 0, lease released, program detached, socket
/// removed.
#[test]
fn vhost_user_reconnect_serves_a_restarted_vmm_then_stops_on_sigterm() {
    if !require_root("vhost_user_reconnect_serves_a_restarted_vmm_then_stops_on_sigterm") {
        return;
    }
    guest();
    let queues = 1;
    let _lock = serial_guard().expect("e2e lock");
    let bed = Bed::new(queues);
    let _iperf = bed.iperf();
    let (mut backend, ready) = bed.backend(queues, &["--reconnect"]);
    assert_eq!(ready["reconnect"], true, "{ready}");
    let bpid = backend.pid();
    let prog = bed.tb.xdp_prog_id().unwrap().expect("XDP program attached");
    assert_eq!(
        threads_named(bpid, "vring_worker"),
        0,
        "workers before a VMM"
    );

    // QEMU #1: killed once the guest has pinged (its iperf3 is starting).
    let mut q1 = bed.qemu(queues, "");
    assert_eq!(wait_event(&mut backend, "connected")["connection"], 1);
    let ping = q1.wait_line("NET-PING", GUEST_TIMEOUT);
    assert!(ping.starts_with("NET-PING ok"), "{}", q1.output());
    assert!(memfd_mappings(bpid) > 0, "the backend maps no guest memory");
    assert_eq!(threads_named(bpid, "vring_worker"), queues as usize);
    q1.kill();
    let gone = wait_event(&mut backend, "disconnected");
    assert_eq!(gone["connection"], 1, "{gone}");
    assert_eq!(gone["error"], Value::Null, "{gone}");
    assert!(gone["rx_packets"].as_u64().unwrap() >= 3, "{gone}");

    // Still there, same lease, same program; nothing of the old guest.
    assert!(
        backend.child.try_wait().unwrap().is_none(),
        "the backend exited: {}",
        backend.output()
    );
    assert!(bed.sock.exists(), "the vhost-user socket is gone");
    assert_eq!(
        threads_named(bpid, "vring_worker"),
        0,
        "workers left running"
    );
    assert_eq!(
        memfd_mappings(bpid),
        0,
        "the dead guest's memory is still mapped"
    );
    let st = bed.broker.status();
    assert_eq!(st["leases"][0]["holder"]["pid"], bpid, "{st:#}");
    assert_eq!(bed.tb.xdp_prog_id().unwrap(), Some(prog));

    // QEMU #2 on the same socket: the whole script, ping and TCP both ways.
    let mut q2 = bed.qemu(queues, "");
    assert_eq!(wait_event(&mut backend, "connected")["connection"], 2);
    let ping = q2.wait_line("NET-PING", GUEST_TIMEOUT);
    assert!(ping.starts_with("NET-PING ok"), "{}", q2.output());
    let up = q2.wait_line("NET-IPERF up", GUEST_TIMEOUT);
    let down = q2.wait_line("NET-IPERF down", GUEST_TIMEOUT);
    let exit = q2.wait_line("GUEST-EXIT", GUEST_TIMEOUT);
    let (qst, qerr) = q2.wait_exit(Duration::from_secs(60));
    assert_eq!(exit, "GUEST-EXIT rc=0", "{}", q2.output());
    assert!(qst.success(), "QEMU #2: {qst}; stderr:\n{qerr}");
    assert!(
        iperf_mbits(&up) > 0.0 && iperf_mbits(&down) > 0.0,
        "{up} / {down}"
    );
    eprintln!(
        "after a reconnect: guest TCP to the peer {} Mbit/s, from the peer {} Mbit/s",
        iperf_mbits(&up),
        iperf_mbits(&down)
    );
    let gone = wait_event(&mut backend, "disconnected");
    assert_eq!(gone["connection"], 2, "{gone}");
    assert_eq!(gone["error"], Value::Null, "{gone}");

    // SIGTERM while it waits for a third VMM: a clean end.
    kill(bpid, nix::sys::signal::Signal::SIGTERM);
    let done = wait_event(&mut backend, "done");
    let (bst, berr) = backend.wait_exit(Duration::from_secs(30));
    assert!(bst.success(), "xsk-vhost-user: {bst}; stderr:\n{berr}");
    assert_eq!(done["reason"], "signal", "{done}");
    assert_eq!(done["connections"], 2, "{done}");
    assert_eq!(done["released"], serde_json::json!([0]), "{done}");
    assert!(done["tx_packets"].as_u64().unwrap() > 1000, "{done}");
    wait_until(
        "the XDP program to be detached after SIGTERM",
        Duration::from_secs(10),
        || bed.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    assert_eq!(bed.broker.status()["leases"], serde_json::json!([]));
    assert!(!bed.sock.exists(), "the vhost-user socket is left behind");
}

/// SIGINT while a guest is running: the backend ends its connection, joins
/// its workers, releases the lease, removes its socket and exits 0.
#[test]
fn vhost_user_sigint_while_serving_exits_cleanly() {
    if !require_root("vhost_user_sigint_while_serving_exits_cleanly") {
        return;
    }
    guest();
    let _lock = serial_guard().expect("e2e lock");
    let bed = Bed::new(1);
    let (mut backend, _) = bed.backend(1, &[]);
    let bpid = backend.pid();
    let mut qemu = bed.qemu(1, "");
    wait_event(&mut backend, "connected");
    let ping = qemu.wait_line("NET-PING", GUEST_TIMEOUT);
    assert!(ping.starts_with("NET-PING ok"), "{}", qemu.output());

    kill(bpid, nix::sys::signal::Signal::SIGINT);
    let gone = wait_event(&mut backend, "disconnected");
    assert_eq!(gone["error"], Value::Null, "{gone}");
    let done = wait_event(&mut backend, "done");
    let (bst, berr) = backend.wait_exit(Duration::from_secs(30));
    assert!(bst.success(), "xsk-vhost-user: {bst}; stderr:\n{berr}");
    assert_eq!(done["reason"], "signal", "{done}");
    assert_eq!(done["released"], serde_json::json!([0]), "{done}");
    wait_until(
        "the XDP program to be detached after SIGINT",
        Duration::from_secs(10),
        || bed.tb.xdp_prog_id().unwrap().is_none().then_some(()),
    );
    assert_eq!(bed.broker.status()["leases"], serde_json::json!([]));
    assert!(!bed.sock.exists(), "the vhost-user socket is left behind");
    // What QEMU 7.2 makes of its backend going away, for the record.
    let (qst, qerr) = qemu.kill();
    eprintln!("QEMU after the backend left: {qst}; stderr:\n{qerr}");
}
