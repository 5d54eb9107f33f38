//! Command-line behaviour of xsk-client that needs no broker.
//! (These tests also make `cargo test` build the binary the end-to-end tests run.)

use std::process::Command;

fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xsk-client"))
}

#[test]
fn help_lists_the_subcommands() {
    let out = client().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["rx", "tx", "echo"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn missing_broker_is_named_with_what_to_check() {
    let out = client()
        .args([
            "rx",
            "--socket",
            "/nonexistent/xsk.sock",
            "--ifname",
            "eth0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the broker at /nonexistent/xsk.sock"),
        "{err}"
    );
    assert!(err.contains("is xsk-brokerd running"), "{err}");
}

#[test]
fn bad_settings_are_refused_before_connecting() {
    let out = client()
        .args([
            "rx",
            "--socket",
            "/nonexistent/xsk.sock",
            "--ifname",
            "eth0",
        ])
        .args(["--frame-size", "3000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid socket settings"), "{err}");
    assert!(err.contains("frame_size"), "{err}");
}

#[test]
fn require_unprivileged_refuses_a_privileged_process() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    if cap_eff == 0 {
        eprintln!("SKIP: this test process holds no capabilities to be refused for");
        return;
    }
    let out = client()
        .args([
            "rx",
            "--socket",
            "/nonexistent/xsk.sock",
            "--ifname",
            "eth0",
        ])
        .arg("--require-unprivileged")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--require-unprivileged: this process has CapEff"),
        "{err}"
    );
}
