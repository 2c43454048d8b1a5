//! The LMDB toolkit this crate's store and the embedded engine's both stand on: opening an
//! environment ([`open_env`]), the writer thread that runs every write transaction
//! ([`Writer`]: group commit, a nested transaction per job, durability per job, a linger for
//! commits nobody waits on, deferred writes), the page-cache drop-behind after each commit
//! ([`drop_behind`]), and the postcard record codecs ([`encode_rec`], [`decode_rec`],
//! [`get_rec`]).
//!
//! Not here: what either environment holds (its databases, keys and records are its owner's).
//! Errors are [`StorageError`](crate::StorageError)s; a writer's jobs may return an error of
//! their own that such an error converts into.

mod codec;
pub mod drop_behind;
mod env;
mod writer;

pub use codec::{decode_rec, encode_rec, get_rec};
pub use env::{EnvOptions, LmdbEnv, REOPEN_WAIT_MAX, open_env};
pub use writer::{Durability, Writer, WriterConfig};
