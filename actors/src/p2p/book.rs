//! The address book: who this node talks to, and at which address.
//!
//! Before the node has a membership (a node started with `raft.join`), the configured
//! `raft.peers`. Once it has one, the members of the log, voters and learners, whether
//! configured or not: a learner added with `/admin/members/learner` is reached at the
//! address its membership entry records, a removed member is no longer polled. A member's
//! address in `raft.peers` wins over the log's (the log has none for the members a cluster
//! was bootstrapped with; the operator's list is what this node can reach). Where the two
//! disagree, [`resolve`] says how, for a warning.

use haseq_messages::NodeId;
use serde::Serialize;

use crate::raft_core::Members;

/// What a peer is to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// Votes and may lead.
    Voter,
    /// Receives the log, does not vote.
    Learner,
    /// In `raft.peers`; the node has no membership yet to say more.
    Configured,
}

/// One peer of the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id.
    pub id: NodeId,
    /// Its node-to-node address (empty when neither the log nor `raft.peers` has one).
    pub addr: String,
    /// Voter, learner or only configured.
    pub standing: Standing,
}

/// The book for `me`, from the configured peers and the membership; with the ways the two
/// disagree, one sentence each.
pub fn resolve(
    me: &NodeId,
    configured: &[(NodeId, String)],
    members: &Members,
) -> (Vec<Entry>, Vec<String>) {
    if members.is_empty() {
        let book = configured
            .iter()
            .map(|(id, addr)| Entry {
                id: id.clone(),
                addr: addr.clone(),
                standing: Standing::Configured,
            })
            .collect();
        return (book, Vec::new());
    }
    let configured_addr = |id: &NodeId| {
        configured
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, a)| a.clone())
    };
    let mut book = Vec::new();
    let mut differences = Vec::new();
    let all = members
        .voters
        .iter()
        .map(|m| (m, Standing::Voter))
        .chain(members.learners.iter().map(|m| (m, Standing::Learner)));
    for ((id, logged), standing) in all {
        if id == me {
            continue;
        }
        let addr = match configured_addr(id) {
            Some(addr) => addr,
            None if logged.is_empty() => {
                differences.push(format!(
                    "member {id} is not in raft.peers and the log records no address for it: it cannot be reached"
                ));
                String::new()
            }
            None => logged.clone(),
        };
        book.push(Entry {
            id: id.clone(),
            addr,
            standing,
        });
    }
    for (id, _) in configured {
        if !members.contains(id) {
            differences.push(format!(
                "raft.peers lists {id}, which is not a member of the cluster (log index {}): not contacted",
                members.log_index
            ));
        }
    }
    (book, differences)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId(s.into())
    }

    fn configured() -> Vec<(NodeId, String)> {
        vec![
            (id("node-2"), "10.0.0.2:5001".into()),
            (id("node-3"), "10.0.0.3:5001".into()),
        ]
    }

    #[test]
    fn without_membership_the_configured_peers_are_the_book() {
        let (book, diff) = resolve(&id("node-1"), &configured(), &Members::default());
        assert_eq!(book.len(), 2);
        assert!(book.iter().all(|e| e.standing == Standing::Configured));
        assert!(diff.is_empty());
    }

    #[test]
    fn the_log_decides_who_and_the_configuration_where() {
        let mut m = Members::default();
        for n in ["node-1", "node-2"] {
            m.voters.insert(id(n), String::new());
        }
        m.learners.insert(id("node-4"), "10.0.0.4:5001".into());
        m.log_index = 7;
        let (book, diff) = resolve(&id("node-1"), &configured(), &m);
        assert_eq!(
            book,
            vec![
                Entry {
                    id: id("node-2"),
                    addr: "10.0.0.2:5001".into(),
                    standing: Standing::Voter
                },
                Entry {
                    id: id("node-4"),
                    addr: "10.0.0.4:5001".into(),
                    standing: Standing::Learner
                },
            ]
        );
        // node-3 was removed: it is named, and not contacted.
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(diff[0].contains("node-3") && diff[0].contains("log index 7"));
    }

    #[test]
    fn a_member_with_no_address_anywhere_is_named() {
        let mut m = Members::default();
        m.voters.insert(id("node-1"), String::new());
        m.voters.insert(id("node-5"), String::new());
        let (book, diff) = resolve(&id("node-1"), &[], &m);
        assert_eq!(book[0].addr, "");
        assert!(diff[0].contains("node-5"), "{diff:?}");
    }
}
