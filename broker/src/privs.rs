//! Capability check at start, and dropping every capability not needed.

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What each needed capability is for.
const NEEDED: &[(Capability, &str)] = &[
    (
        Capability::CAP_NET_ADMIN,
        "attach and detach XDP programs on interfaces",
    ),
    (Capability::CAP_NET_RAW, "create AF_XDP sockets"),
];

/// Capabilities kept after start; everything else is dropped from every set.
/// `pins` keeps CAP_CHOWN, to give map pins to the requesting uid.
pub fn keep_set(permitted: &CapsHashSet, pins: bool) -> CapsHashSet {
    let mut keep: CapsHashSet = NEEDED.iter().map(|(c, _)| *c).collect();
    if pins {
        keep.insert(Capability::CAP_CHOWN);
    }
    // Loading the program and its map: CAP_BPF, or CAP_SYS_ADMIN on kernels
    // or setups without CAP_BPF. CAP_SYS_ADMIN is dropped when CAP_BPF is held.
    if permitted.contains(&Capability::CAP_BPF) {
        keep.insert(Capability::CAP_BPF);
    } else {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    // The confinement LSM program (confine.rs) is a tracing-class program:
    // CAP_BPF + CAP_PERFMON load it. Kept when held, never required.
    if permitted.contains(&Capability::CAP_PERFMON) {
        keep.insert(Capability::CAP_PERFMON);
    }
    keep
}

/// Check the permitted set holds what the broker needs, naming what is
/// missing and what it is for. Returns the permitted set.
pub fn check() -> Result<CapsHashSet> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let mut missing: Vec<String> = NEEDED
        .iter()
        .filter(|(c, _)| !permitted.contains(c))
        .map(|(c, why)| format!("{c} (to {why})"))
        .collect();
    if !permitted.contains(&Capability::CAP_BPF) && !permitted.contains(&Capability::CAP_SYS_ADMIN)
    {
        missing.push("CAP_BPF or CAP_SYS_ADMIN (to load the XSK program and its map)".into());
    }
    if !missing.is_empty() {
        bail!(
            "missing capabilities: {}. Run xsk-brokerd as root or give it these \
             (e.g. systemd AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_SYS_ADMIN)",
            missing.join(", ")
        );
    }
    Ok(permitted)
}

/// Drop everything not needed from the effective, permitted, inheritable,
/// ambient and bounding sets, and set no_new_privs. Returns what was kept.
pub fn drop_unneeded(permitted: &CapsHashSet, pins: bool) -> Result<CapsHashSet> {
    let keep = keep_set(permitted, pins);
    // The bounding set needs CAP_SETPCAP to shrink; do it first while we may
    // still hold it. Without CAP_SETPCAP the bounding set stays as it is, which
    // matters little once permitted is reduced and no_new_privs is set.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for c in caps::all() {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)
                    .with_context(|| format!("dropping {c} from the bounding set"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("setting effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting permitted capabilities")?;
    // No setuid binary run from here may regain privileges.
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    Ok(keep)
}
