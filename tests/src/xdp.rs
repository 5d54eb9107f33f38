//! A minimal XDP program attached through a BPF link, for tests that need "some other
//! program is already there" or per-queue XDP statistics without the broker.

use crate::netns::Netns;
use anyhow::{anyhow, Context, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// `bpf(2)` with a zero-filled 128-byte attribute block.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<libc::c_int> {
    // SAFETY: attr is a valid, fully initialised bpf_attr-sized buffer; pointers inside it
    // (set by callers) point at live memory for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as libc::c_int)
    }
}

fn put_u32(attr: &mut [u8; 128], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], off: usize, v: u64) {
    attr[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// An `XDP_PASS` program (`r0 = 2; exit`) attached in native mode to one interface through
/// a BPF link (`BPF_LINK_CREATE`). The program and the attachment go away when this is
/// dropped (the link fd is the only reference). While it is attached, netlink attaches
/// (`ip link set xdp`, libxdp) on the same interface fail with EBUSY.
#[derive(Debug)]
pub struct XdpPass {
    link: OwnedFd,
    prog: OwnedFd,
    ifname: String,
}

impl XdpPass {
    /// Load the program and link it to `ifname` in `ns` (native/driver mode).
    pub fn attach(ns: &Netns, ifname: &str) -> Result<XdpPass> {
        let (prog, link) = ns
            .enter_thread(|| load_and_link(ifname))?
            .with_context(|| format!("attaching XDP_PASS to {ifname} in netns {}", ns.name()))?;
        Ok(XdpPass {
            link,
            prog,
            ifname: ifname.to_owned(),
        })
    }

    /// The kernel's id of the loaded program (what `ip -d link` shows).
    pub fn prog_id(&self) -> Result<u32> {
        let mut info = [0u8; 16]; // struct bpf_prog_info { u32 type; u32 id; ... }
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, self.prog.as_raw_fd() as u32);
        put_u32(&mut attr, 4, info.len() as u32);
        put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|e| {
            anyhow!(
                "BPF_OBJ_GET_INFO_BY_FD for the XDP_PASS program on {}: {e}",
                self.ifname
            )
        })?;
        Ok(u32::from_ne_bytes([info[4], info[5], info[6], info[7]]))
    }

    /// The link's file descriptor.
    pub fn link_fd(&self) -> &OwnedFd {
        &self.link
    }
}

fn load_and_link(ifname: &str) -> Result<(OwnedFd, OwnedFd)> {
    let cname = CString::new(ifname).context("interface name contains NUL")?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("if_nametoindex({ifname})"));
    }
    // struct bpf_insn { u8 code; u8 dst:4, src:4; s16 off; s32 imm; } (registers are 0,
    // so only imm's byte order depends on the host).
    let insn = |code: u8, imm: i32| -> u64 {
        let i = imm.to_ne_bytes();
        u64::from_ne_bytes([code, 0, 0, 0, i[0], i[1], i[2], i[3]])
    };
    let insns: [u64; 2] = [
        insn(0xb7, 2), // BPF_ALU64 | BPF_MOV | BPF_K: r0 = XDP_PASS
        insn(0x95, 0), // BPF_JMP | BPF_EXIT
    ];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..56].copy_from_slice(b"xtb_pass");
    put_u32(&mut attr, 68, BPF_XDP); // expected_attach_type
    let prog = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of an XDP_PASS program")?;
    // SAFETY: a new fd returned by the kernel, owned by us.
    let prog = unsafe { OwnedFd::from_raw_fd(prog) };
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    let link = bpf(BPF_LINK_CREATE, &mut attr)
        .with_context(|| format!("BPF_LINK_CREATE (XDP) on {ifname} (ifindex {ifindex})"))?;
    // SAFETY: as above.
    let link = unsafe { OwnedFd::from_raw_fd(link) };
    Ok((prog, link))
}
