//! Files that configuration keys name, read and checked at start-up: the cluster secret, the
//! engine's JWT secret, the admin token, and the writability of `raft.raft_dir`.
//!
//! Reading them here means a missing or short secret stops start-up with the key and the path,
//! instead of surfacing later as a refused peer or a 401 from the execution client.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::error::ConfigError;

/// Fewest bytes a cluster secret may have: an HMAC key shorter than 128 bits is guessable.
pub const CLUSTER_SECRET_LEN_MIN: usize = 16;
/// Size of an Engine API JWT secret (HS256 key), as reth and geth require.
pub const JWT_SECRET_LEN: usize = 32;
/// Largest secret or token file we read; anything bigger is the wrong file.
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The cluster's shared secret (`raft.secret_file`), the key of the HMAC challenge-response
/// between peers. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl ClusterSecret {
    /// A secret from bytes in hand (devnet, tests).
    ///
    /// # Panics
    /// If `bytes` is shorter than [`CLUSTER_SECRET_LEN_MIN`].
    pub fn new(bytes: Vec<u8>) -> Self {
        assert!(
            bytes.len() >= CLUSTER_SECRET_LEN_MIN,
            "cluster secret of {} bytes, need at least {CLUSTER_SECRET_LEN_MIN}",
            bytes.len()
        );
        Self(bytes)
    }

    /// Read a secret file: surrounding whitespace is trimmed; hex text (optionally `0x`-prefixed,
    /// even length) is decoded, anything else is used as raw bytes.
    ///
    /// # Errors
    /// Naming `raft.secret_file` and `path`: the file is missing or unreadable, empty, or
    /// holds fewer than [`CLUSTER_SECRET_LEN_MIN`] bytes.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        const KEY: &str = "raft.secret_file";
        let raw = read_small(KEY, path)?;
        let text = raw.trim_ascii();
        if text.is_empty() {
            return Err(content(
                KEY,
                path,
                "the file is empty; it must hold the cluster's shared secret",
            ));
        }
        let bytes = match decode_hex(text) {
            Some(decoded) => decoded,
            None => text.to_vec(),
        };
        if bytes.len() < CLUSTER_SECRET_LEN_MIN {
            return Err(content(
                KEY,
                path,
                format!(
                    "the secret is {} bytes, too short: at least {CLUSTER_SECRET_LEN_MIN} are \
                     needed (e.g. `openssl rand -hex 32` for 32 bytes)",
                    bytes.len()
                ),
            ));
        }
        Ok(Self(bytes))
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret(<{} bytes>)", self.0.len())
    }
}

/// The Engine API JWT secret (`engine.jwt_secret`): 32 bytes, written in its file as 64 hex
/// characters with an optional `0x`, as reth and geth read it. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret([u8; JWT_SECRET_LEN]);

impl JwtSecret {
    /// A secret from bytes in hand (tests, `haseqd engine serve`).
    pub fn new(bytes: [u8; JWT_SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// Read a JWT secret file.
    ///
    /// # Errors
    /// Naming `engine.jwt_secret` and `path`: missing or unreadable, not hex, or not 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        const KEY: &str = "engine.jwt_secret";
        let raw = read_small(KEY, path)?;
        let text = raw.trim_ascii();
        let digits = text
            .strip_prefix(b"0x")
            .or_else(|| text.strip_prefix(b"0X"))
            .unwrap_or(text);
        if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
            return Err(content(
                KEY,
                path,
                format!(
                    "not hex (found {:?}); expected {} hex characters ({JWT_SECRET_LEN} bytes), \
                     optionally prefixed with 0x",
                    char::from(*bad),
                    JWT_SECRET_LEN * 2
                ),
            ));
        }
        let mut bytes = [0u8; JWT_SECRET_LEN];
        if digits.len() != JWT_SECRET_LEN * 2 || hex::decode_to_slice(digits, &mut bytes).is_err() {
            return Err(content(
                KEY,
                path,
                format!(
                    "the file holds {} hex characters; expected {} ({JWT_SECRET_LEN} bytes), \
                     optionally prefixed with 0x",
                    digits.len(),
                    JWT_SECRET_LEN * 2
                ),
            ));
        }
        Ok(Self(bytes))
    }

    /// The secret's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; JWT_SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(<32 bytes>)")
    }
}

/// The bearer token for admin calls from other hosts (`api.admin_token_file`). Its `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Read a token file: surrounding whitespace trimmed; the token must be non-empty printable
    /// ASCII without spaces, so it fits an `Authorization: Bearer` header.
    ///
    /// # Errors
    /// Naming `api.admin_token_file` and `path`: missing, unreadable, empty, or not printable.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        const KEY: &str = "api.admin_token_file";
        let raw = read_small(KEY, path)?;
        let text = raw.trim_ascii();
        if text.is_empty() {
            return Err(content(
                KEY,
                path,
                "the file is empty; it must hold the admin token",
            ));
        }
        if !text.iter().all(u8::is_ascii_graphic) {
            return Err(content(
                KEY,
                path,
                "the token must be printable ASCII without spaces (it is sent as a bearer token)",
            ));
        }
        // Checked just above: all ASCII, so valid UTF-8.
        Ok(Self(String::from_utf8_lossy(text).into_owned()))
    }

    /// The token, to compare with a request's bearer token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Create `path` if needed and prove we can write in it (create, write, sync and remove a probe
/// file), so an unwritable data directory stops start-up instead of the first Raft append.
pub(super) fn ensure_writable_dir(key: &str, path: &Path) -> Result<(), ConfigError> {
    let dir_err = |action: &str, source| ConfigError::Dir {
        key: key.into(),
        path: path.to_path_buf(),
        action: action.into(),
        source,
    };
    fs::create_dir_all(path).map_err(|e| dir_err("cannot create the directory", e))?;
    let probe: PathBuf = path.join(format!(".haseq-write-probe-{}", std::process::id()));
    let mut file =
        fs::File::create(&probe).map_err(|e| dir_err("cannot create a file in it", e))?;
    let written = file.write_all(b"probe").and_then(|()| file.sync_all());
    drop(file);
    // Remove the probe even when the write failed, then report the first failure.
    let removed = fs::remove_file(&probe);
    written.map_err(|e| dir_err("cannot write a file in it", e))?;
    removed.map_err(|e| dir_err("cannot remove a file from it", e))?;
    Ok(())
}

/// Read a file of at most [`SECRET_FILE_BYTES_MAX`] bytes.
fn read_small(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let read_err = |source| ConfigError::ReadFile {
        key: key.into(),
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(SECRET_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > SECRET_FILE_BYTES_MAX {
        return Err(content(
            key,
            path,
            format!("the file is larger than {SECRET_FILE_BYTES_MAX} bytes; is it the right file?"),
        ));
    }
    Ok(bytes)
}

fn content(key: &str, path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::FileContent {
        key: key.into(),
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Decode hex text (optional `0x`), or `None` if it is not hex of even length.
fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    let digits = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    hex::decode(digits).ok()
}
