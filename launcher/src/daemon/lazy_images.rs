//! The images the containerd snapshotter serves lazily, each resolved once.
//!
//! containerd's unpacker calls Prepare once per layer, each naming the image and
//! the layer. The first Prepare that names an image resolves it through the
//! daemon's image cache (manifest and config once, every layer's TOC or published
//! index fetched in parallel) and keeps the result here, under the reference and
//! with the manifest digest it resolved to; every later Prepare of that image (and
//! the view of its chain) is answered from that one resolution, without the local
//! store or the registry.
//!
//! What is kept per image is the resolution's result (manifest digest, layer
//! digests) and a weak handle on the merged tree: the tree itself stays owned by the
//! daemon's image cache and its bound. If that cache dropped it, the tree is built
//! again from the image pinned to its manifest digest (local stores first).
//!
//! Nothing from containerd is trusted: a layer is served only if its digest is one
//! of the layers of the manifest Skiff fetched itself (the snapshotter then checks
//! it sits where the parent chain says), and the layers the labels list above it
//! (when they do) must be the manifest's. A mismatch means the tag moved since
//! Skiff resolved it: the image is resolved again once, from the registry; a layer
//! still not found is unpacked by containerd instead.
//!
//! A Prepare waits only for the manifest when every layer carries its own TOC
//! (eStargz, zstd:chunked): the layer is committed at once and the config, the TOCs
//! and the merged tree are fetched and built on a thread of their own, while
//! containerd finishes the pull. The view of the image waits for that build. Should
//! it fail (a TOC that does not verify, the registry gone), the view resolves the
//! image once more, building it before it answers; failing again, it fails, and so
//! does the container on it (containerd reports the error): a committed layer never
//! shows other content. Once a build has failed, the image's next Prepare (a pull
//! after its snapshots were removed) also resolves it before answering, so a layer
//! whose TOC still fails is unpacked by containerd instead. A layer without a TOC is
//! always resolved before its Prepare is answered, as before.
//!
//! The tails of the layers the first Prepare's labels name are read while the
//! manifest is fetched ([`layers_ahead`], `skiff_proto::resolve::read_tocs_ahead`):
//! their TOCs are then in about when the manifest is, not a round trip after it.
//!
//! Once an image is resolved, the files any container of it reads first (the user
//! and group files the runtime reads, the image's own program and the libraries its
//! loader will open) are fetched in the background, while containerd finishes the
//! pull and sets up the container.

use super::protocol::ImageSource;
use super::state::{lock, DaemonState, ImageEntry};
use crate::cmd::lazy::FoundManifest;
use crate::cmd::lazy::PullPolicy;
use skiff_proto::image::Descriptor;
use skiff_proto::Digest;
use skiff_snapshotter::labels::LazyRequest;
use skiff_snapshotter::NotLazy;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Instant;

/// How many images' resolutions are kept (a forgotten one is resolved again from
/// the local store).
const MAX_IMAGES: usize = 256;

/// Most layers of one image whose tails are read ahead of its manifest.
const MAX_LAYERS_AHEAD: usize = 128;

/// Executables up to this size are fetched whole when warmed (a mount's default).
const WHOLE_FILE_MAX: u64 = 64 << 20;

/// One image resolved for lazy layers.
pub struct LazyImage {
    /// The resolved image: its merged tree and fetcher.
    pub entry: Arc<ImageEntry>,
    /// The digests of its layers, bottom first, as its manifest lists them.
    pub layers: Vec<String>,
}

/// Which of `layers` (an image's, bottom first) `request` names, if its digest is
/// one of them and the layers its labels list above it are the image's; why not
/// otherwise.
fn layer_of(layers: &[String], request: &LazyRequest) -> Result<usize, String> {
    let layer = layers
        .iter()
        .position(|d| *d == request.digest)
        .ok_or_else(|| format!("{} is not a layer of the image", request.digest))?;
    // The labels list this layer and those above it, cut short when they exceed
    // containerd's label size limit, never others.
    if !layers[layer..].starts_with(&request.layers) {
        return Err(format!(
            "the labels list other layers from {} up than the image",
            request.digest
        ));
    }
    Ok(layer)
}

/// The merged tree of a resolved image, as far as it got.
#[derive(Clone)]
enum Tree {
    /// Being built on the thread the resolution started.
    Building(Arc<Building>),
    /// Built: held by the daemon's image cache (or a view) while they keep it.
    Built(Weak<ImageEntry>),
}

/// A merged tree being built on a thread, and how that ended once it has.
#[derive(Default)]
struct Building {
    outcome: Mutex<Option<Result<Weak<ImageEntry>, String>>>,
    ended: Condvar,
}

impl Building {
    fn end(&self, outcome: Result<Weak<ImageEntry>, String>) {
        *lock(&self.outcome) = Some(outcome);
        self.ended.notify_all();
    }

    fn wait(&self) -> Result<Weak<ImageEntry>, String> {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(o) = outcome.as_ref() {
                return o.clone();
            }
            outcome = self.ended.wait(outcome).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What one resolution of an image reference found.
#[derive(Clone)]
struct Resolution {
    /// The manifest digest it resolved to.
    manifest: Option<Digest>,
    /// Its layer digests, bottom first.
    layers: Vec<String>,
    /// Its merged tree.
    tree: Tree,
}

impl Resolution {
    /// Whether building its tree (on a thread) failed.
    fn failed(&self) -> bool {
        match &self.tree {
            Tree::Building(b) => matches!(*lock(&b.outcome), Some(Err(_))),
            Tree::Built(_) => false,
        }
    }

    /// Which layer of this image `request` names ([`layer_of`]).
    fn check(&self, request: &LazyRequest) -> Result<usize, String> {
        layer_of(&self.layers, request).map_err(|why| {
            let manifest = self.manifest.map(|d| d.to_string());
            format!(
                "{why} (in {}@{})",
                request.image,
                manifest.as_deref().unwrap_or("?")
            )
        })
    }
}

/// A slot per image reference: filled once by whoever asks first while later
/// askers of the same image wait on its lock.
type Slot = Arc<Mutex<Option<Resolution>>>;

/// The images resolved for the snapshotter, by reference.
pub struct LazyImages {
    state: Arc<DaemonState>,
    images: Mutex<HashMap<String, Slot>>,
}

fn source_of(image: &str, pull: PullPolicy) -> ImageSource {
    ImageSource::Registry {
        image: image.to_string(),
        pull,
        platform: None,
        insecure_registries: Vec::new(),
    }
}

/// Small files the C library reads as a program starts, whatever the program, when
/// the image has them: the loader's cache, the local time zone, the C.UTF-8 locale
/// (Python coerces an unset locale to it) and the character set converters' cache.
/// Each would otherwise be one round trip after another once the program runs (a
/// cold `python3 -c` read three of them in turn, 40–70 ms each).
const START_UP_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/lib/locale/C.utf8/LC_CTYPE",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
    "/usr/lib/aarch64-linux-gnu/gconv/gconv-modules.cache",
];

/// The C library and its loader, which nearly every dynamically linked program loads
/// (glibc's on x86-64 and arm64, and musl's, whose loader is its C library): fetched
/// while the container is set up, they are not on the link right after the program's
/// head, where its exec waits for them (python's exec waited ~70 ms for libc's 0.9 MB
/// there). An image without them loses nothing.
const C_LIBRARY: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "libc.so.6",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
];

/// Interactive shells: an image whose whole command is one of these, with no
/// entrypoint (`CMD ["bash"]`: debian, ubuntu, alpine, buildpack-deps and the images
/// built on them), is a base image that is nearly always given a command to run, so
/// its shell is not fetched ahead. Fetched for nothing, bash's 0.65 MB shared the link
/// with the program the container did exec (python's head came ~50 ms later); a shell
/// that is run after all is fetched when exec'd, as any program.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox"];

/// The program a container of an image with `entrypoint` and `cmd` most likely
/// execs, if it is worth fetching ahead: the entrypoint's program, else the
/// command's, unless the command is a bare shell (see [`SHELLS`]).
fn likely_program<'a>(entrypoint: &'a [String], cmd: &'a [String]) -> Option<&'a str> {
    if let Some(program) = entrypoint.first() {
        return Some(program);
    }
    let program = cmd.first()?;
    let name = program.rsplit('/').next().unwrap_or(program);
    let bare_shell = cmd.len() == 1 && SHELLS.contains(&name);
    (!bare_shell).then_some(program.as_str())
}

/// Fetches what a container of `entry` reads first, in this order: the user and
/// group files the runtime reads, the files the C library reads as any program
/// starts ([`START_UP_FILES`]), the C library itself ([`C_LIBRARY`]), and last the
/// image's own program ([`likely_program`]), whose megabytes would otherwise hold up
/// the small files on the shared link (runc's read of `/etc/passwd` waited 30 ms
/// behind `bash`).
fn warm_up(entry: &ImageEntry) {
    let config = entry.config.as_ref().and_then(|c| c.config().as_ref());
    let (entrypoint, cmd) = config.map_or((None, None), |c| {
        (c.entrypoint().as_deref(), c.cmd().as_deref())
    });
    let program = likely_program(entrypoint.unwrap_or_default(), cmd.unwrap_or_default());
    let env = config.and_then(|c| c.env().clone()).unwrap_or_default();
    let cwd = config
        .and_then(|c| c.working_dir().clone())
        .unwrap_or_else(|| "/".to_string());
    let mut small = crate::cmd::run::user_files();
    small.extend(START_UP_FILES.iter().map(|f| vec![f.to_string()]));
    entry.lower.warm(&small, WHOLE_FILE_MAX);
    entry.lower.warm_libraries(C_LIBRARY);
    if let Some(program) = crate::cmd::run::program_candidates(program, &env, &cwd) {
        entry.lower.warm(&[program], WHOLE_FILE_MAX);
    }
}

/// The layers whose tails (TOCs) are read alongside the manifest when `request`
/// resolves its image: the layer it names and those its labels list above it (all of
/// the image's, in containerd's first Prepare), at most [`MAX_LAYERS_AHEAD`]; none
/// unless the labels say the layer is eStargz (its TOC annotation, which containerd
/// passes on), so that a plain gzip image's layers are not read at their ends for
/// nothing.
fn layers_ahead(request: &LazyRequest) -> Vec<Digest> {
    if !request.estargz {
        return Vec::new();
    }
    std::iter::once(&request.digest)
        .chain(&request.layers)
        .filter_map(|d| d.parse::<Digest>().ok())
        .fold(Vec::new(), |mut all, d| {
            if !all.contains(&d) && all.len() < MAX_LAYERS_AHEAD {
                all.push(d);
            }
            all
        })
}

/// Whether every one of `layers` is read through a TOC inside its blob (the tree
/// can then be built after the Prepare is answered), judged from the manifest.
fn all_carry_tocs(layers: &[Descriptor]) -> bool {
    !layers.is_empty() && layers.iter().all(skiff_proto::resolve::carries_toc)
}

impl LazyImages {
    /// No image resolved yet; images come from `state`.
    pub fn new(state: Arc<DaemonState>) -> LazyImages {
        LazyImages {
            state,
            images: Mutex::default(),
        }
    }

    /// Which layer of the image `request` names: from the image as resolved
    /// before, else resolved now; resolved again from the registry once if the
    /// request does not match it.
    pub fn layer(&self, request: &LazyRequest) -> Result<usize, NotLazy> {
        let ahead = layers_ahead(request);
        let (image, fresh) = self.get(&request.image, false, &ahead)?;
        let why = match image.check(request) {
            Ok(layer) => return Ok(layer),
            Err(why) if fresh => return Err(NotLazy(why)),
            Err(why) => why,
        };
        tracing::info!(image = %request.image, "{why}: resolving the image again");
        let (image, _) = self.get(&request.image, true, &ahead)?;
        image.check(request).map_err(NotLazy)
    }

    /// The image `reference` as resolved for the snapshotter (resolved now if it
    /// is not yet, from the local store if that knows it), with its merged tree
    /// (waited for if it is being built).
    pub fn image(&self, reference: &str) -> Result<LazyImage, NotLazy> {
        let (mut known, _) = self.get(reference, false, &[])?;
        if let Tree::Building(building) = &known.tree {
            if let Err(why) = building.wait() {
                // Resolved once more, the tree built before this returns: the
                // registry may have recovered; if not, the view fails.
                tracing::warn!(image = %reference, "{why}: resolving the image again");
                known = self.get(reference, false, &[])?.0;
            }
        }
        let built = match &known.tree {
            Tree::Built(weak) => weak.upgrade(),
            Tree::Building(building) => building.wait().ok().and_then(|w| w.upgrade()),
        };
        let entry = match built {
            Some(entry) => entry,
            None => {
                let entry = self.rebuild(reference, &known)?;
                self.remember(reference, &known, &entry);
                entry
            }
        };
        Ok(LazyImage {
            entry,
            layers: known.layers,
        })
    }

    /// Records `entry` as the tree of `known`, if the slot of `reference` still
    /// holds that resolution.
    fn remember(&self, reference: &str, known: &Resolution, entry: &Arc<ImageEntry>) {
        let slot = lock(&self.images).get(reference).cloned();
        if let Some(slot) = slot {
            let mut slot = lock(&*slot);
            if let Some(r) = slot.as_mut() {
                if r.manifest == known.manifest && r.layers == known.layers {
                    r.tree = Tree::Built(Arc::downgrade(entry));
                }
            }
        }
    }

    /// The resolution of `reference`, and whether this call made it; with `again`,
    /// resolved from the registry whatever was known. A resolution whose tree
    /// failed to build is made again, its tree built before this returns: so a
    /// layer whose TOC still fails is unpacked by containerd on its next Prepare.
    fn get(
        &self,
        reference: &str,
        again: bool,
        ahead: &[Digest],
    ) -> Result<(Resolution, bool), NotLazy> {
        let slot = {
            let mut images = lock(&self.images);
            if images.len() >= MAX_IMAGES && !images.contains_key(reference) {
                // Any will do: a forgotten image is resolved again from the store.
                if let Some(k) = images.keys().next().cloned() {
                    images.remove(&k);
                }
            }
            images.entry(reference.to_string()).or_default().clone()
        };
        let mut slot = lock(&*slot);
        let failed = slot.as_ref().is_some_and(Resolution::failed);
        if let (Some(known), false, false) = (slot.as_ref(), again, failed) {
            return Ok((known.clone(), false));
        }
        let resolution = self.resolve(reference, again, failed, ahead)?;
        *slot = Some(resolution.clone());
        Ok((resolution, true))
    }

    /// Resolves `reference` (from the registry with `again`, else the local store
    /// first): its manifest now, its tree now too unless every layer carries a TOC
    /// (and `now` is not set), in which case the tree is built on a thread of its
    /// own.
    fn resolve(
        &self,
        reference: &str,
        again: bool,
        now: bool,
        ahead: &[Digest],
    ) -> Result<Resolution, NotLazy> {
        let pull = match again {
            true => PullPolicy::Always,
            false => PullPolicy::Missing,
        };
        let source = source_of(reference, pull);
        let started = Instant::now();
        let (client, found) = self
            .state
            .manifest(&source, ahead)
            .map_err(|e| NotLazy(format!("resolving {reference}: {e:#}")))?;
        let manifest = Some(found.manifest_digest());
        let layers: Vec<String> = found
            .layers()
            .iter()
            .map(|l| l.digest.to_string())
            .collect();
        let background =
            !now && matches!(found, FoundManifest::Remote(_)) && all_carry_tocs(found.layers());
        let (state, name) = (self.state.clone(), reference.to_string());
        let reference = name.clone();
        let build = move || {
            let built = state.image_from(&source, Some((client, found)));
            let ms = started.elapsed().as_millis() as u64;
            match &built {
                Ok((entry, _)) => {
                    tracing::info!(image = %reference, ms, "image resolved for lazy layers");
                    warm_up(entry);
                }
                Err(e) => tracing::warn!(image = %reference, ms, "resolving the image: {e:#}"),
            }
            built
                .map(|(entry, _)| Arc::downgrade(&entry))
                .map_err(|e| format!("resolving {reference}: {e:#}"))
        };
        let tree = if background {
            let building = Arc::new(Building::default());
            let ends = building.clone();
            std::thread::Builder::new()
                .name("skiff-lazy-image".into())
                .spawn(move || ends.end(build()))
                .map_err(|e| NotLazy(format!("starting the image's resolution: {e}")))?;
            tracing::info!(
                image = %name,
                ms = started.elapsed().as_millis() as u64,
                "manifest resolved: layers committed while their TOCs are read"
            );
            Tree::Building(building)
        } else {
            // A layer without a TOC might not index: resolved before it is
            // committed, so containerd unpacks it instead if it does not. (The
            // daemon's image cache holds the tree.)
            Tree::Built(build().map_err(NotLazy)?)
        };
        Ok(Resolution {
            manifest,
            layers,
            tree,
        })
    }

    /// The merged tree of `known` again, after the daemon's image cache let it go
    /// (or building it failed): built from the image pinned to its manifest digest,
    /// which must list the same layers.
    fn rebuild(&self, reference: &str, known: &Resolution) -> Result<Arc<ImageEntry>, NotLazy> {
        let pinned = match (
            known.manifest,
            skiff_proto::reference::Reference::parse(reference),
        ) {
            (Some(d), Ok(r)) => r.with_digest(d).to_string(),
            _ => reference.to_string(),
        };
        let (entry, _) = self
            .state
            .image(&source_of(&pinned, PullPolicy::Missing))
            .map_err(|e| NotLazy(format!("resolving {pinned}: {e:#}")))?;
        let layers: Vec<String> = entry
            .lower
            .layers()
            .iter()
            .map(|l| l.index.blob.to_string())
            .collect();
        if layers != known.layers {
            return Err(NotLazy(format!(
                "{pinned} lists other layers than when it was resolved"
            )));
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_shell_command_is_not_fetched_ahead_an_entrypoint_or_a_program_is() {
        let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(likely_program(&[], &v(&["bash"])), None);
        assert_eq!(likely_program(&[], &v(&["/bin/sh"])), None);
        assert_eq!(likely_program(&[], &v(&["python3"])), Some("python3"));
        assert_eq!(
            likely_program(&[], &v(&["sh", "-c", "exec app"])),
            Some("sh")
        );
        assert_eq!(
            likely_program(&v(&["docker-entrypoint.sh"]), &v(&["bash"])),
            Some("docker-entrypoint.sh")
        );
        assert_eq!(likely_program(&v(&["/bin/bash"]), &[]), Some("/bin/bash"));
        assert_eq!(likely_program(&[], &[]), None);
    }

    #[test]
    fn the_layers_read_ahead_are_the_named_ones_once_each_and_bounded() {
        let d = |i: usize| Digest::of(&i.to_le_bytes()).to_string();
        let (a, b) = (d(1), d(2));
        let r = request(&a, &[&a, &b, "not a digest", &b]);
        let ahead: Vec<String> = layers_ahead(&r).iter().map(|d| d.to_string()).collect();
        assert_eq!(ahead, vec![a.clone(), b.clone()]);
        // Labels without the list: the named layer alone.
        assert_eq!(layers_ahead(&request(&a, &[])).len(), 1);
        let many: Vec<String> = (0..1000).map(d).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(layers_ahead(&request(&a, &many)).len(), MAX_LAYERS_AHEAD);
        // Not an eStargz layer: nothing is read ahead.
        let plain = LazyRequest {
            estargz: false,
            ..request(&a, &[&a, &b])
        };
        assert!(layers_ahead(&plain).is_empty());
    }

    fn request(digest: &str, layers: &[&str]) -> LazyRequest {
        LazyRequest {
            target: "sha256:chain".into(),
            image: "reg/a:1".into(),
            digest: digest.into(),
            layers: layers.iter().map(|l| l.to_string()).collect(),
            urls: Vec::new(),
            estargz: true,
        }
    }

    fn layer(annotations: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of(b"layer"),
            size: 5,
            urls: Vec::new(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: None,
            artifact_type: None,
        }
    }

    #[test]
    fn only_images_whose_every_layer_has_a_toc_are_committed_before_indexing() {
        let toc = layer(&[(
            skiff_proto::index::estargz::TOC_DIGEST_ANNOTATION,
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )]);
        let plain = layer(&[]);
        assert!(all_carry_tocs(&[toc.clone(), toc.clone()]));
        assert!(!all_carry_tocs(&[toc, plain.clone()]));
        assert!(!all_carry_tocs(&[plain]));
        assert!(!all_carry_tocs(&[]));
    }

    #[test]
    fn a_building_tree_is_waited_for_and_its_failure_told() {
        let building = Arc::new(Building::default());
        let ends = building.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            ends.end(Err("the TOC does not verify".into()));
        });
        assert_eq!(
            building.wait().err().as_deref(),
            Some("the TOC does not verify")
        );
        t.join().unwrap();
    }

    #[test]
    fn a_layer_is_found_only_where_the_labels_agree_with_the_manifest() {
        let image: Vec<String> = ["sha256:a", "sha256:b", "sha256:c"]
            .iter()
            .map(|l| l.to_string())
            .collect();
        // No list, the full list above the layer, or a list cut short.
        assert_eq!(layer_of(&image, &request("sha256:b", &[])), Ok(1));
        assert_eq!(
            layer_of(&image, &request("sha256:b", &["sha256:b", "sha256:c"])),
            Ok(1)
        );
        assert_eq!(
            layer_of(&image, &request("sha256:a", &["sha256:a", "sha256:b"])),
            Ok(0)
        );
        // Another layer above it (the tag moved), or a layer not in the image.
        assert!(layer_of(&image, &request("sha256:b", &["sha256:b", "sha256:x"])).is_err());
        assert!(layer_of(&image, &request("sha256:x", &["sha256:x"])).is_err());
    }
}
