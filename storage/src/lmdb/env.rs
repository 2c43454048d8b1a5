//! Opening an environment: its map size and named databases, read transactions without
//! thread-local slots, and a wait for a just-dropped environment on the same directory.

use std::path::Path;
use std::time::Duration;

use heed::{Env, EnvOpenOptions, WithoutTls};

use crate::error::StorageError;

/// The environment type: read transactions without thread-local slots, so that a reader never
/// depends on which tokio worker it happens to run on.
pub type LmdbEnv = Env<WithoutTls>;

/// How long [`open_env`] waits for a just-dropped environment on the same directory to finish
/// closing (its writer thread joins on drop, but another handle may still be in flight).
pub const REOPEN_WAIT_MAX: Duration = Duration::from_secs(10);

/// How an environment is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvOptions {
    /// The most the environment may ever hold: address space, not an allocation (LMDB grows
    /// the file only as data is written). A multiple of the page size.
    pub map_size_bytes: usize,
    /// How many named databases it may hold.
    pub max_dbs: u32,
}

/// Opens (creating the directory if needed) the environment in `path`.
///
/// If this process still has the environment open (one on the same directory that was just
/// dropped, and whose last handle is being released), waits for it to close, up to
/// [`REOPEN_WAIT_MAX`].
///
/// # Errors
/// On a directory that cannot be made, an environment LMDB cannot open, or one still open in
/// this process after the wait.
pub fn open_env(path: &Path, opts: &EnvOptions) -> Result<LmdbEnv, StorageError> {
    std::fs::create_dir_all(path).map_err(StorageError::io("create directory", path))?;
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(opts.map_size_bytes).max_dbs(opts.max_dbs);

    for attempt in 0..2 {
        // SAFETY: LMDB maps the file into memory; heed's `open` is unsafe because another
        // party modifying the file outside LMDB's locking is UB. Only its owner (the storage
        // crate, or the embedded engine) opens a directory, always through LMDB and its lock
        // file, and heed refuses a second open of the same path in this process
        // (`EnvAlreadyOpened`, handled below).
        let res = unsafe { options.open(path) };
        match res {
            Ok(env) => return Ok(env),
            Err(heed::Error::EnvAlreadyOpened) if attempt == 0 => {
                let canonical = path
                    .canonicalize()
                    .map_err(StorageError::io("canonicalize", path))?;
                if let Some(closing) = heed::env_closing_event(&canonical) {
                    tracing::info!(path = %path.display(), "waiting for the previous environment on this directory to close");
                    if !closing.wait_timeout(REOPEN_WAIT_MAX) {
                        return Err(StorageError::AlreadyOpen {
                            path: path.to_path_buf(),
                        });
                    }
                }
            }
            Err(heed::Error::EnvAlreadyOpened) => {
                return Err(StorageError::AlreadyOpen {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(StorageError::OpenEnv {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Err(StorageError::AlreadyOpen {
        path: path.to_path_buf(),
    })
}
