//! `skiff commit`, `push`, `tag` and `rmi` end to end: a container's changes (a file
//! written, a file deleted, a directory replaced) become a layer that a cold
//! `skiff run` on a fresh root, `skiff mount`, and `skopeo copy` + `umoci unpack` all
//! show the same way; the image runs locally before it is pushed; base layers reach
//! another repository by cross-repository mount and another registry by streaming.
//!
//! `skiff push` writes the committed layer as eStargz by default, as zstd:chunked
//! with `--format zstd:chunked` (both read lazily by a cold run), as plain gzip with
//! `--format gzip`; all three unpack to the same tree, as does `skiff convert
//! --format zstd:chunked` of the gzip push.
//!
//! Needs root, `docker-registry`, `skopeo`, `umoci`, `fusermount3`, `zstd`.

use skiff_proto::digest::Digest;
use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::push_busybox;
use skiff_tests::guard::ContainerGuard;
use skiff_tests::proxy::FaultProxy;
use skiff_tests::registry::Registry;
use skiff_tests::walk::walk;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What the container changes in the busybox image: a new file (mode 0640, owned by
/// alice) with a second hard link, `/etc/motd` (of the lower layer) deleted, and the
/// lower `/data` (holding `big`) replaced by a new directory holding only `only`.
const CHANGES: &str = "echo committed > /new.txt \
    && busybox chmod 640 /new.txt && busybox chown 1000:1000 /new.txt \
    && busybox ln /new.txt /hard.txt \
    && rm /etc/motd \
    && rm -rf /data && busybox mkdir /data && echo only > /data/only";

/// What a container of the committed image prints for [`SHOW`].
const SHOWN: &str = "committed\ncommitted\nmotd=1\nonly\n640 1000 1000\n";
const SHOW: &str = "cat /new.txt /hard.txt; test -e /etc/motd; echo motd=$?; \
    busybox ls -A /data; stat -c '%a %u %g' /new.txt";

fn ok(out: &Output, what: &str) -> String {
    assert_eq!(out.status.code(), Some(0), "{what}: {}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output, what: &str) -> String {
    assert_ne!(
        out.status.code(),
        Some(0),
        "{what} succeeded: {}",
        describe(out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        describe(&out)
    );
}

/// (kind, mode, uid, gid, content digest or link target) of one path: what the
/// trees are compared on (not mtimes: umoci stamps what it creates with the time of
/// the unpack).
fn meta(p: &Path) -> (char, u32, u32, u32, String) {
    let md = std::fs::symlink_metadata(p).unwrap();
    let ft = md.file_type();
    let (kind, what) = if ft.is_dir() {
        ('d', String::new())
    } else if ft.is_symlink() {
        ('l', std::fs::read_link(p).unwrap().display().to_string())
    } else if ft.is_file() {
        ('f', Digest::of(&std::fs::read(p).unwrap()).to_string())
    } else if ft.is_char_device() {
        ('c', md.rdev().to_string())
    } else {
        ('?', String::new())
    };
    (kind, md.mode(), md.uid(), md.gid(), what)
}

/// The files eStargz adds to a layer's tar, which an unpack by ordinary tools
/// extracts and skiff's view hides.
const ESTARGZ_FILES: [&str; 3] = [
    "stargz.index.json",
    ".prefetch.landmark",
    ".no.prefetch.landmark",
];

/// `skopeo copy` of `reference` into an OCI layout under `dir`, then `umoci unpack`
/// of it; the rootfs, without eStargz's own files.
fn unpack(reference: &str, dir: &Path, name: &str) -> PathBuf {
    unpack_with(reference, dir, name, &[])
}

/// [`unpack`] with more `skopeo copy` arguments.
fn unpack_with(reference: &str, dir: &Path, name: &str, skopeo_args: &[&str]) -> PathBuf {
    let layout = dir.join(format!("layout-{name}"));
    let source = format!("docker://{reference}");
    let destination = format!("oci:{}:{name}", layout.display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(skopeo_args);
    args.extend([source.as_str(), destination.as_str()]);
    tool("skopeo", &args);
    let bundle = dir.join(format!("bundle-{name}"));
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{name}", layout.display()),
            &bundle.display().to_string(),
        ],
    );
    let rootfs = bundle.join("rootfs");
    for extra in ESTARGZ_FILES {
        let _ = std::fs::remove_file(rootfs.join(extra));
    }
    rootfs
}

/// The manifest of `reference` as the registry holds it (`skopeo inspect --raw`).
fn raw_manifest(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect: {}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_same_tree(umoci: &Path, mounted: &Path) {
    let (a, b) = (walk(umoci), walk(mounted));
    assert_eq!(a, b, "umoci and skiff mount list different paths");
    let diffs: Vec<String> = a
        .iter()
        .filter_map(|rel| {
            let (ma, mb) = (meta(&umoci.join(rel)), meta(&mounted.join(rel)));
            (ma != mb).then(|| format!("/{}: umoci {ma:?}, skiff {mb:?}", rel.display()))
        })
        .collect();
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

/// A registry holding busybox as `PREFIX/base:latest`, and a root (`work/a`) where
/// container "changer" of it ran a command making changes.
struct Changed {
    reg: Registry,
    work: tempfile::TempDir,
    a: Skiff,
    _guard_a: ContainerGuard,
    /// The busybox reference.
    base: String,
}

/// [`Changed`] after `changes` ran (`None`: a tool is missing and the test skips).
fn changed(prefix: &str, changes: &str) -> Option<Changed> {
    if !skiff_tests::tools_or_skip(
        &["docker-registry", "skopeo", "umoci", "fusermount3", "zstd"],
        "FUSE mounts, containers, umoci unpack with owners",
    ) {
        return None;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = Registry::start();
    let repo = format!("{prefix}/base");
    rt.block_on(push_busybox(&reg.host(), &repo, 64 << 10));
    let base = reg.reference(&format!("{repo}:latest"));
    let work = tempfile::tempdir().unwrap();
    let a = Skiff::new(&work.path().join("a"));
    let guard = a.guard(work.path());
    ok(
        &a.run(&["run", "--name", "changer", &base, "sh", "-c", changes]),
        "the changing container",
    );
    Some(Changed {
        reg,
        work,
        a,
        _guard_a: guard,
        base,
    })
}

#[test]
fn a_committed_container_pushed_and_run_elsewhere_shows_its_changes() {
    let Some(Changed {
        reg,
        work,
        a,
        _guard_a,
        base,
    }) = changed("commit", CHANGES)
    else {
        return;
    };
    let new = reg.reference("commit/new:v1");
    let digest = ok(
        &a.run(&[
            "commit",
            "-m",
            "the change",
            "--change",
            "ENV COMMITTED=yes",
            "changer",
            &new,
        ]),
        "skiff commit",
    );
    assert!(digest.trim().starts_with("sha256:"), "{digest}");
    let images = ok(&a.run(&["images"]), "skiff images");
    assert!(images.contains("commit/new:v1"), "{images}");

    // Before any push: the new layer comes from the local store.
    let out = a.run(&["run", "--rm", &new, "sh", "-c", SHOW]);
    assert_eq!(ok(&out, "run before push"), SHOWN);
    let out = a.run(&["run", "--rm", &new, "sh", "-c", "echo $COMMITTED"]);
    assert_eq!(ok(&out, "the --change"), "yes\n");

    ok(&a.run(&["push", &new]), "skiff push");

    // A cold run on a fresh root.
    let b = Skiff::new(&work.path().join("b"));
    let _guard_b = b.guard(work.path());
    let out = b.run(&["run", "--rm", &new, "sh", "-c", SHOW]);
    assert_eq!(ok(&out, "cold run of the pushed image"), SHOWN);

    // umoci's unpack of what skopeo copies out of the registry shows the same tree
    // as skiff's mount of it.
    let rootfs = unpack(&new, work.path(), "new");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("new.txt")).unwrap(),
        "committed\n"
    );
    let md = std::fs::metadata(rootfs.join("new.txt")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o640, 1000, 1000)
    );
    let hard = std::fs::metadata(rootfs.join("hard.txt")).unwrap();
    assert_eq!(
        hard.ino(),
        md.ino(),
        "hard.txt is not a hard link of new.txt"
    );
    assert!(!rootfs.join("etc/motd").exists(), "etc/motd is back");
    assert!(rootfs.join("etc/passwd").exists());
    let data: Vec<_> = std::fs::read_dir(rootfs.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(data, ["only"]);

    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ok(
        &b.run(&["mount", &new, &mnt.display().to_string(), "-d"]),
        "skiff mount",
    );
    assert_same_tree(&rootfs, &mnt);
    ok(
        &b.run(&["umount", &mnt.display().to_string()]),
        "skiff umount",
    );

    // Another name in another repository of the same registry: the base layers are
    // mounted there from commit/base.
    let other = reg.reference("commit/other:v2");
    ok(&a.run(&["tag", &new, &other]), "skiff tag");
    let images = ok(&a.run(&["images"]), "skiff images");
    assert!(images.contains("commit/other:v2"), "{images}");
    ok(&a.run(&["push", &other]), "push of the tag");
    let c = Skiff::new(&work.path().join("c"));
    let _guard_c = c.guard(work.path());
    let out = c.run(&["run", "--rm", &other, "cat", "/data/only"]);
    assert_eq!(ok(&out, "run of the tag"), "only\n");

    ok(
        &a.run(&["run", "--name", "user", &new, "true"]),
        "a container of the new image",
    );

    // On another registry: the base layers are streamed there from the first.
    let reg2 = Registry::start();
    let elsewhere = reg2.reference("copied/app:v3");
    ok(
        &a.run(&["tag", &new, &elsewhere]),
        "tag for the other registry",
    );
    ok(&a.run(&["push", &elsewhere]), "push to the other registry");
    drop(reg);
    let d = Skiff::new(&work.path().join("d"));
    let _guard_d = d.guard(work.path());
    let out = d.run(&["run", "--rm", &elsewhere, "sh", "-c", SHOW]);
    assert_eq!(ok(&out, "run from the other registry"), SHOWN);

    // rmi: the base image is in use by "changer"; a second name is only untagged;
    // the last name of an image in use needs --force, and then its layer goes.
    let err = failed(&a.run(&["rmi", &base]), "rmi of an image in use");
    assert!(err.contains("changer"), "{err}");
    let out = ok(&a.run(&["rmi", &other]), "rmi of a second name");
    assert!(
        out.contains("Untagged") && !out.contains("Deleted"),
        "{out}"
    );
    ok(&a.run(&["rmi", &elsewhere]), "rmi of a third name");
    let err = failed(&a.run(&["rmi", &new]), "rmi of the new image in use");
    assert!(err.contains("user"), "{err}");
    let out = ok(&a.run(&["rmi", "--force", &new]), "rmi --force");
    assert!(out.contains("Deleted: sha256:"), "{out}");
    let images = ok(&a.run(&["images"]), "skiff images");
    assert!(!images.contains("commit/new"), "{images}");
    assert!(!images.contains("commit/other"), "{images}");
    assert!(images.contains("commit/base"), "{images}");
}

/// The layer [`push_writes_estargz_by_default_and_gzip_or_zstd_chunked_on_request`]
/// commits, with a 6 MiB file no command reads: a lazy run fetches little of the
/// layer.
const CHANGES_WITH_BIG_FILE: &str = "echo committed > /new.txt \
    && busybox chmod 640 /new.txt && busybox chown 1000:1000 /new.txt \
    && busybox ln /new.txt /hard.txt \
    && rm /etc/motd \
    && rm -rf /data && busybox mkdir /data && echo only > /data/only \
    && busybox dd if=/dev/urandom of=/random.bin bs=1048576 count=6 2>/dev/null";

/// Bytes asked for by a `Range: bytes=A-B` header.
fn range_len(range: &str) -> u64 {
    let (a, b) = range
        .trim_start_matches("bytes=")
        .split_once('-')
        .unwrap_or_else(|| panic!("range {range:?}"));
    let a: u64 = a.parse().unwrap();
    b.parse::<u64>().map_or(u64::MAX, |b| b + 1 - a)
}

/// A cold run on a fresh root (under `work/root`) of `name` in `reg`, through a
/// proxy that records requests, shows the committed changes, and reads the committed
/// `layer` (a descriptor in the pushed manifest) with Range requests only, and less
/// than half of it (the 6 MiB file is never read).
fn assert_lazy_cold_run(
    reg: &Registry,
    work: &Path,
    root: &str,
    name: &str,
    layer: &serde_json::Value,
) {
    let proxy = FaultProxy::start(reg.addr());
    let via = format!("{}/{name}", proxy.host());
    let b = Skiff::new(&work.join(root));
    let _guard_b = b.guard(work);
    let out = b.run(&[
        "run",
        "--rm",
        "--background-fetch=false",
        &via,
        "sh",
        "-c",
        SHOW,
    ]);
    assert_eq!(ok(&out, &format!("cold run of {name}")), SHOWN);
    let digest = layer["digest"].as_str().unwrap();
    let size = layer["size"].as_u64().unwrap();
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(digest))
        .collect();
    assert!(!gets.is_empty(), "the layer of {name} was not read");
    let whole: Vec<_> = gets.iter().filter(|r| r.range.is_none()).collect();
    assert!(
        whole.is_empty(),
        "the layer of {name} was fetched whole: {whole:?}"
    );
    let fetched: u64 = gets
        .iter()
        .map(|r| range_len(r.range.as_deref().unwrap()))
        .fold(0, u64::saturating_add);
    assert!(
        fetched < size / 2,
        "{fetched} of the {name} layer's {size} bytes fetched: {gets:?}"
    );
}

#[test]
fn push_writes_estargz_by_default_and_gzip_or_zstd_chunked_on_request() {
    let Some(Changed {
        reg,
        work,
        a,
        _guard_a,
        ..
    }) = changed("fmt", CHANGES_WITH_BIG_FILE)
    else {
        return;
    };
    let lazy = reg.reference("fmt/estargz:v1");
    let plain = reg.reference("fmt/gzip:v1");
    let chunked = reg.reference("fmt/zstd:v1");
    ok(&a.run(&["commit", "changer", &lazy]), "skiff commit");
    ok(&a.run(&["tag", &lazy, &plain]), "skiff tag");
    ok(&a.run(&["tag", &lazy, &chunked]), "skiff tag");

    ok(&a.run(&["push", &lazy]), "skiff push (eStargz)");
    ok(
        &a.run(&["push", "--format", "gzip", &plain]),
        "skiff push --format gzip",
    );
    ok(
        &a.run(&["push", "--format", "zstd:chunked", &chunked]),
        "skiff push --format zstd:chunked",
    );

    // The base layers are the same blobs in all three; only the committed layer
    // differs, and only the eStargz and zstd:chunked pushes' carry annotations.
    let (m_lazy, m_plain, m_chunked) = (
        raw_manifest(&lazy),
        raw_manifest(&plain),
        raw_manifest(&chunked),
    );
    let (l_lazy, l_plain, l_chunked) = (
        m_lazy["layers"].as_array().unwrap(),
        m_plain["layers"].as_array().unwrap(),
        m_chunked["layers"].as_array().unwrap(),
    );
    assert_eq!(l_lazy.len(), l_plain.len());
    assert_eq!(l_chunked.len(), l_plain.len());
    let n = l_lazy.len();
    assert_eq!(l_lazy[..n - 1], l_plain[..n - 1], "the base layers differ");
    assert_eq!(
        l_chunked[..n - 1],
        l_plain[..n - 1],
        "the base layers differ"
    );
    let (esgz, gz, zst) = (&l_lazy[n - 1], &l_plain[n - 1], &l_chunked[n - 1]);
    assert!(
        esgz["mediaType"].as_str().unwrap().ends_with("gzip"),
        "{esgz}"
    );
    assert!(
        esgz["annotations"]["containerd.io/snapshot/stargz/toc.digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "no toc.digest annotation: {esgz}"
    );
    assert!(
        esgz["annotations"]["io.containers.estargz.uncompressed-size"].is_string(),
        "{esgz}"
    );
    assert!(gz["mediaType"].as_str().unwrap().ends_with("gzip"), "{gz}");
    assert!(gz.get("annotations").is_none(), "{gz}");
    assert_ne!(esgz["digest"], gz["digest"]);
    assert_eq!(
        zst["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
        "{zst}"
    );
    let zann = &zst["annotations"];
    assert!(
        zann["io.github.containers.zstd-chunked.manifest-checksum"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "no manifest-checksum annotation: {zst}"
    );
    let position = |key: &str| -> Vec<u64> {
        zann[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} annotation: {zst}"))
            .split(':')
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let toc = position("io.github.containers.zstd-chunked.manifest-position");
    assert_eq!((toc.len(), toc[3]), (4, 1), "{zst}");
    let tar_split = position("io.github.containers.zstd-chunked.tarsplit-position");
    assert_eq!(tar_split.len(), 3, "{zst}");
    assert!(toc[0] + toc[1] < zst["size"].as_u64().unwrap(), "{zst}");
    // zstd:chunked keeps the committed tar as it is: the diff_ids are the gzip push's.
    let diff_ids = |reference: &str| {
        let out = Command::new("skopeo")
            .args(["inspect", "--config", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect --config: {}",
            describe(&out)
        );
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        config["rootfs"]["diff_ids"].clone()
    };
    let chunked_diff_ids = diff_ids(&chunked);
    assert_eq!(chunked_diff_ids, diff_ids(&plain));
    // Plain `zstd -d` reads the layer (skipping the TOC, tar-split and footer
    // frames) as exactly the tar its diff_id names.
    let stored = reg.stored_blob(&zst["digest"].as_str().unwrap().parse().unwrap());
    let out = Command::new("zstd")
        .arg("-dc")
        .arg(&stored)
        .output()
        .unwrap();
    assert!(out.status.success(), "zstd -dc: {}", describe(&out));
    assert_eq!(
        Digest::of(&out.stdout).to_string(),
        chunked_diff_ids[n - 1].as_str().unwrap()
    );

    // Cold runs of the eStargz and zstd:chunked images on fresh roots read their
    // layers lazily.
    assert_lazy_cold_run(&reg, work.path(), "b", "fmt/estargz:v1", esgz);
    assert_lazy_cold_run(&reg, work.path(), "c", "fmt/zstd:v1", zst);

    // Ordinary tools unpack all three to the same tree.
    let from_estargz = unpack(&lazy, work.path(), "estargz");
    let from_gzip = unpack(&plain, work.path(), "gzip");
    // umoci 0.4.7 (Debian 12's) cannot unpack tar+zstd layers: skopeo recompresses
    // the layer as gzip on the way, decoding the zstd:chunked stream as
    // containers/image does.
    let from_zstd = unpack_with(
        &chunked,
        work.path(),
        "zstd",
        &["--dest-compress", "--dest-compress-format", "gzip"],
    );
    assert_eq!(
        std::fs::read_to_string(from_estargz.join("new.txt")).unwrap(),
        "committed\n"
    );
    assert_same_tree(&from_gzip, &from_estargz);
    assert_same_tree(&from_gzip, &from_zstd);

    // `skiff convert --format zstd:chunked` rewrites every layer of the gzip push
    // (the base's too) the same way, to the same tree.
    let converted = reg.reference("fmt/converted:v1");
    ok(
        &a.run(&[
            "convert",
            "-q",
            "--format",
            "zstd:chunked",
            &plain,
            &converted,
        ]),
        "skiff convert --format zstd:chunked",
    );
    for layer in raw_manifest(&converted)["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{layer}"
        );
        assert!(
            layer["annotations"]["io.github.containers.zstd-chunked.manifest-position"].is_string(),
            "{layer}"
        );
    }
    let from_converted = unpack_with(
        &converted,
        work.path(),
        "converted",
        &["--dest-compress", "--dest-compress-format", "gzip"],
    );
    assert_same_tree(&from_gzip, &from_converted);
}
