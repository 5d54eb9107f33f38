//! `xsk_testbed`: a test bed of real kernel objects for xsk-broker's end-to-end tests and
//! its demo.
//!
//! Everything here creates real network namespaces, veth pairs, sockets and processes; there
//! are no mocks. The building blocks:
//!
//! * [`require_root`]: gate a test on root (skip locally, fail loudly in CI).
//! * [`Netns`]: an RAII named network namespace, with [`Netns::ip`], [`Netns::run`] and
//!   [`Netns::enter_thread`] to act inside it.
//! * [`Testbed`]: two namespaces (`xsk` side, where the broker runs, and `peer` side) joined
//!   by a multi-queue veth pair with IPv4 addresses and static neighbours;
//!   [`Testbed::xdp_prog_id`] and [`Testbed::xsk_rx_queue_xdp_packets`] observe the xsk end,
//!   [`XdpPass`] puts a foreign XDP program there, [`Testbed::cleanup_stale`] removes
//!   namespaces of killed test runs.
//! * [`spawn_unprivileged`], [`cap_eff`], [`proc_status_uid`], [`TempDir`]: run a client as
//!   `nobody` with no capabilities at all, and check that it really has none.
//! * [`send_udp`], [`udp_roundtrip`], [`Capture`]: traffic from and to the peer side.
//! * [`build_udp_frame`], [`parse_udp_frame`]: Ethernet/IPv4/UDP frames with real checksums.
//! * [`BrokerProcess`], [`workspace_bin`]: run `xsk-brokerd` inside the xsk namespace.
//! * [`Guest`], [`GuestSpec`], [`require_guest`]: a Debian kernel and busybox initramfs
//!   (`scripts/build-guest`) booted under TCG, for what the host kernel cannot do.
//! * [`LineProc`]: a child process watched line by line (JSON events, a guest's console).
//!
//! # Requirements
//!
//! Root (or at least CAP_SYS_ADMIN + CAP_NET_ADMIN + CAP_NET_RAW + CAP_SETUID/SETGID), the
//! `ip` tool from iproute2 and a kernel with veth and network namespaces. `ethtool` is *not*
//! needed: the peer's TX checksum offload is switched off with the `SIOCETHTOOL` ioctl
//! directly (the same request `ethtool -K IF tx off` makes). CI images that want to debug by
//! hand may still `apt-get install -y ethtool tcpdump`.
//!
//! # Drop order
//!
//! Declare a [`BrokerProcess`] *after* the [`Testbed`] it runs in, so it is dropped (and the
//! broker stopped) before the namespaces are deleted. A namespace with a process still inside
//! outlives `ip netns del` until that process exits.

#![warn(missing_docs)]

mod broker;
mod capture;
mod client;
mod cmd;
mod ethtool;
mod guest;
mod harness;
mod lines;
mod netns;
mod packet;
mod peer;
mod procfd;
mod testbed;
mod unpriv;
mod xdp;

pub use broker::{
    workspace_bin, BrokerProcess, BROKER_READY_TIMEOUT, BROKER_STOP_GRACE, TEST_POLICY,
};
pub use capture::Capture;
pub use client::{brokerctl, line_reader, serial_guard, ClientProcess, TEST_FRAMES};
pub use cmd::run_command;
pub use guest::{
    built_qemu, guest_crashed, guest_unavailable, iperf_mbits, net_guest, net_guest_boot_args,
    require_guest, tcg_shared_memory_machine_args, Guest, GuestSpec, NET_GUEST_IP, NET_GUEST_MAC,
};
pub use harness::{expect_error, wait_until, BpfFs, BrokerBed, RawPeer};
pub use lines::{LineProc, GUEST_CRASHED};
pub use netns::{cleanup_stale_netns, Netns};
pub use packet::{
    build_udp_frame, frame_checksums_ok, parse_udp_frame, reflect_udp_frame, UdpFrame, ETH_HLEN,
    IPV4_HLEN, UDP_FRAME_OVERHEAD, UDP_HLEN,
};
pub use peer::{
    roundtrip_payload, send_udp, send_udp_to, spread_over_queues, udp_roundtrip, udp_roundtrip_to,
    IperfServer, RoundTrip, DEFAULT_DST_PORT, FLOW_SRC_PORT_BASE, SPREAD_MIN,
};
pub use procfd::{proc_fds, proc_socket_domain};
pub use testbed::{xdp_attachments_from_link_json, Testbed, XdpMode, PEER_IP, XSK_IP};
pub use unpriv::{
    cap_eff, nobody_ids, proc_status_uid, proc_status_uids, spawn_nobody_with_caps,
    spawn_unprivileged, TempDir,
};
pub use xdp::XdpPass;

/// Decide whether a test that needs root can run.
///
/// Returns `true` when the effective uid is 0. Otherwise, when the environment variable
/// `CI` is `"true"`, this **panics** (a test helper: CI must run these tests as root, and a
/// silent skip there would hide that nothing was tested). Otherwise it prints
/// `SKIP {test}: needs root` to stderr and returns `false`; the caller should return early.
///
/// ```no_run
/// #[test]
/// fn my_test() {
///     if !xsk_testbed::require_root("my_test") {
///         return;
///     }
///     // ...
/// }
/// ```
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root for network namespaces; CI must run as root");
    }
    eprintln!("SKIP {test}: needs root (network namespaces, veth, AF_PACKET)");
    false
}
