//! Interop with skopeo: images skopeo pushes are pulled by `skiff pull` byte for byte,
//! and images Skiff pushes are copied by skopeo byte for byte.

use skiff_proto::digest::Digest;
use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, build_image, write_oci_layout, Entry, Layer};
use skiff_tests::registry::Registry;
use std::process::Command;

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("running skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gzip_layers() -> Vec<Layer> {
    vec![
        Layer::tar_gzip(&[
            Entry::dir("etc", 0o755),
            Entry::file("etc/os-release", b"NAME=skiff\n", 0o644),
        ]),
        Layer::tar_gzip(&[Entry::file(
            "opt/data.bin",
            &fixtures::pseudo_random(21, 600_000),
            0o644,
        )]),
    ]
}

#[test]
fn skiff_pulls_what_skopeo_pushed() {
    let reg = Registry::start();
    let image = build_image(
        gzip_layers(),
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), "v1", &image);
    let src = format!("oci:{}:v1", layout.path().display());

    // As OCI (layers kept as they are) and converted to Docker schema 2.
    for (repo, format, layer_type) in [
        (
            "skopeo/oci",
            "oci",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "skopeo/docker",
            "v2s2",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let dest = format!("docker://{}/{repo}:v1", reg.host());
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--format",
            format,
            &src,
            &dest,
        ]);

        let root = tempfile::tempdir().unwrap();
        let skiff = Skiff::new(root.path());
        let reference = reg.reference(&format!("{repo}:v1"));
        let out = skiff.run(&["pull", &reference]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for layer in &image.layers {
            let path = root
                .path()
                .join("blobs/sha256")
                .join(Digest::of(&layer.blob).hex());
            assert_eq!(
                std::fs::read(&path).unwrap(),
                layer.blob,
                "{repo}: {}",
                path.display()
            );
        }
        let out = skiff.run(&["inspect", "--local", "--format", "json", &reference]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for l in v["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], layer_type, "{repo}");
        }
        if format == "oci" {
            assert_eq!(v["digest"], image.digest.to_string());
        } else {
            assert_eq!(
                v["mediaType"],
                "application/vnd.docker.distribution.manifest.v2+json"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_what_skiff_pushed() {
    let reg = Registry::start();
    let image = fixtures::push_image(&reg.host(), "pushed/app:v1", fixtures::sample_layers()).await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("dir");
    let src = format!("docker://{}/pushed/app:v1", reg.host());
    let dest_arg = format!("dir:{}", dest.display());
    tokio::task::spawn_blocking(move || {
        skopeo(&["copy", "--src-tls-verify=false", &src, &dest_arg])
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(dest.join("manifest.json")).unwrap(),
        image.manifest_bytes
    );
    for layer in &image.layers {
        let got = std::fs::read(dest.join(Digest::of(&layer.blob).hex())).unwrap();
        assert_eq!(got, layer.blob);
    }
}
