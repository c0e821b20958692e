//! Durable state: one SQLite file in the data dir holds every sandbox the runner is responsible for.
//!
//! The in-memory map in [`crate::runner`] is a cache of this table; on start the runner reads the
//! table back and reconciles it with what the isolation driver finds on the host, so a runner killed
//! with SIGKILL neither forgets nor leaks a sandbox.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use vivarium_api::Run;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("opening state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("corrupt record for sandbox {id}: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
}

/// What the runner keeps about a sandbox beyond its API view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub run: Run,
    /// Host path of the guest agent's Unix socket.
    pub agent_socket: PathBuf,
    /// Host pid of the sandbox's init (the agent), once it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<u32>,
    /// A `failed` sandbox's host objects are gone (only this record and its log are left).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleaned: bool,
}

pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path).map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                expires_at_ms INTEGER NOT NULL,
                record TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS settings (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL
            );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each statement is atomic),
        // so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn upsert(&self, rec: &RunRecord) -> Result<(), DbError> {
        let json = serde_json::to_string(rec).map_err(|source| DbError::Corrupt {
            id: rec.run.id.clone(),
            source,
        })?;
        let state = serde_json::to_value(rec.run.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.conn().execute(
            "INSERT INTO runs (id, state, expires_at_ms, record) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = ?2, expires_at_ms = ?3, record = ?4",
            params![
                rec.run.id,
                state,
                rec.run.expires_at.timestamp_millis(),
                json
            ],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<(), DbError> {
        self.conn()
            .execute("DELETE FROM runs WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn all(&self) -> Result<Vec<RunRecord>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, record FROM runs ORDER BY id")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row?;
            out.push(
                serde_json::from_str(&json).map_err(|source| DbError::Corrupt { id, source })?,
            );
        }
        Ok(out)
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError> {
        self.conn().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, value],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use vivarium_api::{NetworkMode, RunState};

    fn record(id: &str) -> RunRecord {
        RunRecord {
            run: Run {
                id: id.into(),
                state: RunState::Running,
                image: "busybox:1".into(),
                image_digest: "sha256:00".into(),
                vcpus: 1.0,
                mem_mib: 64,
                disk_mib: None,
                network: NetworkMode::Nat,
                network_policy: Default::default(),
                ip: None,
                env: Default::default(),
                metadata: [("team".to_string(), "a".to_string())].into(),
                created_at: Utc::now(),
                expires_at: Utc::now(),
                oom_kills: 0,
                access_token: "t".into(),
                desktop: None,
                cdp_url: None,
                vnc_url: None,
                failure: None,
                on_failure: Default::default(),
            },
            agent_socket: "/x/agent.sock".into(),
            init_pid: None,
            cleaned: false,
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = Db::open(&path).unwrap();
            db.upsert(&record("a1")).unwrap();
            db.upsert(&record("b2")).unwrap();
            let mut r = record("a1");
            r.run.state = RunState::Deleting;
            db.upsert(&r).unwrap();
            db.delete("b2").unwrap();
            db.set_setting("k", "v").unwrap();
        }
        let db = Db::open(&path).unwrap();
        let all = db.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].run.state, RunState::Deleting);
        assert_eq!(db.setting("k").unwrap().as_deref(), Some("v"));
        assert_eq!(db.setting("missing").unwrap(), None);
    }
}
