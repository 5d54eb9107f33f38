//! Command-line checks of `xsk-bench` that need no privileges and no traffic
//! (the benchmark itself is run by `scripts/bench`, not by the test suite).

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xsk-bench"))
}

#[test]
fn help_names_the_modes_and_options() {
    let out = bench().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "rxdrop",
        "txonly",
        "l2fwd",
        "--sock-fds",
        "--batch",
        "--ring-size",
        "--frames",
        "--no-need-wakeup",
        "--busy-poll",
        "--busy-poll-budget",
        "--prefer-busy-poll",
        "--queues",
        "--cpus",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

fn fails_with(args: &[&str], needle: &str) {
    let out = bench().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    fails_with(&["rxdrop"], "either --sock-fds");
    fails_with(&["rxdrop", "--sock-fds", "3"], "--sock-fds needs --ifindex");
    fails_with(
        &["rxdrop", "--ifname", "x", "--batch", "1024"],
        "batch_size",
    );
    fails_with(&["rxdrop", "--ifname", "x", "--frames", "7"], "frame_count");
    fails_with(
        &["rxdrop", "--ifname", "x", "--duration", "0"],
        "--duration",
    );
    fails_with(
        &["rxdrop", "--ifname", "x", "--dst-mac", "1:2"],
        "--dst-mac",
    );
    fails_with(&["floodping"], "invalid value");
    // A sock-fds list that names no AF_XDP socket.
    fails_with(
        &["rxdrop", "--sock-fds", "0", "--ifindex", "1"],
        "--sock-fds",
    );
}
