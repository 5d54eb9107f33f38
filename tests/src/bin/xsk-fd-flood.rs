//! `xsk-fd-flood`: the fd-flood attack on xsk-brokerd, for the end-to-end
//! tests (which run it as uid nobody with no capabilities).
//!
//! ```text
//! xsk-fd-flood SOCKET CONNECTIONS SENDS FDS
//! ```
//!
//! Each of CONNECTIONS connections (one thread each) says hello, sends a
//! frame header declaring a 1000-byte body and *no* fds, then SENDS one-byte
//! `sendmsg` calls, each carrying FDS fds (copies of one pipe's write end).
//! Each prints one JSON line when done:
//! `{"event":"flooded","conn":I,"sends":N,"fds":N,"retries":N,"error":null}`
//! (`retries`: sends the kernel refused for a moment with ETOOMANYREFS, too
//! many fds in flight, and that were tried again). The connections are then
//! held open, the frame unfinished, and `{"event":"holding"}` is printed.
//!
//! Standard input drives the rest: a line `finish` makes each connection
//! send the rest of the body (`{"op":"status"}` padded with spaces) and
//! print the broker's answer, `{"event":"answer","conn":I,"answer":...}`;
//! end of input closes everything and exits.

use std::io::{BufRead, IoSlice, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::json;
use xsk_broker_protocol::{decode_response, Channel, FrameHeader, Hello, Request, Response};

/// Body length the header declares.
const BODY_LEN: usize = 1000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xsk-fd-flood: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn body() -> Vec<u8> {
    let mut b = br#"{"op":"status"}"#.to_vec();
    b.resize(BODY_LEN, b' ');
    b
}

/// Connect, say hello, and send the header and the first `sends` body bytes,
/// one per `sendmsg`, each with `fds` copies of `fd`.
fn flood(socket: &str, sends: usize, fds: usize, fd: RawFd) -> Result<(Channel, usize, u64)> {
    let stream = UnixStream::connect(socket).with_context(|| format!("connecting to {socket}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .context("setting a read timeout")?;
    let chan = Channel::new(stream);
    chan.send(&Request::Hello(Hello::plain()), &[])
        .context("sending hello")?;
    let got = chan.recv().context("reading the hello answer")?;
    match decode_response(&got.body).context("decoding the hello answer")? {
        Response::Hello(_) => {}
        other => bail!("hello was answered {other:?}"),
    }
    let header = FrameHeader {
        len: BODY_LEN as u32,
        fds: 0,
    }
    .encode();
    Write::write_all(&mut chan.stream(), &header).context("sending the frame header")?;
    let raw: Vec<RawFd> = std::iter::repeat_n(fd, fds).collect();
    let body = body();
    let mut retries = 0u64;
    for (i, byte) in body.iter().take(sends).enumerate() {
        loop {
            match sendmsg::<()>(
                chan.stream().as_raw_fd(),
                &[IoSlice::new(std::slice::from_ref(byte))],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(1) => break,
                Ok(n) => bail!("send {i}: sendmsg sent {n} bytes, not 1"),
                Err(Errno::EINTR) => continue,
                // Too many fds of this user in flight: wait for the broker
                // to take them.
                Err(Errno::ETOOMANYREFS) => {
                    retries += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => bail!("send {i} of {sends}: sendmsg: {e}"),
            }
        }
    }
    Ok((chan, sends, retries))
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, conns, sends, fds] = &args[..] else {
        bail!("usage: xsk-fd-flood SOCKET CONNECTIONS SENDS FDS");
    };
    let conns: usize = conns.parse().context("CONNECTIONS")?;
    let sends: usize = sends.parse().context("SENDS")?;
    let fds: usize = fds.parse().context("FDS")?;
    if sends > BODY_LEN {
        bail!("SENDS must be at most {BODY_LEN}");
    }
    let (_r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().context("pipe")?;
    let w_raw = w.as_raw_fd();
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let r = flood(&socket, sends, fds, w_raw);
                match &r {
                    Ok((_, n, retries)) => say(json!({
                        "event": "flooded", "conn": i, "sends": n,
                        "fds": n * fds, "retries": retries, "error": null
                    })),
                    Err(e) => say(json!({
                        "event": "flooded", "conn": i, "sends": 0, "fds": 0,
                        "retries": 0, "error": format!("{e:#}")
                    })),
                }
                r.ok().map(|(c, _, _)| c)
            })
        })
        .collect();
    let chans: Vec<Option<Channel>> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(None))
        .collect();
    say(json!({"event": "holding"}));
    let body = body();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading standard input")?;
        if line.trim() != "finish" {
            continue;
        }
        for (i, chan) in chans.iter().enumerate() {
            let Some(chan) = chan else { continue };
            let answer = (|| -> Result<String> {
                Write::write_all(&mut chan.stream(), &body[sends..])
                    .context("sending the rest of the body")?;
                let got = chan.recv().context("reading the answer")?;
                Ok(match decode_response(&got.body)? {
                    Response::Error(e) => format!("{}: {}", e.code, e.message),
                    other => format!("{other:?}"),
                })
            })()
            .unwrap_or_else(|e| format!("no answer: {e:#}"));
            say(json!({"event": "answer", "conn": i, "answer": answer}));
        }
    }
    drop(chans);
    Ok(())
}
