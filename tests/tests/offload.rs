//! The broker's warning about a veth whose peer leaves checksums partial
//! (transmit checksum offload on): TCP/UDP from that peer reaches AF_XDP
//! with partial checksums, and a VM guest behind QEMU drops it. Real veth
//! pair, real broker, real lease.

use std::time::Duration;

use xsk_broker_protocol::OpenRequest;
use xsk_client::BrokerClient;
use xsk_testbed::{require_root, serial_guard, wait_until, BrokerProcess, Netns, TempDir};

const WARNING: &str = "has tx checksum offload on";

/// Both ends of a veth in the broker's namespace: attaching to one end while
/// the other has tx checksum offload on (a veth's default) logs one warning
/// naming the peer and `ethtool -K PEER tx off`; once it is off, attaching
/// again logs none.
#[test]
fn broker_warns_when_the_veth_peer_has_tx_checksum_offload_on() {
    if !require_root("broker_warns_when_the_veth_peer_has_tx_checksum_offload_on") {
        return;
    }
    let _lock = serial_guard().expect("e2e lock");
    let ns = Netns::new("xtbo").expect("creating a namespace");
    ns.ip([
        "link", "add", "xo-a", "type", "veth", "peer", "name", "xo-b",
    ])
    .unwrap();
    for dev in ["xo-a", "xo-b"] {
        ns.ip(["link", "set", "dev", dev, "up"]).unwrap();
    }
    let features = ns.run(["ethtool", "-k", "xo-b"]).unwrap();
    assert!(
        features.contains("tx-checksumming: on"),
        "a new veth should have tx checksum offload on:\n{features}"
    );
    let dir = TempDir::new("xsk-offload").unwrap();
    let broker = BrokerProcess::spawn(&ns, dir.path()).expect("starting xsk-brokerd");
    let open = || {
        BrokerClient::connect(broker.socket_path())
            .unwrap()
            .open(OpenRequest::new("xo-a", 1))
            .expect("leasing queue 0 of xo-a")
    };
    let detached = |n: usize| {
        wait_until(
            "the program to be detached",
            Duration::from_secs(10),
            || (broker.log().matches("detached the XSK program").count() >= n).then_some(()),
        )
    };

    let lease = open();
    let log = broker.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("the peer of veth xo-a, xo-b")
            && lines[0].contains("`ethtool -K xo-b tx off`"),
        "{}",
        lines[0]
    );
    drop(lease);
    detached(1);

    ns.run(["ethtool", "-K", "xo-b", "tx", "off"]).unwrap();
    let lease = open();
    drop(lease);
    detached(2);
    let log = broker.log();
    assert_eq!(log.matches("attached the XSK program").count(), 2, "{log}");
    assert_eq!(log.matches(WARNING).count(), 1, "{log}");
}
