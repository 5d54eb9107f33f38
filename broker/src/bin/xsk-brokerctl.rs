//! `xsk-brokerctl`: ask a running `xsk-brokerd` what it is doing.
//!
//! `xsk-brokerctl status` prints every lease (interface, queues, holder,
//! XDP mode, program id, age) and each leased socket's frames received and
//! sent (the kernel's RX and TX ring positions) and kernel statistics
//! (`XDP_STATISTICS`), as tables or, with `--json`, as one JSON object.

use std::os::unix::net::UnixStream;
use xsk_brokerd::ctl_cli;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ctl_cli::{Args, Command};
use xsk_broker_protocol::{
    decode_response, Channel, Hello, Request, Response, StatusReply, StatusRequest,
};

fn connect(path: &Path, timeout: Duration) -> Result<Channel> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to the broker's control socket {} (is xsk-brokerd running, \
             and may this user open the socket? use --socket PATH for another one)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .context("setting the read timeout")?;
    Ok(Channel::new(stream))
}

fn call(chan: &Channel, path: &Path, req: &Request) -> Result<Response> {
    chan.send(req, &[])
        .with_context(|| format!("sending to {}", path.display()))?;
    let got = chan
        .recv()
        .with_context(|| format!("waiting for the broker's answer on {}", path.display()))?;
    // Anything sent along would be a broker bug; `got.fds` closes them.
    let resp = decode_response(&got.body).context("decoding the broker's answer")?;
    if let Response::Error(e) = resp {
        bail!("the broker refused: {e}");
    }
    Ok(resp)
}

fn status(path: &Path, timeout: Duration) -> Result<StatusReply> {
    let chan = connect(path, timeout)?;
    // Announce our features; a broker of version 1.0 refuses the field
    // (bad_request naming it): say plain hello then.
    let hello = match call(&chan, path, &Request::Hello(Hello::current())) {
        Err(e) if e.to_string().contains("bad_request") && e.to_string().contains("features") => {
            call(&chan, path, &Request::Hello(Hello::plain()))?
        }
        other => other?,
    };
    match hello {
        Response::Hello(_) => {}
        other => bail!("expected a hello answer, got {other:?}"),
    }
    match call(&chan, path, &Request::Status(StatusRequest {}))? {
        Response::Status(s) => Ok(s),
        other => bail!("expected a status answer, got {other:?}"),
    }
}

/// `1h 2m`, `3m 4s`, `5.6s`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `0-3` for a run of queues, `0,2,5` otherwise.
fn queue_list(q: &[u32]) -> String {
    match (q.first(), q.last()) {
        (Some(a), Some(b))
            if q.len() > 1 && u64::from(*b) - u64::from(*a) + 1 == q.len() as u64 =>
        {
            format!("{a}-{b}")
        }
        _ => q.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn human(s: &StatusReply) -> String {
    let queues: usize = s.leases.iter().map(|l| l.queues.len()).sum();
    let mut out = format!(
        "{} (pid {}), up {}: {} lease(s), {} queue(s)\n",
        s.server,
        s.pid,
        duration(s.uptime_ms),
        s.leases.len(),
        queues
    );
    match s.confinement {
        Some(level) => out.push_str(&format!(
            "confinement: {level} ({})\n",
            match level {
                xsk_broker_protocol::ConfinementLevel::Kernel =>
                    "the kernel holds each leased socket to its interface, queue and copy mode",
                xsk_broker_protocol::ConfinementLevel::Interface =>
                    "the kernel holds each leased socket to its interface; queue and copy mode \
                     are not enforced",
                xsk_broker_protocol::ConfinementLevel::Unknown => "a level this tool does not know",
            }
        )),
        None => out.push_str("confinement: not reported (older broker)\n"),
    }
    if s.omitted_leases > 0 {
        out.push_str(&format!(
            "({} newer lease(s) left out: the reply would exceed the message size limit)\n",
            s.omitted_leases
        ));
    }
    if s.leases.is_empty() {
        return out;
    }
    let leases: Vec<Vec<String>> = s
        .leases
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                l.ifname.clone(),
                l.ifindex.to_string(),
                queue_list(&l.queues),
                l.mode.to_string(),
                l.program_id.to_string(),
                l.holder.pid.to_string(),
                l.holder.uid.to_string(),
                l.holder.gid.to_string(),
                duration(l.age_ms),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "LEASE",
            "INTERFACE",
            "IFINDEX",
            "QUEUES",
            "MODE",
            "PROGRAM",
            "PID",
            "UID",
            "GID",
            "AGE",
        ],
        &leases,
    ));
    let mut sockets = Vec::new();
    let mut notes = String::new();
    // A ring the holder has not created (or an older broker): "-".
    let packets = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for l in &s.leases {
        for sock in &l.sockets {
            let mut row = vec![
                l.id.to_string(),
                l.ifname.clone(),
                sock.queue_id.to_string(),
                packets(sock.rx_packets),
                packets(sock.tx_packets),
            ];
            if let Some(e) = &sock.traffic_error {
                notes.push_str(&format!(
                    "lease {} {} queue {}: {e}\n",
                    l.id, l.ifname, sock.queue_id
                ));
            }
            match (&sock.statistics, &sock.error) {
                (Some(st), _) => row.extend(
                    [
                        st.rx_dropped,
                        st.rx_invalid_descs,
                        st.tx_invalid_descs,
                        st.rx_ring_full,
                        st.rx_fill_ring_empty_descs,
                        st.tx_ring_empty_descs,
                    ]
                    .map(|n| n.to_string()),
                ),
                (None, e) => row.push(format!(
                    "statistics unavailable: {}",
                    e.as_deref().unwrap_or("no reason given")
                )),
            }
            sockets.push(row);
        }
    }
    out.push('\n');
    out.push_str(&table(
        &[
            "LEASE",
            "INTERFACE",
            "QUEUE",
            "RX_PACKETS",
            "TX_PACKETS",
            "RX_DROPPED",
            "RX_INVALID_DESCS",
            "TX_INVALID_DESCS",
            "RX_RING_FULL",
            "RX_FILL_RING_EMPTY_DESCS",
            "TX_RING_EMPTY_DESCS",
        ],
        &sockets,
    ));
    out.push_str(&notes);
    out
}

fn run(args: Args) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    match args.command {
        Command::Status { json } => {
            let s = status(&args.socket, timeout)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&s).context("encoding the status as JSON")?
                );
            } else {
                print!("{}", human(&s));
            }
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!(
            "xsk-brokerctl: {}",
            xsk_broker_protocol::error_chain(e.as_ref())
        );
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(queue_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(queue_list(&[2]), "2");
        assert_eq!(queue_list(&[0, 2, 5]), "0,2,5");
        assert_eq!(queue_list(&[]), "");
        assert_eq!(duration(1_234), "1.2s");
        assert_eq!(duration(125_000), "2m 5s");
        assert_eq!(duration(7_260_000), "2h 1m");
        assert_eq!(duration(90_000_000), "1d 1h");
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }

    #[test]
    fn the_socket_table_shows_packets_and_names_a_ring_it_cannot_read() {
        use xsk_broker_protocol::{AttachMode, Holder, LeaseStatus, SocketStatus, XdpStatistics};
        let sock = |queue_id, rx, tx, err: Option<&str>| SocketStatus {
            queue_id,
            statistics: Some(XdpStatistics::default()),
            error: None,
            rx_packets: rx,
            tx_packets: tx,
            traffic_error: err.map(str::to_owned),
        };
        let s = StatusReply {
            server: "xsk-brokerd/0.1.0".into(),
            pid: 1,
            uptime_ms: 0,
            leases: vec![LeaseStatus {
                id: 4,
                ifname: "eth0".into(),
                ifindex: 2,
                queues: vec![0, 1],
                holder: Holder {
                    pid: 9,
                    uid: 65534,
                    gid: 65534,
                },
                mode: AttachMode::Native,
                program_id: 7,
                age_ms: 0,
                sockets: vec![
                    sock(0, Some(123_456), Some(654_321), None),
                    sock(1, None, None, Some("cannot map the rx ring: ENOMEM")),
                ],
            }],
            omitted_leases: 0,
            confinement: None,
        };
        let out = human(&s);
        let header = out.lines().find(|l| l.contains("RX_PACKETS")).unwrap();
        assert!(
            header.contains("QUEUE  RX_PACKETS  TX_PACKETS  RX_DROPPED"),
            "{out}"
        );
        let row = |q: &str| {
            out.lines()
                .filter(|l| l.starts_with("4 "))
                .find(|l| l.split_whitespace().nth(2) == Some(q))
                .unwrap_or_else(|| panic!("no row for queue {q}:\n{out}"))
                .split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("0"), ["123456", "654321"], "{out}");
        assert_eq!(row("1"), ["-", "-"], "{out}");
        assert!(
            out.contains("lease 4 eth0 queue 1: cannot map the rx ring: ENOMEM"),
            "{out}"
        );
    }
}
