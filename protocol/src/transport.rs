//! Framed messages with fds over a Unix stream socket.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, send, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use thiserror::Error;

use crate::frame::{FrameError, FrameHeader, HEADER_LEN, MAX_FDS};
use crate::message::{encode_body, DecodeError};

/// What went wrong moving a frame.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The peer closed the connection between frames.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection or stopped in the middle of a frame.
    #[error("connection ended in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The header broke a limit; the stream cannot be trusted after this.
    #[error("bad frame header: {0}")]
    Frame(#[from] FrameError),
    /// The frame's fds did not match its declaration. The fds were closed;
    /// the stream is still in step.
    #[error("message declared {declared} fds but carried {received}; they were closed")]
    FdMismatch {
        /// Declared in the header.
        declared: u32,
        /// Actually received.
        received: usize,
    },
    /// More fds were sent than fit the control buffer (`MSG_CTRUNC`); the
    /// kernel dropped the excess and the rest were closed.
    #[error("control data truncated (more than {MAX_FDS} fds sent); the fds were closed")]
    ControlTruncated,
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] DecodeError),
    /// No frame began before the read timeout (`SO_RCVTIMEO`): the peer
    /// sent nothing. The stream is still in step.
    #[error("timed out waiting for the peer")]
    TimedOut,
    /// A frame began but did not complete within the frame timeout
    /// ([`Channel::set_frame_timeout`], else `SO_RCVTIMEO`): the peer sent
    /// part of a message and stalled. The stream cannot be trusted after this.
    #[error(
        "the peer sent {got} of {want} bytes of a frame and then nothing for {}s",
        .waited.as_secs_f64()
    )]
    Stalled {
        /// Bytes of the current part (header or body) received.
        got: usize,
        /// Bytes of that part expected.
        want: usize,
        /// How long the frame was waited for.
        waited: std::time::Duration,
    },
    /// Any other socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl TransportError {
    /// Whether the stream is still aligned on a frame boundary after this error,
    /// so the connection can answer and carry on.
    pub fn stream_in_step(&self) -> bool {
        matches!(
            self,
            TransportError::FdMismatch { .. } | TransportError::ControlTruncated
        )
    }
}

/// A received frame: its JSON body and the fds that came with it.
#[derive(Debug)]
pub struct Received {
    /// JSON body, not yet decoded.
    pub body: Vec<u8>,
    /// fds carried by the frame, owned (closed on drop), close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// One end of a framed connection.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    /// Most time a frame may take from its first byte to its last.
    frame_timeout: Option<std::time::Duration>,
}

impl Channel {
    /// Wrap a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Channel {
            stream,
            frame_timeout: None,
        }
    }

    /// Bound the time from a frame's first byte to its last: a peer that
    /// sends part of a frame and stalls gets [`TransportError::Stalled`]
    /// after `timeout`, however slowly it trickles bytes. `None` (the
    /// default) leaves only the socket's own read timeout.
    pub fn set_frame_timeout(&mut self, timeout: Option<std::time::Duration>) {
        self.frame_timeout = timeout;
    }

    /// The underlying stream (for timeouts, credentials, poll).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Send one message with `fds` attached.
    pub fn send<T: serde::Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        let body = encode_body(msg)?;
        self.send_raw(&body, fds.len() as u32, fds)
    }

    /// Send a body as-is with a declared fd count that may differ from the
    /// fds attached. For tests of peers that must refuse such frames.
    pub fn send_raw(
        &self,
        body: &[u8],
        declared_fds: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), TransportError> {
        if fds.len() > MAX_FDS {
            return Err(FrameError::TooManyFds {
                fds: fds.len() as u32,
            }
            .into());
        }
        let header = FrameHeader {
            len: body.len() as u32,
            fds: declared_fds,
        }
        .encode();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [IoSlice::new(&header), IoSlice::new(body)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        // MSG_NOSIGNAL: a C host embedding the client may not ignore SIGPIPE.
        let sent = loop {
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
            }
        };
        // The fds went with the first bytes; the rest is plain data.
        let mut rest_at = sent;
        for part in [&header[..], body] {
            if rest_at >= part.len() {
                rest_at -= part.len();
                continue;
            }
            write_all_nosignal(&self.stream, &part[rest_at..])?;
            rest_at = 0;
        }
        Ok(())
    }

    /// Read exactly `buf.len()` bytes, collecting any fds that arrive.
    /// Returns bytes read (less than `buf.len()` only at end of stream) and
    /// whether control data was truncated.
    ///
    /// Once the frame has begun (`*started` is set, or a byte arrives here),
    /// each further read waits at most until the frame timeout runs out; a
    /// read timeout before the first byte is [`TransportError::TimedOut`],
    /// after it [`TransportError::Stalled`].
    fn read_full(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        started: &mut Option<std::time::Instant>,
    ) -> Result<(usize, bool), TransportError> {
        let mut got = 0;
        let mut truncated = false;
        let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
        while got < buf.len() {
            if let (Some(t0), Some(limit)) = (*started, self.frame_timeout) {
                let left = limit.saturating_sub(t0.elapsed());
                if !self.wait_readable(left)? {
                    if t0.elapsed() < limit {
                        continue; // poll waits at most ~65 s at a time
                    }
                    return Err(TransportError::Stalled {
                        got,
                        want: buf.len(),
                        waited: t0.elapsed(),
                    });
                }
            }
            // Zeroed and as long as it is large, so that after a truncated
            // read the fds the kernel did install can be found in it.
            cmsg_buf.clear();
            cmsg_buf.resize(cmsg_buf.capacity(), 0);
            let mut iov = [IoSliceMut::new(&mut buf[got..])];
            let msg = match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(match *started {
                        None => TransportError::TimedOut,
                        Some(t0) => TransportError::Stalled {
                            got,
                            want: buf.len(),
                            waited: t0.elapsed(),
                        },
                    })
                }
                Err(e) => return Err(io::Error::from(e).into()),
            };
            let ctrunc = msg.flags.contains(MsgFlags::MSG_CTRUNC);
            let n = msg.bytes;
            let mut raw_fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        raw_fds.extend(raw);
                    }
                }
            }
            if ctrunc {
                // nix gives no cmsgs for a truncated read, but the kernel
                // installed as many fds as fit: find them, to close them.
                truncated = true;
                raw_fds = scm_rights_in(&cmsg_buf);
            }
            for fd in raw_fds {
                // SAFETY: the kernel just installed `fd` in our table for
                // this message; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if n == 0 {
                break;
            }
            started.get_or_insert_with(std::time::Instant::now);
            got += n;
        }
        Ok((got, truncated))
    }

    /// Wait up to `timeout` for the stream to be readable (or closed).
    fn wait_readable(&self, timeout: std::time::Duration) -> Result<bool, TransportError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = u16::try_from(timeout.as_nanos().div_ceil(1_000_000).max(1)).unwrap_or(u16::MAX);
        loop {
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(n) => return Ok(n > 0),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
    }

    /// Receive one frame. The fds it carried are returned only if their count
    /// matches the header's declaration; otherwise they are closed and
    /// [`TransportError::FdMismatch`] is returned with the stream still in step.
    pub fn recv(&self) -> Result<Received, TransportError> {
        let mut fds = Vec::new();
        let mut header = [0u8; HEADER_LEN];
        let mut started = None;
        let (got, mut truncated) = self.read_full(&mut header, &mut fds, &mut started)?;
        if got == 0 {
            return Err(TransportError::Closed);
        }
        if got < HEADER_LEN {
            return Err(TransportError::Truncated {
                got,
                want: HEADER_LEN,
            });
        }
        let header = FrameHeader::decode(header)?;
        let mut body = vec![0u8; header.len as usize];
        let (got, t) = self.read_full(&mut body, &mut fds, &mut started)?;
        truncated |= t;
        if got < body.len() {
            return Err(TransportError::Truncated {
                got,
                want: body.len(),
            });
        }
        if truncated {
            return Err(TransportError::ControlTruncated);
        }
        if fds.len() != header.fds as usize {
            return Err(TransportError::FdMismatch {
                declared: header.fds,
                received: fds.len(),
            });
        }
        Ok(Received { body, fds })
    }
}

/// The fds of every `SCM_RIGHTS` message in a control buffer the kernel
/// filled (zeroed beforehand, so it ends at the first zero length).
fn scm_rights_in(buf: &[u8]) -> Vec<RawFd> {
    const WORD: usize = std::mem::size_of::<usize>();
    let hdr = std::mem::size_of::<nix::libc::cmsghdr>();
    let level_at = std::mem::offset_of!(nix::libc::cmsghdr, cmsg_level);
    let type_at = std::mem::offset_of!(nix::libc::cmsghdr, cmsg_type);
    let int_at = |at: usize| -> Option<i32> {
        Some(i32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    };
    let mut fds = Vec::new();
    let mut off = 0;
    while off + hdr <= buf.len() {
        // The kernel's cmsg_len is a size_t.
        let Some(len) = buf
            .get(off..off + WORD)
            .and_then(|b| b.try_into().ok())
            .map(usize::from_ne_bytes)
        else {
            break;
        };
        if len < hdr {
            break;
        }
        let (Some(level), Some(kind)) = (int_at(off + level_at), int_at(off + type_at)) else {
            break;
        };
        let end = (off + len).min(buf.len());
        if level == nix::libc::SOL_SOCKET && kind == nix::libc::SCM_RIGHTS {
            fds.extend(
                buf[off + hdr..end]
                    .chunks_exact(4)
                    .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        off += len.div_ceil(WORD) * WORD;
    }
    fds
}

/// `write_all` with `MSG_NOSIGNAL`.
fn write_all_nosignal(stream: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match send(stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{decode_request, Request};
    use std::os::unix::net::UnixStream;

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        (Channel::new(a), Channel::new(b))
    }

    /// A pipe whose write end is sent away: once every copy of it is closed,
    /// reading the read end gives EOF instead of blocking.
    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(r), w)
    }

    fn is_closed_everywhere(r: &mut std::fs::File) -> bool {
        use std::io::Read;
        nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut b = [0u8; 1];
        matches!(r.read(&mut b), Ok(0))
    }

    #[test]
    fn message_with_fds() {
        let (a, b) = pair();
        let f1 = std::fs::File::open("/dev/null").unwrap();
        let f2 = std::fs::File::open("/dev/null").unwrap();
        a.send(&Request::Release, &[f1.as_fd(), f2.as_fd()])
            .unwrap();
        let got = b.recv().unwrap();
        assert_eq!(decode_request(&got.body).unwrap(), Request::Release);
        assert_eq!(got.fds.len(), 2);
    }

    #[test]
    fn fd_mismatch_is_refused_and_closed_and_stream_stays_in_step() {
        let (a, b) = pair();
        let (mut r, w) = pipe();
        // Declares 2, carries 1.
        a.send_raw(br#"{"op":"release"}"#, 2, &[w.as_fd()]).unwrap();
        drop(w);
        // Declares 1, carries 0.
        a.send_raw(br#"{"op":"release"}"#, 1, &[]).unwrap();
        a.send(&Request::Release, &[]).unwrap();
        let e = b.recv().unwrap_err();
        assert!(matches!(
            e,
            TransportError::FdMismatch {
                declared: 2,
                received: 1
            }
        ));
        assert!(e.stream_in_step());
        assert!(matches!(
            b.recv().unwrap_err(),
            TransportError::FdMismatch {
                declared: 1,
                received: 0
            }
        ));
        assert!(b.recv().is_ok());
        assert!(is_closed_everywhere(&mut r), "refused fds must be closed");
    }

    #[test]
    fn truncated_control_data_is_refused_and_every_fd_closed() {
        let (a, b) = pair();
        let (mut r, w) = pipe();
        // 100 fds: more than the receiver's control buffer holds (MSG_CTRUNC).
        let raw: Vec<RawFd> = std::iter::repeat_n(w.as_raw_fd(), 100).collect();
        let body = br#"{"op":"release"}"#;
        let header = FrameHeader {
            len: body.len() as u32,
            fds: 1,
        }
        .encode();
        sendmsg::<()>(
            a.stream.as_raw_fd(),
            &[IoSlice::new(&header), IoSlice::new(body)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(w);
        let e = b.recv().unwrap_err();
        assert!(matches!(e, TransportError::ControlTruncated), "{e}");
        assert!(e.stream_in_step());
        assert!(is_closed_everywhere(&mut r), "truncated fds must be closed");
        a.send(&Request::Release, &[]).unwrap();
        assert!(b.recv().is_ok());
    }

    #[test]
    fn stalled_frame_times_out_and_idle_is_not_a_stall() {
        let (a, mut b) = pair();
        b.stream()
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        b.set_frame_timeout(Some(std::time::Duration::from_millis(300)));
        assert!(matches!(b.recv().unwrap_err(), TransportError::TimedOut));
        let header = FrameHeader { len: 10, fds: 0 }.encode();
        write_all_nosignal(&a.stream, &header).unwrap();
        write_all_nosignal(&a.stream, b"{").unwrap();
        let t0 = std::time::Instant::now();
        match b.recv().unwrap_err() {
            TransportError::Stalled {
                got: 1, want: 10, ..
            } => {}
            e => panic!("{e}"),
        }
        assert!(t0.elapsed() >= std::time::Duration::from_millis(250));
    }

    #[test]
    fn oversize_and_eof() {
        let (a, b) = pair();
        write_all_nosignal(
            &a.stream,
            &FrameHeader {
                len: 1 << 20,
                fds: 0,
            }
            .encode(),
        )
        .unwrap();
        assert!(matches!(
            b.recv().unwrap_err(),
            TransportError::Frame(FrameError::TooLong { .. })
        ));
        let (a, b) = pair();
        write_all_nosignal(&a.stream, &[1, 0, 0]).unwrap();
        drop(a);
        assert!(matches!(
            b.recv().unwrap_err(),
            TransportError::Truncated { .. }
        ));
        let (a, b) = pair();
        drop(a);
        assert!(matches!(b.recv().unwrap_err(), TransportError::Closed));
    }
}
