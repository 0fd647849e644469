//! Picking up the mounts of the daemon before this one (stopped by `SIGTERM`, or
//! killed): each [`MountRecord`] with its connection back from the keeper is served
//! again over the same image; a record whose connection is gone is detached, a
//! connection without a record is let go. The views of containerd snapshot chains
//! are records too, picked up by the snapshotter side ([`resume_views`]). The shared
//! views of `skiff run` containers are served again first, then the containers'
//! roots over them (kernel mounts, with no connection of their own) are counted on
//! them again.

use super::persist::{MountRecord, SharedRole};
use super::protocol::ImageSource;
use super::state::{lock, DaemonState, ImageEntry, MountEntry, Served};
use anyhow::Context;
use std::collections::HashMap;
use std::os::fd::OwnedFd;

/// `source` pinned to the manifest `image` was built from, so a successor mounts
/// the very same tree (same inode numbers) even if the tag has moved since.
pub fn pinned(source: &ImageSource, image: &ImageEntry) -> ImageSource {
    match (source, &image.manifest) {
        (
            ImageSource::Registry {
                image: reference,
                platform,
                insecure_registries,
                ..
            },
            Some(digest),
        ) => match skiff_proto::reference::Reference::parse(reference) {
            Ok(r) => ImageSource::Registry {
                image: r.with_digest(*digest).to_string(),
                pull: crate::cmd::lazy::PullPolicy::Missing,
                platform: platform.clone(),
                insecure_registries: insecure_registries.clone(),
            },
            Err(_) => source.clone(),
        },
        _ => source.clone(),
    }
}

/// Whether `record` is a container's root over a shared view (no connection).
fn on_view(record: &MountRecord) -> bool {
    matches!(record.shared, Some(SharedRole::Container { .. }))
}

/// Serves again every mount the previous daemon left with the keeper (the views of
/// containerd snapshots are left to [`resume_views`]), and takes back the
/// containers' roots standing on shared views. Returns how many were picked up.
pub fn resume_mounts(state: &DaemonState) -> usize {
    let served = resume_records(
        state,
        |r| r.view.is_none() && !on_view(r),
        |record, fd, backings| {
            if matches!(record.shared, Some(SharedRole::View { .. })) {
                state.run_views.resume(state, record, fd, backings)
            } else {
                resume_one(state, record, fd, backings)
            }
        },
    );
    let mut on_views = 0;
    for record in state.records.load_all().into_iter().filter(on_view) {
        let (id, mountpoint) = (record.id.clone(), record.mountpoint.clone());
        match resume_on_view(state, record) {
            Ok(true) => on_views += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(id, mountpoint = %mountpoint.display(), "could not take a container's root back, detaching it: {e:#}");
                detach(&mountpoint);
                state.forget_mount(&id);
            }
        }
    }
    served + on_views
}

/// Takes back a container's root over a shared view (still mounted: it is a kernel
/// mount, served by the view's server, which is this daemon again).
/// Returns false if it is not mounted any more (then its record is forgotten).
fn resume_on_view(state: &DaemonState, record: MountRecord) -> anyhow::Result<bool> {
    let Some(SharedRole::Container { view, .. }) = &record.shared else {
        anyhow::bail!("the record of {} is not a container root's", record.id);
    };
    if !crate::cmd::mount::is_mounted(&record.mountpoint) {
        // Its container ended while no daemon ran, or the mount never happened.
        tracing::info!(id = record.id, mountpoint = %record.mountpoint.display(), "a container's root is gone: forgetting it");
        state.forget_mount(&record.id);
        return Ok(false);
    }
    let image = state
        .run_views
        .adopt(view)
        .with_context(|| format!("its shared view {view} is not served"))?;
    tracing::info!(
        id = record.id,
        mountpoint = %record.mountpoint.display(),
        view,
        "container root picked up"
    );
    let entry = MountEntry {
        id: record.id,
        served: Served::OnView { view: view.clone() },
        image,
        upper: record.upper,
        container: record.container,
        stats_file: state.global.layout().mount_stats(&record.mountpoint),
    };
    lock(&state.mounts).insert(record.mountpoint, entry)?;
    Ok(true)
}

/// Hands each view of a containerd snapshot chain the previous daemon left with
/// the keeper to `resume` (which serves it again); a view whose connection is gone
/// or that cannot be served is detached and forgotten. Returns how many were picked
/// up.
pub fn resume_views(
    state: &DaemonState,
    resume: impl FnMut(MountRecord, OwnedFd, Vec<skiff_fs::Backing>) -> anyhow::Result<()>,
) -> usize {
    resume_records(state, |r| r.view.is_some(), resume)
}

/// Takes every connection back from the keeper and hands each record `which`
/// selects, with its connection, to `resume`. Records not selected are left alone
/// (their connections stay with the keeper); a connection without any record is
/// let go.
fn resume_records(
    state: &DaemonState,
    which: impl Fn(&MountRecord) -> bool,
    mut resume: impl FnMut(MountRecord, OwnedFd, Vec<skiff_fs::Backing>) -> anyhow::Result<()>,
) -> usize {
    let Some(keeper) = &state.keeper else {
        return 0;
    };
    let held = match keeper.take() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("taking the mounts back from the keeper: {e:#}");
            return 0;
        }
    };
    let mut held: HashMap<String, (OwnedFd, Vec<skiff_fs::Backing>)> =
        held.into_iter().map(|(id, fd, b)| (id, (fd, b))).collect();
    let mut resumed = 0;
    for record in state.records.load_all() {
        let id = record.id.clone();
        if !which(&record) {
            // Not ours to serve: the keeper keeps its connection.
            held.remove(&id);
            continue;
        }
        let mountpoint = record.mountpoint.clone();
        let Some((fd, backings)) = held.remove(&id) else {
            tracing::warn!(id, mountpoint = %mountpoint.display(), "a mount whose connection is gone: detaching it");
            detach(&mountpoint);
            state.forget_mount(&id);
            continue;
        };
        match resume(record, fd, backings) {
            Ok(()) => resumed += 1,
            Err(e) => {
                tracing::warn!(id, mountpoint = %mountpoint.display(), "could not serve a mount again, detaching it: {e:#}");
                detach(&mountpoint);
                state.forget_mount(&id);
            }
        }
    }
    for id in held.into_keys() {
        tracing::warn!(id, "a connection without a mount record: letting it go");
        keeper.forget(&id);
    }
    resumed
}

/// Counts one more server of `record`'s connection, saves the record (before any
/// handle of the new generation is given out) and gives the restart settings to
/// serve it with (`backings`: those the keeper kept for it).
pub fn next_generation(
    state: &DaemonState,
    record: &mut MountRecord,
    backings: Vec<skiff_fs::Backing>,
) -> anyhow::Result<skiff_fs::RestartConfig> {
    record.generation += 1;
    state
        .records
        .save(record)
        .with_context(|| format!("saving the record of mount {}", record.id))?;
    Ok(state.restart_config(
        &record.id,
        record.generation,
        Some((record.negotiated, backings)),
    ))
}

fn resume_one(
    state: &DaemonState,
    mut record: MountRecord,
    fd: OwnedFd,
    backings: Vec<skiff_fs::Backing>,
) -> anyhow::Result<()> {
    let (image, _) = state.image(&record.source)?;
    let mut opts = skiff_fs::MountOptions::new(Vec::new(), state.global.layout().cache());
    opts.upper = record.upper.clone();
    opts.fs_name = record.name.clone();
    opts.stats_file = record.stats_file.clone();
    opts.restart = next_generation(state, &mut record, backings)?;
    let handle = skiff_fs::resume_shared(image.lower.clone(), opts, &record.mountpoint, fd)
        .with_context(|| format!("serving {} again", record.mountpoint.display()))?;
    tracing::info!(
        id = record.id,
        mountpoint = %record.mountpoint.display(),
        generation = record.generation,
        "mount picked up"
    );
    let stats_file = state.global.layout().mount_stats(&record.mountpoint);
    let entry = MountEntry {
        id: record.id,
        served: Served::Fuse(handle),
        image,
        upper: record.upper,
        container: record.container,
        stats_file,
    };
    lock(&state.mounts).insert(record.mountpoint, entry)
}

/// Lazily unmounts `mountpoint` (nothing serves it any more).
fn detach(mountpoint: &std::path::Path) {
    if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            tracing::warn!(mountpoint = %mountpoint.display(), "detaching: {e}");
        }
    }
}
