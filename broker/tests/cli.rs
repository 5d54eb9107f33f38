//! Command-line behaviour of xsk-brokerd that needs no privileges.
//! (These tests also make `cargo test` build the binary the end-to-end tests run.)

use std::process::Command;

fn brokerd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xsk-brokerd"))
}

#[test]
fn help_names_the_options() {
    let out = brokerd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in ["--socket", "--socket-mode", "--log-level"] {
        assert!(text.contains(opt), "--help lacks {opt}:\n{text}");
    }
}

#[test]
fn bad_socket_mode_is_refused_with_its_value() {
    let out = brokerd()
        .args(["--socket", "/tmp/unused.sock", "--socket-mode", "999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"999\" is not an octal mode"), "{err}");
}

#[test]
fn a_file_that_is_not_a_socket_is_never_replaced() {
    let dir = std::env::temp_dir().join(format!("xsk-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("precious");
    std::fs::write(&path, b"keep me").unwrap();
    let out = brokerd().arg("--socket").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a socket; refusing to replace it"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn log_options_are_validated_with_their_values() {
    let out = brokerd()
        .args(["--socket", "/tmp/unused.sock", "--log-level", "info,x=["])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"info,x=[\" is not a log filter"), "{err}");

    let out = brokerd()
        .args(["--socket", "/tmp/unused.sock", "--log-format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'yaml' for '--log-format"), "{err}");
    assert!(err.contains("human, json"), "{err}");

    let out = brokerd()
        .args(["--socket", "/tmp/unused.sock"])
        .env("XSK_BROKER_LOG", "info,=[")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("XSK_BROKER_LOG=\"info,=[\" is not a log filter"),
        "{err}"
    );
}
