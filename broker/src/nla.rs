//! Netlink attributes (`struct nlattr`), as both of the broker's netlink
//! users read them: the netdev family's queue replies (probe.rs) and
//! rtnetlink's link replies (offload.rs).

/// The type bits of an attribute's type (without the nested and
/// byte-order flags).
pub const NLA_TYPE_MASK: u16 = 0x3fff;

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
