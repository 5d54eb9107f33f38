//! The command line of `xsk-vhost-user`, without root. (Also what makes
//! `cargo test --workspace` build the binary that tests/tests/vhost_user.rs
//! runs end to end.)

use std::process::Command;

fn backend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xsk-vhost-user"))
}

#[test]
fn help_names_what_a_user_must_give() {
    let out = backend().arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--socket",
        "--broker",
        "--ifname",
        "--queues",
        "--sock-fds",
        "--mac",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}:\n{help}");
    }
}

#[test]
fn missing_or_unknown_arguments_are_usage_errors() {
    let out = backend()
        .args(["--socket", "/nonexistent/v.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ifname"));
    let out = backend().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

/// `xsk-vhost-user man` (what the Debian package's man page is made of)
/// needs none of the serving options and documents them all.
#[test]
fn man_writes_a_page_with_every_option() {
    let out = backend().arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    for opt in ["socket", "ifname", "queues", "reconnect", "sock\\-fds"] {
        assert!(page.contains(opt), "the man page lacks {opt}:\n{page}");
    }
}
