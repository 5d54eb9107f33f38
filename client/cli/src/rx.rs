//! `xsk-client rx`: receive frames on the leased queues, and print them
//! with `--print-frames`.

use std::sync::atomic::AtomicBool;

use anyhow::Result;
use serde_json::json;

use crate::args::Common;
use crate::lease::start;
use crate::pump::{run_loop, Limits};

/// Receive until a limit or a signal stops it, then print the summary.
pub fn run(common: &Common, print_frames: bool, stop: &AtomicBool) -> Result<()> {
    let mut s = start(common)?;
    let limits = Limits::new(common);
    let json = common.json;
    let batch = common.config().batch_size as usize;
    let mut left = common.count.unwrap_or(u64::MAX);
    run_loop(&mut s, &limits, stop, |_, sock| {
        let q = sock.queue_id();
        let max = batch
            .min(usize::try_from(left).unwrap_or(usize::MAX))
            .max(1);
        let n = sock.receive(max, |frame| {
            if print_frames {
                let line = if json {
                    json!({"event": "frame", "queue_id": q, "len": frame.len(), "hex": hex(frame)})
                        .to_string()
                } else {
                    format!("queue {q} len {}: {}", frame.len(), hex(frame))
                };
                println!("{line}");
            }
        });
        left = left.saturating_sub(n as u64);
        Ok(n)
    })?;
    s.finish("rx")
}

/// `bytes` as lower-case hex digits, two per byte.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x0a, 0xff, 0x00]), "0aff00");
        assert_eq!(hex(&[]), "");
    }
}
