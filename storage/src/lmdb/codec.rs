//! Record codecs: every value an environment stores is postcard (through
//! `haseq_messages::{encode, decode}`), so a stored value and the same value on the wire are
//! the same bytes; an error names the record (and its key).

use heed::types::{Bytes, Str};
use heed::{Database, RoTxn};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StorageError;

/// Encodes a record, naming it in the error.
///
/// # Errors
/// When the value cannot be encoded.
pub fn encode_rec<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StorageError> {
    haseq_messages::encode(value).map_err(|source| StorageError::Encode { what, source })
}

/// Decodes a record, naming it and its key in the error.
///
/// # Errors
/// When the bytes are not one whole `T` (trailing bytes included).
pub fn decode_rec<T: DeserializeOwned>(
    what: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StorageError> {
    haseq_messages::decode(bytes).map_err(|source| StorageError::Decode {
        what,
        key: key.to_string(),
        source,
    })
}

/// Reads and decodes the record under a string key, `None` if absent.
///
/// # Errors
/// On an LMDB failure or a record that does not decode.
pub fn get_rec<T: DeserializeOwned>(
    txn: &RoTxn<'_>,
    db: Database<'static, Str, Bytes>,
    what: &'static str,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match db.get(txn, key).map_err(StorageError::lmdb("get record"))? {
        None => Ok(None),
        Some(bytes) => decode_rec(what, key, bytes).map(Some),
    }
}
