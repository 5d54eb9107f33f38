//! Who may lease what: the policy file.
//!
//! ```json
//! {
//!   "version": 1,
//!   "rules": [
//!     {
//!       "name": "vm-tenants",
//!       "groups": ["xsk-broker"],
//!       "interfaces": ["veth*", "ens1f1"],
//!       "max_queues": 4,
//!       "modes": ["auto", "native"],
//!       "copy": ["auto", "copy"],
//!       "map_flow": false
//!     }
//!   ]
//! }
//! ```
//!
//! A rule admits a peer whose uid is in `uids`/`users`, or whose primary or
//! supplementary gid is in `gids`/`groups` (peer credentials from
//! `SO_PEERCRED` and `SO_PEERGROUPS`; names are resolved when the file is
//! loaded). A request is permitted when some rule admits the peer and allows
//! the interface (names or globs with `*` and `?`), the queue count, the XDP
//! mode, the copy setting and, for `open_map`, the map flow. Root (uid 0) is
//! always permitted. Without a policy file only root is.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use xsk_broker_protocol::{CopyMode, ErrorCode, ErrorReply, XdpMode, MAX_QUEUES};

/// A policy file that cannot be used.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The errno.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the rule and field.
        reason: String,
    },
    /// `--status-group` names no group.
    #[error("--status-group {0:?}: no such group")]
    UnknownGroup(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    groups: Vec<String>,
    interfaces: Vec<String>,
    #[serde(default)]
    max_queues: Option<u32>,
    #[serde(default)]
    modes: Option<Vec<XdpMode>>,
    #[serde(default)]
    copy: Option<Vec<CopyMode>>,
    #[serde(default)]
    map_flow: bool,
}

/// One rule, with names resolved.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    uids: Vec<u32>,
    gids: Vec<u32>,
    interfaces: Vec<String>,
    max_queues: u32,
    modes: Vec<XdpMode>,
    copy: Vec<CopyMode>,
    map_flow: bool,
}

/// The loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    source: Option<PathBuf>,
    rules: Vec<Rule>,
    /// Members of this group see every lease in `status` (`--status-group`).
    status_gid: Option<u32>,
}

/// The peer asking, from its socket credentials.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

/// What is asked for.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// Sockets (`open`).
    Sockets {
        /// Interface.
        ifname: &'a str,
        /// Queue count.
        queues: u32,
        /// XDP mode.
        mode: XdpMode,
        /// Copy setting.
        copy: CopyMode,
    },
    /// The XSKMAP (`open_map`).
    Map {
        /// Interface.
        ifname: &'a str,
        /// Queue count.
        queues: u32,
        /// XDP mode.
        mode: XdpMode,
    },
    /// The lease table (`status`).
    Status,
}

/// A request the policy does not allow the peer, with the rule (or the
/// absence of one) that refused it; answered `not_permitted`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(String);

impl From<Denied> for ErrorReply {
    fn from(d: Denied) -> Self {
        ErrorReply::new(ErrorCode::NotPermitted, d.0)
    }
}

fn denied(msg: String) -> Denied {
    Denied(msg)
}

fn mode_name(m: XdpMode) -> &'static str {
    match m {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Skb => "skb",
    }
}

fn copy_name(c: CopyMode) -> &'static str {
    match c {
        CopyMode::Auto => "auto",
        CopyMode::Copy => "copy",
        CopyMode::ZeroCopy => "zero-copy",
    }
}

/// Match `name` against a glob with `*` (any run) and `?` (any one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Policy {
    /// The policy in force without a file: root only.
    pub fn root_only() -> Policy {
        Policy {
            source: None,
            rules: Vec::new(),
            status_gid: None,
        }
    }

    /// Load and check a policy file, resolving user and group names.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policy::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let bad = |reason: String| PolicyError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let file: PolicyFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if file.version != 1 {
            return Err(bad(format!(
                "version {} is not supported (this broker reads version 1)",
                file.version
            )));
        }
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let name = if r.name.trim().is_empty() {
                return Err(bad(format!("rule #{} has an empty name", i + 1)));
            } else {
                r.name
            };
            let mut uids = r.uids;
            for u in &r.users {
                match nix::unistd::User::from_name(u) {
                    Ok(Some(user)) => uids.push(user.uid.as_raw()),
                    _ => return Err(bad(format!("rule {name:?}: unknown user {u:?}"))),
                }
            }
            let mut gids = r.gids;
            for g in &r.groups {
                match nix::unistd::Group::from_name(g) {
                    Ok(Some(group)) => gids.push(group.gid.as_raw()),
                    _ => return Err(bad(format!("rule {name:?}: unknown group {g:?}"))),
                }
            }
            if uids.is_empty() && gids.is_empty() {
                return Err(bad(format!(
                    "rule {name:?} names nobody: give uids, users, gids or groups"
                )));
            }
            if r.interfaces.is_empty() || r.interfaces.iter().any(|p| p.is_empty()) {
                return Err(bad(format!(
                    "rule {name:?}: \"interfaces\" needs at least one non-empty name or glob"
                )));
            }
            let max_queues = r.max_queues.unwrap_or(MAX_QUEUES);
            if max_queues == 0 || max_queues > MAX_QUEUES {
                return Err(bad(format!(
                    "rule {name:?}: max_queues must be 1..={MAX_QUEUES}, got {max_queues}"
                )));
            }
            let modes = r
                .modes
                .unwrap_or_else(|| vec![XdpMode::Auto, XdpMode::Native, XdpMode::Skb]);
            let copy = r
                .copy
                .unwrap_or_else(|| vec![CopyMode::Auto, CopyMode::Copy, CopyMode::ZeroCopy]);
            if modes.is_empty() || copy.is_empty() {
                return Err(bad(format!(
                    "rule {name:?}: \"modes\" and \"copy\" must not be empty lists"
                )));
            }
            rules.push(Rule {
                name,
                uids,
                gids,
                interfaces: r.interfaces,
                max_queues,
                modes,
                copy,
                map_flow: r.map_flow,
            });
        }
        Ok(Policy {
            source: Some(path.to_owned()),
            rules,
            status_gid: None,
        })
    }

    /// Let members of `group` (a name, resolved now) see every lease in
    /// `status`.
    pub fn with_status_group(mut self, group: &str) -> Result<Policy, PolicyError> {
        match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => {
                self.status_gid = Some(g.gid.as_raw());
                Ok(self)
            }
            _ => Err(PolicyError::UnknownGroup(group.to_owned())),
        }
    }

    /// Whether `who` sees every tenant's leases in `status` (root, or a
    /// member of `--status-group`); others see only their own.
    pub fn sees_all_leases(&self, who: &Identity) -> bool {
        who.uid == 0
            || self
                .status_gid
                .is_some_and(|g| who.gid == g || who.groups.contains(&g))
    }

    /// A one-line description for the start-up log.
    pub fn describe(&self) -> String {
        match &self.source {
            None => "no policy file: only root may lease".to_owned(),
            Some(p) if self.rules.is_empty() => format!(
                "{} (0 rules: it admits no one but root; add a rule naming users or groups \
                 and interfaces, then restart)",
                p.display()
            ),
            Some(p) => format!("{} ({} rule(s))", p.display(), self.rules.len()),
        }
    }

    /// Permit `ask` for `who`, or say which rule refused it and why.
    pub fn check(&self, who: &Identity, ask: Ask<'_>) -> Result<(), Denied> {
        if who.uid == 0 {
            return Ok(());
        }
        let Some(source) = &self.source else {
            return Err(denied(format!(
                "no policy is loaded, so only root may use this broker (uid {} is not root); \
                 start xsk-brokerd with --policy FILE naming who may lease what",
                who.uid
            )));
        };
        let admits = |r: &&Rule| {
            r.uids.contains(&who.uid)
                || r.gids.contains(&who.gid)
                || who.groups.iter().any(|g| r.gids.contains(g))
        };
        let mut first_reason = None;
        for rule in self.rules.iter().filter(admits) {
            match rule.refusal(ask) {
                None => return Ok(()),
                Some(why) => {
                    first_reason.get_or_insert(format!("rule {:?} {why}", rule.name));
                }
            }
        }
        Err(denied(match first_reason {
            Some(reason) => reason,
            None => format!(
                "no rule of {} admits uid {} (gid {}, groups {:?}){}",
                source.display(),
                who.uid,
                who.gid,
                who.groups,
                if self.rules.is_empty() {
                    "; the policy has no rules, so it admits no one but root: \
                     the administrator adds a rule naming this user or group"
                } else {
                    ""
                }
            ),
        }))
    }
}

impl Rule {
    /// Why this rule (which admits the peer) does not allow `ask`, if it does not.
    fn refusal(&self, ask: Ask<'_>) -> Option<String> {
        let (ifname, queues, mode, copy, map) = match ask {
            Ask::Status => return None,
            Ask::Sockets {
                ifname,
                queues,
                mode,
                copy,
            } => (ifname, queues, mode, Some(copy), false),
            Ask::Map {
                ifname,
                queues,
                mode,
            } => (ifname, queues, mode, None, true),
        };
        if !self.interfaces.iter().any(|p| glob_match(p, ifname)) {
            return Some(format!(
                "does not allow interface {ifname:?} (allowed: {})",
                self.interfaces.join(", ")
            ));
        }
        if queues > self.max_queues {
            return Some(format!(
                "allows at most {} queue(s) per lease; {queues} were asked for",
                self.max_queues
            ));
        }
        if !self.modes.contains(&mode) {
            let allowed: Vec<_> = self.modes.iter().map(|m| mode_name(*m)).collect();
            return Some(format!(
                "does not allow XDP mode {} (allowed: {})",
                mode_name(mode),
                allowed.join(", ")
            ));
        }
        if let Some(copy) = copy {
            if !self.copy.contains(&copy) {
                let allowed: Vec<_> = self.copy.iter().map(|c| copy_name(*c)).collect();
                return Some(format!(
                    "does not allow copy setting {} (allowed: {})",
                    copy_name(copy),
                    allowed.join(", ")
                ));
            }
        }
        if map && !self.map_flow {
            return Some(
                "does not allow the map flow (it hands over the interface's whole XSKMAP; \
                 set \"map_flow\": true to allow it)"
                    .to_owned(),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<Policy, PolicyError> {
        Policy::parse(json, Path::new("/etc/xsk-broker/policy.json"))
    }

    fn who(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    fn sockets(ifname: &str, queues: u32) -> Ask<'_> {
        Ask::Sockets {
            ifname,
            queues,
            mode: XdpMode::Auto,
            copy: CopyMode::Auto,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth0"));
        assert!(glob_match("veth*", "veth"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("e?h0", "eth0"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(!glob_match("eth0", "eth00"));
        assert!(!glob_match("e?h0", "eh0"));
    }

    #[test]
    fn root_only_without_a_file() {
        let p = Policy::root_only();
        assert!(p.check(&who(0, 0, &[]), sockets("eth0", 64)).is_ok());
        let e = ErrorReply::from(
            p.check(&who(1000, 1000, &[]), sockets("eth0", 1))
                .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::NotPermitted);
        assert!(e.message.contains("only root"), "{}", e.message);
        assert!(p.check(&who(1000, 1000, &[]), Ask::Status).is_err());
    }

    #[test]
    fn rules_name_what_refused() {
        let p = policy(
            r#"{"version":1,"rules":[
              {"name":"tenants","uids":[1000],"gids":[50],"interfaces":["veth*"],
               "max_queues":2,"modes":["auto","native"],"copy":["auto","copy"]},
              {"name":"mapper","uids":[2000],"interfaces":["*"],"map_flow":true}
            ]}"#,
        )
        .unwrap();
        let t = who(1000, 1000, &[]);
        assert!(p.check(&t, sockets("veth3", 2)).is_ok());
        assert!(p.check(&t, Ask::Status).is_ok());
        let deny = |w: &Identity, a: Ask<'_>| p.check(w, a).unwrap_err().to_string();
        assert!(deny(&t, sockets("eth0", 1))
            .contains("rule \"tenants\" does not allow interface \"eth0\" (allowed: veth*)"));
        assert!(deny(&t, sockets("veth0", 3))
            .contains("at most 2 queue(s) per lease; 3 were asked for"));
        let skb = Ask::Sockets {
            ifname: "veth0",
            queues: 1,
            mode: XdpMode::Skb,
            copy: CopyMode::Auto,
        };
        assert!(deny(&t, skb).contains("does not allow XDP mode skb (allowed: auto, native)"));
        let zc = Ask::Sockets {
            ifname: "veth0",
            queues: 1,
            mode: XdpMode::Auto,
            copy: CopyMode::ZeroCopy,
        };
        assert!(deny(&t, zc).contains("does not allow copy setting zero-copy"));
        let map = Ask::Map {
            ifname: "veth0",
            queues: 1,
            mode: XdpMode::Auto,
        };
        assert!(deny(&t, map).contains("does not allow the map flow"));
        assert!(p.check(&who(2000, 2000, &[]), map).is_ok());
        // A supplementary group admits; a stranger is named.
        assert!(p
            .check(&who(3000, 3000, &[7, 50]), sockets("veth1", 1))
            .is_ok());
        let s = deny(&who(3000, 3000, &[7]), sockets("veth1", 1));
        assert!(
            s.contains("no rule of /etc/xsk-broker/policy.json admits uid 3000"),
            "{s}"
        );
        assert!(p.check(&who(3000, 3000, &[]), Ask::Status).is_err());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let reason = |j: &str| policy(j).unwrap_err().to_string();
        assert!(reason(r#"{"version":2,"rules":[]}"#).contains("version 2 is not supported"));
        assert!(reason(r#"{"version":1}"#).contains("missing field `rules`"));
        assert!(
            reason(r#"{"version":1,"rules":[{"name":"x","interfaces":["*"]}]}"#)
                .contains("names nobody")
        );
        assert!(
            reason(r#"{"version":1,"rules":[{"name":"x","uids":[1],"interfaces":[]}]}"#)
                .contains("at least one")
        );
        assert!(reason(
            r#"{"version":1,"rules":[{"name":"x","uids":[1],"interfaces":["*"],"max_queues":65}]}"#
        )
        .contains("max_queues must be 1..=64"));
        assert!(reason(r#"{"version":1,"rules":[{"name":"x","users":["no-such-user-xsk"],"interfaces":["*"]}]}"#)
            .contains("unknown user \"no-such-user-xsk\""));
        assert!(reason(
            r#"{"version":1,"rules":[{"name":"x","uids":[1],"interfaces":["*"],"colour":1}]}"#
        )
        .contains("unknown field `colour`"));
        assert!(reason(r#"{"version":1,"rules":[{"name":"x","uids":[1],"interfaces":["*"],"modes":["turbo"]}]}"#)
            .contains("turbo"));
        let ok =
            policy(r#"{"version":1,"rules":[{"name":"n","users":["nobody"],"interfaces":["*"]}]}"#)
                .unwrap();
        assert!(ok.check(&who(65534, 65534, &[]), sockets("x", 1)).is_ok());
    }

    /// The packaged policy, `"rules": []`, is valid and admits no one but
    /// root, and says so at start and in its refusals.
    #[test]
    fn an_empty_policy_admits_only_root() {
        let p = policy(r#"{"version":1,"rules":[]}"#).unwrap();
        assert!(p.check(&who(0, 0, &[]), sockets("eth0", 64)).is_ok());
        let e = ErrorReply::from(
            p.check(&who(1000, 1000, &[50]), sockets("eth0", 1))
                .unwrap_err(),
        );
        assert_eq!(e.code, ErrorCode::NotPermitted);
        assert!(
            e.message.starts_with(
                "no rule of /etc/xsk-broker/policy.json admits uid 1000 (gid 1000, groups [50]); \
                 the policy has no rules, so it admits no one but root"
            ),
            "{}",
            e.message
        );
        assert!(p.check(&who(1000, 1000, &[]), Ask::Status).is_err());
        assert!(
            p.describe()
                .starts_with("/etc/xsk-broker/policy.json (0 rules: it admits no one but root"),
            "{}",
            p.describe()
        );
        let one =
            policy(r#"{"version":1,"rules":[{"name":"n","uids":[1],"interfaces":["eth1"]}]}"#)
                .unwrap();
        assert_eq!(one.describe(), "/etc/xsk-broker/policy.json (1 rule(s))");
    }

    /// The files the Debian package installs: /etc/xsk-broker/policy.json
    /// grants nothing; the example in /usr/share/doc names interfaces (no
    /// glob), a few queues, copy mode only and no map flow.
    #[test]
    fn the_packaged_policies_are_valid_and_narrow() {
        let installed = policy(include_str!("../../packaging/deb/policy.json")).unwrap();
        assert!(installed.rules.is_empty());
        assert!(installed
            .check(&who(1000, 1000, &[]), sockets("eth0", 1))
            .is_err());
        // The example's group (created by the package) may not exist here.
        let example = include_str!("../../packaging/deb/policy.example.json");
        assert!(example.contains(r#""groups": ["xsk-broker"]"#), "{example}");
        let example =
            policy(&example.replace(r#""groups": ["xsk-broker"]"#, r#""gids": [4242]"#)).unwrap();
        assert_eq!(example.rules.len(), 1);
        let rule = &example.rules[0];
        assert!(
            rule.interfaces.iter().all(|i| !i.contains(['*', '?'])),
            "{:?}",
            rule.interfaces
        );
        assert!(rule.max_queues <= 4, "{}", rule.max_queues);
        assert_eq!(rule.copy, [CopyMode::Copy]);
        assert!(!rule.map_flow);
        let member = who(1000, 1000, &[4242]);
        let ifname = rule.interfaces[0].clone();
        assert!(example.check(&member, sockets(&ifname, 1)).is_err()); // copy auto
        let copy = Ask::Sockets {
            ifname: &ifname,
            queues: 1,
            mode: XdpMode::Auto,
            copy: CopyMode::Copy,
        };
        assert!(example.check(&member, copy).is_ok());
        assert!(example.check(&who(1000, 1000, &[]), copy).is_err());
    }
}
