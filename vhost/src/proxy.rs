//! A relay between the VMM's vhost-user connection and the library's.
//!
//! QEMU (7.2 at least) sends `VHOST_USER_SET_VRING_ENABLE` when the guest
//! driver negotiates its features, which is before the device starts and so
//! before `VHOST_USER_SET_FEATURES` acks `VHOST_USER_F_PROTOCOL_FEATURES`.
//! The `vhost` crate (0.18) refuses such a message ("inactive feature") and
//! drops the connection; without protocol features QEMU 7.2 crashes instead
//! (in `msix_set_vector_notifiers`). QEMU sends the enable again after
//! `SET_FEATURES`. QEMU does not send them again after `SET_FEATURES`, so the
//! relay holds the early ones, the last per ring, and passes them on right
//! after `SET_FEATURES`; everything else goes through unchanged, file
//! descriptors included. QEMU 7.2 asks for no reply to them; QEMU 10.0 does
//! (`NEED_REPLY`: the library always offers `REPLY_ACK`) and waits for it, so
//! the relay acknowledges those itself and passes them on without the flag.
//! It also counts the rings the VMM stops (`GET_VRING_BASE`: at each device
//! stop, e.g. a guest resetting its NIC, and when it quits).

use std::io::{IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

const SET_FEATURES: u32 = 2;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_ENABLE: u32 = 18;
const NEED_REPLY: u32 = 0x8;
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
/// No vhost-user message this backend takes is larger.
const MAX_PAYLOAD: usize = 64 * 1024;

/// What the relay saw of one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Relayed {
    /// Early SET_VRING_ENABLE messages held back until SET_FEATURES.
    pub early_enables: u64,
    /// GET_VRING_BASE messages: rings the VMM stopped.
    pub ring_stops: u64,
}

/// Relay between `vmm` and `lib` until either side closes; then shut both
/// down.
pub fn relay(vmm: UnixStream, lib: UnixStream) -> std::io::Result<Relayed> {
    let (vmm2, lib2) = (vmm.try_clone()?, lib.try_clone()?);
    let back = std::thread::Builder::new()
        .name("vhost-relay".into())
        .spawn(move || {
            let (mut from, to) = (lib2, vmm2);
            // A plain loop (not io::copy, which may splice and block).
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut from, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if send_all(&to, &buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        })?;
    let result = forward(&vmm, &lib);
    let _ = lib.shutdown(Shutdown::Both);
    let _ = vmm.shutdown(Shutdown::Both);
    let _ = back.join();
    result
}

/// Receive exactly `buf.len()` bytes, collecting passed fds.
fn recv_exact(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = nix::cmsg_space!([RawFd; 32]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: SCM_RIGHTS just installed `r` in this process
                    // and nothing else refers to it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        if msg.bytes == 0 {
            return Ok(false);
        }
        got += msg.bytes;
    }
    Ok(true)
}

fn forward(vmm: &UnixStream, lib: &UnixStream) -> std::io::Result<Relayed> {
    let mut seen = Relayed::default();
    let mut features_set = false;
    let mut held: std::collections::BTreeMap<u32, [u8; 20]> = Default::default();
    let mut payload = vec![0u8; MAX_PAYLOAD];
    loop {
        let mut fds = Vec::new();
        let mut hdr = [0u8; 12];
        if !recv_exact(vmm.as_raw_fd(), &mut hdr, &mut fds)? {
            return Ok(seen);
        }
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let (req, flags, size) = (word(0), word(4), word(8) as usize);
        if size > MAX_PAYLOAD {
            return Err(std::io::Error::other(format!(
                "vhost-user message {req} has a {size}-byte payload (at most {MAX_PAYLOAD})"
            )));
        }
        if !recv_exact(vmm.as_raw_fd(), &mut payload[..size], &mut fds)? {
            return Ok(seen);
        }
        if req == SET_VRING_ENABLE && !features_set && size == 8 {
            let mut m = [0u8; 20];
            m[..12].copy_from_slice(&hdr);
            m[12..].copy_from_slice(&payload[..8]);
            if flags & NEED_REPLY != 0 {
                // QEMU 10 asks for a reply (the library always offers
                // REPLY_ACK) and waits for it: acknowledge here, and pass
                // the message on later without the flag, so the library
                // does not answer it a second time. Nothing else writes to
                // the VMM now: before SET_FEATURES the library only answers
                // requests the VMM waits for.
                m[4..8].copy_from_slice(&(flags & !NEED_REPLY).to_le_bytes());
                let mut ack = [0u8; 20];
                ack[..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                ack[4..8].copy_from_slice(&(VERSION | REPLY).to_le_bytes());
                ack[8..12].copy_from_slice(&8u32.to_le_bytes());
                send_all(vmm, &ack)?;
            }
            let index = u32::from_le_bytes(m[12..16].try_into().unwrap());
            held.insert(index, m);
            seen.early_enables += 1;
            continue;
        }
        if req == GET_VRING_BASE {
            seen.ring_stops += 1;
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let iov = [IoSlice::new(&hdr), IoSlice::new(&payload[..size])];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        let sent = sendmsg::<()>(lib.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(std::io::Error::from)?;
        // A short write: send the rest without fds.
        let total = 12 + size;
        if sent < total {
            let all: Vec<u8> = hdr.iter().chain(&payload[..size]).copied().collect();
            send_all(lib, &all[sent..])?;
        }
        drop(fds);
        if req == SET_FEATURES && !features_set {
            features_set = true;
            for m in std::mem::take(&mut held).into_values() {
                send_all(lib, &m)?;
            }
        }
    }
}

fn send_all(to: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = nix::sys::socket::send(to.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL)
            .map_err(std::io::Error::from)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}
