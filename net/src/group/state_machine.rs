//! The replicated state: the tracker's records, applied in log order to a
//! member's record store, each entry in one durable write together with a
//! note of the last applied entry and the group's membership.
//!
//! A snapshot is the store's records at the note: built on demand (the
//! state itself is the snapshot, so nothing is kept twice) and, installed,
//! it replaces the records and the note in one write.

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};

use super::{GroupConfig, decode, encode};
use crate::meta::{AppliedStore, MetaError, decode_records, encode_records};

type C = GroupConfig;

/// Where the log was applied to, and the membership then in force.
type Note = (Option<LogIdOf<C>>, StoredMembershipOf<C>);

fn io_err(e: MetaError) -> io::Error {
    io::Error::other(e.to_string())
}

/// A member's state machine over its record store `M`.
#[derive(Clone)]
pub struct StateMachine<M> {
    store: M,
    /// Applies, installs and snapshots one at a time.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<M: AppliedStore> StateMachine<M> {
    pub fn new(store: M) -> Self {
        Self {
            store,
            lock: Arc::default(),
        }
    }

    /// The record store (the tracker that leads restores from it).
    pub fn store(&self) -> &M {
        &self.store
    }

    async fn note(&self) -> io::Result<Note> {
        match self.store.applied().await.map_err(io_err)? {
            Some(bytes) => decode(&bytes),
            None => Ok((None, StoredMembership::default())),
        }
    }

    async fn current(&self) -> io::Result<SnapshotOf<C, Vec<u8>>> {
        let (records, note) = self.store.snapshot().await.map_err(io_err)?;
        let (last_log_id, last_membership): Note = match note {
            Some(bytes) => decode(&bytes)?,
            None => (None, StoredMembership::default()),
        };
        Ok(openraft::Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: encode_records(&records),
        })
    }
}

impl<M: AppliedStore> RaftSnapshotBuilder<C> for StateMachine<M> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<C, Vec<u8>>> {
        let _one = self.lock.lock().await;
        self.current().await
    }
}

impl<M: AppliedStore> RaftStateMachine<C> for StateMachine<M> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<Note> {
        self.note().await
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<C>>> + Unpin + OptionalSend,
    {
        let _one = self.lock.lock().await;
        let (_, mut membership) = self.note().await?;
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id;
            let records = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => batch
                    .records()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(log_id), m);
                    Vec::new()
                }
            };
            let note: Note = (Some(log_id), membership.clone());
            self.store
                .apply(records, encode(&note)?)
                .await
                .map_err(io_err)?;
            if let Some(r) = responder {
                r.send(());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Vec<u8>,
    ) -> io::Result<()> {
        let _one = self.lock.lock().await;
        let records =
            decode_records(&snapshot).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let note: Note = (meta.last_log_id, meta.last_membership.clone());
        self.store
            .replace(records, encode(&note)?)
            .await
            .map_err(io_err)
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<C, Vec<u8>>>> {
        let _one = self.lock.lock().await;
        if self.store.applied().await.map_err(io_err)?.is_none() {
            return Ok(None);
        }
        self.current().await.map(Some)
    }
}
