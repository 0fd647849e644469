//! The gRPC face of the [`Snapshotter`]: containerd's
//! `containerd.services.snapshots.v1.Snapshots`, each call run on a blocking thread
//! (the snapshotter touches the disk, and a lazy Prepare talks to a registry).

use crate::api::snapshots::{self as pb, snapshots_server::Snapshots};
use crate::api::types;
use crate::error::SnapshotError;
use crate::overlay::Mount;
use crate::snapshotter::Snapshotter;
use crate::store::{Kind, Snapshot};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Snapshots service over one snapshotter.
pub struct SnapshotService {
    inner: Arc<Snapshotter>,
}

impl SnapshotService {
    /// Serves `snapshotter`.
    pub fn new(snapshotter: Arc<Snapshotter>) -> SnapshotService {
        SnapshotService { inner: snapshotter }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> pb::snapshots_server::SnapshotsServer<SnapshotService> {
        pb::snapshots_server::SnapshotsServer::new(self)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshotter) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, Status> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r.map_err(|e| {
                tracing::debug!("snapshot call failed: {e}");
                Status::from(e)
            }),
            Err(e) => Err(Status::internal(format!("snapshot call panicked: {e}"))),
        }
    }
}

fn parent(p: String) -> Option<String> {
    (!p.is_empty()).then_some(p)
}

fn labels(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn to_pb(mounts: Vec<Mount>) -> Vec<types::Mount> {
    mounts
        .into_iter()
        .map(|m| types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn info(name: String, s: Snapshot) -> pb::Info {
    pb::Info {
        name,
        parent: s.parent.unwrap_or_default(),
        kind: match s.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(s.created.into()),
        updated_at: Some(s.updated.into()),
        labels: s.labels.into_iter().collect(),
    }
}

type ListStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

/// How many snapshots one List message carries.
const LIST_BATCH: usize = 100;

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        let mounts = self
            .run(move |s| s.prepare(&r.key, parent(r.parent).as_deref(), labels(r.labels)))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: to_pb(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, "view");
        let mounts = self
            .run(move |s| s.view(&r.key, parent(r.parent).as_deref(), labels(r.labels)))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: to_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = req.into_inner().key;
        let mounts = self.run(move |s| s.mounts(&key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: to_pb(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, name = %r.name, "commit");
        self.run(move |s| s.commit(&r.name, &r.key, labels(r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        tracing::debug!(%key, "remove");
        self.run(move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        let found = self
            .run(move |s| s.stat(&key).map(|snap| (key, snap)))
            .await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info(found.0, found.1)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without snapshot info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let key = i.name.clone();
        let updated = self
            .run(move |s| s.update(&i.name, labels(i.labels), &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info(key, updated)),
        }))
    }

    type ListStream = ListStream;

    /// Every snapshot; filters are not applied (containerd's callers check what they
    /// get back against their filter, as the metadata store's remote lookup does).
    async fn list(
        &self,
        _req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let all = self.run(|s| s.list()).await?;
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        for (k, s) in all {
            batch.push(info(k, s));
            if batch.len() == LIST_BATCH {
                batches.push(Ok(pb::ListSnapshotsResponse {
                    info: std::mem::take(&mut batch),
                }));
            }
        }
        if !batch.is_empty() {
            batches.push(Ok(pb::ListSnapshotsResponse { info: batch }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = req.into_inner().key;
        let u = self.run(move |s| s.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
