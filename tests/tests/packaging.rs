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
