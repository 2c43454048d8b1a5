//! The transport's settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use haseq_messages::NodeId;

/// Settings shared by the client ([`crate::Network`]) and the server ([`crate::serve`]).
#[derive(Clone)]
pub struct NetConfig {
    /// This node's id: the client presents it, the server answers only to it.
    pub node_id: NodeId,
    /// The cluster's shared secret (bytes), the HMAC key of the handshake. Never logged.
    pub secret: Arc<Vec<u8>>,
    /// Deadline of one small RPC (append, vote, pre-vote, transfer-leader), also capped by
    /// openraft's per-call budget. The server bounds its handler and writes by it too.
    pub send_timeout: Duration,
    /// Deadline of one whole snapshot transfer and install.
    pub snapshot_timeout: Duration,
    /// Deadline of TCP connect plus handshake (client), and of the handshake (server).
    pub connect_timeout: Duration,
}

impl NetConfig {
    /// Check the settings a transport can't work without.
    ///
    /// # Errors
    /// An empty secret, or a zero timeout, named by its field.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if self.secret.is_empty() {
            return Err(NetConfigError {
                field: "secret",
                problem: "is empty",
            });
        }
        for (field, d) in [
            ("send_timeout", self.send_timeout),
            ("snapshot_timeout", self.snapshot_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(NetConfigError {
                    field,
                    problem: "is zero",
                });
            }
        }
        Ok(())
    }
}

/// The secret stays out of logs and panics.
impl fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetConfig")
            .field("node_id", &self.node_id)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("send_timeout", &self.send_timeout)
            .field("snapshot_timeout", &self.snapshot_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A [`NetConfig`] field has a value the transport can't use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("net config: {field} {problem}")]
pub struct NetConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetConfig {
        NetConfig {
            node_id: NodeId::from("n1"),
            secret: Arc::new(b"top secret".to_vec()),
            send_timeout: Duration::from_millis(100),
            snapshot_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(100),
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", cfg());
        assert!(!shown.contains("top secret"), "{shown}");
        assert!(shown.contains("<10 bytes>"), "{shown}");
    }

    #[test]
    fn validate_names_the_field() {
        assert_eq!(cfg().validate(), Ok(()));
        let mut c = cfg();
        c.secret = Arc::new(Vec::new());
        assert_eq!(c.validate().unwrap_err().field, "secret");
        let mut c = cfg();
        c.connect_timeout = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "connect_timeout");
    }
}
