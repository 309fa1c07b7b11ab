//! The Raft log and vote: one append-only file of framed records, fsynced before acknowledging.
//!
//! Why a plain file rather than an embedded database: the group log is tiny and written rarely
//! (appointments, membership, pauses), so the cost that matters is the commit latency, which is
//! one `fdatasync` of an append. A dedicated writer thread batches concurrent appends into one
//! sync (group commit) and keeps fsync latency off the async runtime. The whole log is kept in
//! memory; after a purge the file is rewritten (temp, fsync, rename, fsync dir) once it grew
//! past a threshold, so it stays small.
//!
//! Recovery: records are replayed in order. A cut-short or checksum-failing *last* record is a
//! write torn by a crash (never acknowledged, because the sync after it never finished) and is
//! dropped; a bad record followed by more data means corruption, and the agent refuses to start.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogId, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};

use super::codec::{FrameError, decode_frames, encode_frame};
use super::data_dir::{DataDirError, LOG_FILE, open_append, sync_dir};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Rewrite the file after a purge once it is larger than this.
const COMPACT_ABOVE_BYTES: u64 = 1024 * 1024;

/// One persisted record. Replaying all records in order rebuilds the log state.
#[derive(Debug, Serialize, Deserialize)]
pub enum LogRecord {
    Vote(Vote),
    Entries(Vec<Entry>),
    /// Drop entries at and after this index.
    TruncateFrom(u64),
    /// Drop entries up to and including this id.
    PurgeUpTo(LogId),
    Committed(Option<LogId>),
}

#[derive(Debug, Default, Clone)]
pub struct LogContents {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub last_purged: Option<LogId>,
    pub entries: BTreeMap<u64, Entry>,
}

impl LogContents {
    fn apply(&mut self, record: LogRecord) -> Result<(), String> {
        match record {
            LogRecord::Vote(v) => self.vote = Some(v),
            LogRecord::Entries(entries) => {
                for e in entries {
                    let index = e.get_log_id().index;
                    let expected = self.next_index();
                    // The first entry after a snapshot or in an empty log may start anywhere.
                    if !self.entries.is_empty() && index > expected {
                        return Err(format!("log entry {index} leaves a hole after {expected}"));
                    }
                    // Overwriting is what Raft does after a conflict.
                    self.entries.split_off(&index);
                    self.entries.insert(index, e);
                }
            }
            LogRecord::TruncateFrom(index) => {
                self.entries.split_off(&index);
            }
            LogRecord::PurgeUpTo(id) => {
                let keep = self.entries.split_off(&(id.index + 1));
                self.entries = keep;
                if self.last_purged.is_none_or(|p| p < id) {
                    self.last_purged = Some(id);
                }
            }
            LogRecord::Committed(c) => self.committed = c,
        }
        Ok(())
    }

    fn next_index(&self) -> u64 {
        match self.entries.last_key_value() {
            Some((i, _)) => i + 1,
            None => self.last_purged.map_or(0, |p| p.index + 1),
        }
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, e)| *e.get_log_id())
            .or(self.last_purged)
    }

    /// The records that rebuild exactly this state (for compaction).
    fn as_records(&self) -> Vec<LogRecord> {
        let mut out = Vec::new();
        if let Some(v) = self.vote {
            out.push(LogRecord::Vote(v));
        }
        if let Some(p) = self.last_purged {
            out.push(LogRecord::PurgeUpTo(p));
        }
        if !self.entries.is_empty() {
            out.push(LogRecord::Entries(self.entries.values().cloned().collect()));
        }
        out.push(LogRecord::Committed(self.committed));
        out
    }
}

/// Decodes the log file's bytes. `Ok((contents, valid_len))`: `valid_len < data.len()` means a
/// torn tail to cut off.
pub fn decode_log(data: &[u8]) -> Result<(LogContents, usize), String> {
    let (frames, error) = decode_frames(data);
    let mut contents = LogContents::default();
    let mut offset = 0usize;
    for frame in frames {
        let record: LogRecord =
            serde_json::from_slice(frame).map_err(|e| format!("record at byte {offset}: {e}"))?;
        contents
            .apply(record)
            .map_err(|e| format!("record at byte {offset}: {e}"))?;
        offset += super::codec::HEADER_BYTES + frame.len();
    }
    match error {
        None => Ok((contents, data.len())),
        Some(FrameError::Truncated { offset }) => Ok((contents, offset)),
        Some(FrameError::Corrupt { offset, reason }) => {
            // The last frame of the file is a torn write; anything before it is corruption.
            let torn_last = data
                .get(offset..offset + 4)
                .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
                .is_some_and(|len| offset + super::codec::HEADER_BYTES + len == data.len());
            if torn_last {
                Ok((contents, offset))
            } else {
                Err(format!("record at byte {offset}: {reason}"))
            }
        }
    }
}

fn encode(records: &[LogRecord]) -> Result<Vec<u8>, io::Error> {
    let mut out = Vec::new();
    for r in records {
        let payload = serde_json::to_vec(r).map_err(io::Error::other)?;
        encode_frame(&payload, &mut out);
    }
    Ok(out)
}

enum WriteOp {
    /// Write; acknowledge through openraft's callback once synced.
    Append {
        bytes: Vec<u8>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// Write, sync, then reply.
    Durable {
        bytes: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
    /// Write without waiting for a sync (ordering is kept; the next sync covers it).
    Lazy { bytes: Vec<u8> },
    /// Replace the whole file with `bytes`.
    Rewrite {
        bytes: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
}

enum Pending {
    Flushed(LogFlushed<TypeConfig>),
    Reply(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// Owns the file; applies writes in order and syncs once per batch.
fn writer_thread(path: PathBuf, mut file: File, size: Arc<AtomicU64>, rx: mpsc::Receiver<WriteOp>) {
    let mut failed: Option<io::ErrorKind> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut pending = Vec::new();
        let mut need_sync = false;
        for op in batch {
            let result = match failed {
                Some(kind) => Err(io::Error::new(
                    kind,
                    "an earlier write to the Raft log failed",
                )),
                None => Ok(()),
            };
            match op {
                WriteOp::Append { bytes, flushed } => {
                    let r = result.and_then(|_| file.write_all(&bytes));
                    size.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    need_sync = true;
                    match r {
                        Ok(()) => pending.push(Pending::Flushed(flushed)),
                        Err(e) => {
                            failed = Some(e.kind());
                            flushed.log_io_completed(Err(e));
                        }
                    }
                }
                WriteOp::Durable { bytes, reply } => {
                    let r = result.and_then(|_| file.write_all(&bytes));
                    size.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    need_sync = true;
                    match r {
                        Ok(()) => pending.push(Pending::Reply(reply)),
                        Err(e) => {
                            failed = Some(e.kind());
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                WriteOp::Lazy { bytes } => {
                    if let Err(e) = result.and_then(|_| file.write_all(&bytes)) {
                        failed = Some(e.kind());
                    }
                    size.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                WriteOp::Rewrite { bytes, reply } => {
                    // Sync what is pending on the old file first so earlier acknowledgements hold.
                    let r = result
                        .and_then(|_| file.sync_data())
                        .and_then(|_| rewrite(&path, &bytes));
                    match r {
                        Ok(new_file) => {
                            file = new_file;
                            size.store(bytes.len() as u64, Ordering::Relaxed);
                            let _ = reply.send(Ok(()));
                        }
                        Err(e) => {
                            failed = Some(e.kind());
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        }
        if need_sync {
            let synced = match failed {
                Some(kind) => Err(io::Error::new(
                    kind,
                    "an earlier write to the Raft log failed",
                )),
                None => file.sync_data(),
            };
            if let Err(e) = &synced {
                failed = Some(e.kind());
                tracing::error!(path = %path.display(), error = %e, "syncing the Raft log failed");
            }
            for p in pending {
                let r = match &synced {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                match p {
                    Pending::Flushed(f) => f.log_io_completed(r),
                    Pending::Reply(tx) => {
                        let _ = tx.send(r);
                    }
                }
            }
        }
    }
}

fn rewrite(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{LOG_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(dir).map_err(io::Error::other)?;
    fs::OpenOptions::new().append(true).open(path)
}

struct Shared {
    contents: Mutex<LogContents>,
    writer: Mutex<mpsc::Sender<WriteOp>>,
    size: Arc<AtomicU64>,
    path: PathBuf,
}

impl Shared {
    fn contents(&self) -> MutexGuard<'_, LogContents> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing the process, so poisoned locks are simply taken over.
        self.contents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        let tx = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(op)
            .map_err(|_| io::Error::other(format!("{}: log writer stopped", self.path.display())))
    }

    async fn durable(&self, records: &[LogRecord]) -> io::Result<()> {
        let bytes = encode(records)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Durable { bytes, reply })?;
        rx.await
            .map_err(|_| io::Error::other("log writer stopped"))?
    }
}

/// The log store handed to openraft. Cheap to clone (readers share the in-memory log).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// A restarted node that led before must not start as leader (openraft restores a committed
    /// vote for itself as leadership at once). Its coordinator state is gone and its peers may
    /// not reach its new address for a while, yet its heartbeats would keep them from electing
    /// another coordinator: the primary's lease then runs out unrenewed. As a follower with the
    /// same (uncommitted) vote it still votes for nobody else in that term, so this is safe; it
    /// campaigns like any member. Only the in-memory copy changes; the next vote saved replaces it.
    pub fn forget_restored_leadership(&self, own_id: u64) -> bool {
        let mut contents = self.shared.contents();
        match &mut contents.vote {
            Some(v) if v.committed && v.leader_id.node_id == own_id => {
                v.committed = false;
                true
            }
            _ => false,
        }
    }

    /// Opens (or creates) `raft-log` in `dir`, replaying it.
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        let path = dir.join(LOG_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(DataDirError::io(&path, e)),
        };
        let (contents, valid_len) =
            decode_log(&data).map_err(|reason| DataDirError::corrupt(&path, reason))?;
        if valid_len < data.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = data.len() - valid_len,
                "dropping a torn record at the end of the Raft log (an unacknowledged write cut short by a crash)"
            );
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| DataDirError::io(&path, e))?;
            f.set_len(valid_len as u64)
                .map_err(|e| DataDirError::io(&path, e))?;
            f.sync_all().map_err(|e| DataDirError::io(&path, e))?;
        }
        let file = open_append(&path)?;
        let size = Arc::new(AtomicU64::new(valid_len as u64));
        let (tx, rx) = mpsc::channel();
        let thread_path = path.clone();
        let thread_size = size.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_thread(thread_path, file, thread_size, rx))
            .map_err(|e| DataDirError::io(&path, e))?;
        Ok(Self {
            shared: Arc::new(Shared {
                contents: Mutex::new(contents),
                writer: Mutex::new(tx),
                size,
                path,
            }),
        })
    }

    /// A copy of the in-memory log (tests, diagnostics).
    pub fn contents(&self) -> LogContents {
        self.shared.contents().clone()
    }

    /// The id of the last entry in the log (or of the last purged one).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.shared.contents().last_log_id()
    }
}

fn log_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let c = self.shared.contents();
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
            (start, end)
            && s > e
        {
            return Ok(Vec::new());
        }
        Ok(c.entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let c = self.shared.contents();
        Ok(LogState {
            last_purged_log_id: c.last_purged,
            last_log_id: c.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.shared.contents().vote = Some(*vote);
        self.shared
            .durable(&[LogRecord::Vote(*vote)])
            .await
            .map_err(|e| {
                StorageError::from(StorageIOError::write_vote(openraft::AnyError::error(
                    e.to_string(),
                )))
            })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.contents().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.shared.contents().committed = committed;
        let bytes = encode(&[LogRecord::Committed(committed)]).map_err(log_err)?;
        self.shared.send(WriteOp::Lazy { bytes }).map_err(log_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.contents().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let record = LogRecord::Entries(entries);
        let bytes = encode(std::slice::from_ref(&record)).map_err(log_err)?;
        {
            let mut c = self.shared.contents();
            c.apply(record).map_err(log_err)?;
        }
        // Readable now; durable when the callback fires.
        self.shared
            .send(WriteOp::Append {
                bytes,
                flushed: callback,
            })
            .map_err(log_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let record = LogRecord::TruncateFrom(log_id.index);
        self.shared.contents().entries.split_off(&log_id.index);
        self.shared.durable(&[record]).await.map_err(log_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let snapshot = {
            let mut c = self.shared.contents();
            c.apply(LogRecord::PurgeUpTo(log_id)).map_err(log_err)?;
            c.clone()
        };
        if self.shared.size.load(Ordering::Relaxed) > COMPACT_ABOVE_BYTES {
            let bytes = encode(&snapshot.as_records()).map_err(log_err)?;
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.shared
                .send(WriteOp::Rewrite { bytes, reply })
                .map_err(log_err)?;
            rx.await
                .map_err(|_| log_err("log writer stopped"))?
                .map_err(log_err)
        } else {
            let bytes = encode(&[LogRecord::PurgeUpTo(log_id)]).map_err(log_err)?;
            self.shared.send(WriteOp::Lazy { bytes }).map_err(log_err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};
    use proptest::prelude::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn frames(records: &[LogRecord]) -> Vec<u8> {
        match encode(records) {
            Ok(b) => b,
            Err(e) => panic!("encode: {e}"),
        }
    }

    #[test]
    fn replay_rebuilds_state() -> Result<(), String> {
        let data = frames(&[
            LogRecord::Vote(Vote::new(3, 1)),
            LogRecord::Entries(vec![entry(1, 0), entry(1, 1), entry(1, 2)]),
            LogRecord::TruncateFrom(2),
            LogRecord::Entries(vec![entry(2, 2), entry(2, 3)]),
            LogRecord::PurgeUpTo(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            LogRecord::Committed(Some(LogId::new(CommittedLeaderId::new(2, 1), 3))),
        ]);
        let (c, len) = decode_log(&data)?;
        assert_eq!(len, data.len());
        assert_eq!(c.vote, Some(Vote::new(3, 1)));
        assert_eq!(c.entries.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(c.entries.get(&2).map(|e| e.log_id.leader_id.term), Some(2));
        assert_eq!(c.last_purged.map(|p| p.index), Some(1));
        assert_eq!(c.committed.map(|p| p.index), Some(3));
        Ok(())
    }

    #[test]
    fn torn_tail_is_dropped_but_inner_corruption_is_refused() -> Result<(), String> {
        let good = frames(&[LogRecord::Entries(vec![entry(1, 0)])]);
        let second = frames(&[LogRecord::Entries(vec![entry(1, 1)])]);
        let mut torn = good.clone();
        torn.extend_from_slice(&second[..second.len() - 3]);
        let (c, len) = decode_log(&torn)?;
        assert_eq!(len, good.len());
        assert_eq!(c.entries.len(), 1);

        let mut bad_last = good.clone();
        let mut s = second.clone();
        let last = s.len() - 1;
        s[last] ^= 0xff;
        bad_last.extend_from_slice(&s);
        let (_, len) = decode_log(&bad_last)?;
        assert_eq!(
            len,
            good.len(),
            "a checksum failure in the last record is a torn write"
        );

        let mut inner = good.clone();
        inner[10] ^= 0xff;
        inner.extend_from_slice(&second);
        assert!(decode_log(&inner).is_err());
        Ok(())
    }

    #[test]
    fn holes_are_corruption() {
        let data = frames(&[
            LogRecord::Entries(vec![entry(1, 0)]),
            LogRecord::Entries(vec![entry(1, 5)]),
        ]);
        assert!(decode_log(&data).is_err());
    }

    #[tokio::test]
    async fn vote_and_entries_survive_reopen_and_corruption_is_named()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let mut store = LogStore::open(dir.path())?;
            store.save_vote(&Vote::new(4, 2)).await?;
        }
        let mut store = LogStore::open(dir.path())?;
        assert_eq!(store.read_vote().await?, Some(Vote::new(4, 2)));
        let path = dir.path().join(LOG_FILE);
        let mut data = fs::read(&path)?;
        data.extend_from_slice(&frames(&[LogRecord::Vote(Vote::new(5, 2))]));
        data[9] ^= 0x55;
        fs::write(&path, &data)?;
        let err = LogStore::open(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("raft-log") && err.contains("corrupt"), "{err}");
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_log_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_log(&data);
        }

        #[test]
        fn arbitrary_json_in_valid_frames_never_panics(text in ".{0,200}") {
            let mut buf = Vec::new();
            encode_frame(text.as_bytes(), &mut buf);
            let _ = decode_log(&buf);
        }
    }

    #[test]
    fn a_restarted_leader_does_not_start_as_leader() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        rt.block_on(async {
            let mut store = LogStore::open(dir.path())?;
            store.save_vote(&Vote::new_committed(4, 2)).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
        let mut store = LogStore::open(dir.path())?;
        // Another node's leadership is kept as it is.
        assert!(!store.forget_restored_leadership(3));
        assert!(store.forget_restored_leadership(2));
        let vote = rt.block_on(store.read_vote())?;
        assert_eq!(vote, Some(Vote::new(4, 2)));
        Ok(())
    }
}
