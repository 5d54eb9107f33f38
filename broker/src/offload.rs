//! A warning for a known trap: a veth whose peer has transmit checksum
//! offload on.
//!
//! A veth (like any local sender) leaves the TCP/UDP checksums of the frames
//! it sends *partial*, to be completed by a NIC that never comes. The kernel's
//! own stack accepts them (the skb says so), but an AF_XDP copy hands the bare
//! frame to user space, and a VM guest behind it (QEMU's af-xdp backend) or
//! any program that checks checksums drops them: TCP to a guest then never
//! connects, though ping works. `ethtool -K PEER tx off` on the sending end
//! fixes it. When the broker attaches to a veth, [`warn_if_veth_peer_offloads`]
//! looks at the peer and logs one line when its tx checksum offload is on.
//! When the peer is in another network namespace its offloads cannot be read
//! from here; the line then says so.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};
use tracing::{info, warn};

use crate::nla::{attributes, reply, u32_at, NLM_F_REQUEST};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const ETHTOOL_GTXCSUM: u32 = 0x16;

/// What the kernel says about a link: its kind, and its peer link.
#[derive(Debug, Default, PartialEq, Eq)]
struct LinkInfo {
    /// `IFLA_INFO_KIND`, e.g. `veth`.
    kind: Option<String>,
    /// `IFLA_LINK`: the peer's ifindex (in `peer_netnsid`'s namespace, if set).
    link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: set when the peer is in another namespace.
    peer_netnsid: Option<i32>,
}

/// If `ifindex` (`ifname`) is a veth whose peer has transmit checksum offload
/// on, log a warning naming the peer and the command that turns it off; if
/// the peer is in another network namespace, log that it cannot be checked.
/// Anything else (not a veth, a question the kernel does not answer) is
/// silent: this is advice, never a reason to refuse.
pub fn warn_if_veth_peer_offloads(ifindex: u32, ifname: &str) {
    let Ok(info) = link_info(ifindex) else {
        return;
    };
    if info.kind.as_deref() != Some("veth") {
        return;
    }
    let Some(peer_index) = info.link.filter(|&i| i != 0) else {
        return;
    };
    if info.peer_netnsid.is_some() {
        info!(
            ifname,
            peer_ifindex = peer_index,
            "{ifname} is a veth whose peer (ifindex {peer_index}) is in another network \
             namespace, so its checksum offload cannot be checked from here: if the peer's \
             tx checksum offload is on, TCP/UDP frames it sends reach the AF_XDP sockets with \
             partial checksums and a VM guest drops them; turn it off in the peer's namespace \
             with `ethtool -K PEER tx off`"
        );
        return;
    }
    let Some(peer) = index_to_name(peer_index) else {
        return;
    };
    if let Ok(true) = tx_csum_on(&peer) {
        warn!(
            ifname, peer = %peer,
            "the peer of veth {ifname}, {peer}, has tx checksum offload on: TCP/UDP frames it \
             sends reach the AF_XDP sockets with partial checksums and a VM guest drops them; \
             turn it off with `ethtool -K {peer} tx off`"
        );
    }
}

/// `RTM_GETLINK` for one ifindex over rtnetlink.
fn link_info(ifindex: u32) -> io::Result<LinkInfo> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    req[16] = libc::AF_UNSPEC as u8;
    req[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    send(sock.as_raw_fd(), &req, MsgFlags::empty())?;
    let mut buf = vec![0u8; 32 * 1024];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse_link_reply(&buf[..n])
}

fn parse_link_reply(msg: &[u8]) -> io::Result<LinkInfo> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short RTM_GETLINK reply");
    let (ty, payload) = reply(msg)?;
    // The payload: ifinfomsg (16 bytes), then the attributes.
    let attrs = payload
        .get(16..)
        .filter(|_| ty == RTM_NEWLINK)
        .ok_or_else(bad)?;
    let mut info = LinkInfo::default();
    for (ty, data) in attributes(attrs) {
        match ty {
            IFLA_LINK => info.link = u32_at(data, 0),
            IFLA_LINK_NETNSID => info.peer_netnsid = u32_at(data, 0).map(|v| v as i32),
            IFLA_LINKINFO => {
                for (ity, idata) in attributes(data) {
                    if ity == IFLA_INFO_KIND {
                        let s = idata.split(|&c| c == 0).next().unwrap_or_default();
                        info.kind = Some(String::from_utf8_lossy(s).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn index_to_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most;
    // the result is checked for NULL before it is read.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// `ETHTOOL_GTXCSUM` on `ifname`: whether any tx checksum offload is on.
fn tx_csum_on(ifname: &str) -> io::Result<bool> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    // SAFETY: a zeroed ifreq is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = ifname.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live
    // ethtool_value for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nla::NLMSG_ERROR;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn reply(attrs: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 32];
        m[0..4].copy_from_slice(&((32 + attrs.len()) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(attrs);
        m
    }

    #[test]
    fn parses_kind_peer_and_netnsid() {
        let mut attrs = attr(IFLA_LINK, &7u32.to_ne_bytes());
        attrs.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, b"veth\0")));
        let info = parse_link_reply(&reply(&attrs)).unwrap();
        assert_eq!(info.kind.as_deref(), Some("veth"));
        assert_eq!(info.link, Some(7));
        assert_eq!(info.peer_netnsid, None);
        attrs.extend(attr(IFLA_LINK_NETNSID, &3u32.to_ne_bytes()));
        assert_eq!(
            parse_link_reply(&reply(&attrs)).unwrap().peer_netnsid,
            Some(3)
        );
    }

    #[test]
    fn truncated_and_error_replies_are_errors() {
        assert!(parse_link_reply(&[0u8; 8]).is_err());
        let mut e = vec![0u8; 20];
        e[0..4].copy_from_slice(&20u32.to_ne_bytes());
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let err = parse_link_reply(&e).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        // An attribute claiming more than there is ends the walk.
        let mut attrs = attr(IFLA_LINK, &7u32.to_ne_bytes());
        attrs.extend_from_slice(&[200, 0, 5, 0]);
        assert_eq!(parse_link_reply(&reply(&attrs)).unwrap().link, Some(7));
    }

    #[test]
    fn loopback_is_not_a_veth() {
        let info = link_info(1).unwrap();
        assert_eq!(info.kind, None, "{info:?}");
    }
}
