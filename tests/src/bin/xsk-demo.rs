//! `xsk-demo`: the whole system on its own veth pair, in one command.
//!
//! It makes two network namespaces joined by a 2-queue veth pair, starts
//! `xsk-brokerd` in one, runs `xsk-client echo` as uid nobody with no
//! capabilities, sends UDP request/response traffic from the peer namespace,
//! prints what happened and removes everything it made. Run as root.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xsk_testbed::{
    cap_eff, proc_status_uid, udp_roundtrip, BrokerProcess, ClientProcess, TempDir, Testbed,
};

const QUEUES: u32 = 2;
const FLOWS: u16 = 16;
const PER_FLOW: u32 = 64;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xsk-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the demo creates network namespaces and a veth pair");
    }
    println!("xsk-broker demo");
    println!("---------------");
    let tb = Testbed::new(QUEUES).context("creating the namespaces and veth pair")?;
    println!(
        "namespaces   {} (broker, {}) <-veth-> {} (peer, {}), {QUEUES} queues",
        tb.xsk.name(),
        tb.xsk_if,
        tb.peer.name(),
        tb.peer_if
    );
    // Testbed::new turned it off and checked; without this, TCP/UDP from the
    // veth peer reaches AF_XDP with partial checksums (see README.md).
    println!(
        "offload      tx checksum offload off on the peer (`ethtool -K {} tx off`): a veth \
         leaves TCP/UDP checksums partial, and AF_XDP passes them on as they are",
        tb.peer_if
    );
    let dir = TempDir::new("xsk-demo").context("creating a temporary directory")?;
    let broker = BrokerProcess::spawn(&tb.xsk, dir.path()).context("starting xsk-brokerd")?;
    println!(
        "broker       xsk-brokerd pid {} on {} (CapEff {:016x})",
        broker.pid(),
        broker.socket_path().display(),
        cap_eff(broker.pid()).unwrap_or(u64::MAX)
    );

    let queues = QUEUES.to_string();
    let mut client = ClientProcess::spawn(
        "echo",
        broker.socket_path(),
        &[
            "--ifname",
            &tb.xsk_if,
            "--queues",
            &queues,
            "--frames",
            "1024",
            "--require-unprivileged",
        ],
        None,
    )
    .context("starting xsk-client echo as nobody")?;
    let ready = client
        .wait_event("ready", Duration::from_secs(15))
        .context("waiting for the client to bind its sockets")?;
    println!(
        "client       xsk-client echo pid {} as uid {} (CapEff {:016x}; its own socket(AF_XDP): {})",
        client.pid(),
        proc_status_uid(client.pid()).unwrap_or(u32::MAX),
        cap_eff(client.pid()).unwrap_or(u64::MAX),
        ready["privileges"]["af_xdp_socket_error"]
            .as_str()
            .unwrap_or("allowed")
    );
    println!(
        "lease        {} ifindex {} queues {} — XDP {} mode, program id {}",
        ready["ifname"].as_str().unwrap_or("?"),
        ready["ifindex"],
        ready["queues"],
        ready["mode"].as_str().unwrap_or("?"),
        ready["program_id"]
    );

    let rt = udp_roundtrip(&tb, FLOWS, PER_FLOW, Duration::from_secs(20))
        .context("sending UDP traffic from the peer")?;
    let verified = rt.verify();
    let per_queue_xdp = tb.xsk_rx_queue_xdp_packets().unwrap_or_default();
    let (done, _status) = client.stop().context("stopping the client")?;

    println!(
        "peer         sent {} UDP datagrams on {FLOWS} flows, {} came back {}",
        rt.sent,
        rt.received,
        if verified.is_ok() {
            "intact, each exactly once"
        } else {
            "WITH ERRORS"
        }
    );
    println!(
        "client       {} packets in, {} packets out",
        done["rx_packets"], done["tx_packets"]
    );
    for q in done["queues"].as_array().into_iter().flatten() {
        let s = &q["xdp_statistics"];
        println!(
            "  queue {}    {} in, {} out; kernel: rx_dropped {}, rx_ring_full {}, fill_ring_empty {}",
            q["queue_id"],
            q["counters"]["rx_packets"],
            q["counters"]["tx_packets"],
            s["rx_dropped"],
            s["rx_ring_full"],
            s["rx_fill_ring_empty_descs"]
        );
    }
    if !per_queue_xdp.is_empty() {
        println!("kernel       XDP packets per rx queue: {per_queue_xdp:?}");
    }
    // The client has exited: the broker sees its connection close, ends
    // the lease and detaches the program (a few milliseconds, done by the
    // connection's thread). Stopping the broker before that would leave them
    // in place by design (a restarted broker keeps its holders' leases), so
    // give it that moment, then stop it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut left = tb.xdp_prog_id().unwrap_or(None);
    while left.is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = tb.xdp_prog_id().unwrap_or(None);
    }
    drop(broker);
    println!(
        "cleanup      lease ended; XDP program on {}: {}",
        tb.xsk_if,
        left.map_or("none left".to_owned(), |id| format!(
            "id {id} STILL ATTACHED"
        ))
    );
    drop(tb);
    verified.context("the echoed traffic did not verify")?;
    if left.is_some() {
        bail!("the XDP program was left attached");
    }
    println!("result       OK: all traffic echoed by an unprivileged process; namespaces removed");
    Ok(())
}
