//! The data directory: node id, Raft log, snapshot. Helpers for durable file replacement.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::agent::group::NodeId;

pub const NODE_ID_FILE: &str = "node-id";
pub const LOG_FILE: &str = "raft-log";
pub const SNAPSHOT_FILE: &str = "snapshot";
pub const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is corrupt: {reason}; refusing to start (restore it, or wipe the whole data directory and re-add this member)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl DataDirError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        DataDirError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        DataDirError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Exclusive use of a data directory by one agent process, for as long as the value lives; the
/// kernel drops it with the process however that ends. Kubernetes starts a StatefulSet's
/// replacement pod as soon as the old one is deleted with grace period 0, while the old agent may
/// still be shutting down on the same volume: two processes appending to one Raft log lose
/// committed entries (seen on the test bed: a restarted member led with a log missing an epoch).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// The lock, or `None` while another process (or another open of it) holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<DataDirLock>, DataDirError> {
        fs::create_dir_all(dir).map_err(|e| DataDirError::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DataDirError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DataDirLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(DataDirError::io(&path, e)),
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| DataDirError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| DataDirError::io(&tmp, e))?;
    f.sync_all().map_err(|e| DataDirError::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| DataDirError::io(path, e))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), DataDirError> {
    let d = File::open(dir).map_err(|e| DataDirError::io(dir, e))?;
    d.sync_all().map_err(|e| DataDirError::io(dir, e))
}

/// Parses the node-id file's content.
pub fn parse_node_id(text: &str) -> Result<NodeId, String> {
    let t = text.trim();
    let id: NodeId = t
        .parse()
        .map_err(|_| format!("expected a decimal node id, found {t:?}"))?;
    if id == 0 {
        return Err("node id 0 is reserved".into());
    }
    Ok(id)
}

/// Loads the node id, or generates and persists a new random one for an empty directory.
///
/// A directory that has Raft state but no node id is refused: the id must never change under an
/// existing log, and a fresh id must never come with old state.
pub fn load_or_create_node_id(dir: &Path) -> Result<(NodeId, bool), DataDirError> {
    fs::create_dir_all(dir).map_err(|e| DataDirError::io(dir, e))?;
    let path = dir.join(NODE_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = parse_node_id(&text).map_err(|r| DataDirError::corrupt(&path, r))?;
            Ok((id, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            for other in [LOG_FILE, SNAPSHOT_FILE] {
                let p = dir.join(other);
                if p.exists() {
                    return Err(DataDirError::corrupt(
                        &path,
                        format!("missing while {} exists", p.display()),
                    ));
                }
            }
            // Random 63-bit ids: collisions across a group's lifetime are out of reach.
            let id = loop {
                let candidate = rand::random::<u64>() >> 1;
                if candidate != 0 {
                    break candidate;
                }
            };
            write_atomically(&path, format!("{id}\n").as_bytes())?;
            Ok((id, true))
        }
        Err(e) => Err(DataDirError::io(&path, e)),
    }
}

/// Opens a file for appending (created if missing).
pub fn open_append(path: &Path) -> Result<File, DataDirError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DataDirError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_generated_once_and_kept() -> Result<(), DataDirError> {
        let dir = tempfile::tempdir().map_err(|e| DataDirError::io(Path::new("tmp"), e))?;
        let (a, created) = load_or_create_node_id(dir.path())?;
        assert!(created);
        let (b, created) = load_or_create_node_id(dir.path())?;
        assert!(!created);
        assert_eq!(a, b);
        Ok(())
    }

    #[test]
    fn wiped_directory_gets_a_new_id() -> Result<(), DataDirError> {
        let a = tempfile::tempdir().map_err(|e| DataDirError::io(Path::new("tmp"), e))?;
        let b = tempfile::tempdir().map_err(|e| DataDirError::io(Path::new("tmp"), e))?;
        let (x, _) = load_or_create_node_id(a.path())?;
        let (y, _) = load_or_create_node_id(b.path())?;
        assert_ne!(x, y);
        Ok(())
    }

    #[test]
    fn corrupt_or_orphaned_state_is_refused_with_the_file_name() -> Result<(), DataDirError> {
        let dir = tempfile::tempdir().map_err(|e| DataDirError::io(Path::new("tmp"), e))?;
        fs::write(dir.path().join(NODE_ID_FILE), "not a number")
            .map_err(|e| DataDirError::io(dir.path(), e))?;
        let err = load_or_create_node_id(dir.path()).err();
        assert!(
            matches!(&err, Some(DataDirError::Corrupt { path, .. }) if path.ends_with(NODE_ID_FILE)),
            "{err:?}"
        );
        let dir = tempfile::tempdir().map_err(|e| DataDirError::io(Path::new("tmp"), e))?;
        fs::write(dir.path().join(LOG_FILE), b"").map_err(|e| DataDirError::io(dir.path(), e))?;
        let err = load_or_create_node_id(dir.path()).err();
        assert!(matches!(err, Some(DataDirError::Corrupt { .. })), "{err:?}");
        Ok(())
    }

    #[test]
    fn node_id_parser_rejects_garbage() {
        assert_eq!(parse_node_id("42\n"), Ok(42));
        assert!(parse_node_id("0").is_err());
        assert!(parse_node_id("-1").is_err());
        assert!(parse_node_id("").is_err());
    }

    #[test]
    fn one_process_at_a_time_uses_a_data_directory() -> Result<(), DataDirError> {
        let dir = tempfile::tempdir().map_err(|e| DataDirError::io(Path::new("tmp"), e))?;
        let first = DataDirLock::try_acquire(dir.path())?;
        assert!(first.is_some());
        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process would.
        assert!(DataDirLock::try_acquire(dir.path())?.is_none());
        drop(first);
        assert!(DataDirLock::try_acquire(dir.path())?.is_some());
        Ok(())
    }
}
