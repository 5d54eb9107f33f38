//! The few ethtool requests the test bed needs, through the `SIOCETHTOOL` ioctl (so the
//! `ethtool` program is not required). All of them act on the calling thread's network
//! namespace; call them from [`crate::Netns::enter_thread`].

use anyhow::{bail, Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;

#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Issue `SIOCETHTOOL` on `ifname` with `buf` as the request (its first u32 is the
/// command). `buf` is u64-aligned storage.
fn ioctl(ifname: &str, buf: &mut [u64]) -> Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        bail!("bad interface name {ifname:?}");
    }
    let cmd = first_u32s(buf).0;
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_INET) for SIOCETHTOOL");
    }
    // SAFETY: fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: buf.as_mut_ptr().cast(),
        _pad: [0; 16],
    };
    ifr.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: ifr is a valid ifreq whose data points at a request buffer large enough for
    // the command (the callers size it from the kernel's own counts).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("ioctl(SIOCETHTOOL, cmd {cmd:#x}) on {ifname}"));
    }
    Ok(())
}

fn first_u32s(buf: &[u64]) -> (u32, u32) {
    let b = buf[0].to_ne_bytes();
    (
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
    )
}

fn two_u32s(a: u32, b: u32) -> u64 {
    let mut x = [0u8; 8];
    x[..4].copy_from_slice(&a.to_ne_bytes());
    x[4..].copy_from_slice(&b.to_ne_bytes());
    u64::from_ne_bytes(x)
}

/// `ethtool -K IF tx on|off` (legacy `ETHTOOL_STXCSUM`: all TX checksum features).
pub(crate) fn set_tx_csum(ifname: &str, on: bool) -> Result<()> {
    let mut buf = [two_u32s(ETHTOOL_STXCSUM, u32::from(on))];
    ioctl(ifname, &mut buf)
}

/// Whether any TX checksum offload is on (`ETHTOOL_GTXCSUM`).
pub(crate) fn get_tx_csum(ifname: &str) -> Result<bool> {
    let mut buf = [two_u32s(ETHTOOL_GTXCSUM, 0)];
    ioctl(ifname, &mut buf)?;
    Ok(first_u32s(&buf).1 != 0)
}

/// `ethtool -S IF`: driver statistics as (name, value) pairs.
pub(crate) fn stats(ifname: &str) -> Result<Vec<(String, u64)>> {
    // struct ethtool_sset_info { u32 cmd; u32 reserved; u64 sset_mask; u32 data[1]; }
    let mut info = [two_u32s(ETHTOOL_GSSET_INFO, 0), 1u64 << ETH_SS_STATS, 0];
    ioctl(ifname, &mut info)?;
    if info[1] & (1u64 << ETH_SS_STATS) == 0 {
        return Ok(Vec::new()); // driver has no statistics
    }
    let n = first_u32s(&info[2..]).0 as usize;
    if n > 1 << 16 {
        bail!("{ifname}: implausible statistics count {n}");
    }
    // struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[]; }
    let words = (12 + n * ETH_GSTRING_LEN).div_ceil(8);
    let mut strings = vec![0u64; words];
    strings[0] = two_u32s(ETHTOOL_GSTRINGS, ETH_SS_STATS);
    strings[1] = two_u32s(n as u32, 0);
    ioctl(ifname, &mut strings)?;
    let bytes: Vec<u8> = strings.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let got = first_u32s(&strings[1..]).0 as usize;
    // struct ethtool_stats { u32 cmd; u32 n_stats; u64 data[]; }
    let mut values = vec![0u64; 1 + n];
    values[0] = two_u32s(ETHTOOL_GSTATS, n as u32);
    ioctl(ifname, &mut values)?;
    let got = got.min(n).min(first_u32s(&values).1 as usize);
    Ok((0..got)
        .map(|i| {
            let raw = &bytes[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            (
                String::from_utf8_lossy(&raw[..end]).into_owned(),
                values[1 + i],
            )
        })
        .collect())
}
