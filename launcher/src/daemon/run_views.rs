//! One read-only view per image for the containers `skiff run` starts through the
//! daemon, as the containerd side already mounts ([`super::snapshots`]): the image's
//! merged tree is one FUSE mount (by manifest digest), shared by every container of
//! the image, and each container's root filesystem is an overlayfs mount on it
//! (lowerdir = the view, upperdir = the container's upper directory, workdir next to
//! it). The kernel's page cache, dentries and attributes of the view then outlive a
//! container, so the second container of an image reads what the first read from
//! memory instead of asking the daemon again (a FUSE mount of its own per container
//! starts with all of them empty).
//!
//! The upper directory stays in overlayfs's plain format (`redirect_dir=off`,
//! `metacopy=off`, `index=off`), which is the one skiff's own upper directories use,
//! so `skiff commit` reads either. A read-only container (`--read-only`) gets a
//! read-only bind mount of the view.
//!
//! Views are reference-counted by their containers and kept mounted for a while after
//! the last one ends (`--view-idle-secs`), at most `--max-images` of them idle; then
//! unmounted. Like every daemon mount, a view has a [`MountRecord`] and its
//! `/dev/fuse` descriptor at the keeper, so it survives a restart of the daemon; a
//! container's overlay is a kernel mount that needs no server and only a record.

use super::persist::{MountRecord, SharedRole};
use super::protocol::{MountRequest, ViewStatus};
use super::restart;
use super::state::{lock, DaemonState, ImageEntry};
use anyhow::Context;
use skiff_fs::MountHandle;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One mounted view.
struct View {
    /// Its mount id (its record's, and its descriptor's tag at the keeper).
    id: String,
    handle: MountHandle,
    image: Arc<ImageEntry>,
    /// Containers standing on it.
    users: usize,
    /// Since when no container stands on it.
    idle_since: Option<Instant>,
}

/// A container's use of a view: the view's mount id and where it is mounted.
pub struct ViewUse {
    /// The view's mount id.
    pub id: String,
    /// Its mount point.
    pub path: PathBuf,
}

/// The shared views of one daemon, by key (manifest digest).
pub struct RunViews {
    dir: PathBuf,
    views: Mutex<HashMap<String, View>>,
    idle_timeout: Duration,
    max_idle: usize,
}

/// The key an image's view is shared under: its manifest digest (images without
/// one, local layers, get a FUSE mount per container as before).
pub fn key_of(image: &ImageEntry) -> Option<String> {
    image.manifest.map(|d| d.to_string())
}

impl RunViews {
    /// Views mounted under `dir`, each kept `idle_timeout` after its last container,
    /// at most `max_idle` of them idle.
    pub fn new(dir: PathBuf, idle_timeout: Duration, max_idle: usize) -> RunViews {
        RunViews {
            dir,
            views: Mutex::default(),
            idle_timeout,
            max_idle,
        }
    }

    /// The view of `image` for one more container: the mounted one, or a new mount
    /// (prefetch as `m` asks, `first`: the image was just built).
    pub fn acquire(
        &self,
        state: &DaemonState,
        image: &Arc<ImageEntry>,
        m: &MountRequest,
        first: bool,
    ) -> anyhow::Result<ViewUse> {
        let key = key_of(image).context("the image has no manifest digest to share a view by")?;
        let mut views = lock(&self.views);
        if let Some(v) = views.get_mut(&key) {
            let path = v.handle.mountpoint().to_path_buf();
            if crate::cmd::mount::is_mounted(&path) {
                v.users += 1;
                v.idle_since = None;
                return Ok(ViewUse {
                    id: v.id.clone(),
                    path,
                });
            }
            // Unmounted behind the daemon's back: mounted again below.
            tracing::warn!(view = %path.display(), "a shared view was unmounted by someone else");
            if let Some(gone) = views.remove(&key) {
                self.drop_view(state, gone);
            }
        }
        let view = self.mount(state, image, key.clone(), m, first)?;
        let used = ViewUse {
            id: view.id.clone(),
            path: view.handle.mountpoint().to_path_buf(),
        };
        views.insert(key, view);
        Ok(used)
    }

    fn mount(
        &self,
        state: &DaemonState,
        image: &Arc<ImageEntry>,
        key: String,
        m: &MountRequest,
        first: bool,
    ) -> anyhow::Result<View> {
        let id = state.new_mount_id();
        let at = self.dir.join(&id);
        std::fs::create_dir_all(&at).with_context(|| format!("creating {}", at.display()))?;
        let mut opts = super::server::mount_options(state, image, m, first);
        opts.restart = state.restart_config(&id, 0, None);
        // Every container of the image opens the same files: let the kernel open them
        // without asking us each time.
        opts.kernel_opens = true;
        let handle = skiff_fs::mount_shared(image.lower.clone(), opts, &at)
            .with_context(|| format!("mounting the view of {} on {}", image.name, at.display()))?;
        let record = MountRecord {
            id: id.clone(),
            mountpoint: at.clone(),
            source: restart::pinned(&m.source, image),
            name: image.name.clone(),
            upper: None,
            container: None,
            stats_file: None,
            negotiated: handle.negotiated().unwrap_or_default(),
            generation: 0,
            view: None,
            shared: Some(SharedRole::View { key: key.clone() }),
        };
        if let Err(e) = state.hand_over(&record, &handle) {
            state.forget_mount(&id);
            let _ = handle.unmount();
            let _ = std::fs::remove_dir(&at);
            return Err(e);
        }
        tracing::info!(id, image = %image.name, %key, view = %at.display(), "shared view mounted");
        Ok(View {
            id,
            handle,
            image: image.clone(),
            users: 1,
            idle_since: None,
        })
    }

    /// Serves again the view of `record` (left by the daemon before this one) on its
    /// connection `fd`; no container stands on it until [`RunViews::adopt`].
    pub fn resume(
        &self,
        state: &DaemonState,
        mut record: MountRecord,
        fd: OwnedFd,
        backings: Vec<skiff_fs::Backing>,
    ) -> anyhow::Result<()> {
        let Some(SharedRole::View { key }) = record.shared.clone() else {
            anyhow::bail!("the record of {} is not a shared view's", record.id);
        };
        let (image, _) = state.image(&record.source)?;
        let mut opts = skiff_fs::MountOptions::new(Vec::new(), state.global.layout().cache());
        opts.fs_name = record.name.clone();
        opts.restart = restart::next_generation(state, &mut record, backings)?;
        opts.kernel_opens = true;
        let handle = skiff_fs::resume_shared(image.lower.clone(), opts, &record.mountpoint, fd)
            .with_context(|| format!("serving the view {} again", record.mountpoint.display()))?;
        tracing::info!(
            id = record.id,
            %key,
            view = %record.mountpoint.display(),
            generation = record.generation,
            "shared view picked up"
        );
        let view = View {
            id: record.id,
            handle,
            image,
            users: 0,
            idle_since: Some(Instant::now()),
        };
        if let Some(old) = lock(&self.views).insert(key, view) {
            // Two records of one image (cannot happen: one view per key); the older
            // one is served no more.
            tracing::warn!(
                id = old.id,
                "a second shared view of one image: dropping it"
            );
            self.drop_view(state, old);
        }
        Ok(())
    }

    /// One more container (picked up after a restart) stands on the view `id`;
    /// returns the view's image, or `None` if no such view is served.
    pub fn adopt(&self, id: &str) -> Option<Arc<ImageEntry>> {
        let mut views = lock(&self.views);
        let v = views.values_mut().find(|v| v.id == id)?;
        v.users += 1;
        v.idle_since = None;
        Some(v.image.clone())
    }

    /// A container left the view `id`; idle views beyond the bound are unmounted.
    pub fn release(&self, state: &DaemonState, id: &str) {
        {
            let mut views = lock(&self.views);
            if let Some(v) = views.values_mut().find(|v| v.id == id) {
                v.users = v.users.saturating_sub(1);
                if v.users == 0 {
                    v.idle_since = Some(Instant::now());
                }
            }
        }
        self.evict(state);
    }

    /// Unmounts the views idle for longer than the timeout, and the least recently
    /// used idle ones beyond the bound. Called every second by the daemon's reaper.
    pub fn evict(&self, state: &DaemonState) {
        let mut views = lock(&self.views);
        let mut idle: Vec<(Instant, String)> = views
            .iter()
            .filter(|(_, v)| v.users == 0)
            .filter_map(|(k, v)| Some((v.idle_since?, k.clone())))
            .collect();
        idle.sort();
        let over = idle.len().saturating_sub(self.max_idle);
        let now = Instant::now();
        for (i, (since, key)) in idle.into_iter().enumerate() {
            if i < over || now.duration_since(since) >= self.idle_timeout {
                if let Some(v) = views.remove(&key) {
                    tracing::info!(id = v.id, %key, "shared view unused: unmounting it");
                    // Under the lock: no container can pick the view up meanwhile.
                    self.drop_view(state, v);
                }
            }
        }
    }

    /// Unmounts every view (the daemon stops for good; the containers' overlays are
    /// unmounted already).
    pub fn unmount_all(&self, state: &DaemonState) {
        let all: Vec<View> = lock(&self.views).drain().map(|(_, v)| v).collect();
        for v in all {
            self.drop_view(state, v);
        }
    }

    /// Unmounts `v` and forgets it (record, connection, mount point).
    fn drop_view(&self, state: &DaemonState, v: View) {
        let at = v.handle.mountpoint().to_path_buf();
        let result = v.handle.unmount();
        // Unmounted (or detached): nothing for a successor to serve.
        state.forget_mount(&v.id);
        if let Err(e) = result {
            tracing::warn!(view = %at.display(), "unmounting a shared view: {e}");
        } else {
            tracing::info!(view = %at.display(), "shared view unmounted");
        }
        let _ = std::fs::remove_dir(&at);
        skiff_fs::tree::release_free_memory();
    }

    /// What `skiff daemon status` shows of the views.
    pub fn status(&self) -> Vec<ViewStatus> {
        let mut out: Vec<ViewStatus> = lock(&self.views)
            .values()
            .map(|v| ViewStatus {
                mountpoint: v.handle.mountpoint().to_path_buf(),
                image: v.image.name.clone(),
                containers: v.users,
                idle_secs: v.idle_since.map(|t| t.elapsed().as_secs()),
            })
            .collect();
        out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
        out
    }
}

/// overlayfs's work directory for the upper directory `upper`: next to it (same
/// filesystem, as overlayfs requires, and outside it, so `skiff commit` never sees it).
pub fn work_dir_of(upper: &Path) -> PathBuf {
    let name = upper
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    upper.with_file_name(format!("{name}.work"))
}

/// `path` as an overlayfs option value: `\`, `,` and `:` escaped.
fn escaped(path: &Path) -> anyhow::Result<String> {
    let s = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// The overlayfs options of a container root over `view`; `volatile` for an upper
/// directory that is deleted after the run.
fn overlay_options(
    view: &Path,
    upper: &Path,
    work: &Path,
    volatile: bool,
) -> anyhow::Result<String> {
    // Plain overlay format in the upper directory: renamed lower directories are
    // copied (EXDEV to the program, as with docker's default), no metadata-only
    // copies, no index of hard links to origins.
    Ok(format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off{}",
        escaped(view)?,
        escaped(upper)?,
        escaped(work)?,
        if volatile { ",volatile" } else { "" }
    ))
}

/// Mounts a container's root filesystem on `mountpoint` over the view at `view`: an
/// overlayfs with `upper` and `work`, or without `upper` a read-only bind of the
/// view. `discard_upper` (the upper is deleted after the run) mounts the overlayfs
/// `volatile` where the kernel has it (5.10 on), so its unmount does not sync the
/// upper's whole filesystem.
pub fn mount_container_root(
    view: &Path,
    upper: Option<&Path>,
    work: Option<&Path>,
    mountpoint: &Path,
    discard_upper: bool,
) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    match (upper, work) {
        (Some(upper), Some(work)) => {
            std::fs::create_dir_all(work)
                .with_context(|| format!("creating {}", work.display()))?;
            let overlay = |volatile: bool| -> anyhow::Result<()> {
                let opts = overlay_options(view, upper, work, volatile)?;
                mount(
                    Some("overlay"),
                    mountpoint,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .with_context(|| format!("mounting overlayfs ({opts}) on {}", mountpoint.display()))
            };
            match overlay(discard_upper) {
                // A kernel without `volatile` refuses the option: mount as before.
                Err(e) if discard_upper => {
                    tracing::debug!("{e:#}; mounting without volatile");
                    overlay(false)
                }
                result => result,
            }
        }
        _ => {
            mount(Some(view), mountpoint, none, MsFlags::MS_BIND, none).with_context(|| {
                format!("binding {} on {}", view.display(), mountpoint.display())
            })?;
            let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            if let Err(e) = mount(none, mountpoint, none, ro, none) {
                let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
                return Err(e)
                    .with_context(|| format!("making {} read-only", mountpoint.display()));
            }
            Ok(())
        }
    }
}

/// Unmounts a container's root filesystem (lazily if still busy: processes of the
/// container may linger); not mounted is fine.
pub fn unmount_container_root(mountpoint: &Path) -> anyhow::Result<()> {
    use nix::errno::Errno;
    use nix::mount::{umount2, MntFlags};
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => umount2(mountpoint, MntFlags::MNT_DETACH)
            .with_context(|| format!("detaching {}", mountpoint.display())),
        Err(e) => Err(e).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_escape_separators_and_keep_the_plain_format() {
        let o = overlay_options(
            Path::new("/r/views/a:b"),
            Path::new("/r/c,1/upper"),
            Path::new("/r/c,1/upper.work"),
            false,
        )
        .unwrap();
        assert_eq!(
            o,
            r"lowerdir=/r/views/a\:b,upperdir=/r/c\,1/upper,workdir=/r/c\,1/upper.work,redirect_dir=off,metacopy=off,index=off"
        );
        let discarded =
            overlay_options(Path::new("/v"), Path::new("/u"), Path::new("/w"), true).unwrap();
        assert!(discarded.ends_with(",index=off,volatile"), "{discarded}");
        assert_eq!(
            work_dir_of(Path::new("/r/containers/x/upper")),
            Path::new("/r/containers/x/upper.work")
        );
    }
}
