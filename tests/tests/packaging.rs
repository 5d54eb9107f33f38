//! Packaging: the systemd units in packaging/systemd are valid for systemd
//! and grant the broker only what it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use xsk_testbed::{workspace_bin, TempDir};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// `systemd-analyze` is in Debian's `systemd` package (scripts/install-deps).
fn have_systemd_analyze(test: &str) -> bool {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: systemd-analyze is missing; scripts/install-deps installs package systemd"
    );
    eprintln!("SKIP {test}: systemd-analyze not installed");
    false
}

/// Copies of the units whose ExecStart= points at the freshly built broker
/// (`systemd-analyze verify` checks that the command exists).
fn units_for_verify(dir: &Path) -> Vec<PathBuf> {
    let brokerd = workspace_bin("xsk-brokerd").unwrap();
    ["xsk-broker.socket", "xsk-broker.service"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(units_dir().join(name)).unwrap();
            let text = text.replace("/usr/bin/xsk-brokerd", brokerd.to_str().unwrap());
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// Run `systemd-analyze verify --man=no UNITS...`; it exits 0 even for
/// unknown keys and bad values, so what it prints is returned too.
fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let test = "systemd_units_pass_systemd_analyze_verify";
    if !have_systemd_analyze(test) {
        return;
    }
    let dir = TempDir::new("xsk-units").unwrap();
    let units = units_for_verify(dir.path());
    let (ok, text) = verify(&units);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );

    // The check would catch a mistake: a misspelt value and an unknown key.
    let service = &units[1];
    let text = std::fs::read_to_string(service).unwrap();
    let broken = text.replace("ProtectHome=yes", "ProtectHome=yse\nFrobnicate=1");
    std::fs::write(service, broken).unwrap();
    let (_, text) = verify(&units);
    assert!(
        text.contains("ProtectHome") || text.contains("yse"),
        "{text}"
    );
    assert!(text.contains("Frobnicate"), "{text}");
}

fn directive(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// The service holds exactly CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF, the
/// sandbox directives the design asks for are there, and systemd's own
/// exposure score for it is low.
#[test]
fn systemd_service_grants_only_what_the_broker_needs() {
    let test = "systemd_service_grants_only_what_the_broker_needs";
    let unit = std::fs::read_to_string(units_dir().join("xsk-broker.service")).unwrap();
    let caps = "CAP_NET_ADMIN CAP_NET_RAW CAP_BPF";
    assert_eq!(directive(&unit, "CapabilityBoundingSet"), [caps]);
    assert_eq!(directive(&unit, "AmbientCapabilities"), [caps]);
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_NETLINK AF_XDP"),
        ("SystemCallFilter", "@system-service bpf"),
        ("RuntimeDirectory", "xsk-broker"),
    ] {
        assert_eq!(directive(&unit, key), [want], "{key}");
    }
    let socket = std::fs::read_to_string(units_dir().join("xsk-broker.socket")).unwrap();
    assert_eq!(
        directive(&socket, "ListenStream"),
        ["/run/xsk-broker/broker.sock"]
    );

    if !have_systemd_analyze(test) {
        return;
    }
    let dir = TempDir::new("xsk-units").unwrap();
    let units = units_for_verify(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&units[1])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for xsk-broker.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 3.0, "exposure {score} (0 best, 10 worst):\n{text}");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "xsk-broker"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Purges the package if a test installed it and failed half way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if package_installed() {
            let _ = Command::new("dpkg").args(["-P", "xsk-broker"]).output();
        }
    }
}

/// The Debian package (packaging/deb/build, cargo-deb) installs with dpkg,
/// its binaries, man pages, units and group are there and work (a lease
/// through the installed broker), and `dpkg -P` removes every trace.
///
/// Cost: about 10 s here; it packages the binaries `cargo test` already
/// built (dev profile, `--no-build`). scripts/install-deps installs
/// cargo-deb (one to two minutes, once).
#[test]
fn debian_package_installs_runs_and_purges() {
    use xsk_client::{BrokerClient, OpenRequest};
    use xsk_testbed::{require_root, serial_guard, BrokerProcess, Testbed};
    let test = "debian_package_installs_runs_and_purges";
    if !require_root(test) || !have_systemd_analyze(test) {
        return;
    }
    if Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{test}: cargo-deb is missing; scripts/install-deps installs it"
        );
        eprintln!("SKIP {test}: cargo-deb not installed");
        return;
    }
    // Held from here: another test run must not install or purge meanwhile.
    let _lock = serial_guard().unwrap();
    if package_installed() {
        panic!("{test}: package xsk-broker is already installed on this machine; not touching it");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = run(Command::new(root.join("packaging/deb/build"))
        .args(["--profile", "dev", "--no-build"])
        .current_dir(&root));
    let deb = out
        .lines()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no .deb named in:\n{out}"));
    assert!(deb.is_file(), "{}", deb.display());

    let _purge = Purge;
    run(Command::new("dpkg").arg("-i").arg(&deb));
    let files: Vec<PathBuf> = run(Command::new("dpkg").args(["-L", "xsk-broker"]))
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    for want in [
        "/usr/bin/xsk-brokerd",
        "/usr/bin/xsk-brokerctl",
        "/usr/bin/xsk-client",
        "/usr/share/man/man8/xsk-brokerd.8.gz",
        "/usr/share/man/man1/xsk-brokerctl.1.gz",
        "/usr/share/man/man1/xsk-brokerctl-status.1.gz",
        "/usr/share/man/man1/xsk-client.1.gz",
        "/usr/lib/systemd/system/xsk-broker.service",
        "/usr/lib/systemd/system/xsk-broker.socket",
        "/etc/default/xsk-broker",
        "/etc/xsk-broker/policy.json",
    ] {
        assert!(
            files.contains(&PathBuf::from(want)),
            "{want} not installed: {files:?}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    for bin in ["xsk-brokerd", "xsk-brokerctl", "xsk-client"] {
        let v = run(Command::new(format!("/usr/bin/{bin}")).arg("--version"));
        assert_eq!(v.trim(), format!("{bin} {version}"));
        let help = run(Command::new(format!("/usr/bin/{bin}")).arg("--help"));
        assert!(help.contains("Usage:"), "{bin} --help:\n{help}");
    }
    // The man page is the --help text.
    let man = run(Command::new("sh").args(["-c", "gzip -dc /usr/share/man/man8/xsk-brokerd.8.gz"]));
    for opt in ["socket\\-mode", "log\\-format", "metrics\\-listen"] {
        assert!(man.contains(opt), "xsk-brokerd.8 lacks {opt}:\n{man}");
    }
    let man = run(Command::new("sh").args(["-c", "gzip -dc /usr/share/man/man1/xsk-client.1.gz"]));
    for sub in ["rx", "tx", "echo", "exec"] {
        assert!(man.contains(sub), "xsk-client.1 lacks {sub}:\n{man}");
    }
    // The installed units verify against the installed binary.
    let (ok, text) = verify(&[
        PathBuf::from("/usr/lib/systemd/system/xsk-broker.socket"),
        PathBuf::from("/usr/lib/systemd/system/xsk-broker.service"),
    ]);
    assert!(ok && text.trim().is_empty(), "{text}");
    let group = run(Command::new("getent").args(["group", "xsk-broker"]));
    assert!(group.starts_with("xsk-broker:"), "{group}");

    // A lease through the installed broker, in a test bed.
    {
        let tb = Testbed::new(1).unwrap();
        let dir = TempDir::new("xsk-deb").unwrap();
        // With the packaged policy: members of group xsk-broker (and root) only.
        let broker = BrokerProcess::spawn_bin(
            Path::new("/usr/bin/xsk-brokerd"),
            &tb.xsk,
            dir.path(),
            &["--policy", "/etc/xsk-broker/policy.json"],
        )
        .unwrap();
        let outsider = xsk_testbed::ClientProcess::spawn(
            "rx",
            broker.socket_path(),
            &["--ifname", &tb.xsk_if, "--frames", "256"],
            None,
        )
        .unwrap();
        let (err, status) = outsider
            .wait_failure(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains("not_permitted")
                && err.contains("no rule of /etc/xsk-broker/policy.json admits uid 65534"),
            "{err}"
        );
        let lease = BrokerClient::connect(broker.socket_path())
            .unwrap()
            .open(OpenRequest::new(tb.xsk_if.clone(), 1))
            .unwrap();
        assert_eq!(lease.info().sockets.len(), 1);
        let status = run(Command::new("/usr/bin/xsk-brokerctl")
            .args(["status", "--socket"])
            .arg(broker.socket_path()));
        assert!(status.contains("1 lease(s), 1 queue(s)"), "{status}");
        drop(lease);
        drop(broker);
    }

    run(Command::new("dpkg").args(["-P", "xsk-broker"]));
    assert!(!package_installed());
    let left: Vec<&PathBuf> = files.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "left behind after dpkg -P: {left:?}");
    let dirs: Vec<&str> = ["/etc/systemd", "/var/lib/systemd"]
        .into_iter()
        .filter(|d| Path::new(d).is_dir())
        .collect();
    let traces = if dirs.is_empty() {
        String::new()
    } else {
        run(Command::new("find")
            .args(&dirs)
            .args(["-name", "*xsk-broker*"]))
    };
    assert!(traces.trim().is_empty(), "systemd traces left: {traces}");
    let group = Command::new("getent")
        .args(["group", "xsk-broker"])
        .output()
        .unwrap();
    assert!(!group.status.success(), "group xsk-broker left behind");
}

/// Expand a systemd syscall filter (`@group` names and syscalls) into the
/// syscalls it allows, with `systemd-analyze syscall-filter`.
fn expand_syscall_filter(items: &[&str]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            out.insert(item);
            continue;
        }
        if !seen.insert(item.clone()) {
            continue;
        }
        let text = run(Command::new("systemd-analyze").args(["syscall-filter", &item]));
        for line in text.lines().skip(1) {
            let w = line.trim();
            if w.is_empty() || w.starts_with('#') {
                continue;
            }
            todo.push(w.to_owned());
        }
    }
    out
}

/// Runs the broker under strace; kills it on drop.
struct Traced(std::process::Child);

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every system call and address family the broker uses while it serves
/// (start, a two-queue lease with traffic, status, a metrics scrape, a
/// refusal, release, SIGTERM) is allowed by the service's
/// `SystemCallFilter=` and `RestrictAddressFamilies=`: the sandbox does not
/// break the broker. Traced with strace on the real broker.
#[test]
fn service_sandbox_allows_every_syscall_and_family_the_broker_uses() {
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    use xsk_testbed::{
        require_root, serial_guard, udp_roundtrip, ClientProcess, Testbed, TEST_FRAMES,
    };
    let test = "service_sandbox_allows_every_syscall_and_family_the_broker_uses";
    if !require_root(test) || !have_systemd_analyze(test) {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{test}: strace is missing; scripts/install-deps installs it"
        );
        eprintln!("SKIP {test}: strace not installed");
        return;
    }
    let unit = std::fs::read_to_string(units_dir().join("xsk-broker.service")).unwrap();
    let filter = directive(&unit, "SystemCallFilter").join(" ");
    let allowed = expand_syscall_filter(&filter.split_whitespace().collect::<Vec<_>>());
    assert!(
        allowed.contains("bpf") && allowed.contains("read"),
        "{allowed:?}"
    );
    let families = directive(&unit, "RestrictAddressFamilies").join(" ");

    let _lock = serial_guard().unwrap();
    let tb = Testbed::new(2).unwrap();
    let dir = TempDir::new("xsk-strace").unwrap();
    let sock = dir.join("broker.sock");
    let msock = dir.join("metrics.sock");
    let trace = dir.join("strace.log");
    let policy = dir.join("policy.json");
    std::fs::write(&policy, xsk_testbed::TEST_POLICY).unwrap();
    let mut cmd = tb.xsk.exec_command(["strace", "-f", "-qq", "-o"]);
    cmd.arg(&trace)
        .arg(workspace_bin("xsk-brokerd").unwrap())
        .arg("--socket")
        .arg(&sock)
        .arg("--policy")
        .arg(&policy)
        .args(["--socket-mode", "0666", "--metrics-socket"])
        .arg(&msock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut traced = Traced(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(
            traced.0.try_wait().unwrap().is_none(),
            "the traced broker exited"
        );
        assert!(
            Instant::now() < deadline,
            "the traced broker never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let frames = TEST_FRAMES.to_string();
    let args = [
        "--ifname",
        tb.xsk_if.as_str(),
        "--queues",
        "2",
        "--frames",
        &frames,
    ];
    let mut c = ClientProcess::spawn("echo", &sock, &args, None).unwrap();
    c.wait_event("ready", Duration::from_secs(20)).unwrap();
    udp_roundtrip(&tb, 8, 4, Duration::from_secs(10))
        .unwrap()
        .verify()
        .unwrap();
    let refused = ClientProcess::spawn("rx", &sock, &args, None).unwrap();
    refused.wait_failure(Duration::from_secs(20)).unwrap();
    let status = run(Command::new(workspace_bin("xsk-brokerctl").unwrap())
        .args(["status", "--json", "--socket"])
        .arg(&sock));
    let status: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    {
        let mut m = UnixStream::connect(&msock).unwrap();
        std::io::Write::write_all(&mut m, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        std::io::Read::read_to_string(&mut m, &mut body).unwrap();
        assert!(body.contains("xsk_broker_xdp_rx_dropped_total"), "{body}");
    }
    c.stop().unwrap();
    let pid = status["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = traced.0.wait().unwrap();
    assert!(st.success(), "the traced broker: {st}");

    let log = std::fs::read_to_string(&trace).unwrap();
    let mut used = std::collections::BTreeSet::new();
    let mut used_families = std::collections::BTreeSet::new();
    for line in log.lines() {
        let Some((_pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // "<... x resumed>", "--- SIGTERM", "+++ exited"
        }
        used.insert(name.to_owned());
        if name == "socket" || name == "socketpair" {
            let fam = args.split([',', ' ']).next().unwrap_or("").to_owned();
            used_families.insert(if fam == "44" {
                "AF_XDP".to_owned()
            } else {
                fam
            });
        }
    }
    assert!(
        used.contains("bpf") && used.contains("sendmsg"),
        "the trace looks incomplete: {used:?}"
    );
    let denied: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        denied.is_empty(),
        "SystemCallFilter={filter} would deny {denied:?}"
    );
    for fam in &used_families {
        assert!(
            families.split_whitespace().any(|f| f == fam),
            "RestrictAddressFamilies={families} would deny {fam} (used: {used_families:?})"
        );
    }
    assert!(used_families.contains("AF_XDP"), "{used_families:?}");
}
