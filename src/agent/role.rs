//! Role publication to the workload: an atomically written role file, an optional HTTP callback,
//! and (for tests and audits) a transition log of JSON lines.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::clock;
use super::raft::data_dir::write_atomically;
use crate::api::MemberRole;

/// The role file's JSON and the callback's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub role: String,
    pub epoch: u64,
    /// RFC 3339.
    pub since: String,
    pub member: String,
}

/// Parses role-file content (the testapp reads it; arbitrary bytes must not panic).
pub fn parse_role_record(data: &[u8]) -> Result<RoleRecord, String> {
    let r: RoleRecord = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    match r.role.as_str() {
        "Primary" | "Backup" | "Active" | "Witness" | "Unknown" => Ok(r),
        other => Err(format!("unknown role {other:?}")),
    }
}

#[derive(Clone, Debug)]
pub struct PublisherConfig {
    pub member: String,
    pub role_file: Option<PathBuf>,
    /// `http://127.0.0.1:8080/quorate/role`
    pub callback: Option<hyper::Uri>,
    pub callback_timeout: Duration,
    pub callback_retries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    File(#[from] super::raft::DataDirError),
    #[error("encoding the role record: {0}")]
    Encode(String),
}

/// Writes the role file and calls the workload back. Publications are serialized.
pub struct RolePublisher {
    config: PublisherConfig,
    generation: Arc<AtomicU64>,
    lock: tokio::sync::Mutex<Option<RoleRecord>>,
}

impl RolePublisher {
    pub fn new(config: PublisherConfig) -> Self {
        Self {
            config,
            generation: Arc::new(AtomicU64::new(0)),
            lock: tokio::sync::Mutex::new(None),
        }
    }

    /// The last published record.
    pub async fn current(&self) -> Option<RoleRecord> {
        self.lock.lock().await.clone()
    }

    /// Publishes `role`: the file first (durably), then the callback. Returns once the workload
    /// confirmed the callback or `callback_timeout` passed, whichever is first; retries go on in
    /// the background until a newer publication supersedes them.
    pub async fn publish(&self, role: MemberRole, epoch: u64) -> Result<RoleRecord, PublishError> {
        let mut current = self.lock.lock().await;
        if let Some(c) = current.as_ref()
            && c.role == role.as_str()
            && c.epoch == epoch
        {
            return Ok(c.clone());
        }
        let record = RoleRecord {
            role: role.as_str().to_string(),
            epoch,
            since: clock::rfc3339(clock::unix_millis()),
            member: self.config.member.clone(),
        };
        let body = serde_json::to_vec(&record).map_err(|e| PublishError::Encode(e.to_string()))?;
        if let Some(path) = &self.config.role_file {
            let path = path.clone();
            let bytes = body.clone();
            tokio::task::spawn_blocking(move || write_role_file(&path, &bytes))
                .await
                .map_err(|e| PublishError::Encode(e.to_string()))??;
        }
        *current = Some(record.clone());
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        drop(current);
        if let Some(uri) = self.config.callback.clone() {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(call_back(
                uri,
                body,
                self.config.callback_timeout,
                self.config.callback_retries,
                generation,
                self.generation.clone(),
                done_tx,
            ));
            // Never wait longer than the timeout: a workload that does not answer must not
            // hold up a demotion.
            let _ = tokio::time::timeout(self.config.callback_timeout, done_rx).await;
        }
        Ok(record)
    }
}

fn write_role_file(path: &Path, bytes: &[u8]) -> Result<(), super::raft::DataDirError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| super::raft::DataDirError::io(dir, e))?;
    }
    write_atomically(path, bytes)
}

async fn call_back(
    uri: hyper::Uri,
    body: Vec<u8>,
    timeout: Duration,
    retries: u32,
    generation: u64,
    latest: Arc<AtomicU64>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut done = Some(done);
    for attempt in 0..=retries {
        if latest.load(Ordering::SeqCst) != generation {
            return;
        }
        let request = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body.clone())));
        let Ok(request) = request else {
            tracing::warn!(%uri, "cannot build the role callback request");
            return;
        };
        match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                if let Some(d) = done.take() {
                    let _ = d.send(());
                }
                return;
            }
            Ok(Ok(resp)) => {
                tracing::warn!(%uri, status = %resp.status(), attempt, "role callback refused");
            }
            Ok(Err(e)) => tracing::warn!(%uri, error = %e, attempt, "role callback failed"),
            Err(_) => tracing::warn!(%uri, ?timeout, attempt, "role callback timed out"),
        }
        tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(5))).await;
    }
}

/// One line of the transition log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionLine {
    pub member: String,
    pub node_id: u64,
    /// `promote`, `renew`, `demote`, `start`.
    pub event: String,
    pub epoch: u64,
    /// CLOCK_MONOTONIC ms when the event happened.
    pub mono_ms: u64,
    pub wall_ms: i64,
    /// End of the lease held after (promote/renew) or until (demote) this event.
    pub lease_until_mono_ms: u64,
    pub cause: Option<String>,
}

/// Appends transition lines (no fsync: the lines only need to survive process death, which the
/// page cache ensures).
pub struct TransitionLog {
    file: std::sync::Mutex<File>,
    path: PathBuf,
}

impl TransitionLog {
    pub fn open(path: &Path) -> Result<Self, super::raft::DataDirError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| super::raft::DataDirError::io(path, e))?;
        Ok(Self {
            file: std::sync::Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    pub fn record(&self, line: &TransitionLine) {
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(text.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "writing the transition log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_role_file_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_role_record(&data);
        }
    }

    #[test]
    fn role_record_round_trip_and_validation() {
        let r = RoleRecord {
            role: "Primary".into(),
            epoch: 3,
            since: "2026-01-01T00:00:00Z".into(),
            member: "cache-1".into(),
        };
        let bytes = serde_json::to_vec(&r).unwrap_or_default();
        assert_eq!(parse_role_record(&bytes), Ok(r));
        assert!(parse_role_record(br#"{"role":"King","epoch":1,"since":"","member":""}"#).is_err());
    }

    #[tokio::test]
    async fn file_is_written_and_a_silent_callback_does_not_block_beyond_the_timeout()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        // A server that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let _hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let path = dir.path().join("run/role");
        let publisher = RolePublisher::new(PublisherConfig {
            member: "cache-0".into(),
            role_file: Some(path.clone()),
            callback: Some(format!("http://127.0.0.1:{port}/quorate/role").parse()?),
            callback_timeout: Duration::from_millis(200),
            callback_retries: 3,
        });
        let start = std::time::Instant::now();
        publisher.publish(MemberRole::Backup, 4).await?;
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        let record = parse_role_record(&std::fs::read(&path)?)?;
        assert_eq!(record.role, "Backup");
        assert_eq!(record.epoch, 4);
        assert_eq!(record.member, "cache-0");
        Ok(())
    }
}
