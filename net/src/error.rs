//! What can go wrong with a call to a peer, and how openraft is told.

use std::time::Duration;

use haseq_messages::wire::RemoteError;
use haseq_messages::{NodeId, TC};
use openraft::error::{NetworkError, RPCError, StreamingError, Timeout, Unreachable};
use openraft::network::RPCTypes;

/// A call to a peer failed. The message names the call, the peer and its address.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call} to {peer} at {addr}: {kind}")]
pub struct NetError {
    /// The peer called.
    pub peer: NodeId,
    /// The address dialled (`host:port`).
    pub addr: String,
    /// The call (`RpcRequest::kind`, e.g. `vote`).
    pub call: &'static str,
    /// What went wrong.
    pub kind: NetErrorKind,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetErrorKind {
    /// TCP connect failed or timed out (peer down, refused, no route, bad address).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The handshake failed: a refusal either way, a timeout or a broken exchange.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The last connect failed moments ago; the next attempt waits for the backoff.
    #[error("reconnect in {retry_in:?}; last attempt: {last}")]
    BackingOff {
        /// Time left before the next attempt.
        retry_in: Duration,
        /// Why the last attempt failed.
        last: Box<NetErrorKind>,
    },
    /// No answer within the call's deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke before the answer came.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer answered that it could not serve the call.
    #[error("peer could not serve it: {0}")]
    Remote(RemoteError),
    /// The peer answered with something that does not answer this call.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The request could not be sent at all (too large, not encodable).
    #[error("request not sent: {0}")]
    Request(String),
    /// The caller gave up (openraft closed the replication stream).
    #[error("cancelled: {0}")]
    Cancelled(String),
}

impl NetErrorKind {
    /// Whether the peer should be left alone for a while (openraft backs off on
    /// `Unreachable`), as opposed to a transient failure worth an immediate retry.
    pub fn is_unreachable(&self) -> bool {
        match self {
            NetErrorKind::Connect(_)
            | NetErrorKind::Handshake(_)
            | NetErrorKind::BackingOff { .. }
            | NetErrorKind::Remote(RemoteError::Unavailable(_)) => true,
            NetErrorKind::Timeout(_)
            | NetErrorKind::ConnectionLost(_)
            | NetErrorKind::Remote(RemoteError::Refused(_))
            | NetErrorKind::Remote(RemoteError::NotAMember(_))
            | NetErrorKind::Protocol(_)
            | NetErrorKind::Request(_)
            | NetErrorKind::Cancelled(_) => false,
        }
    }
}

impl NetError {
    /// The peer refused this node as not one of its cluster: at the handshake (neither in
    /// its `raft.peers` nor in its membership), or in answer to a call (not in its
    /// membership).
    pub fn refused_as_not_a_member(&self) -> bool {
        fn kind(k: &NetErrorKind) -> bool {
            match k {
                NetErrorKind::Handshake(why) => why.contains(crate::handshake::NOT_A_MEMBER),
                NetErrorKind::Remote(RemoteError::NotAMember(_)) => true,
                NetErrorKind::BackingOff { last, .. } => kind(last),
                _ => false,
            }
        }
        kind(&self.kind)
    }

    /// openraft's form of this error for a call from `me` of type `action`.
    ///
    /// A deadline becomes `Timeout` (openraft's message names the call and both nodes; ours,
    /// with the address, is logged where it happens); a dead or refusing peer `Unreachable`,
    /// so openraft backs off; anything else `Network`, retried at once.
    pub(crate) fn to_rpc_error(&self, me: &NodeId, action: RPCTypes) -> RPCError<TC> {
        match &self.kind {
            NetErrorKind::Timeout(after) => RPCError::Timeout(Timeout {
                action,
                id: me.clone(),
                target: self.peer.clone(),
                timeout: *after,
            }),
            k if k.is_unreachable() => RPCError::Unreachable(Unreachable::from_string(self)),
            _ => RPCError::Network(NetworkError::from_string(self)),
        }
    }

    /// openraft's form of this error for a snapshot transfer.
    pub(crate) fn to_streaming_error(&self, me: &NodeId) -> StreamingError<TC> {
        StreamingError::from(self.to_rpc_error(me, RPCTypes::InstallSnapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: NetErrorKind) -> NetError {
        NetError {
            peer: NodeId::from("n2"),
            addr: "127.0.0.1:7001".into(),
            call: "vote",
            kind,
        }
    }

    #[test]
    fn message_names_call_peer_and_address() {
        let e = err(NetErrorKind::Connect("connection refused".into()));
        assert_eq!(
            e.to_string(),
            "vote to n2 at 127.0.0.1:7001: cannot connect: connection refused"
        );
        let rpc = e.to_rpc_error(&NodeId::from("n1"), RPCTypes::Vote);
        assert!(matches!(rpc, RPCError::Unreachable(_)), "{rpc:?}");
        assert!(rpc.to_string().contains("127.0.0.1:7001"), "{rpc}");
    }

    #[test]
    fn kinds_map_to_openraft_classes() {
        let me = NodeId::from("n1");
        let t =
            err(NetErrorKind::Timeout(Duration::from_millis(50))).to_rpc_error(&me, RPCTypes::Vote);
        assert!(matches!(t, RPCError::Timeout(_)), "{t:?}");
        let lost =
            err(NetErrorKind::ConnectionLost("eof".into())).to_rpc_error(&me, RPCTypes::Vote);
        assert!(matches!(lost, RPCError::Network(_)), "{lost:?}");
        let down = err(NetErrorKind::Remote(RemoteError::Unavailable(
            "stopping".into(),
        )))
        .to_rpc_error(&me, RPCTypes::Vote);
        assert!(matches!(down, RPCError::Unreachable(_)), "{down:?}");
        let snap = err(NetErrorKind::Timeout(Duration::from_secs(1))).to_streaming_error(&me);
        assert!(matches!(snap, StreamingError::Timeout(_)), "{snap:?}");
    }
}
