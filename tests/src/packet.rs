//! Ethernet II / IPv4 / UDP frames with real checksums.

use std::net::Ipv4Addr;

/// Length of an Ethernet II header (no VLAN tag).
pub const ETH_HLEN: usize = 14;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Length of a UDP header.
pub const UDP_HLEN: usize = 8;
/// Bytes a [`build_udp_frame`] frame adds to its payload.
pub const UDP_FRAME_OVERHEAD: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
/// Largest UDP payload in one IPv4 packet.
const MAX_PAYLOAD: usize = 65535 - IPV4_HLEN - UDP_HLEN;

/// A parsed Ethernet/IPv4/UDP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// UDP payload (as long as the UDP length field says; link padding excluded).
    pub payload: Vec<u8>,
}

/// One's-complement sum of `data` (big-endian 16-bit words, odd byte padded) added to `acc`.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn udp_pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: u16) -> u32 {
    let mut acc = sum16(0, &src.octets());
    acc = sum16(acc, &dst.octets());
    acc += u32::from(IPPROTO_UDP);
    acc + u32::from(udp_len)
}

/// Build an Ethernet II / IPv4 (no options, DF, TTL 64, id 0) / UDP frame with a correct
/// IPv4 header checksum and a correct (non-zero) UDP checksum. No link padding is added.
///
/// # Panics
///
/// Test helper: panics if `payload` is longer than 65507 bytes (does not fit one IPv4
/// packet).
#[allow(clippy::too_many_arguments)]
pub fn build_udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert!(
        payload.len() <= MAX_PAYLOAD,
        "build_udp_frame: payload of {} bytes does not fit one IPv4 packet",
        payload.len()
    );
    let udp_len = (UDP_HLEN + payload.len()) as u16;
    let ip_len = IPV4_HLEN as u16 + udp_len;
    let mut f = Vec::with_capacity(UDP_FRAME_OVERHEAD + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4 header.
    f.push(0x45);
    f.push(0);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes()); // id
    f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    f.push(64);
    f.push(IPPROTO_UDP);
    f.extend_from_slice(&[0, 0]); // checksum
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&dst_ip.octets());
    let ip_csum = !fold(sum16(0, &f[ETH_HLEN..ETH_HLEN + IPV4_HLEN]));
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&ip_csum.to_be_bytes());
    // UDP header + payload.
    let u = f.len();
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let mut udp_csum = !fold(sum16(udp_pseudo_sum(src_ip, dst_ip, udp_len), &f[u..]));
    if udp_csum == 0 {
        udp_csum = 0xffff; // 0 means "no checksum" in IPv4 UDP
    }
    f[u + 6..u + 8].copy_from_slice(&udp_csum.to_be_bytes());
    f
}

/// Offsets of a well-formed, unfragmented Ethernet/IPv4/UDP frame:
/// (IP header start, IP header length, UDP start, UDP length).
fn locate(frame: &[u8]) -> Option<(usize, usize, usize, usize)> {
    if frame.len() < ETH_HLEN + IPV4_HLEN + UDP_HLEN {
        return None;
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_HLEN || ip.len() < ihl + UDP_HLEN {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl + UDP_HLEN || total > ip.len() {
        return None;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 || ip[9] != IPPROTO_UDP {
        return None; // fragment (MF or offset) or not UDP
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HLEN || udp_len > udp.len() {
        return None;
    }
    Some((ETH_HLEN, ihl, ETH_HLEN + ihl, udp_len))
}

/// Parse an Ethernet II / IPv4 / UDP frame. Returns `None` for anything else (other
/// ethertypes, VLAN tags, IPv6, other protocols, fragments) and for truncated or
/// inconsistent lengths; never panics. Checksums are not checked (see
/// [`frame_checksums_ok`]).
pub fn parse_udp_frame(frame: &[u8]) -> Option<UdpFrame> {
    let (ip, _ihl, u, udp_len) = locate(frame)?;
    let mac = |o: usize| -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&frame[o..o + 6]);
        m
    };
    let ip4 = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    Some(UdpFrame {
        dst_mac: mac(0),
        src_mac: mac(6),
        src_ip: ip4(ip + 12),
        dst_ip: ip4(ip + 16),
        src_port: u16::from_be_bytes([frame[u], frame[u + 1]]),
        dst_port: u16::from_be_bytes([frame[u + 2], frame[u + 3]]),
        payload: frame[u + UDP_HLEN..u + udp_len].to_vec(),
    })
}

/// Whether `frame` is a UDP frame (as [`parse_udp_frame`] accepts) whose IPv4 header
/// checksum and UDP checksum are both correct. A zero UDP checksum ("none", e.g. left for
/// offload) counts as **not** ok: the test bed wants complete checksums on the wire.
pub fn frame_checksums_ok(frame: &[u8]) -> bool {
    let Some((ip, ihl, u, udp_len)) = locate(frame) else {
        return false;
    };
    if fold(sum16(0, &frame[ip..ip + ihl])) != 0xffff {
        return false;
    }
    let udp = &frame[u..u + udp_len];
    if udp[6] == 0 && udp[7] == 0 {
        return false;
    }
    let src = Ipv4Addr::new(
        frame[ip + 12],
        frame[ip + 13],
        frame[ip + 14],
        frame[ip + 15],
    );
    let dst = Ipv4Addr::new(
        frame[ip + 16],
        frame[ip + 17],
        frame[ip + 18],
        frame[ip + 19],
    );
    fold(sum16(udp_pseudo_sum(src, dst, udp_len as u16), udp)) == 0xffff
}

/// What a reflector does: a copy of `frame` with Ethernet addresses, IPv4 addresses and UDP
/// ports swapped. Both checksums stay valid (swapping leaves the one's-complement sums
/// unchanged). `None` if `frame` is not a UDP frame ([`parse_udp_frame`]).
pub fn reflect_udp_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let (ip, _ihl, u, _) = locate(frame)?;
    let mut f = frame.to_vec();
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    for i in 0..4 {
        f.swap(ip + 12 + i, ip + 16 + i);
    }
    for i in 0..2 {
        f.swap(u + i, u + 2 + i);
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame captured with tcpdump on a veth whose sender had TX checksum offload off:
    /// 198.18.0.2:40001 -> 198.18.0.1:9000, "hello xsk testbed"; checksums computed by
    /// the kernel (IP b4d7 with id f9c0, UDP de64).
    const KERNEL_FRAME: &str = "020000000001020000000002080045\
        00002df9c040004011b4d7c6120002c6120001\
        9c4123280019de6468656c6c6f2078736b2074657374626564";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn kernel_frame_parses_and_checks() {
        let f = hex(KERNEL_FRAME);
        assert!(frame_checksums_ok(&f));
        let p = parse_udp_frame(&f).unwrap();
        assert_eq!(p.src_mac, B);
        assert_eq!(p.dst_mac, A);
        assert_eq!(p.src_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.dst_ip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!((p.src_port, p.dst_port), (40001, 9000));
        assert_eq!(p.payload, b"hello xsk testbed");
    }

    #[test]
    fn build_matches_kernel() {
        let k = hex(KERNEL_FRAME);
        let f = build_udp_frame(
            B,
            A,
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 1),
            40001,
            9000,
            b"hello xsk testbed",
        );
        assert_eq!(f.len(), k.len());
        assert!(frame_checksums_ok(&f));
        // Identical except the IP id (kernel: f9c0, ours: 0) and hence the IP checksum.
        assert_eq!(f[..18], k[..18]);
        assert_eq!(f[20..24], k[20..24]);
        assert_eq!(f[26..], k[26..]);
        // With the kernel's id the IP checksum must come out as the kernel's.
        let mut g = f.clone();
        g[18..20].copy_from_slice(&[0xf9, 0xc0]);
        g[24..26].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(0, &g[14..34]));
        assert_eq!(c, 0xb4d7);
    }

    #[test]
    fn ipv4_header_reference_vector() {
        // The classic example header (checksum b861).
        let h = hex("450000730000400040110000c0a80001c0a800c7");
        assert_eq!(!fold(sum16(0, &h)), 0xb861);
    }

    #[test]
    fn roundtrip_odd_and_empty_payloads() {
        for len in [0usize, 1, 2, 3, 17, 1000, 1473] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let f = build_udp_frame(
                A,
                B,
                Ipv4Addr::new(10, 1, 2, 3),
                Ipv4Addr::new(10, 3, 2, 1),
                1,
                65535,
                &payload,
            );
            assert_eq!(f.len(), UDP_FRAME_OVERHEAD + len);
            assert!(frame_checksums_ok(&f), "len {len}");
            let p = parse_udp_frame(&f).unwrap();
            assert_eq!(p.payload, payload);
            assert_eq!((p.src_port, p.dst_port), (1, 65535));
            // Link padding is ignored.
            let mut padded = f.clone();
            padded.resize(f.len().max(60) + 4, 0);
            assert_eq!(parse_udp_frame(&padded).unwrap(), p);
            assert!(frame_checksums_ok(&padded));
        }
    }

    #[test]
    fn corruption_is_detected() {
        let f = build_udp_frame(
            A,
            B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            5,
            6,
            b"abc",
        );
        for i in ETH_HLEN..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert!(!frame_checksums_ok(&g), "flip at {i} undetected");
        }
        let mut z = f.clone();
        z[ETH_HLEN + IPV4_HLEN + 6..ETH_HLEN + IPV4_HLEN + 8].copy_from_slice(&[0, 0]);
        assert!(!frame_checksums_ok(&z));
    }

    #[test]
    fn reflect_swaps_and_keeps_checksums() {
        let f = build_udp_frame(
            A,
            B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            5,
            6,
            b"ping",
        );
        let r = reflect_udp_frame(&f).unwrap();
        assert!(frame_checksums_ok(&r));
        let p = parse_udp_frame(&r).unwrap();
        assert_eq!((p.src_mac, p.dst_mac), (B, A));
        assert_eq!(p.src_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.dst_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!((p.src_port, p.dst_port), (6, 5));
        assert_eq!(p.payload, b"ping");
        assert_eq!(reflect_udp_frame(&r).unwrap(), f);
    }

    #[test]
    fn garbage_never_panics() {
        let f = build_udp_frame(
            A,
            B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            5,
            6,
            b"payload",
        );
        for cut in 0..f.len() {
            let _ = parse_udp_frame(&f[..cut]);
            let _ = frame_checksums_ok(&f[..cut]);
            let _ = reflect_udp_frame(&f[..cut]);
        }
        // Pseudo-random bytes, and every single-byte value at every header position.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_udp_frame(&g);
            let _ = frame_checksums_ok(&g);
            let _ = reflect_udp_frame(&g);
        }
        for i in 0..UDP_FRAME_OVERHEAD {
            for v in [0u8, 1, 0x0f, 0x40, 0x4f, 0x7f, 0xff] {
                let mut g = f.clone();
                g[i] = v;
                let _ = parse_udp_frame(&g);
                let _ = frame_checksums_ok(&g);
                let _ = reflect_udp_frame(&g);
            }
        }
        assert!(parse_udp_frame(&[]).is_none());
    }
}
