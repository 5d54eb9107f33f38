//! End-to-end test of the C ABI: `tests/c/xsk_echo.c` is compiled with `cc`
//! against `include/xsk_client.h` and the built library, then run as uid
//! nobody with no capabilities against a real broker on a real veth pair; it
//! receives the peer's UDP traffic on every queue and sends it back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use xsk_testbed::{
    cap_eff, nobody_ids, proc_status_uid, require_root, run_command, serial_guard,
    spawn_unprivileged, udp_roundtrip, BrokerProcess, TempDir, Testbed, TEST_FRAMES,
};

/// `target/PROFILE`, where cargo put `libxsk_client_capi.{so,a}`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(3)
        .find(|d| d.join("libxsk_client_capi.so").is_file())
        .unwrap_or_else(|| panic!("libxsk_client_capi.so not found near {}", exe.display()))
        .to_path_buf()
}

fn compile(out: &Path, link: &[&str]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/xsk_echo.c");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(out)
        .args(link);
    run_command(&mut cmd).expect("compiling tests/c/xsk_echo.c with cc");
}

#[test]
fn c_program_receives_and_sends_through_the_c_abi() {
    if !require_root("c_program_receives_and_sends_through_the_c_abi") {
        return;
    }
    let _lock = serial_guard().unwrap();
    let dir = TempDir::new("xsk-capi").unwrap();
    let libs = lib_dir();
    let dynamic = dir.join("xsk_echo");
    let rpath = format!("-Wl,-rpath,{}", libs.display());
    let l = format!("-L{}", libs.display());
    compile(&dynamic, &[&l, "-lxsk_client_capi", &rpath]);
    // The static library links too (with the system libraries Rust's std needs).
    let a = libs.join("libxsk_client_capi.a");
    compile(
        &dir.join("xsk_echo_static"),
        &[
            a.to_str().unwrap(),
            "-lpthread",
            "-ldl",
            "-lm",
            "-lrt",
            "-lgcc_s",
        ],
    );

    const QUEUES: u32 = 2;
    let tb = Testbed::new(QUEUES).unwrap();
    let broker = BrokerProcess::spawn(&tb.xsk, dir.path()).unwrap();

    // A refusal comes back as XSK_ERR_REFUSED with the broker's message.
    let out = spawn_unprivileged(
        Command::new(&dynamic)
            .arg(broker.socket_path())
            .args(["xsk-nonesuch", "1", "64"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap()
    .wait_with_output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("xsk_open returned -3 (refused)"), "{err}");
    assert!(err.contains("no_such_interface"), "{err}");

    let mut child = spawn_unprivileged(
        Command::new(&dynamic)
            .arg(broker.socket_path())
            .arg(&tb.xsk_if)
            .arg(QUEUES.to_string())
            .arg(TEST_FRAMES.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no {what} line from xsk_echo"));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], what, "{line}");
        v
    };
    let ready = next("ready");
    let pid = child.id();
    let (nobody, _) = nobody_ids().unwrap();
    assert_eq!(proc_status_uid(pid).unwrap(), nobody.as_raw());
    assert_eq!(cap_eff(pid).unwrap(), 0);
    assert_eq!(ready["ifindex"], tb.xsk_ifindex);
    assert_eq!(ready["queues"][1]["queue_id"], 1);

    let rt = udp_roundtrip(&tb, 32, 8, Duration::from_secs(5)).unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let done = next("done");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    if let Err(e) = rt.verify() {
        panic!("{e:#}\nxsk_echo: {done}");
    }
    for q in done["queues"].as_array().unwrap() {
        assert!(
            q["rx_packets"].as_u64().unwrap() > 0 && q["tx_packets"].as_u64().unwrap() > 0,
            "queue {} carried no traffic: {done}",
            q["queue_id"]
        );
    }
    drop(broker);
}
