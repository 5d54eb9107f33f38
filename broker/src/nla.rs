//! Netlink messages and attributes (`struct nlmsghdr`, `struct nlattr`), as
//! both of the broker's netlink users read them: the netdev family's queue
//! replies (probe.rs) and rtnetlink's link replies (offload.rs).

use std::io;

/// `nlmsghdr.nlmsg_flags`: a request.
pub const NLM_F_REQUEST: u16 = 1;
/// `nlmsghdr.nlmsg_type` of an error (or acknowledgement) reply.
pub const NLMSG_ERROR: u16 = 2;
/// The size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// The type bits of an attribute's type (without the nested and
/// byte-order flags).
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// The first message of a netlink reply: its type and its payload (after the
/// header, up to the header's length), or the errno an error reply carries.
pub fn reply(buf: &[u8]) -> io::Result<(u16, &[u8])> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply");
    let len = u32_at(buf, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(buf, 4).ok_or_else(bad)?;
    let payload = buf.get(NLMSG_HDRLEN..len).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(payload, 0).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    Ok((kind, payload))
}

/// A native-endian `u16` at `at`, if `b` holds one there.
pub fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// A native-endian `u32` at `at`, if `b` holds one there.
pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b`, in order: (type, payload). Stops at the first
/// attribute that does not fit.
pub fn attributes(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(ty)) = (u16_at(b, at), u16_at(b, at + 2)) {
        let len = usize::from(len);
        if len < 4 || at + len > b.len() {
            break;
        }
        out.push((ty & NLA_TYPE_MASK, &b[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// Append an attribute of `kind` holding `value`, padded to 4 bytes.
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}
