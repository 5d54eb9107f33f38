//! Two namespaces joined by a multi-queue veth pair.

use crate::cmd::{mac_to_string, parse_mac};
use crate::ethtool;
use crate::netns::{unique_token, Netns};
use crate::xdp::XdpPass;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::net::Ipv4Addr;

/// IPv4 address of the xsk end (RFC 2544 benchmark range, only inside our namespaces).
pub const XSK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// IPv4 address of the peer end.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PREFIX_LEN: u8 = 24;
const XSK_NS_PREFIX: &str = "xtbx";
const PEER_NS_PREFIX: &str = "xtbp";

/// An XDP attach mode as reported by `ip -d -j link` (`XDP_ATTACHED_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) XDP, `XDP_ATTACHED_DRV` (1).
    Native,
    /// Generic (skb) XDP, `XDP_ATTACHED_SKB` (2).
    Generic,
    /// Hardware offload, `XDP_ATTACHED_HW` (3).
    Offload,
    /// Any other value.
    Other(u64),
}

impl XdpMode {
    fn from_code(c: u64) -> XdpMode {
        match c {
            1 => XdpMode::Native,
            2 => XdpMode::Generic,
            3 => XdpMode::Offload,
            o => XdpMode::Other(o),
        }
    }
}

/// The XDP programs attached to a link, from the `"xdp"` object of `ip -d -j link show`:
/// either a single `"prog"` with the top-level `"mode"`, or (mode 4, multi) an
/// `"attached"` list of `{"mode", "prog": {"id"}}` entries. Empty if nothing is attached.
pub fn xdp_attachments_from_link_json(link: &Value) -> Vec<(XdpMode, u32)> {
    let Some(xdp) = link.get("xdp") else {
        return Vec::new();
    };
    let id_of = |v: &Value| -> Option<u32> {
        v.get("prog")
            .and_then(|p| p.get("id"))
            .or_else(|| v.get("id"))
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
    };
    let mut out = Vec::new();
    if let Some(list) = xdp.get("attached").and_then(Value::as_array) {
        for a in list {
            if let Some(id) = id_of(a) {
                let mode = a.get("mode").and_then(Value::as_u64).unwrap_or(0);
                out.push((XdpMode::from_code(mode), id));
            }
        }
    }
    if out.is_empty() {
        if let Some(id) = id_of(xdp) {
            let mode = xdp.get("mode").and_then(Value::as_u64).unwrap_or(0);
            out.push((XdpMode::from_code(mode), id));
        }
    }
    out
}

/// Two network namespaces joined by a veth pair:
///
/// ```text
///  netns `xsk` (broker, AF_XDP)            netns `peer` (kernel UDP stack, captures)
///  xsk_if 198.18.0.1/24  <---- veth ---->  peer_if 198.18.0.2/24
///  Q rx / Q tx queues                      Q rx / Q tx queues, TX checksum offload off
/// ```
///
/// Both ends and both loopbacks are up, IPv6 is disabled on both ends (no DAD, router or
/// MLD chatter in captures or AF_XDP rings), and each side has a permanent neighbour entry
/// for the other (the AF_XDP client never answers ARP). Dropping the test bed deletes both
/// namespaces, which deletes the veth pair.
#[derive(Debug)]
pub struct Testbed {
    /// The namespace where the broker runs and the XDP program is attached.
    pub xsk: Netns,
    /// The namespace of the traffic peer.
    pub peer: Netns,
    /// The veth end in `xsk` (at most 15 characters).
    pub xsk_if: String,
    /// The veth end in `peer`.
    pub peer_if: String,
    /// `xsk_if`'s ifindex inside `xsk`.
    pub xsk_ifindex: u32,
    /// `peer_if`'s ifindex inside `peer`.
    pub peer_ifindex: u32,
    /// MAC address of `xsk_if`.
    pub xsk_mac: [u8; 6],
    /// MAC address of `peer_if`.
    pub peer_mac: [u8; 6],
    /// IPv4 address of `xsk_if` ([`XSK_IP`]).
    pub xsk_ip: Ipv4Addr,
    /// IPv4 address of `peer_if` ([`PEER_IP`]).
    pub peer_ip: Ipv4Addr,
    /// Number of rx and tx queues on each end.
    pub queues: u32,
}

impl Testbed {
    /// Add a second veth pair with `queues` queues, both ends (`name` and
    /// `{name}p`) in the broker's namespace, up, without IPv6 (so nothing
    /// leaves through it on its own); returns `name`'s ifindex. `name` has
    /// at most 14 characters.
    pub fn add_local_veth(&self, name: &str, queues: u32) -> Result<u32> {
        if name.len() > 14 {
            bail!("add_local_veth: {name:?} is longer than 14 characters");
        }
        let (q, peer) = (queues.to_string(), format!("{name}p"));
        self.xsk
            .ip([
                "link",
                "add",
                name,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "numrxqueues",
                &q,
                "numtxqueues",
                &q,
            ])
            .with_context(|| format!("adding the veth pair {name}/{peer}"))?;
        for ifname in [name, peer.as_str()] {
            disable_ipv6(&self.xsk, ifname)?;
            self.xsk.ip(["link", "set", "dev", ifname, "up"])?;
        }
        Ok(link_index_mac(&self.xsk, name)?.0)
    }

    /// Build the test bed with `queues` rx and tx queues on each veth end (1..=64).
    pub fn new(queues: u32) -> Result<Testbed> {
        if !(1..=64).contains(&queues) {
            bail!("Testbed::new: queues must be 1..=64, got {queues}");
        }
        let tok = unique_token()?;
        let xsk = Netns::create(&format!("{XSK_NS_PREFIX}{tok}"))?;
        let peer = Netns::create(&format!("{PEER_NS_PREFIX}{tok}"))?;
        let xsk_if = format!("xx{tok}");
        let peer_if = format!("xp{tok}");
        let q = queues.to_string();

        crate::cmd::run_command(std::process::Command::new("ip").args([
            "link",
            "add",
            &xsk_if,
            "netns",
            xsk.name(),
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
            "netns",
            peer.name(),
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ]))
        .context("creating the veth pair")?;

        for (ns, ifname) in [(&xsk, &xsk_if), (&peer, &peer_if)] {
            disable_ipv6(ns, ifname)?;
            ns.ip(["link", "set", "dev", "lo", "up"])?;
            ns.ip(["link", "set", "dev", ifname, "up"])?;
        }
        xsk.ip([
            "addr",
            "add",
            &format!("{XSK_IP}/{PREFIX_LEN}"),
            "dev",
            &xsk_if,
        ])?;
        peer.ip([
            "addr",
            "add",
            &format!("{PEER_IP}/{PREFIX_LEN}"),
            "dev",
            &peer_if,
        ])?;

        let (xsk_ifindex, xsk_mac) = link_index_mac(&xsk, &xsk_if)?;
        let (peer_ifindex, peer_mac) = link_index_mac(&peer, &peer_if)?;

        peer.ip([
            "neigh",
            "replace",
            &XSK_IP.to_string(),
            "lladdr",
            &mac_to_string(&xsk_mac),
            "dev",
            &peer_if,
            "nud",
            "permanent",
        ])?;
        xsk.ip([
            "neigh",
            "replace",
            &PEER_IP.to_string(),
            "lladdr",
            &mac_to_string(&peer_mac),
            "dev",
            &xsk_if,
            "nud",
            "permanent",
        ])?;

        // Full UDP checksums in frames the peer sends, so AF_XDP sees valid packets and an
        // echo (which only swaps addresses and ports) is accepted by the peer's UDP stack.
        peer.enter_thread(|| ethtool::set_tx_csum(&peer_if, false))?
            .with_context(|| {
                format!(
                    "disabling TX checksum offload on {peer_if} in {}",
                    peer.name()
                )
            })?;
        let still_on = peer.enter_thread(|| ethtool::get_tx_csum(&peer_if))??;
        if still_on {
            bail!(
                "TX checksum offload is still on for {peer_if} in {}",
                peer.name()
            );
        }

        Ok(Testbed {
            xsk,
            peer,
            xsk_if,
            peer_if,
            xsk_ifindex,
            peer_ifindex,
            xsk_mac,
            peer_mac,
            xsk_ip: XSK_IP,
            peer_ip: PEER_IP,
            queues,
        })
    }

    /// Delete test-bed namespaces (`xtbx*`, `xtbp*`) left behind by test processes that
    /// were killed before their destructors ran (see [`crate::cleanup_stale_netns`]);
    /// returns the names deleted. Safe to call while other test beds are alive.
    pub fn cleanup_stale() -> Result<Vec<String>> {
        let mut v = crate::netns::cleanup_stale_netns(XSK_NS_PREFIX)?;
        v.extend(crate::netns::cleanup_stale_netns(PEER_NS_PREFIX)?);
        Ok(v)
    }

    /// `ip -d -j link show dev xsk_if` inside the xsk namespace, as JSON.
    pub fn xsk_link_json(&self) -> Result<Value> {
        link_json(&self.xsk, &self.xsk_if)
    }

    /// `ip -d -j link show dev peer_if` inside the peer namespace, as JSON.
    pub fn peer_link_json(&self) -> Result<Value> {
        link_json(&self.peer, &self.peer_if)
    }

    /// The id of the XDP program attached to the xsk end, if any. With several attachments
    /// (multi mode), the native one is preferred, then generic, then any.
    pub fn xdp_prog_id(&self) -> Result<Option<u32>> {
        let all = self.xdp_attachments()?;
        let pick = all
            .iter()
            .find(|(m, _)| *m == XdpMode::Native)
            .or_else(|| all.iter().find(|(m, _)| *m == XdpMode::Generic))
            .or_else(|| all.first());
        Ok(pick.map(|(_, id)| *id))
    }

    /// All XDP programs attached to the xsk end, with their modes.
    pub fn xdp_attachments(&self) -> Result<Vec<(XdpMode, u32)>> {
        Ok(xdp_attachments_from_link_json(&self.xsk_link_json()?))
    }
}

impl Testbed {
    /// Driver statistics of the xsk end (`ethtool -S`, via the ioctl), in driver order.
    pub fn xsk_ethtool_stats(&self) -> Result<Vec<(String, u64)>> {
        let ifname = &self.xsk_if;
        self.xsk
            .enter_thread(|| ethtool::stats(ifname))?
            .with_context(|| format!("ethtool statistics of {ifname} in {}", self.xsk.name()))
    }

    /// Driver statistics of the peer end (`ethtool -S`, via the ioctl).
    pub fn peer_ethtool_stats(&self) -> Result<Vec<(String, u64)>> {
        let ifname = &self.peer_if;
        self.peer
            .enter_thread(|| ethtool::stats(ifname))?
            .with_context(|| format!("ethtool statistics of {ifname} in {}", self.peer.name()))
    }

    /// Packets each RX queue of the xsk end has run through XDP (veth's
    /// `rx_queue_N_xdp_packets`), indexed by queue. veth counts these only while an XDP
    /// program is attached (its NAPI path); all zero otherwise. Shows that flows were
    /// spread over queues.
    pub fn xsk_rx_queue_xdp_packets(&self) -> Result<Vec<u64>> {
        let stats = self.xsk_ethtool_stats()?;
        let mut out = vec![0u64; self.queues as usize];
        for (name, v) in stats {
            let q = name
                .strip_prefix("rx_queue_")
                .and_then(|r| r.strip_suffix("_xdp_packets"))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(q) = q {
                if q < out.len() {
                    out[q] = v;
                }
            }
        }
        Ok(out)
    }

    /// Attach a minimal `XDP_PASS` program to the xsk end through a BPF link (see
    /// [`XdpPass`]); detached when the returned value is dropped.
    pub fn attach_xdp_pass(&self) -> Result<XdpPass> {
        XdpPass::attach(&self.xsk, &self.xsk_if)
    }
}

/// `ip -n NS -d -j link show dev IF`, the single link object.
pub(crate) fn link_json(ns: &Netns, ifname: &str) -> Result<Value> {
    let out = ns.ip(["-d", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `ip -n {} -d -j link show dev {ifname}`", ns.name()))?;
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "`ip -n {} -d -j link show dev {ifname}` returned no link",
                ns.name()
            )
        })
}

fn link_index_mac(ns: &Netns, ifname: &str) -> Result<(u32, [u8; 6])> {
    let v = link_json(ns, ifname)?;
    let idx = v
        .get("ifindex")
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| anyhow!("no ifindex for {ifname} in {}", ns.name()))?;
    let mac = v
        .get("address")
        .and_then(Value::as_str)
        .and_then(parse_mac)
        .ok_or_else(|| anyhow!("no MAC address for {ifname} in {}", ns.name()))?;
    Ok((idx, mac))
}

fn disable_ipv6(ns: &Netns, ifname: &str) -> Result<()> {
    // /proc/sys/net follows the network namespace of the *calling thread*.
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    ns.enter_thread(|| -> Result<()> {
        match std::fs::write(&path, "1") {
            Ok(()) => Ok(()),
            // IPv6 not compiled in / disabled at boot: nothing to silence.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("writing 1 to {path} in {}", ns.name())),
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_json_single_and_multi() {
        let none: Value = serde_json::json!({"ifname": "x"});
        assert!(xdp_attachments_from_link_json(&none).is_empty());

        let single: Value = serde_json::from_str(
            r#"{"xdp":{"mode":1,"prog":{"id":101,"name":"pass"},
                "attached":[{"mode":1,"prog":{"id":101,"name":"pass"}}]}}"#,
        )
        .unwrap();
        assert_eq!(
            xdp_attachments_from_link_json(&single),
            vec![(XdpMode::Native, 101)]
        );

        let skb_old: Value = serde_json::json!({"xdp": {"mode": 2, "prog": {"id": 7}}});
        assert_eq!(
            xdp_attachments_from_link_json(&skb_old),
            vec![(XdpMode::Generic, 7)]
        );

        let multi: Value = serde_json::json!({"xdp": {"mode": 4, "attached": [
            {"mode": 3, "prog": {"id": 9}}, {"mode": 1, "prog": {"id": 8}}]}});
        assert_eq!(
            xdp_attachments_from_link_json(&multi),
            vec![(XdpMode::Offload, 9), (XdpMode::Native, 8)]
        );
    }
}
