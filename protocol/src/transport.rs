//! Framed messages with fds over a Unix stream socket.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{send, sendmsg, ControlMessage, MsgFlags};
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
    /// The frame carried fewer fds than its header declared. The fds were
    /// closed; the stream is still in step.
    #[error("message declared {declared} fds but carried {received}; they were closed")]
    FdMismatch {
        /// Declared in the header.
        declared: u32,
        /// Actually received.
        received: usize,
    },
    /// The frame carried more fds than its header declared, or than this
    /// end accepts ([`Channel::set_max_fds_in`]). The channel never held
    /// more than that: fds past it were closed as they arrived (most were
    /// never installed at all: the kernel closes what does not fit the
    /// control buffer, which is sized to the room left), and the rest once
    /// the frame was read. The frame is refused; the stream is still in step.
    #[error("{}", too_many_fds_message(*declared, *limit))]
    TooManyFds {
        /// Declared in the header.
        declared: u32,
        /// The most this end accepts in one message.
        limit: usize,
    },
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
            TransportError::FdMismatch { .. } | TransportError::TooManyFds { .. }
        )
    }
}

fn too_many_fds_message(declared: u32, limit: usize) -> String {
    if limit == 0 {
        format!(
            "the receiver accepts no file descriptors on this connection; the ones sent with \
             this message (which declared {declared}) were closed and the message refused"
        )
    } else if declared as usize > limit {
        format!(
            "the message declared {declared} fds but the receiver accepts at most {limit}; \
             every fd it carried was closed and the message refused"
        )
    } else {
        format!(
            "the message carried more fds than the {declared} it declared; every fd it \
             carried was closed and the message refused"
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
    /// Most fds one received frame may carry (at most [`MAX_FDS`]).
    max_fds_in: usize,
}

impl Channel {
    /// Wrap a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Channel {
            stream,
            frame_timeout: None,
            max_fds_in: MAX_FDS,
        }
    }

    /// Accept at most `n` fds in one received frame ([`MAX_FDS`], the
    /// protocol's limit, by default; larger values are taken as
    /// [`MAX_FDS`]). A frame never makes the channel hold more fds than
    /// this, nor more than its header declares: the surplus is closed as
    /// it arrives and the frame refused with [`TransportError::TooManyFds`].
    /// With 0, no fd sent is ever installed in this process: the kernel
    /// closes them (a peer that must never send fds, e.g. the broker's
    /// clients).
    pub fn set_max_fds_in(&mut self, n: usize) {
        self.max_fds_in = n.min(MAX_FDS);
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

    /// Read exactly `buf.len()` bytes, collecting the fds that arrive, but
    /// never more than `cap` in `fds`: each read has room for only the fds
    /// still allowed, the kernel closes the rest, and `*surplus` is set.
    /// Returns bytes read (less than `buf.len()` only at end of stream).
    ///
    /// Once the frame has begun (`*started` is set, or a byte arrives here),
    /// each further read waits at most until the frame timeout runs out; a
    /// read timeout before the first byte is [`TransportError::TimedOut`],
    /// after it [`TransportError::Stalled`].
    fn read_full(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        cap: usize,
        surplus: &mut bool,
        started: &mut Option<std::time::Instant>,
    ) -> Result<usize, TransportError> {
        let mut got = 0;
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
            let room = cap.saturating_sub(fds.len());
            let (n, arrived, truncated) =
                match recv_with_fds(self.stream.as_fd(), &mut buf[got..], room) {
                    Ok(r) => r,
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
            // The kernel installs no more than there is room for; should
            // it ever, the excess is closed here, at once.
            *surplus |= truncated || arrived.len() > room;
            fds.extend(arrived.into_iter().take(room));
            if n == 0 {
                break;
            }
            started.get_or_insert_with(std::time::Instant::now);
            got += n;
        }
        Ok(got)
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
    /// matches the header's declaration and this channel's limit
    /// ([`Channel::set_max_fds_in`]). Fewer than declared:
    /// [`TransportError::FdMismatch`]; more, or more than the limit:
    /// [`TransportError::TooManyFds`], the surplus closed as it arrived. Either
    /// way every fd of the frame is closed and the stream is still in step.
    pub fn recv(&self) -> Result<Received, TransportError> {
        let mut fds = Vec::new();
        let mut surplus = false;
        let mut header = [0u8; HEADER_LEN];
        let mut started = None;
        // fds sent with the header's bytes come before the declaration:
        // they are held up to the channel's limit until it is read.
        let got = self.read_full(
            &mut header,
            &mut fds,
            self.max_fds_in,
            &mut surplus,
            &mut started,
        )?;
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
        let cap = (header.fds as usize).min(self.max_fds_in);
        if fds.len() > cap {
            fds.truncate(cap); // closes the surplus now
            surplus = true;
        }
        let mut body = vec![0u8; header.len as usize];
        let got = self.read_full(&mut body, &mut fds, cap, &mut surplus, &mut started)?;
        if got < body.len() {
            return Err(TransportError::Truncated {
                got,
                want: body.len(),
            });
        }
        if surplus {
            return Err(TransportError::TooManyFds {
                declared: header.fds,
                limit: self.max_fds_in,
            });
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

/// One `recvmsg` into `buf` with room for at most `room` fds. The kernel
/// installs (close-on-exec) no more fds than fit the control buffer and
/// closes the rest itself, setting `MSG_CTRUNC`; with `room` 0 there is no
/// control buffer and no fd is ever installed. Returns the bytes read, the
/// fds installed and whether any were dropped.
fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    room: usize,
) -> Result<(usize, Vec<OwnedFd>, bool), Errno> {
    use nix::libc;
    const WORD: usize = std::mem::size_of::<usize>();
    let hdr = std::mem::size_of::<libc::cmsghdr>().div_ceil(WORD) * WORD;
    // u64 words keep the buffer aligned for cmsghdr.
    let mut control = [0u64; CONTROL_WORDS];
    let room = room.min(MAX_FDS);
    // CMSG_LEN(room fds): the kernel fits (controllen - header) / 4 fds.
    let control_len = if room == 0 {
        0
    } else {
        hdr + room * std::mem::size_of::<RawFd>()
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if control_len > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control_len as _;
    }
    // SAFETY: `msg` points at `iov` (which covers `buf`, writable for its
    // length) and at `control` (writable for `control_len` <= its size);
    // all outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(Errno::last());
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    let used = (msg.msg_controllen as usize).min(control_len);
    let bytes: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let fds = scm_rights_in(&bytes[..used])
        .into_iter()
        // SAFETY: the kernel just installed each fd of an SCM_RIGHTS
        // message in our table for this read; nothing else owns it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    Ok((n as usize, fds, truncated))
}

/// `u64` words in a control buffer for [`MAX_FDS`] fds (with room to spare).
const CONTROL_WORDS: usize = (64 + MAX_FDS * 4) / 8;

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

    /// Send `body` with header `declared`, in `parts`: each `(bytes, fds)`
    /// is one `sendmsg` of the next `bytes` bytes of header and body,
    /// carrying `fds` copies of `fd`.
    fn send_in_parts(a: &Channel, body: &[u8], declared: u32, fd: RawFd, parts: &[(usize, usize)]) {
        let frame = [
            &FrameHeader {
                len: body.len() as u32,
                fds: declared,
            }
            .encode()[..],
            body,
        ]
        .concat();
        let mut at = 0;
        for &(bytes, fds) in parts {
            let raw: Vec<RawFd> = std::iter::repeat_n(fd, fds).collect();
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if fds == 0 { &[] } else { &cmsg };
            let n = sendmsg::<()>(
                a.stream.as_raw_fd(),
                &[IoSlice::new(&frame[at..at + bytes])],
                cmsgs,
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            assert_eq!(n, bytes);
            at += bytes;
        }
        assert_eq!(at, frame.len(), "the parts must cover the frame");
    }

    /// Wait up to 2 s for every copy of the pipe's write end to be closed.
    fn closed_within(r: &mut std::fs::File) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(2) {
            if is_closed_everywhere(r) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn truncated_control_data_is_refused_and_every_fd_closed() {
        let (a, b) = pair();
        let (mut r, w) = pipe();
        // 100 fds: more than the declared 1 and than the protocol's 64.
        let body = br#"{"op":"release"}"#;
        send_in_parts(
            &a,
            body,
            1,
            w.as_raw_fd(),
            &[(HEADER_LEN + body.len(), 100)],
        );
        drop(w);
        let e = b.recv().unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::TooManyFds {
                    declared: 1,
                    limit: MAX_FDS
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("more fds than the 1 it declared"),
            "{e}"
        );
        assert!(e.stream_in_step());
        assert!(is_closed_everywhere(&mut r), "surplus fds must be closed");
        a.send(&Request::Release, &[]).unwrap();
        assert!(b.recv().is_ok());
    }

    /// The flood of issue 11: a frame declaring no fds, its body trickled
    /// in one-byte sends each carrying 64 fds. They are closed as they
    /// arrive, while the frame is still unfinished, and the frame refused.
    #[test]
    fn surplus_fds_across_many_partial_sends_are_closed_at_once() {
        let (a, b) = pair();
        let (mut legit_r, legit_w) = pipe();
        let (mut flood_r, flood_w) = pipe();
        let body = [br#"{"op":"release"}"#.as_slice(), &[b' '; 184]].concat();
        let header = FrameHeader {
            len: body.len() as u32,
            fds: 1,
        }
        .encode();
        // Header and first byte with the one declared fd.
        let frame = [&header[..], &body].concat();
        sendmsg::<()>(
            a.stream.as_raw_fd(),
            &[IoSlice::new(&frame[..HEADER_LEN + 1])],
            &[ControlMessage::ScmRights(&[legit_w.as_raw_fd()])],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(legit_w);
        let receiver = std::thread::spawn(move || (b.recv(), b));
        // 150 one-byte sends of 64 fds: 9,600 fds.
        let flood: Vec<RawFd> = std::iter::repeat_n(flood_w.as_raw_fd(), MAX_FDS).collect();
        for i in 0..150 {
            let at = HEADER_LEN + 1 + i;
            sendmsg::<()>(
                a.stream.as_raw_fd(),
                &[IoSlice::new(&frame[at..at + 1])],
                &[ControlMessage::ScmRights(&flood)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
        drop(flood_w);
        assert!(
            closed_within(&mut flood_r),
            "the surplus fds must be closed while the frame is still unfinished"
        );
        assert!(!receiver.is_finished(), "the frame is not complete yet");
        write_all_nosignal(&a.stream, &frame[HEADER_LEN + 151..]).unwrap();
        let (got, b) = receiver.join().unwrap();
        let e = got.unwrap_err();
        assert!(
            matches!(e, TransportError::TooManyFds { declared: 1, .. }),
            "{e}"
        );
        assert!(e.stream_in_step());
        assert!(
            is_closed_everywhere(&mut legit_r),
            "a refused frame's fds are closed"
        );
        a.send(&Request::Release, &[]).unwrap();
        assert_eq!(
            decode_request(&b.recv().unwrap().body).unwrap(),
            Request::Release
        );
    }

    #[test]
    fn declared_count_is_honoured() {
        let (a, b) = pair();
        let (mut r, w) = pipe();
        let body = br#"{"op":"release"}"#;
        // Two declared, sent in two parts: accepted.
        send_in_parts(
            &a,
            body,
            2,
            w.as_raw_fd(),
            &[(HEADER_LEN, 1), (body.len(), 1)],
        );
        let got = b.recv().unwrap();
        assert_eq!(got.fds.len(), 2);
        drop(got);
        // One declared, three sent with the header: refused at once.
        send_in_parts(
            &a,
            body,
            1,
            w.as_raw_fd(),
            &[(3, 3), (HEADER_LEN - 3 + body.len(), 0)],
        );
        assert!(matches!(
            b.recv().unwrap_err(),
            TransportError::TooManyFds {
                declared: 1,
                limit: MAX_FDS
            }
        ));
        // Three declared, a limit of 2: refused though the count matches.
        let mut b = b;
        b.set_max_fds_in(2);
        send_in_parts(&a, body, 3, w.as_raw_fd(), &[(HEADER_LEN + body.len(), 3)]);
        let e = b.recv().unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::TooManyFds {
                    declared: 3,
                    limit: 2
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("accepts at most 2"), "{e}");
        drop(w);
        assert!(is_closed_everywhere(&mut r), "refused fds must be closed");
        a.send(&Request::Release, &[]).unwrap();
        assert!(b.recv().unwrap().fds.is_empty());
    }

    #[test]
    fn limit_zero_accepts_no_fd() {
        let (a, mut b) = pair();
        b.set_max_fds_in(0);
        let (mut r, w) = pipe();
        let body = br#"{"op":"release"}"#;
        // Declared and sent: refused, and never installed here.
        send_in_parts(&a, body, 2, w.as_raw_fd(), &[(HEADER_LEN + body.len(), 2)]);
        // Undeclared, in many parts.
        let parts: Vec<(usize, usize)> = std::iter::once((HEADER_LEN, 0))
            .chain((0..body.len()).map(|_| (1, MAX_FDS)))
            .collect();
        send_in_parts(&a, body, 0, w.as_raw_fd(), &parts);
        // Declared but not sent: a mismatch, as with any limit.
        send_in_parts(&a, body, 3, w.as_raw_fd(), &[(HEADER_LEN + body.len(), 0)]);
        drop(w);
        for declared in [2, 0] {
            let e = b.recv().unwrap_err();
            assert!(
                matches!(e, TransportError::TooManyFds { declared: d, limit: 0 } if d == declared),
                "{e}"
            );
            assert!(e.to_string().contains("accepts no file descriptors"), "{e}");
            assert!(e.stream_in_step());
        }
        assert!(matches!(
            b.recv().unwrap_err(),
            TransportError::FdMismatch {
                declared: 3,
                received: 0
            }
        ));
        assert!(is_closed_everywhere(&mut r), "refused fds must be closed");
        a.send(&Request::Release, &[]).unwrap();
        assert_eq!(
            decode_request(&b.recv().unwrap().body).unwrap(),
            Request::Release
        );
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
