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

/// Run `systemd-socket-activate OPTS... xsk-brokerd ARGS...` listening on
/// `listen` (relative to a fresh directory), wake it with a connection (or a
/// datagram) so it execs the broker, and return the broker's exit code and
/// stderr. None when systemd-socket-activate is missing outside CI.
fn activated(
    opts: &[&str],
    listen: &[&str],
    args: &[&str],
    datagram: bool,
) -> Option<(i32, String)> {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "systemd-socket-activate is missing; scripts/install-deps installs package systemd"
        );
        eprintln!("SKIP: systemd-socket-activate not installed");
        return None;
    }
    let dir = std::env::temp_dir().join(format!(
        "xsk-cli-act-{}-{}",
        std::process::id(),
        listen.join("-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(opts);
    for l in listen {
        cmd.arg("-l").arg(dir.join(l));
    }
    let child = cmd
        .arg(env!("CARGO_BIN_EXE_xsk-brokerd"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = dir.join(listen[0]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut _keep = None;
    loop {
        let woke = if datagram {
            UnixDatagram::unbound()
                .and_then(|d| d.send_to(b"wake", &first))
                .is_ok()
        } else {
            UnixStream::connect(&first).map(|s| _keep = Some(s)).is_ok()
        };
        if woke {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never listened",
            first.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    Some((out.status.code().unwrap_or(-1), err))
}

#[test]
fn socket_activation_refuses_a_datagram_socket() {
    let Some((code, err)) = activated(&["--datagram"], &["d.sock"], &[], true) else {
        return;
    };
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("fd 3 is a Unix Datagram socket, not a stream socket"),
        "{err}"
    );
}

#[test]
fn socket_activation_refuses_more_than_one_socket() {
    let Some((code, err)) = activated(&[], &["a.sock", "b.sock"], &[], false) else {
        return;
    };
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("socket activation passed 2 file descriptors (LISTEN_FDS=2)"),
        "{err}"
    );
}

#[test]
fn socket_activation_refuses_an_fd_that_is_not_a_socket() {
    let out = Command::new("sh")
        .arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" 3</dev/null")
        .arg(env!("CARGO_BIN_EXE_xsk-brokerd"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("socket activation: fd 3 is not a socket"),
        "{err}"
    );
}

#[test]
fn without_a_socket_it_says_how_to_give_one() {
    let out = brokerd().output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no control socket: pass --socket PATH, or start xsk-brokerd through systemd socket activation"),
        "{err}"
    );
    // Variables meant for another process are ignored, and the error says so.
    let out = brokerd()
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LISTEN_FDS was set for pid 1, not this process"),
        "{err}"
    );
    let out = brokerd().env("LISTEN_FDS", "one").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LISTEN_FDS=\"one\" is not a number"), "{err}");
}

#[test]
fn metrics_options_are_validated() {
    let out = brokerd()
        .args([
            "--socket",
            "/tmp/unused.sock",
            "--metrics-listen",
            "0.0.0.0:9465",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0:9465 is not a loopback address"),
        "{err}"
    );

    let out = brokerd()
        .args([
            "--socket",
            "/tmp/unused.sock",
            "--metrics-listen",
            "localhost",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"localhost\" is not an ADDR:PORT"), "{err}");

    let out = brokerd()
        .args([
            "--socket",
            "/tmp/unused.sock",
            "--metrics-socket-mode",
            "0660",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-socket <PATH>"), "{err}");
}

/// Every option `--help` lists is explained in the README's operator guide.
#[test]
fn readme_covers_every_option_of_the_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for (bin, args) in [
        (env!("CARGO_BIN_EXE_xsk-brokerd"), &["--help"][..]),
        (env!("CARGO_BIN_EXE_xsk-brokerctl"), &["--help"][..]),
        (
            env!("CARGO_BIN_EXE_xsk-brokerctl"),
            &["status", "--help"][..],
        ),
    ] {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        let options: Vec<&str> = help
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches([',', '.', ')']))
            .filter(|w| !["--help", "--version"].contains(w))
            .collect();
        assert!(!options.is_empty(), "{help}");
        for opt in options {
            assert!(
                readme.contains(opt),
                "README.md does not mention {opt} ({bin} {args:?})"
            );
        }
    }
}

/// The state directory and the pin directory go together.
#[test]
fn state_dir_and_pin_dir_need_each_other() {
    for (given, missing) in [("--state-dir", "--pin-dir"), ("--pin-dir", "--state-dir")] {
        let out = brokerd()
            .args(["--socket", "/tmp/unused.sock", given, "/tmp/unused-dir"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(missing), "{given} without {missing}: {err}");
    }
}
