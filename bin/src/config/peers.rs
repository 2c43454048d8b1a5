//! `raft.peers`: the other members of the cluster as `id@host:port`, and the checks on node
//! ids and `host:port` addresses that `raft.node_id` and `raft.raft_addr` share.

use std::fmt;
use std::net::Ipv6Addr;

use super::error::ConfigError;

/// Longest node id we accept; ids travel in every Raft message and log line.
pub const NODE_ID_LEN_MAX: usize = 128;
/// Most peers we accept: Raft clusters are 3, 5 or 7 nodes; far more is a mistake.
pub const PEERS_MAX: usize = 64;
/// Longest host name (DNS limit).
const HOST_LEN_MAX: usize = 253;

/// Another member of the cluster, one entry of `raft.peers`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Its `raft.node_id`.
    pub id: String,
    /// Its Raft address as reachable from this node, kept as given (`host:port`, validated:
    /// host non-empty, port 1-65535); resolved when dialled, so a DNS name may move.
    pub addr: String,
}

impl Peer {
    /// Parse one `id@host:port` entry (surrounding whitespace ignored).
    ///
    /// # Errors
    /// `ConfigError::PeerMalformed` naming the entry and what is wrong: no `@`, an empty or
    /// unusable id, a bad host or port.
    pub fn parse(item: &str) -> Result<Self, ConfigError> {
        let item = item.trim();
        let malformed = |reason: String| ConfigError::PeerMalformed {
            item: item.into(),
            reason,
        };
        if item.contains(char::is_whitespace) {
            return Err(malformed(
                "it contains whitespace; separate entries with commas".into(),
            ));
        }
        let Some((id, addr)) = item.split_once('@') else {
            return Err(malformed(
                "missing \"@\" between the node id and host:port".into(),
            ));
        };
        check_node_id(id).map_err(|r| malformed(format!("node id: {r}")))?;
        check_host_port(addr).map_err(malformed)?;
        Ok(Self {
            id: id.into(),
            addr: addr.into(),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

/// Parse a comma-separated `raft.peers` value (whitespace and newlines around entries ignored,
/// empty entries dropped) and refuse duplicate ids or addresses.
///
/// # Errors
/// The first malformed entry, or the second of two entries that share an id or an address.
pub fn parse_peers(text: &str) -> Result<Vec<Peer>, ConfigError> {
    let items: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .collect();
    peers_from_items(&items, None, None)
}

/// Parse entries and check them against each other and against this node's own id and address.
pub(super) fn peers_from_items(
    items: &[String],
    node_id: Option<&str>,
    raft_addr: Option<&str>,
) -> Result<Vec<Peer>, ConfigError> {
    if items.len() > PEERS_MAX {
        return Err(ConfigError::PeerMalformed {
            item: items[PEERS_MAX].clone(),
            reason: format!("more than {PEERS_MAX} peers; a Raft cluster has 3, 5 or 7 members"),
        });
    }
    let mut peers: Vec<Peer> = Vec::with_capacity(items.len());
    for item in items {
        let peer = Peer::parse(item)?;
        if node_id == Some(peer.id.as_str()) {
            return Err(ConfigError::PeerOwnId {
                item: item.clone(),
                node_id: peer.id,
            });
        }
        if let Some(own) = raft_addr.filter(|own| same_addr(own, &peer.addr)) {
            return Err(ConfigError::PeerOwnAddr {
                item: item.clone(),
                raft_addr: own.into(),
            });
        }
        if let Some(first) = peers.iter().find(|p| p.id == peer.id) {
            return Err(ConfigError::PeerDuplicateId {
                item: item.clone(),
                first: first.to_string(),
            });
        }
        if let Some(first) = peers.iter().find(|p| same_addr(&p.addr, &peer.addr)) {
            return Err(ConfigError::PeerDuplicateAddr {
                item: item.clone(),
                first: first.to_string(),
            });
        }
        peers.push(peer);
    }
    Ok(peers)
}

/// Host names are case-insensitive; ports and IPs compare as text.
fn same_addr(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// A node id: non-empty, at most [`NODE_ID_LEN_MAX`] bytes, printable ASCII without spaces,
/// `@` or `,` (which delimit `raft.peers` entries).
pub(super) fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".into());
    }
    if id.len() > NODE_ID_LEN_MAX {
        return Err(format!("longer than {NODE_ID_LEN_MAX} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '@' || *c == ',')
    {
        return Err(format!(
            "{c:?} is not allowed; use letters, digits and punctuation other than '@' and ','"
        ));
    }
    Ok(())
}

/// A `host:port` address: host non-empty (a name, an IPv4 address, or an IPv6 address in
/// brackets), port 1-65535.
pub(super) fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "{addr:?} has no port; expected host:port, e.g. 10.0.0.2:5001"
        ));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
    if host.is_empty() {
        return Err(format!(
            "{addr:?} has an empty host; expected host:port, e.g. 10.0.0.2:5001"
        ));
    }
    if host.len() > HOST_LEN_MAX {
        return Err(format!("host is longer than {HOST_LEN_MAX} characters"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
        return if ok {
            Ok(())
        } else {
            Err(format!("host {host:?} is not an IPv6 address"))
        };
    }
    if host.contains(':') {
        return Err(format!(
            "host {host:?}: IPv6 addresses go in brackets, e.g. [::1]:5001"
        ));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._".contains(*c)))
    {
        return Err(format!(
            "host {host:?} contains {c:?}; expected a host name or an IP address"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_ipv4_and_bracketed_ipv6() {
        for ok in [
            "10.0.0.2:5001",
            "node-2.internal:1",
            "[::1]:65535",
            "localhost:80",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "10.0.0.2",
            ":5001",
            "h:0",
            "h:65536",
            "h:x",
            "::1:5001",
            "[::1:5001",
            "a b:1",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_text_with_spaces_and_trailing_comma() {
        let peers = parse_peers(" a@h:1,\n b@h:2 ,").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[1],
            Peer {
                id: "b".into(),
                addr: "h:2".into()
            }
        );
        assert_eq!(peers[0].to_string(), "a@h:1");
    }

    #[test]
    fn duplicate_addresses_ignore_host_case() {
        let e = parse_peers("a@Host:1,b@host:1").unwrap_err();
        assert!(matches!(e, ConfigError::PeerDuplicateAddr { .. }), "{e}");
    }
}
