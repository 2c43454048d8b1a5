//! Engine API authentication: HS256 JWTs over a 32-byte shared secret, with an `iat` claim
//! that must lie within ±60 s of the verifier's clock (as the spec, geth and reth require).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::EngineError;

/// How far a token's `iat` may be from the verifier's clock.
pub const JWT_IAT_WINDOW: Duration = Duration::from_secs(60);

/// `{"alg":"HS256","typ":"JWT"}`, the only header we issue.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a token was refused (the server answers 401 and logs this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    Missing,
    /// Not three base64url parts, or a part is not the JSON it should be.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than HS256.
    #[error("unsupported algorithm {0:?}, expected HS256")]
    Algorithm(String),
    /// The signature does not match the shared secret.
    #[error("bad signature (wrong JWT secret?)")]
    Signature,
    /// `iat` is more than [`JWT_IAT_WINDOW`] from now.
    #[error("iat {iat} is {skew_secs} s from now ({now}), allowed ±60 s")]
    Stale {
        /// The token's issued-at, seconds since the epoch.
        iat: u64,
        /// The verifier's clock.
        now: u64,
        /// The difference.
        skew_secs: u64,
    },
}

fn mac(secret: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; a 32-byte key cannot be refused.
    <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|e| unreachable!("HMAC accepts any key length: {e}"))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token issued at `iat` (seconds since the epoch), signed with `secret`.
pub fn jwt_token(secret: &[u8; 32], iat: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER_JSON);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{iat}}}"#));
    let signing_input = format!("{header}.{claims}");
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Checks `token` against `secret` and the clock `now` (seconds since the epoch).
///
/// # Errors
/// A [`JwtError`] naming what is wrong.
pub fn verify_jwt(secret: &[u8; 32], token: &str, now: u64) -> Result<(), JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let decode = |what: &str, part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| JwtError::Malformed(format!("{what}: {e}")))
    };
    let header: serde_json::Value = serde_json::from_slice(&decode("header", header)?)
        .map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
    match header.get("alg").and_then(|a| a.as_str()) {
        Some("HS256") => {}
        other => return Err(JwtError::Algorithm(other.unwrap_or("").to_string())),
    }
    let sig = decode("signature", sig)?;
    let mut m = mac(secret);
    let signing_input_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    m.update(&token.as_bytes()[..signing_input_len]);
    // Constant-time comparison.
    m.verify_slice(&sig).map_err(|_| JwtError::Signature)?;
    let claims: serde_json::Value = serde_json::from_slice(&decode("claims", claims)?)
        .map_err(|e| JwtError::Malformed(format!("claims: {e}")))?;
    let iat = claims
        .get("iat")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| JwtError::Malformed("claims: no integer iat".into()))?;
    let skew_secs = iat.abs_diff(now);
    if skew_secs > JWT_IAT_WINDOW.as_secs() {
        return Err(JwtError::Stale {
            iat,
            now,
            skew_secs,
        });
    }
    Ok(())
}

/// Parses a JWT secret file's content: 64 hex digits, `0x` optional, surrounding whitespace
/// ignored (the format geth and reth write and read).
///
/// # Errors
/// [`EngineError::Config`] naming `engine.jwt_secret` when it is not 32 bytes of hex.
pub fn parse_jwt_secret(text: &str) -> Result<[u8; 32], EngineError> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let refuse = |reason: String| EngineError::Config {
        key: "engine.jwt_secret",
        value: format!("{} characters", t.len()),
        reason,
    };
    let bytes = hex::decode(t).map_err(|e| refuse(format!("not hex: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| refuse(format!("{} bytes, expected 32", b.len())))
}

/// Reads a JWT secret file (as `engine.jwt_secret` names it) and parses it with
/// [`parse_jwt_secret`].
///
/// # Errors
/// [`EngineError::Config`] naming the path when it cannot be read or does not hold 32 bytes of
/// hex.
pub fn read_jwt_secret_file(path: &std::path::Path) -> Result<[u8; 32], EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Config {
        key: "engine.jwt_secret",
        value: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })?;
    parse_jwt_secret(&text).map_err(|e| match e {
        EngineError::Config { key, reason, .. } => EngineError::Config {
            key,
            value: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn a_fresh_token_verifies() {
        let now = 1_700_000_000;
        verify_jwt(&SECRET, &jwt_token(&SECRET, now), now).expect("valid");
        verify_jwt(&SECRET, &jwt_token(&SECRET, now - 60), now).expect("edge of window");
        verify_jwt(&SECRET, &jwt_token(&SECRET, now + 60), now).expect("edge of window");
    }

    #[test]
    fn wrong_secret_stale_iat_and_garbage_are_refused() {
        let now = 1_700_000_000;
        assert_eq!(
            verify_jwt(&[8; 32], &jwt_token(&SECRET, now), now),
            Err(JwtError::Signature)
        );
        assert!(matches!(
            verify_jwt(&SECRET, &jwt_token(&SECRET, now - 61), now),
            Err(JwtError::Stale { skew_secs: 61, .. })
        ));
        assert!(matches!(
            verify_jwt(&SECRET, &jwt_token(&SECRET, now + 61), now),
            Err(JwtError::Stale { .. })
        ));
        assert!(matches!(
            verify_jwt(&SECRET, "a.b", now),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            verify_jwt(&SECRET, "a.b.c.d", now),
            Err(JwtError::Malformed(_))
        ));
        // alg none with the signature stripped.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{now}}}"#))
        );
        assert!(matches!(
            verify_jwt(&SECRET, &none, now),
            Err(JwtError::Algorithm(_))
        ));
    }

    #[test]
    fn secret_files_parse_like_geths() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            parse_jwt_secret(&format!("0x{hex64}\n")).expect("ok"),
            [0xab; 32]
        );
        assert_eq!(parse_jwt_secret(&hex64).expect("ok"), [0xab; 32]);
        assert!(parse_jwt_secret("abcd").is_err());
        assert!(parse_jwt_secret(&"zz".repeat(32)).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwt.hex");
        std::fs::write(&path, format!("0x{hex64}\n")).expect("write");
        assert_eq!(read_jwt_secret_file(&path).expect("ok"), [0xab; 32]);
        let err = read_jwt_secret_file(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("engine.jwt_secret"), "{err}");
    }
}
