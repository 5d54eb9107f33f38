//! UDP traffic from the peer namespace's kernel stack.

use crate::testbed::Testbed;
use anyhow::{anyhow, bail, Context, Result};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Default UDP destination port on the xsk side.
pub const DEFAULT_DST_PORT: u16 = 9000;
/// Flow `i` sends from UDP source port `FLOW_SRC_PORT_BASE + i` on the peer.
pub const FLOW_SRC_PORT_BASE: u16 = 40000;
/// How long [`udp_roundtrip`] waits for one round's replies before sending the next.
const ROUND_TIMEOUT: Duration = Duration::from_millis(500);

const RT_MAGIC: &[u8; 6] = b"xsk-rt";
const RT_PAYLOAD_LEN: usize = 48;
const SOCK_RCVBUF: libc::c_int = 4 << 20;

fn check_flows(flows: u16) -> Result<()> {
    if flows == 0 || u32::from(FLOW_SRC_PORT_BASE) + u32::from(flows) > 65536 {
        bail!(
            "flows must be 1..={}, got {flows}",
            65536 - u32::from(FLOW_SRC_PORT_BASE)
        );
    }
    Ok(())
}

/// Bind one UDP socket per flow to `PEER_IP:FLOW_SRC_PORT_BASE+i`. Runs in the peer ns.
fn flow_sockets(tb: &Testbed, flows: u16) -> Result<Vec<UdpSocket>> {
    (0..flows)
        .map(|i| {
            let port = FLOW_SRC_PORT_BASE + i;
            let s = UdpSocket::bind(SocketAddrV4::new(tb.peer_ip, port)).with_context(|| {
                format!(
                    "binding UDP {}:{port} in netns {}",
                    tb.peer_ip,
                    tb.peer.name()
                )
            })?;
            let v = SOCK_RCVBUF;
            // Best effort (SO_RCVBUFFORCE needs CAP_NET_ADMIN): room for bursts of echoes.
            // SAFETY: valid int option on a valid socket.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            Ok(s)
        })
        .collect()
}

/// `send_to` that retries on transient queue-full errors.
fn send_retry(
    s: &UdpSocket,
    buf: &[u8],
    to: SocketAddrV4,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let mut tries = 0u32;
    loop {
        match s.send_to(buf, to) {
            Ok(_) => return Ok(()),
            Err(e)
                if tries < 1000
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR)
                    ) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what())),
        }
    }
}

/// What each rx queue of the xsk end gets at least from [`spread_over_queues`].
pub const SPREAD_MIN: u64 = 32;

/// Make sure traffic from the peer reaches every one of the xsk end's `queues` rx
/// queues: 64 UDP flows (distinct source ports, so distinct hashes and veth TX queues
/// on the peer) of 4 datagrams each to the xsk side's address. A few TCP streams are
/// not enough: each lands on one queue, so with two queues four streams all land on
/// the same one one time in eight. Here a queue gets fewer than [`SPREAD_MIN`]
/// datagrams only if fewer than 8 of the 64 flows hash to it (about 3e-10 with two
/// queues). With one queue it sends nothing.
pub fn spread_over_queues(tb: &Testbed, queues: u32) -> Result<()> {
    if queues < 2 {
        return Ok(());
    }
    send_udp(tb, 64, 4, |flow, seq| {
        format!("xsk-broker test: spread flow {flow} seq {seq}").into_bytes()
    })
}

/// [`send_udp_to`] with destination port [`DEFAULT_DST_PORT`].
pub fn send_udp(
    tb: &Testbed,
    flows: u16,
    per_flow: u32,
    payload: impl Fn(u16, u32) -> Vec<u8> + Sync,
) -> Result<()> {
    send_udp_to(tb, DEFAULT_DST_PORT, flows, per_flow, payload)
}

/// From the peer namespace, send `per_flow` datagrams on each of `flows` UDP flows to
/// `xsk_ip:dst_port`. Flow `i` is a socket bound to `peer_ip:FLOW_SRC_PORT_BASE+i`;
/// datagram `seq` of flow `i` carries `payload(i, seq)`. Sending is interleaved (seq 0 of
/// every flow, then seq 1, ...). Distinct flows hash to different veth TX queues and thus
/// arrive on different RX queues of the xsk end (with XDP attached there).
pub fn send_udp_to(
    tb: &Testbed,
    dst_port: u16,
    flows: u16,
    per_flow: u32,
    payload: impl Fn(u16, u32) -> Vec<u8> + Sync,
) -> Result<()> {
    check_flows(flows)?;
    let to = SocketAddrV4::new(tb.xsk_ip, dst_port);
    tb.peer.enter_thread(|| -> Result<()> {
        let socks = flow_sockets(tb, flows)?;
        for seq in 0..per_flow {
            for (i, s) in socks.iter().enumerate() {
                let i = i as u16;
                send_retry(s, &payload(i, seq), to, &|| {
                    format!(
                        "sending flow {i} seq {seq} from port {} to {to} in netns {}",
                        FLOW_SRC_PORT_BASE + i,
                        tb.peer.name()
                    )
                })?;
            }
        }
        Ok(())
    })?
}

/// The payload [`udp_roundtrip`] sends as datagram `seq` of flow `flow`: 48 bytes,
/// `"xsk-rt"`, flow (u16 BE), seq (u32 BE), then a pattern derived from both (so corrupted
/// or misrouted echoes are recognisable).
pub fn roundtrip_payload(flow: u16, seq: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(RT_PAYLOAD_LEN);
    p.extend_from_slice(RT_MAGIC);
    p.extend_from_slice(&flow.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let mut x = (u32::from(flow) << 16) ^ seq ^ 0x9e37_79b9;
    while p.len() < RT_PAYLOAD_LEN {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        p.push((x >> 24) as u8);
    }
    p
}

/// Decode `(flow, seq)` from a [`roundtrip_payload`], if it is one exactly.
fn decode_roundtrip_payload(p: &[u8]) -> Option<(u16, u32)> {
    if p.len() != RT_PAYLOAD_LEN || &p[..6] != RT_MAGIC {
        return None;
    }
    let flow = u16::from_be_bytes([p[6], p[7]]);
    let seq = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    (roundtrip_payload(flow, seq) == p).then_some((flow, seq))
}

/// The result of [`udp_roundtrip`].
#[derive(Debug, Clone, Default)]
pub struct RoundTrip {
    /// Datagrams per flow that were sent.
    pub per_flow_sent: u32,
    /// Datagrams sent in total.
    pub sent: u64,
    /// Datagrams received back in total (on the flows' sockets, from `xsk_ip:dst_port`).
    pub received: u64,
    /// Datagrams that arrived on a flow socket from any other address (not counted in
    /// `received`, not in `per_flow`).
    pub foreign: u64,
    /// `per_flow[i]`: the payloads received on flow `i`'s socket, in arrival order.
    pub per_flow: Vec<Vec<Vec<u8>>>,
}

impl RoundTrip {
    /// Datagrams sent but not received back.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Check the echoes: every datagram came back exactly once, on the socket of the flow
    /// that sent it, with its payload intact, and nothing arrived from a foreign address.
    /// The error lists what is wrong (first few problems per kind).
    pub fn verify(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut dups = 0u64;
        let mut wrong = 0u64;
        let mut missing = 0u64;
        for (flow, payloads) in self.per_flow.iter().enumerate() {
            let mut seen = vec![false; self.per_flow_sent as usize];
            for p in payloads {
                match decode_roundtrip_payload(p) {
                    Some((f, s)) if usize::from(f) == flow && s < self.per_flow_sent => {
                        if std::mem::replace(&mut seen[s as usize], true) {
                            dups += 1;
                            if dups <= 3 {
                                problems.push(format!("flow {flow}: seq {s} received twice"));
                            }
                        }
                    }
                    other => {
                        wrong += 1;
                        if wrong <= 3 {
                            problems.push(format!(
                                "flow {flow}: unexpected payload ({}), {} bytes: {:02x?}",
                                match other {
                                    Some((f, s)) => format!("flow {f} seq {s}"),
                                    None => "not a roundtrip payload".to_owned(),
                                },
                                p.len(),
                                &p[..p.len().min(16)]
                            ));
                        }
                    }
                }
            }
            let m = seen.iter().filter(|s| !**s).count() as u64;
            if m > 0 && missing < 3 {
                problems.push(format!(
                    "flow {flow}: {m} of {} missing",
                    self.per_flow_sent
                ));
            }
            missing += m;
        }
        if self.foreign > 0 {
            problems.push(format!("{} datagrams from a foreign address", self.foreign));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(anyhow!(
            "round trip: sent {}, received {}, missing {missing}, duplicates {dups}, wrong {wrong}: {}",
            self.sent,
            self.received,
            problems.join("; ")
        ))
    }
}

/// [`udp_roundtrip_to`] with destination port [`DEFAULT_DST_PORT`].
pub fn udp_roundtrip(
    tb: &Testbed,
    flows: u16,
    per_flow: u32,
    timeout: Duration,
) -> Result<RoundTrip> {
    udp_roundtrip_to(tb, DEFAULT_DST_PORT, flows, per_flow, timeout)
}

/// From the peer namespace, send [`roundtrip_payload`]`(i, seq)` for `seq < per_flow` on
/// each flow `i < flows` (as [`send_udp_to`]) to `xsk_ip:dst_port`, and collect the
/// datagrams that come back to the flows' sockets, which is where a reflector on the xsk
/// side that swaps MACs, IPs and UDP ports sends them.
///
/// It runs in request/response rounds: one datagram per flow, then up to 500 ms for that
/// round's replies before the next round, so at most `flows` datagrams are in flight.
/// The whole run, including the wait for the last replies, is bounded by `timeout`.
/// Losses are reported in the result, not as an error; use [`RoundTrip::verify`].
pub fn udp_roundtrip_to(
    tb: &Testbed,
    dst_port: u16,
    flows: u16,
    per_flow: u32,
    timeout: Duration,
) -> Result<RoundTrip> {
    check_flows(flows)?;
    let to = SocketAddrV4::new(tb.xsk_ip, dst_port);
    let ns = tb.peer.name().to_owned();
    tb.peer.enter_thread(|| -> Result<RoundTrip> {
        let socks = flow_sockets(tb, flows)?;
        for s in &socks {
            s.set_nonblocking(true)
                .with_context(|| format!("O_NONBLOCK on a flow socket in netns {ns}"))?;
        }
        let mut rt = RoundTrip {
            per_flow_sent: per_flow,
            per_flow: vec![Vec::new(); usize::from(flows)],
            ..RoundTrip::default()
        };
        let mut buf = vec![0u8; 65536];
        let drain = |rt: &mut RoundTrip, buf: &mut [u8]| -> Result<()> {
            for (i, s) in socks.iter().enumerate() {
                loop {
                    match s.recv_from(buf) {
                        Ok((n, from)) => {
                            if from == SocketAddr::V4(to) {
                                rt.received += 1;
                                rt.per_flow[i].push(buf[..n].to_vec());
                            } else {
                                rt.foreign += 1;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        // An ICMP error queued on the socket (e.g. port unreachable from the
                        // xsk stack when no XDP program redirects): not a reply, keep going.
                        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                        Err(e) => {
                            return Err(anyhow::Error::new(e)
                                .context(format!("recv on flow {i} socket in netns {ns}")))
                        }
                    }
                }
            }
            Ok(())
        };
        let mut pfds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Wait until every datagram sent so far has come back, or `deadline`.
        let mut wait_replies = |rt: &mut RoundTrip, buf: &mut [u8], deadline: Instant| {
            drain(rt, buf)?;
            while rt.received < rt.sent {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
                // SAFETY: pfds is a valid array of pollfd for the sockets alive in `socks`.
                let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
                if rc < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(anyhow::Error::new(e).context("poll on flow sockets"));
                    }
                }
                drain(rt, buf)?;
            }
            Ok(())
        };
        // Request/response rounds: one datagram per flow, then wait for that
        // round's replies, so at most `flows` datagrams are in flight and a
        // reflector's rings never have to absorb the whole run at once.
        let deadline = Instant::now() + timeout;
        for seq in 0..per_flow {
            for (i, s) in socks.iter().enumerate() {
                let i = i as u16;
                send_retry(s, &roundtrip_payload(i, seq), to, &|| {
                    format!("sending flow {i} seq {seq} to {to} in netns {ns}")
                })?;
                rt.sent += 1;
            }
            let round_deadline = (Instant::now() + ROUND_TIMEOUT).min(deadline);
            wait_replies(&mut rt, &mut buf, round_deadline)?;
        }
        wait_replies(&mut rt, &mut buf, deadline)?;
        Ok(rt)
    })?
}

/// `iperf3 -s` on the peer's address in the peer namespace (for guests that
/// run `iperf3 -c` to it), killed on drop.
pub struct IperfServer(std::process::Child);

impl IperfServer {
    /// Start it; its output goes nowhere.
    pub fn start(tb: &Testbed) -> Result<IperfServer> {
        tb.peer
            .exec_command(["iperf3", "-s", "-B", &crate::PEER_IP.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(IperfServer)
            .with_context(|| format!("starting iperf3 -s in netns {}", tb.peer.name()))
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_codec() {
        let p = roundtrip_payload(3, 77);
        assert_eq!(p.len(), RT_PAYLOAD_LEN);
        assert_eq!(decode_roundtrip_payload(&p), Some((3, 77)));
        assert_ne!(roundtrip_payload(3, 78), p);
        let mut q = p.clone();
        q[40] ^= 1;
        assert_eq!(decode_roundtrip_payload(&q), None);
        assert_eq!(decode_roundtrip_payload(&p[..10]), None);
    }

    #[test]
    fn verify_reports_problems() {
        let mut rt = RoundTrip {
            per_flow_sent: 2,
            sent: 4,
            received: 4,
            foreign: 0,
            per_flow: vec![
                vec![roundtrip_payload(0, 0), roundtrip_payload(0, 1)],
                vec![roundtrip_payload(1, 1), roundtrip_payload(1, 0)],
            ],
        };
        rt.verify().unwrap();
        rt.per_flow[1][0] = roundtrip_payload(0, 1); // misrouted
        let e = rt.verify().unwrap_err().to_string();
        assert!(e.contains("flow 1"), "{e}");
        rt.per_flow[1][0] = roundtrip_payload(1, 0); // duplicate, seq 1 missing
        let e = rt.verify().unwrap_err().to_string();
        assert!(e.contains("twice") && e.contains("missing"), "{e}");
    }
}
