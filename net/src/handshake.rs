//! The handshake: mutual HMAC-SHA256 challenge-response on the cluster's shared secret.
//!
//! ```text
//! client                                   server
//!   ClientHello{version, node_id, target, nonce_c}  ->
//!                  <-  ServerHello::Challenge{node_id, nonce_s, hmac("server", transcript)}
//!   (client checks the server's proof: a server without the secret is refused)
//!   ClientProof{hmac("client", transcript)}          ->
//!                  <-  Welcome::Accepted | Welcome::Refused(reason), then close
//! ```
//!
//! The transcript covers both ids and both fresh nonces, so a proof can't be replayed on
//! another connection or reflected back in the other role. Proofs are compared in constant
//! time (`Mac::verify_slice`). The server checks the client's proof before membership, so a
//! peer without the secret learns nothing about who is a member.
//!
//! These functions run no clock: callers put the whole exchange under one deadline.

/// The words of a refusal at the handshake for a peer that is neither configured nor a
/// member: [`crate::NetError::refused_as_not_a_member`] recognises them.
pub const NOT_A_MEMBER: &str = "is not a member of this node's cluster";
use std::io;

use bytes::{Bytes, BytesMut};
use futures::{Sink, Stream};
use haseq_messages::NodeId;
use haseq_messages::wire::{
    ClientHello, ClientProof, NONCE_BYTES, PROTOCOL_VERSION, ServerHello, Welcome, transcript,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{FrameError, read_msg, write_msg};
use crate::limits::HANDSHAKE_FRAME_BYTES_MAX;

type HmacSha256 = Hmac<Sha256>;

const ROLE_SERVER: &[u8] = b"server";
const ROLE_CLIENT: &[u8] = b"client";

/// Why a handshake was refused; also the `reason` label of `haseq_peer_auth_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The client speaks another protocol version.
    Version,
    /// The client asked for another node than this one.
    WrongTarget,
    /// The client's proof does not verify: it does not hold the cluster secret.
    BadProof,
    /// The client proved the secret but its node id is not a cluster member.
    NotMember,
    /// The client sent something that is not the expected handshake frame, or too long a one.
    Malformed,
    /// The client did not complete the handshake within the deadline.
    Timeout,
    /// (Client side) the server's proof does not verify: it does not hold the secret.
    ServerBadProof,
    /// (Client side) the server answered with another node id than the one dialled.
    ServerWrongId,
}

impl RefusalReason {
    /// Every reason, for creating each label's series at 0.
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::Version,
        RefusalReason::WrongTarget,
        RefusalReason::BadProof,
        RefusalReason::NotMember,
        RefusalReason::Malformed,
        RefusalReason::Timeout,
        RefusalReason::ServerBadProof,
        RefusalReason::ServerWrongId,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Version => "version",
            RefusalReason::WrongTarget => "wrong_target",
            RefusalReason::BadProof => "bad_proof",
            RefusalReason::NotMember => "not_member",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Timeout => "timeout",
            RefusalReason::ServerBadProof => "server_bad_proof",
            RefusalReason::ServerWrongId => "server_wrong_id",
        }
    }
}

/// A handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// We refused the peer.
    #[error("refused peer ({}): {detail}", reason.as_str())]
    Refused {
        reason: RefusalReason,
        detail: String,
    },
    /// The peer refused us.
    #[error("refused by peer: {0}")]
    RefusedByPeer(String),
    /// The exchange broke (socket error, closed, malformed or over-long frame).
    #[error("{0}")]
    Frame(#[from] FrameError),
}

impl HandshakeError {
    fn refused(reason: RefusalReason, detail: impl Into<String>) -> Self {
        HandshakeError::Refused {
            reason,
            detail: detail.into(),
        }
    }
}

/// HMAC-SHA256 of `transcript` under `secret`.
fn prove(secret: &[u8], transcript: &[u8]) -> [u8; 32] {
    let mut mac = mac(secret);
    mac.update(transcript);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of `proof` against the HMAC of `transcript`.
fn verify(secret: &[u8], transcript: &[u8], proof: &[u8; 32]) -> bool {
    let mut mac = mac(secret);
    mac.update(transcript);
    mac.verify_slice(proof).is_ok()
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

fn nonce() -> [u8; NONCE_BYTES] {
    // ThreadRng is a CSPRNG seeded from the OS: nonces must be unpredictable.
    rand::random()
}

/// Run the client side: prove we hold the secret, check the server does too.
///
/// On success the connection carries requests; the caller raises the frame limit.
pub(crate) async fn client<S>(
    io: &mut S,
    me: &NodeId,
    target: &NodeId,
    secret: &[u8],
) -> Result<(), HandshakeError>
where
    S: Stream<Item = io::Result<BytesMut>> + Sink<Bytes, Error = io::Error> + Unpin,
{
    let limit = HANDSHAKE_FRAME_BYTES_MAX;
    let client_nonce = nonce();
    let hello = ClientHello {
        version: PROTOCOL_VERSION,
        node_id: me.clone(),
        target: target.clone(),
        nonce: client_nonce,
    };
    write_msg(io, &hello, limit).await?;

    let (server_id, server_nonce, server_proof) =
        match read_msg::<ServerHello, _>(io, limit).await? {
            ServerHello::Challenge {
                node_id,
                nonce,
                proof,
            } => (node_id, nonce, proof),
            ServerHello::Refused(reason) => return Err(HandshakeError::RefusedByPeer(reason)),
        };
    if &server_id != target {
        return Err(HandshakeError::refused(
            RefusalReason::ServerWrongId,
            format!("dialled {target}, the server says it is {server_id}"),
        ));
    }
    let t = transcript(ROLE_SERVER, me, target, &client_nonce, &server_nonce);
    if !verify(secret, &t, &server_proof) {
        return Err(HandshakeError::refused(
            RefusalReason::ServerBadProof,
            "the server's proof does not verify (it lacks the cluster secret)",
        ));
    }

    let t = transcript(ROLE_CLIENT, me, target, &client_nonce, &server_nonce);
    write_msg(
        io,
        &ClientProof {
            proof: prove(secret, &t),
        },
        limit,
    )
    .await?;

    match read_msg::<Welcome, _>(io, limit).await? {
        Welcome::Accepted => Ok(()),
        Welcome::Refused(reason) => Err(HandshakeError::RefusedByPeer(reason)),
    }
}

/// Run the server side. Returns the authenticated member's id.
///
/// A refused client is told why (best effort) before the caller closes the connection.
pub(crate) async fn server<S>(
    io: &mut S,
    me: &NodeId,
    secret: &[u8],
    is_member: &(dyn Fn(&NodeId) -> bool + Send + Sync),
) -> Result<NodeId, HandshakeError>
where
    S: Stream<Item = io::Result<BytesMut>> + Sink<Bytes, Error = io::Error> + Unpin,
{
    let limit = HANDSHAKE_FRAME_BYTES_MAX;
    let hello: ClientHello = read_msg(io, limit).await.map_err(malformed)?;
    if hello.version != PROTOCOL_VERSION {
        let detail = format!(
            "protocol version {}, this node speaks {PROTOCOL_VERSION}",
            hello.version
        );
        let _ = write_msg(io, &ServerHello::Refused(detail.clone()), limit).await;
        return Err(HandshakeError::refused(RefusalReason::Version, detail));
    }
    if &hello.target != me {
        let detail = format!("asked for {}, this node is {me}", hello.target);
        let _ = write_msg(io, &ServerHello::Refused(detail.clone()), limit).await;
        return Err(HandshakeError::refused(RefusalReason::WrongTarget, detail));
    }
    let client_id = hello.node_id;

    let server_nonce = nonce();
    let t = transcript(ROLE_SERVER, &client_id, me, &hello.nonce, &server_nonce);
    let challenge = ServerHello::Challenge {
        node_id: me.clone(),
        nonce: server_nonce,
        proof: prove(secret, &t),
    };
    write_msg(io, &challenge, limit).await?;

    let ClientProof { proof } = read_msg(io, limit).await.map_err(malformed)?;
    let t = transcript(ROLE_CLIENT, &client_id, me, &hello.nonce, &server_nonce);
    if !verify(secret, &t, &proof) {
        let _ = write_msg(io, &Welcome::Refused("bad proof".into()), limit).await;
        return Err(HandshakeError::refused(
            RefusalReason::BadProof,
            format!("{client_id} does not prove the cluster secret"),
        ));
    }
    if !is_member(&client_id) {
        let _ = write_msg(
            io,
            &Welcome::Refused(format!("{client_id} {NOT_A_MEMBER}")),
            limit,
        )
        .await;
        return Err(HandshakeError::refused(
            RefusalReason::NotMember,
            format!("{client_id} {NOT_A_MEMBER}"),
        ));
    }
    write_msg(io, &Welcome::Accepted, limit).await?;
    Ok(client_id)
}

/// On the server, a frame that does not decode or is too long is a malformed handshake; a
/// socket error or a close stays what it is.
fn malformed(e: FrameError) -> HandshakeError {
    match e {
        FrameError::Decode(_) | FrameError::TooLong { .. } => {
            HandshakeError::refused(RefusalReason::Malformed, e.to_string())
        }
        other => HandshakeError::Frame(other),
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Framed;

    use super::*;
    use crate::frame::codec;

    fn pair() -> (
        Framed<tokio::io::DuplexStream, tokio_util::codec::LengthDelimitedCodec>,
        Framed<tokio::io::DuplexStream, tokio_util::codec::LengthDelimitedCodec>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            Framed::new(a, codec(HANDSHAKE_FRAME_BYTES_MAX)),
            Framed::new(b, codec(HANDSHAKE_FRAME_BYTES_MAX)),
        )
    }

    async fn run(
        client_secret: &[u8],
        server_secret: &[u8],
        target: &str,
        member: bool,
    ) -> (Result<(), HandshakeError>, Result<NodeId, HandshakeError>) {
        let (mut c, mut s) = pair();
        let me = NodeId::from("n1");
        let srv = NodeId::from("n2");
        let target = NodeId::from(target);
        let is_member = move |_: &NodeId| member;
        tokio::join!(
            async {
                let r = client(&mut c, &me, &target, client_secret).await;
                drop(c); // close, as the pool does after a failed handshake
                r
            },
            async {
                let r = server(&mut s, &srv, server_secret, &is_member).await;
                drop(s); // close, as the server does after a refusal
                r
            }
        )
    }

    #[tokio::test]
    async fn same_secret_and_member_is_accepted() {
        let (c, s) = run(b"k", b"k", "n2", true).await;
        c.unwrap();
        assert_eq!(s.unwrap(), NodeId::from("n1"));
    }

    #[tokio::test]
    async fn client_without_the_secret_is_refused() {
        let (c, s) = run(b"wrong", b"k", "n2", true).await;
        // The client refuses first: the server can't prove a secret the client lacks.
        assert!(
            matches!(
                c,
                Err(HandshakeError::Refused {
                    reason: RefusalReason::ServerBadProof,
                    ..
                })
            ),
            "{c:?}"
        );
        assert!(s.is_err(), "{s:?}");
    }

    #[tokio::test]
    async fn non_member_is_refused_after_proving_the_secret() {
        let (c, s) = run(b"k", b"k", "n2", false).await;
        assert!(
            matches!(&c, Err(HandshakeError::RefusedByPeer(r)) if r.contains("not a member")),
            "{c:?}"
        );
        assert!(
            matches!(
                s,
                Err(HandshakeError::Refused {
                    reason: RefusalReason::NotMember,
                    ..
                })
            ),
            "{s:?}"
        );
    }

    #[tokio::test]
    async fn wrong_target_is_refused() {
        let (c, s) = run(b"k", b"k", "n3", true).await;
        assert!(matches!(c, Err(HandshakeError::RefusedByPeer(_))), "{c:?}");
        assert!(
            matches!(
                s,
                Err(HandshakeError::Refused {
                    reason: RefusalReason::WrongTarget,
                    ..
                })
            ),
            "{s:?}"
        );
    }

    #[tokio::test]
    async fn a_forged_client_proof_is_refused() {
        // A client that does not know the secret but completes the exchange with a guess.
        let (mut c, mut s) = pair();
        let srv = NodeId::from("n2");
        let forger = async {
            let hello = ClientHello {
                version: PROTOCOL_VERSION,
                node_id: NodeId::from("n1"),
                target: srv.clone(),
                nonce: [0u8; NONCE_BYTES],
            };
            write_msg(&mut c, &hello, HANDSHAKE_FRAME_BYTES_MAX)
                .await
                .unwrap();
            let sh: ServerHello = read_msg(&mut c, HANDSHAKE_FRAME_BYTES_MAX).await.unwrap();
            // Reflect the server's own proof back: the role in the transcript must stop it.
            let ServerHello::Challenge { proof, .. } = sh else {
                panic!("{sh:?}")
            };
            write_msg(&mut c, &ClientProof { proof }, HANDSHAKE_FRAME_BYTES_MAX)
                .await
                .unwrap();
            read_msg::<Welcome, _>(&mut c, HANDSHAKE_FRAME_BYTES_MAX)
                .await
                .unwrap()
        };
        let (welcome, s) = tokio::join!(forger, server(&mut s, &srv, b"k", &|_: &NodeId| true));
        assert!(matches!(welcome, Welcome::Refused(_)), "{welcome:?}");
        assert!(
            matches!(
                s,
                Err(HandshakeError::Refused {
                    reason: RefusalReason::BadProof,
                    ..
                })
            ),
            "{s:?}"
        );
    }

    #[test]
    fn proofs_verify_only_for_the_same_secret_and_transcript() {
        let p = prove(b"k", b"t");
        assert!(verify(b"k", b"t", &p));
        assert!(!verify(b"k2", b"t", &p));
        assert!(!verify(b"k", b"t2", &p));
    }
}
