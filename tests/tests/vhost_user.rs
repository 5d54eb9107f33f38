//! End-to-end test of `xsk-vhost-user` with Debian's stock QEMU
//! (`/usr/bin/qemu-system-x86_64` from qemu-system-x86, which has no af-xdp
//! netdev): the backend, as uid nobody with no capability at all, leases a
//! queue of the test bed's veth from the broker and serves QEMU's
//! `-netdev vhost-user`; QEMU, also nobody with no capability, boots the tiny
//! test guest (tests/guest/qemu-net.sh, built by `scripts/build-guest`),
//! which pings the peer and runs TCP both ways. When QEMU quits, the backend
//! exits 0 and the broker ends the lease.
//!
//! Slow (the guest runs under TCG). Under CI=true a failure to build or boot
//! fails the test.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;
use xsk_testbed::{
    brokerctl, cap_eff, line_reader, net_guest, nobody_ids, proc_status_uid, require_root,
    serial_guard, spawn_unprivileged, wait_until, workspace_bin, BrokerProcess, TempDir, Testbed,
    PEER_IP,
};

/// Debian's QEMU (package qemu-system-x86).
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The guest's address on the test bed's subnet (the xsk end has .1, the peer .2).
const GUEST_IP: &str = "198.18.0.3";
/// The guest NIC's MAC address.
const GUEST_MAC: &str = "52:54:00:00:00:03";
/// Boot, ping and two iperf3 runs under TCG on a busy 2-core machine.
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest of tests/qemu.rs (same spec, so the same cached build), built
/// once per test process (build-guest must not run twice at once).
/// The guest: [`net_guest`].
fn guest() -> PathBuf {
    net_guest().to_path_buf()
}

/// A child process as nobody whose stdout lines are read on a thread.
struct Proc {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            spawn_unprivileged(cmd).unwrap_or_else(|e| panic!("starting {name} as nobody: {e:#}"));
        let lines = line_reader(child.stdout.take().unwrap());
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Wait for a line starting with `prefix`.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let line = line.trim_end_matches('\r').to_owned();
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    panic!(
                        "{} ({status:?}): no {prefix:?} line within {timeout:?} ({e:?}); output:\n{}\nstderr:\n{}",
                        self.name,
                        self.seen.join("\n"),
                        err.unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Wait for the process to exit by itself; its status and stderr.
    fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return (st, err.unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; output:\n{}",
                self.name,
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `iperf3 -s` in the peer namespace, killed on drop.
struct IperfServer(Child);

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(broker: &BrokerProcess) -> Value {
    let out = brokerctl(broker.socket_path(), &["status", "--json"], false)
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn mbits(line: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("mbits="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no throughput in {line:?}"))
}

/// QEMU's arguments for the vhost-user NIC on `sock` (README.md shows the same).
fn qemu_args(guest: &Path, sock: &Path, queues: u32) -> Vec<String> {
    // `vectors=0`: no MSI-X. Debian's QEMU 7.2 under TCG crashes in
    // msix_set_vector_notifiers when it starts a vhost-user NIC with MSI-X
    // (SIGSEGV from vhost_net_start); INTx works.
    let mq = if queues > 1 {
        ",mq=on,vectors=0"
    } else {
        ",vectors=0"
    };
    [
        "-accel",
        "tcg",
        "-cpu",
        "max,-cx16",
        "-smp",
        &queues.to_string(),
        "-m",
        "256",
        "-object",
        "memory-backend-memfd,id=mem,size=256M,share=on",
        "-numa",
        "node,memdev=mem",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-L",
        "/usr/share/seabios",
        "-L",
        "/usr/share/qemu",
        "-kernel",
        &format!("{}/vmlinuz", guest.display()),
        "-initrd",
        &format!("{}/initrd.img", guest.display()),
        "-append",
        &format!(
            "console=ttyS0 panic=-1 quiet guest.run=/guest/qemu-net.sh \
             net.ip={GUEST_IP}/24 net.peer={PEER_IP} net.streams={queues}"
        ),
        "-chardev",
        &format!("socket,id=c0,path={}", sock.display()),
        "-netdev",
        &format!("vhost-user,id=n0,chardev=c0,queues={queues}"),
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}{mq},romfile="),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The next JSON line of `p` whose `event` is `name`.
fn wait_event(p: &mut Proc, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = p.wait_line("{", deadline.saturating_duration_since(Instant::now()));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["event"] == name {
            return v;
        }
    }
}

/// How the backend gets its sockets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// It leases them from the broker itself.
    Broker,
    /// `xsk-client exec` leases them and passes `--sock-fds {sock-fds}`.
    Exec,
}

fn run(test: &str, queues: u32, via: Via) {
    if !require_root(test) {
        return;
    }
    assert!(
        Path::new(QEMU).is_file(),
        "{QEMU} is missing: scripts/install-deps installs qemu-system-x86"
    );
    let guest = guest();
    let backend_bin = workspace_bin("xsk-vhost-user").unwrap();

    let _lock = serial_guard().expect("e2e lock");
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

    let iperf = IperfServer(
        tb.peer
            .exec_command(["iperf3", "-s", "-B", &PEER_IP.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting iperf3 -s in the peer namespace"),
    );

    let xdp_before = tb.xsk_rx_queue_xdp_packets().unwrap();
    let started = Instant::now();
    let q = queues.to_string();
    let sock_s = sock.to_str().unwrap();
    let mut backend = match via {
        Via::Broker => Proc::spawn(
            "xsk-vhost-user",
            Command::new(&backend_bin).args([
                "--socket",
                sock_s,
                "--broker",
                broker.socket_path().to_str().unwrap(),
                "--ifname",
                &tb.xsk_if,
                "--queues",
                &q,
                "--mac",
                GUEST_MAC,
                "--json",
            ]),
        ),
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
            tb.xsk
                .enter_thread(|| Proc::spawn("xsk-client exec xsk-vhost-user", &mut cmd))
                .expect("entering the xsk namespace")
        }
    };
    let ready = wait_event(&mut backend, "ready");
    assert_eq!(
        ready["queues"],
        serde_json::json!((0..queues).collect::<Vec<_>>())
    );
    let bpid = backend.child.id();
    assert_eq!(proc_status_uid(bpid).unwrap(), nobody.as_raw());
    assert_eq!(cap_eff(bpid).unwrap(), 0, "the backend's CapEff");
    let st = status(&broker);
    assert_eq!(st["leases"][0]["holder"]["pid"], bpid, "{st:#}");

    let mut qemu = Proc::spawn(
        "qemu",
        Command::new(QEMU).args(qemu_args(&guest, &sock, queues)),
    );
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
    let up = qemu.wait_line("NET-IPERF up", GUEST_TIMEOUT);
    let down = qemu.wait_line("NET-IPERF down", GUEST_TIMEOUT);
    // Read while the backend still holds the lease (QEMU runs).
    let during = status(&broker);
    let rxirq = qemu.wait_line("NET-RXIRQ", GUEST_TIMEOUT);
    let exit = qemu.wait_line("GUEST-EXIT", GUEST_TIMEOUT);
    let (qst, qerr) = qemu.wait_exit(Duration::from_secs(60));
    eprintln!(
        "vhost-user queues={queues}: guest TCP to the peer {} Mbit/s, from the peer {} Mbit/s \
         (TCG), {rxirq}, {:.1}s in all",
        mbits(&up),
        mbits(&down),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(exit, "GUEST-EXIT rc=0", "{}", qemu.seen.join("\n"));
    assert!(qst.success(), "QEMU: {qst}; stderr:\n{qerr}");
    assert!(mbits(&up) > 0.0 && mbits(&down) > 0.0, "{up} / {down}");
    drop(iperf);
    // The peer's traffic reached the guest on every queue pair (the veth's
    // XDP counted packets on each rx queue, whose sockets the backend reads).
    let xdp_after = tb.xsk_rx_queue_xdp_packets().unwrap();
    for q in 0..queues as usize {
        assert!(
            xdp_after[q] > xdp_before[q] + 100,
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
    let after = status(&broker);
    assert_eq!(after["leases"], serde_json::json!([]), "{after:#}");
    assert!(!sock.exists(), "the vhost-user socket is left behind");
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

/// Under `xsk-client exec`: the launcher leases the socket and passes it as
/// `--sock-fds {sock-fds}` (and the lease fd); same traffic; the lease ends
/// when the backend exits after QEMU.
#[test]
fn vhost_user_under_xsk_client_exec_sock_fds() {
    run("vhost_user_under_xsk_client_exec_sock_fds", 1, Via::Exec);
}
