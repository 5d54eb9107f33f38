//! `xsk-client tx`: transmit frames read from standard input, one
//! hex-encoded frame per line.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::args::Common;
use crate::lease::start;
use crate::pump::drain_tx;

/// Read every frame, lease, send them on `on_queue` (or over all queues in
/// turn), wait for their completion, then print the summary.
pub fn run(common: &Common, on_queue: Option<usize>, stop: &AtomicBool) -> Result<()> {
    let mut frames = Vec::new();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading frames from standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        frames.push(parse_hex(&line).with_context(|| format!("frame on line {}", i + 1))?);
    }
    let mut s = start(common)?;
    if let Some(q) = on_queue {
        if q >= s.sockets.len() {
            bail!("--on-queue {q}: the lease has {} queue(s)", s.sockets.len());
        }
    }
    let n = s.sockets.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, frame) in frames.iter().enumerate() {
        let idx = on_queue.unwrap_or(i % n);
        loop {
            if s.sockets[idx].transmit(&[frame])? == 1 {
                break;
            }
            if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                bail!("queue {} stopped taking frames", s.sockets[idx].queue_id());
            }
            s.sockets[idx].complete_tx();
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    drain_tx(&mut s.sockets)?;
    s.finish("tx")
}

/// One frame from a line of hex digits (whitespace ignored).
fn parse_hex(line: &str) -> Result<Vec<u8>> {
    let s: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("bad hex at {i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lines_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_hex("0aff").unwrap(), vec![10, 255]);
        assert_eq!(parse_hex("0a ff\t01").unwrap(), vec![10, 255, 1]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
