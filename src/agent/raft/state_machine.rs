//! The Raft state machine: applies [`GroupCommand`]s to the [`ReplicatedState`] in memory and
//! persists it as a snapshot (written atomically). On restart the snapshot is loaded and openraft
//! re-applies the committed log after it.

use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::codec::{decode_single_frame, encode_frame};
use super::data_dir::{DataDirError, SNAPSHOT_FILE, write_atomically};
use super::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::agent::group::{CommandOutcome, ReplicatedState, Roster, RosterEntry};

/// What the rest of the agent sees of the applied state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedState {
    pub state: ReplicatedState,
    pub roster: Roster,
    /// Index of the last applied entry (0 = nothing applied).
    pub applied_index: u64,
    /// Term of the leader that created the last applied entry.
    pub applied_term: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub state: ReplicatedState,
}

/// Decodes a snapshot file's bytes.
pub fn decode_snapshot_file(data: &[u8]) -> Result<SnapshotFile, String> {
    let payload = decode_single_frame(data)?;
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

fn encode_snapshot_file(file: &SnapshotFile) -> Result<Vec<u8>, io::Error> {
    let payload = serde_json::to_vec(file).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    encode_frame(&payload, &mut out);
    Ok(out)
}

pub fn roster_of(membership: &StoredMembership) -> Roster {
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    Roster {
        members: membership
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    RosterEntry {
                        node: node.clone(),
                        voter: voters.contains(id),
                    },
                )
            })
            .collect(),
    }
}

#[derive(Clone, Debug)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

fn snapshot_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

pub struct StateMachineStore {
    path: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ReplicatedState,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    snapshot_counter: u64,
    published: watch::Sender<AppliedState>,
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, loading its snapshot if there is one.
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut sm = Self {
            path: path.clone(),
            last_applied: None,
            membership: StoredMembership::default(),
            state: ReplicatedState::default(),
            current: Arc::new(Mutex::new(None)),
            snapshot_counter: 0,
            published: watch::Sender::new(AppliedState::default()),
        };
        match fs::read(&path) {
            Ok(data) => {
                let file =
                    decode_snapshot_file(&data).map_err(|r| DataDirError::corrupt(&path, r))?;
                let state_bytes = serde_json::to_vec(&file.state)
                    .map_err(|e| DataDirError::corrupt(&path, e.to_string()))?;
                sm.last_applied = file.meta.last_log_id;
                sm.membership = file.meta.last_membership.clone();
                sm.state = file.state;
                *sm.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(CurrentSnapshot {
                    meta: file.meta,
                    data: state_bytes,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataDirError::io(&path, e)),
        }
        sm.publish();
        Ok(sm)
    }

    /// Follows every change of the applied state.
    pub fn subscribe(&self) -> watch::Receiver<AppliedState> {
        self.published.subscribe()
    }

    fn publish(&self) {
        let applied = AppliedState {
            state: self.state.clone(),
            roster: roster_of(&self.membership),
            applied_index: self.last_applied.map_or(0, |l| l.index),
            applied_term: self.last_applied.map_or(0, |l| l.leader_id.term),
        };
        self.published.send_replace(applied);
    }
}

pub struct SnapshotBuilder {
    path: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ReplicatedState,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    snapshot_id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            state: self.state.clone(),
        };
        let bytes = encode_snapshot_file(&file).map_err(snapshot_err)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        let data = serde_json::to_vec(&self.state).map_err(snapshot_err)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(CurrentSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(CommandOutcome::Applied),
                EntryPayload::Normal(command) => out.push(self.state.apply(&command)),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(CommandOutcome::Applied);
                }
            }
        }
        self.publish();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_counter += 1;
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_counter),
            None => format!("0-0-{}", self.snapshot_counter),
        };
        SnapshotBuilder {
            path: self.path.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: self.state.clone(),
            current: self.current.clone(),
            snapshot_id: id,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: ReplicatedState = serde_json::from_slice(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                openraft::AnyError::error(format!("received snapshot is malformed: {e}")),
            ))
        })?;
        let file = SnapshotFile {
            meta: meta.clone(),
            state: state.clone(),
        };
        let bytes = encode_snapshot_file(&file).map_err(snapshot_err)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state = state;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(CurrentSnapshot {
            meta: meta.clone(),
            data,
        });
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(current.map(|c| Snapshot {
            meta: c.meta,
            snapshot: Box::new(Cursor::new(c.data)),
        }))
    }
}

impl StateMachineStore {
    /// The state applied so far.
    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_snapshot_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_snapshot_file(&data);
        }
    }

    #[tokio::test]
    async fn snapshot_survives_reopen_and_corruption_is_named()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let mut sm = StateMachineStore::open(dir.path())?;
            sm.state.touches = 7;
            let mut b = sm.get_snapshot_builder().await;
            b.build_snapshot().await?;
        }
        let sm = StateMachineStore::open(dir.path())?;
        assert_eq!(sm.state().touches, 7);
        assert_eq!(sm.subscribe().borrow().state.touches, 7);
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut data = fs::read(&path)?;
        let n = data.len() - 2;
        data[n] ^= 0x20;
        fs::write(&path, &data)?;
        let err = StateMachineStore::open(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("snapshot") && err.contains("corrupt"), "{err}");
        Ok(())
    }
}
