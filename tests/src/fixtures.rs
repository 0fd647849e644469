//! Fixture images built from code and pushed with Skiff's own client.
//!
//! ```ignore
//! let reg = Registry::start();
//! let img = fixtures::push_image(&reg.host(), "app:v1", vec![
//!     Layer::tar_gzip(&[Entry::dir("etc", 0o755), Entry::file("etc/hello", b"hi\n", 0o644)]),
//!     Layer::tar(&[Entry::file("bin/tool", &fixtures::pseudo_random(1, 1 << 20), 0o755)]),
//! ]).await;
//! ```

use bytes::Bytes;
use flate2::write::GzEncoder;
use skiff_proto::digest::Digest;
use skiff_proto::image::{
    Descriptor, Index, Manifest, Platform, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_TAR, MEDIA_OCI_MANIFEST,
};
use skiff_proto::registry::Client;
use std::io::Write;

/// One entry of a generated tree.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Path inside the layer.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the layer.
        path: String,
        /// Content.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the layer.
        path: String,
        /// Link target.
        target: String,
    },
}

impl Entry {
    /// A directory entry.
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode,
        }
    }

    /// A file entry.
    pub fn file(path: &str, data: &[u8], mode: u32) -> Entry {
        Entry::File {
            path: path.into(),
            data: data.to_vec(),
            mode,
        }
    }

    /// A symlink entry.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
}

/// Deterministic, incompressible bytes (xorshift64*), so fixtures are reproducible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar archive of `entries` (owner 0:0, mtime fixed).
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            Entry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())
                    .expect("tar dir");
            }
            Entry::File { path, data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())
                    .expect("tar file");
            }
            Entry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).expect("tar symlink");
            }
        }
    }
    b.into_inner().expect("finishing tar")
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip finish")
}

/// One layer blob with its media type and uncompressed digest (diff_id).
#[derive(Clone, Debug)]
pub struct Layer {
    /// Layer media type.
    pub media_type: String,
    /// The blob as pushed.
    pub blob: Vec<u8>,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
}

impl Layer {
    /// An uncompressed tar layer.
    pub fn tar(entries: &[Entry]) -> Layer {
        let tar = tar_of(entries);
        Layer {
            media_type: MEDIA_OCI_LAYER_TAR.into(),
            diff_id: Digest::of(&tar),
            blob: tar,
        }
    }

    /// A tar+gzip layer.
    pub fn tar_gzip(entries: &[Entry]) -> Layer {
        let tar = tar_of(entries);
        Layer {
            media_type: MEDIA_OCI_LAYER_GZIP.into(),
            diff_id: Digest::of(&tar),
            blob: gzip(&tar),
        }
    }

    /// The same blob under another media type (e.g. Docker's rootfs.diff.tar.gzip).
    pub fn with_media_type(mut self, media_type: &str) -> Layer {
        self.media_type = media_type.into();
        self
    }

    /// The layer's descriptor.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::of(&self.media_type, &self.blob)
    }
}

/// A built (and usually pushed) image.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// Config bytes.
    pub config: Vec<u8>,
    /// The manifest.
    pub manifest: Manifest,
    /// Manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// Manifest digest.
    pub digest: Digest,
}

/// Builds config and manifest for `layers` on `platform`; `cmd` becomes Cmd.
pub fn build_image(layers: Vec<Layer>, platform: &Platform, cmd: &[&str]) -> BuiltImage {
    let mut config = serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
    });
    if let Some(v) = &platform.variant {
        config["variant"] = serde_json::Value::String(v.clone());
    }
    let config = serde_json::to_vec(&config).expect("config json");
    let manifest = Manifest::oci(
        Descriptor::of(MEDIA_OCI_CONFIG, &config),
        layers.iter().map(Layer::descriptor).collect(),
    );
    let manifest_bytes = manifest.to_bytes();
    BuiltImage {
        digest: Digest::of(&manifest_bytes),
        layers,
        config,
        manifest,
        manifest_bytes,
    }
}

/// Pushes blobs and manifest of `image` to `repo` under `tag` with `client`.
pub async fn push_built(client: &Client, repo: &str, tag: &str, image: &BuiltImage) {
    for l in &image.layers {
        client
            .push_blob(repo, Bytes::from(l.blob.clone()))
            .await
            .expect("pushing layer");
    }
    client
        .push_blob(repo, Bytes::from(image.config.clone()))
        .await
        .expect("pushing config");
    let d = client
        .push_manifest(repo, tag, MEDIA_OCI_MANIFEST, &image.manifest_bytes)
        .await
        .expect("pushing manifest");
    assert_eq!(d, image.digest);
}

fn split_repo_tag(repo_tag: &str) -> (&str, &str) {
    repo_tag.rsplit_once(':').unwrap_or((repo_tag, "latest"))
}

/// Builds an image of `layers` for the host platform and pushes it to `host` (an
/// open loopback registry) as `repo:tag`.
pub async fn push_image(host: &str, repo_tag: &str, layers: Vec<Layer>) -> BuiltImage {
    let (repo, tag) = split_repo_tag(repo_tag);
    let image = build_image(layers, &Platform::host(), &["/bin/sh"]);
    push_built(&crate::client(host), repo, tag, &image).await;
    image
}

/// Builds an image of [`sample_layers`] (Cmd `/bin/sh`, host platform) and pushes it
/// as `repo:tag` to `host`, a loopback registry behind Basic auth for
/// `username`/`password`.
pub async fn push_sample_as(
    host: &str,
    username: &str,
    password: &str,
    repo: &str,
    tag: &str,
) -> BuiltImage {
    let client = Client::new(
        host,
        skiff_proto::registry::ClientOptions {
            credentials: Some(skiff_proto::registry::Credentials::basic(
                username, password,
            )),
            ..crate::test_client_options()
        },
    )
    .expect("a client for the test registry");
    let image = build_image(sample_layers(), &Platform::host(), &["/bin/sh"]);
    push_built(&client, repo, tag, &image).await;
    image
}

/// A three-layer sample: a gzip base tree, an uncompressed tar layer with a 1 MiB
/// binary-ish file, and a gzip layer overriding a file.
pub fn sample_layers() -> Vec<Layer> {
    vec![
        Layer::tar_gzip(&[
            Entry::dir("etc", 0o755),
            Entry::file("etc/hostname", b"skiff\n", 0o644),
            Entry::dir("bin", 0o755),
            Entry::symlink("bin/sh", "busybox"),
        ]),
        Layer::tar(&[
            Entry::dir("data", 0o700),
            Entry::file("data/blob.bin", &pseudo_random(7, 1 << 20), 0o600),
        ]),
        Layer::tar_gzip(&[Entry::file("etc/hostname", b"skiff-top\n", 0o644)]),
    ]
}

/// A multi-platform index: one image per platform (each with one small layer naming
/// its platform), pushed to `host` as `repo:tag`. Returns the index digest and the
/// per-platform images.
pub async fn push_index(
    host: &str,
    repo_tag: &str,
    platforms: &[Platform],
) -> (Digest, Vec<(Platform, BuiltImage)>) {
    let (repo, tag) = split_repo_tag(repo_tag);
    let client = crate::client(host);
    let mut entries = Vec::new();
    let mut images = Vec::new();
    for p in platforms {
        let layer = Layer::tar_gzip(&[Entry::file("platform", p.to_string().as_bytes(), 0o644)]);
        let image = build_image(vec![layer], p, &["/bin/true"]);
        push_built(&client, repo, &image.digest.to_string(), &image).await;
        let mut d = Descriptor::of(MEDIA_OCI_MANIFEST, &image.manifest_bytes);
        d.platform = Some(p.clone());
        entries.push(d);
        images.push((p.clone(), image));
    }
    let index = Index::oci(entries);
    let bytes = index.to_bytes();
    let digest = client
        .push_manifest(repo, tag, MEDIA_OCI_INDEX, &bytes)
        .await
        .expect("pushing index");
    (digest, images)
}

/// Writes `image` as an OCI image layout (`oci-layout`, `index.json`, `blobs/`) in
/// `dir`, tagged `tag` (for `skopeo copy oci:DIR:TAG …`).
pub fn write_oci_layout(dir: &std::path::Path, tag: &str, image: &BuiltImage) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dirs");
    let put = |data: &[u8]| {
        std::fs::write(blobs.join(Digest::of(data).hex()), data).expect("layout blob");
    };
    for l in &image.layers {
        put(&l.blob);
    }
    put(&image.config);
    put(&image.manifest_bytes);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let mut d = Descriptor::of(MEDIA_OCI_MANIFEST, &image.manifest_bytes);
    d.annotations
        .insert("org.opencontainers.image.ref.name".into(), tag.into());
    std::fs::write(dir.join("index.json"), Index::oci(vec![d]).to_bytes()).expect("index.json");
}

/// A small runnable image: layer 1 holds the host's static busybox with a few applets and
/// passwd/group (root, alice); layer 2 a big incompressible file of `big` bytes (which
/// start-up commands never read), `/etc/motd` and a whiteout of `/bin/ls`.
pub fn busybox_layers(big: usize) -> Vec<Layer> {
    let (base, top) = busybox_entries(big);
    vec![Layer::tar_gzip(&base), Layer::tar_gzip(&top)]
}

/// [`busybox_layers`] as uncompressed tar layers: every file's bytes sit at a blob
/// offset that an independent tar reader (GNU `tar -tvR`) can tell.
pub fn busybox_tar_layers(big: usize) -> Vec<Layer> {
    let (base, top) = busybox_entries(big);
    vec![Layer::tar(&base), Layer::tar(&top)]
}

/// The entries of the two layers of [`busybox_layers`].
fn busybox_entries(big: usize) -> (Vec<Entry>, Vec<Entry>) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut base = vec![
        Entry::dir("bin", 0o755),
        Entry::dir("etc", 0o755),
        Entry::dir("tmp", 0o1777),
        Entry::file("bin/busybox", &busybox, 0o755),
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
            0o644,
        ),
        Entry::file("etc/group", b"root:x:0:\nalice:x:1000:\n", 0o644),
    ];
    for applet in [
        "sh", "cat", "echo", "ls", "id", "rm", "stat", "true", "sleep",
    ] {
        base.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    let top = vec![
        Entry::dir("data", 0o755),
        Entry::file("etc/motd", b"hello from layer two\n", 0o644),
        Entry::file("data/big", &pseudo_random(7, big), 0o600),
        Entry::file("bin/.wh.ls", b"", 0o644),
    ];
    (base, top)
}

/// Where each regular file's bytes lie in an uncompressed tar `blob` (`(offset, size)`),
/// as GNU tar (not Skiff, nor the `tar` crate that builds the fixtures) reports it:
/// `tar -tvR` prints each member's header block and size, and the data follows that
/// 512-byte header (the fixtures write no long-name or PAX headers). Keyed by path
/// without `./`.
pub fn gnu_tar_data_offsets(blob: &[u8]) -> std::collections::HashMap<String, (u64, u64)> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("tar")
        .args(["-tvR", "--full-time", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("GNU tar is installed");
    let mut stdin = child.stdin.take().expect("tar stdin");
    let data = blob.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("running tar -tvR");
    writer.join().expect("feeding tar").expect("writing to tar");
    assert!(out.status.success(), "tar -tvR failed");
    let mut offsets = std::collections::HashMap::new();
    // "block 12: -rw-r--r-- 0/0 21 2023-11-14 22:13:20 etc/motd"
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = line.strip_prefix("block ") else {
            continue;
        };
        let (block, rest) = rest.split_once(": ").expect("tar -R line");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if !fields.first().is_some_and(|m| m.starts_with('-')) || fields.len() < 6 {
            continue;
        }
        let block: u64 = block.trim().parse().expect("tar block number");
        let size: u64 = fields[2].parse().expect("tar member size");
        let path = fields[5..].join(" ");
        offsets.insert(
            path.trim_start_matches("./").to_string(),
            ((block + 1) * 512, size),
        );
    }
    offsets
}

/// Builds the [`busybox_layers`] image (for this host's platform, Cmd `/bin/sh`) and
/// pushes it as `repo:latest` to the registry at `host`.
pub async fn push_busybox(host: &str, repo: &str, big: usize) -> BuiltImage {
    let image = build_image(busybox_layers(big), &Platform::host(), &["/bin/sh"]);
    push_built(&crate::client(host), repo, "latest", &image).await;
    image
}
