//! Prometheus text metrics (exposition format 0.0.4) over plain HTTP, on a
//! Unix socket and/or a loopback TCP port: `GET /metrics`.
//!
//! Counters since start (grants, releases, refusals by error code) and, read
//! at scrape time, the leases, leased queues and each leased socket's frames
//! received and sent (its ring positions) and kernel `XDP_STATISTICS`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use crate::stats::{Snapshot, SnapshotSource};
use tracing::{debug, warn};
use xsk_broker_protocol::ConfinementLevel;

/// Escape a label value (`\`, `"` and newlines).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition: counters, gauges and per-socket statistics.
pub fn render(snap: &Snapshot) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "xsk_broker_info",
        "gauge",
        "Broker version (always 1).",
    );
    let _ = writeln!(
        o,
        "xsk_broker_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut o,
        "xsk_broker_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    let _ = writeln!(
        o,
        "xsk_broker_uptime_seconds {:.3}",
        snap.uptime.as_secs_f64()
    );
    family(
        &mut o,
        "xsk_broker_grants_total",
        "counter",
        "Leases granted since start.",
    );
    let _ = writeln!(o, "xsk_broker_grants_total {}", snap.grants);
    family(
        &mut o,
        "xsk_broker_releases_total",
        "counter",
        "Leases ended since start (released, connection closed, holder gone).",
    );
    let _ = writeln!(o, "xsk_broker_releases_total {}", snap.releases);
    family(
        &mut o,
        "xsk_broker_refusals_total",
        "counter",
        "Requests answered with an error since start, by error code.",
    );
    for (code, n) in &snap.refusals {
        let _ = writeln!(o, "xsk_broker_refusals_total{{code=\"{code}\"}} {n}");
    }

    if let Some(level) = snap.confinement {
        family(
            &mut o,
            "xsk_broker_confinement",
            "gauge",
            "What the kernel enforces on leased sockets: 1 for the level in force \
             (interface: SO_BINDTOIFINDEX; kernel: interface, queue and copy mode by BPF LSM).",
        );
        for l in [ConfinementLevel::Interface, ConfinementLevel::Kernel] {
            let _ = writeln!(
                o,
                "xsk_broker_confinement{{level=\"{l}\"}} {}",
                u8::from(l == level)
            );
        }
    }

    let leases = &snap.leases;
    family(&mut o, "xsk_broker_leases", "gauge", "Leases held now.");
    let _ = writeln!(o, "xsk_broker_leases {}", leases.len());
    family(
        &mut o,
        "xsk_broker_leased_queues",
        "gauge",
        "Queues held now, by interface.",
    );
    let mut per_if: BTreeMap<&str, usize> = BTreeMap::new();
    for l in leases {
        *per_if.entry(l.ifname.as_str()).or_default() += l.queues.len();
    }
    for (ifname, n) in per_if {
        let _ = writeln!(
            o,
            "xsk_broker_leased_queues{{ifname=\"{}\"}} {n}",
            label(ifname)
        );
    }
    type Get = fn(&xsk_broker_protocol::XdpStatistics) -> u64;
    let stats: [(&str, &str, Get); 6] = [
        (
            "rx_dropped",
            "Frames dropped for reasons other than invalid descriptors (e.g. fill ring empty).",
            |s| s.rx_dropped,
        ),
        (
            "rx_invalid_descs",
            "Invalid descriptors on the fill ring.",
            |s| s.rx_invalid_descs,
        ),
        (
            "tx_invalid_descs",
            "Invalid descriptors on the tx ring.",
            |s| s.tx_invalid_descs,
        ),
        (
            "rx_ring_full",
            "Frames dropped because the rx ring was full.",
            |s| s.rx_ring_full,
        ),
        (
            "rx_fill_ring_empty_descs",
            "Times the kernel found the fill ring empty.",
            |s| s.rx_fill_ring_empty_descs,
        ),
        (
            "tx_ring_empty_descs",
            "Times the kernel found the tx ring empty.",
            |s| s.tx_ring_empty_descs,
        ),
    ];
    type Moved = fn(&xsk_broker_protocol::SocketStatus) -> Option<u64>;
    let moved: [(&str, &str, Moved); 2] = [
        (
            "xsk_broker_socket_rx_packets_total",
            "Frames the kernel delivered to the socket's RX ring (its producer position).",
            |s| s.rx_packets,
        ),
        (
            "xsk_broker_socket_tx_packets_total",
            "Descriptors the kernel took from the socket's TX ring for transmit (its consumer \
             position; invalid ones included).",
            |s| s.tx_packets,
        ),
    ];
    for (name, help, get) in moved {
        family(
            &mut o,
            name,
            "counter",
            &format!(
                "{help} Per leased socket with that ring, since the holder created it; the ring \
                 is shared with the holder, who can write this word between kernel updates."
            ),
        );
        for l in leases {
            for s in &l.sockets {
                if let Some(n) = get(s) {
                    let _ = writeln!(
                        o,
                        "{name}{{ifname=\"{}\",queue=\"{}\"}} {n}",
                        label(&l.ifname),
                        s.queue_id
                    );
                }
            }
        }
    }
    for (stat, help, get) in stats {
        let name = format!("xsk_broker_xdp_{stat}_total");
        family(
            &mut o,
            &name,
            "counter",
            &format!("{help} Per leased socket, since the socket was created (XDP_STATISTICS)."),
        );
        for l in leases {
            for s in &l.sockets {
                if let Some(st) = &s.statistics {
                    let _ = writeln!(
                        o,
                        "{name}{{ifname=\"{}\",queue=\"{}\"}} {}",
                        label(&l.ifname),
                        s.queue_id,
                        get(st)
                    );
                }
            }
        }
    }
    o
}

/// Longest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// How long one scrape may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Answer one HTTP request on `conn`.
fn handle<S: Read + Write>(mut conn: S, source: &dyn SnapshotSource) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "request too large\n",
            );
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") | ("GET", "/") => {
            let body = render(&source.snapshot());
            respond(&mut conn, "200 OK", &body)
        }
        ("GET", _) => respond(&mut conn, "404 Not Found", "only /metrics is served here\n"),
        _ => respond(&mut conn, "405 Method Not Allowed", "use GET /metrics\n"),
    }
}

fn respond<S: Write>(conn: &mut S, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

/// A listening endpoint for metrics.
pub enum Endpoint {
    /// A Unix stream socket.
    Unix(UnixListener),
    /// A loopback TCP socket.
    Tcp(TcpListener),
}

/// Serve metrics on `endpoint` in a thread of its own, one scrape at a time.
pub fn spawn(endpoint: Endpoint, source: Arc<dyn SnapshotSource>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("xsk-metrics".into())
        .spawn(move || loop {
            let served = match &endpoint {
                Endpoint::Unix(l) => l.accept().and_then(|(c, _)| {
                    c.set_read_timeout(Some(IO_TIMEOUT))?;
                    c.set_write_timeout(Some(IO_TIMEOUT))?;
                    handle(c, source.as_ref())
                }),
                Endpoint::Tcp(l) => l.accept().and_then(|(c, _)| {
                    c.set_read_timeout(Some(IO_TIMEOUT))?;
                    c.set_write_timeout(Some(IO_TIMEOUT))?;
                    handle(c, source.as_ref())
                }),
            };
            match served {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    ) =>
                {
                    warn!("metrics: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => debug!("metrics: a scrape failed: {e}"),
            }
        })
        .map(|_| ())
}
