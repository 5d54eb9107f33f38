//! `xsk-client echo`: send every received frame back with MAC, IPv4 and
//! UDP/TCP port addresses swapped.

use std::sync::atomic::AtomicBool;

use anyhow::Result;

use crate::args::Common;
use crate::lease::start;
use crate::pump::{drain_tx, run_loop, Limits};

/// Echo until a limit or a signal stops it, then print the summary.
pub fn run(common: &Common, stop: &AtomicBool) -> Result<()> {
    let mut s = start(common)?;
    let limits = Limits::new(common);
    let batch = common.config().batch_size as usize;
    run_loop(&mut s, &limits, stop, |_, sock| {
        let (n, _) = sock.forward(batch, |f| {
            reflect(f);
            true
        })?;
        Ok(n)
    })?;
    drain_tx(&mut s.sockets)?;
    s.finish("echo")
}

/// Swap Ethernet source/destination, and IPv4 addresses and UDP/TCP ports
/// when present. Checksums stay valid: every swap keeps the summed words.
fn reflect(frame: &mut [u8]) {
    if frame.len() < 14 {
        return;
    }
    for i in 0..6 {
        frame.swap(i, i + 6);
    }
    if frame[12..14] != [0x08, 0x00] || frame.len() < 34 {
        return;
    }
    for i in 26..30 {
        frame.swap(i, i + 4);
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let proto = frame[23];
    if ihl >= 20 && (proto == 17 || proto == 6) && frame.len() >= l4 + 4 {
        frame.swap(l4, l4 + 2);
        frame.swap(l4 + 1, l4 + 3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_swaps_and_keeps_short_frames() {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&[1; 6]);
        f[6..12].copy_from_slice(&[2; 6]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&[0x10, 0x00]);
        f[36..38].copy_from_slice(&[0x20, 0x00]);
        reflect(&mut f);
        assert_eq!(&f[0..6], &[2; 6]);
        assert_eq!(&f[26..30], &[10, 0, 0, 2]);
        assert_eq!(&f[34..38], &[0x20, 0x00, 0x10, 0x00]);
        let mut short = vec![1u8; 5];
        reflect(&mut short);
        assert_eq!(short, vec![1u8; 5]);
    }
}
