//! What the tool prints on standard output: the `ready` line once the
//! sockets are bound and the `done` summary at the end, as text or (with
//! `--json`) as JSON objects.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::json;
use xsk_client::{AttachMode, CopyMode, PrivilegeReport, XskSocket};

/// Prints events as text or JSON lines.
pub struct Out {
    /// One JSON object per line instead of text.
    pub json: bool,
}

impl Out {
    /// Print one event: `value` as JSON, or the line `text` builds.
    pub fn event(&self, value: serde_json::Value, text: impl FnOnce() -> String) {
        let line = if self.json { value.to_string() } else { text() };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    /// The `ready` line: the sockets are bound on `queues`.
    pub fn ready(
        &self,
        info: &Ready,
        queues: &[u32],
        privileges: &PrivilegeReport,
        pin: Option<&str>,
    ) {
        self.event(
            json!({
                "event": "ready",
                "ifname": info.ifname,
                "ifindex": info.ifindex,
                "mode": info.mode,
                "program_id": info.program_id,
                "copy": info.copy,
                "queues": queues,
                "pid": std::process::id(),
                "privileges": privileges,
                "map_pin": pin,
            }),
            || {
                format!(
                    "ready: {} (ifindex {}) queues {:?}, XDP {} mode, program id {}; \
                     running as uid {} with CapEff {:016x}, own socket(AF_XDP): {}",
                    info.ifname,
                    info.ifindex,
                    queues,
                    info.mode_text(),
                    info.program_id
                        .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                    privileges.uid,
                    privileges.cap_eff,
                    privileges
                        .af_xdp_socket_error
                        .as_deref()
                        .unwrap_or("allowed")
                )
            },
        );
    }

    /// The `done` summary of `what` (rx, tx, echo): packets in and out in
    /// total and per queue, with each queue's `XDP_STATISTICS`.
    pub fn done(
        &self,
        info: &Ready,
        sockets: &[XskSocket],
        seconds: f64,
        what: &str,
    ) -> Result<()> {
        let mut per_queue = Vec::new();
        let (mut rx, mut tx) = (0u64, 0u64);
        for sock in sockets {
            let c = sock.counters();
            rx += c.rx_packets;
            tx += c.tx_packets;
            let stats = sock
                .statistics()
                .with_context(|| format!("XDP_STATISTICS of queue {}", sock.queue_id()))?;
            per_queue
                .push(json!({"queue_id": sock.queue_id(), "counters": c, "xdp_statistics": stats}));
        }
        self.event(
            json!({
                "event": "done", "command": what, "rx_packets": rx, "tx_packets": tx,
                "seconds": seconds, "mode": info.mode, "ifname": info.ifname, "queues": per_queue,
            }),
            || {
                let mut t = format!(
                    "done: {what} on {} ({} mode): {rx} packets in, {tx} packets out in {seconds:.1} s",
                    info.ifname,
                    info.mode_text()
                );
                for q in &per_queue {
                    t.push_str(&format!(
                        "\n  queue {}: {} in, {} out",
                        q["queue_id"], q["counters"]["rx_packets"], q["counters"]["tx_packets"]
                    ));
                }
                t
            },
        );
        Ok(())
    }
}

/// What the ready line reports.
pub struct Ready {
    /// The interface, as the broker names it.
    pub ifname: String,
    /// Its index in the sockets' network namespace.
    pub ifindex: u32,
    /// Unknown with --map-path (the broker is not asked).
    pub mode: Option<AttachMode>,
    /// The XDP program's id; unknown with --map-path.
    pub program_id: Option<u32>,
    /// The copy mode asked for.
    pub copy: CopyMode,
}

impl Ready {
    /// The attach mode as text, `unknown` when not known.
    pub fn mode_text(&self) -> String {
        self.mode
            .map_or_else(|| "unknown".to_owned(), |m| m.to_string())
    }
}
