//! Confinement on the host kernel (GitHub-style issue 11, finding 1): every
//! socket the broker hands out is tied to its granted interface, and the
//! broker reports the confinement level it proved at start (start log,
//! status, `xsk-brokerctl status`, metrics).
//!
//! This machine's kernel refuses BPF LSM programs, so the broker runs at
//! level `interface` here; a CI kernel that runs them gets `kernel`, and the
//! assertions follow the level the broker reports (the queue and copy-mode
//! checks at level `kernel` are tests/guest_lsm.rs's).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xsk_testbed::{
    cap_eff, serial_guard, spawn_unprivileged, workspace_bin, BrokerProcess, TempDir, Testbed,
};

/// The second interface in the broker's namespace, which the policy does not
/// grant: a veth pair whose both ends stay in the broker's namespace.
struct OtherInterface {
    name: String,
    ifindex: u32,
}

fn add_other_interface(tb: &Testbed) -> OtherInterface {
    let name = format!("{}o", &tb.xsk_if[..tb.xsk_if.len().min(13)]);
    let ifindex = tb
        .add_local_veth(&name, 2)
        .expect("adding the second veth pair in the broker's namespace");
    OtherInterface { name, ifindex }
}

fn tx_packets(tb: &Testbed, ifname: &str) -> u64 {
    tb.xsk
        .run([
            "cat",
            &format!("/sys/class/net/{ifname}/statistics/tx_packets"),
        ])
        .expect("reading tx_packets")
        .trim()
        .parse()
        .expect("a counter")
}

/// A policy that grants uid nobody exactly one interface (never "*").
fn one_interface_policy(dir: &TempDir, ifname: &str) -> String {
    let path = dir.join("one-interface.json");
    let policy = serde_json::json!({
        "version": 1,
        "rules": [{"name": "one-interface", "users": ["nobody"], "interfaces": [ifname],
                   "max_queues": 2, "copy": ["auto", "copy"]}]
    });
    std::fs::write(&path, policy.to_string()).expect("writing the policy");
    path.display().to_string()
}

/// GET /metrics on the broker's metrics socket.
fn scrape(path: &Path) -> String {
    let mut s = UnixStream::connect(path).expect("connecting to the metrics socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading the metrics");
    out
}

fn brokerctl(socket: &Path, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("xsk-brokerctl").unwrap())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running xsk-brokerctl");
    assert!(out.status.success(), "xsk-brokerctl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Run `xsk-attack --socket SOCKET STEPS...` as uid nobody with no
/// capabilities (checked), and return its JSON lines.
fn attack(socket: &Path, steps: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(workspace_bin("xsk-attack").unwrap());
    cmd.arg("--socket")
        .arg(socket)
        .args(steps)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_unprivileged(&mut cmd).expect("starting xsk-attack as nobody");
    // The spawn checks the child dropped every capability; check again from outside.
    if let Ok(eff) = cap_eff(child.id()) {
        assert_eq!(eff, 0, "xsk-attack has capabilities");
    }
    let out = child.wait_with_output().expect("waiting for xsk-attack");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xsk-attack {steps:?} failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn leased_socket_cannot_bind_another_interface_and_level_is_reported() {
    if !xsk_testbed::require_root("leased_socket_cannot_bind_another_interface") {
        return;
    }
    let _lock = serial_guard().expect("e2e lock");
    let tb = Testbed::new(2).expect("building the veth test bed");
    let other = add_other_interface(&tb);
    let dir = TempDir::new("xsk-confine").expect("temp dir");
    let policy = one_interface_policy(&dir, &tb.xsk_if);
    let metrics = dir.join("metrics.sock");
    let metrics_arg = metrics.display().to_string();
    let broker = BrokerProcess::spawn_with_args(
        &tb.xsk,
        dir.path(),
        &["--policy", &policy, "--metrics-socket", &metrics_arg],
    )
    .expect("starting xsk-brokerd");

    // The level, from the status reply, agrees with the log, brokerctl and metrics.
    let status: Value =
        serde_json::from_str(&brokerctl(broker.socket_path(), &["status", "--json"]))
            .expect("status JSON");
    let level = status["confinement"]
        .as_str()
        .unwrap_or_else(|| panic!("no confinement in the status reply: {status}"))
        .to_owned();
    let log = broker.log();
    match level.as_str() {
        "interface" => assert!(
            log.contains("confinement: interface only (SO_BINDTOIFINDEX") && log.contains("canary"),
            "the start log does not say why the level is interface:\n{log}"
        ),
        "kernel" => assert!(log.contains("confinement: kernel"), "{log}"),
        other => panic!("unexpected confinement level {other:?}"),
    }
    assert!(
        log.contains(&format!("confinement={level}")),
        "the start log does not carry the level field:\n{log}"
    );
    let text = brokerctl(broker.socket_path(), &["status"]);
    assert!(
        text.contains(&format!("confinement: {level} (")),
        "xsk-brokerctl status does not show the level:\n{text}"
    );
    let scraped = scrape(&metrics);
    for (l, v) in [
        ("interface", level == "interface"),
        ("kernel", level == "kernel"),
    ] {
        let line = format!("xsk_broker_confinement{{level=\"{l}\"}} {}", u8::from(v));
        assert!(scraped.contains(&line), "metrics lack {line:?}:\n{scraped}");
    }

    // Finding 1: a holder granted only queue 0 of xsk_if binds its socket to
    // the other interface. The kernel refuses (EINVAL from SO_BINDTOIFINDEX;
    // EPERM where the LSM answers first), and nothing leaves through it.
    let tx_before = tx_packets(&tb, &other.name);
    let other_ifindex = other.ifindex.to_string();
    let steps = attack(
        broker.socket_path(),
        &[
            "open-copy",
            &tb.xsk_if,
            "0",
            "copy",
            "bind-device",
            &other_ifindex,
            "bind",
            &other_ifindex,
            "0",
            "2",
        ],
    );
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_eq!(steps[0]["ok"], true, "the lease was refused: {}", steps[0]);
    assert_eq!(steps[0]["ifindex"], tb.xsk_ifindex);
    // Without CAP_NET_RAW the holder cannot re-point the socket itself.
    assert_eq!(
        steps[1]["ok"], false,
        "SO_BINDTOIFINDEX was changed: {}",
        steps[1]
    );
    assert_eq!(steps[1]["errno"], libc::EPERM, "{}", steps[1]);
    let bind = &steps[2];
    assert_eq!(bind["ifindex"], other.ifindex, "{bind}");
    assert_eq!(
        bind["ok"], false,
        "the bind to another interface worked: {bind}"
    );
    let want = if level == "kernel" {
        libc::EPERM
    } else {
        libc::EINVAL
    };
    assert_eq!(bind["errno"], want, "bind to another interface: {bind}");
    // A new lease of the same queue, bound as granted, works: the refusal was
    // the interface's (one grant per connection: a second attacker run).
    let granted = attack(
        broker.socket_path(),
        &["open-copy", &tb.xsk_if, "0", "copy", "bind", "0", "0", "2"],
    );
    assert_eq!(granted.len(), 2, "{granted:?}");
    assert_eq!(
        granted[1]["ok"], true,
        "the granted bind failed: {}",
        granted[1]
    );
    assert_eq!(
        tx_packets(&tb, &other.name),
        tx_before,
        "packets left through the interface the policy does not grant"
    );
    // The policy does not grant the other interface at all.
    let refused = attack(broker.socket_path(), &["open", &other.name, "0"]);
    assert_eq!(refused[0]["code"], "not_permitted", "{}", refused[0]);
    drop(broker);
}

#[test]
fn confinement_kernel_refuses_to_start_unless_proven() {
    if !xsk_testbed::require_root("confinement_kernel_refuses_to_start_unless_proven") {
        return;
    }
    let dir = TempDir::new("xsk-confine-k").expect("temp dir");
    let socket = dir.join("broker.sock");
    let mut child = Command::new(workspace_bin("xsk-brokerd").unwrap())
        .arg("--socket")
        .arg(&socket)
        .args(["--confinement", "kernel"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xsk-brokerd");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Some(status) = status else {
        // Still running: this kernel proved level kernel. Then it must say so.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("confinement: kernel") && err.contains("canary"),
            "--confinement kernel kept running without proving level kernel:\n{err}"
        );
        return;
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "--confinement kernel exited 0:\n{err}");
    assert!(
        err.contains("--confinement kernel: full confinement is not proven, refusing to start")
            && err.contains("canary"),
        "the refusal does not name the option and the canary result:\n{err}"
    );
    assert!(
        !socket.exists(),
        "the refusing broker left its control socket behind"
    );
}
