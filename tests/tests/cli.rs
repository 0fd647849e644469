//! The `skiff` binary: pull, inspect, images against a real registry.

use base64::Engine as _;
use skiff_proto::digest::Digest;
use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, build_image, push_built};
use skiff_tests::proxy::{Fault, FaultProxy, Rule};
use skiff_tests::registry::Registry;
use std::io::Write;
use std::process::{Output, Stdio};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn blob_file(root: &std::path::Path, d: &Digest) -> std::path::PathBuf {
    root.join("blobs/sha256").join(d.hex())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_inspect_and_images() {
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "cli/app:v1", fixtures::sample_layers()).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let reference = reg.reference("cli/app:v1");

    let out = skiff.run(&["pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&img.digest.to_string()),
        "{}",
        stdout(&out)
    );
    for layer in &img.layers {
        let d = Digest::of(&layer.blob);
        assert_eq!(
            std::fs::read(blob_file(root.path(), &d)).unwrap(),
            layer.blob
        );
    }
    assert_eq!(
        std::fs::read(blob_file(root.path(), &img.digest)).unwrap(),
        img.manifest_bytes
    );
    assert_eq!(
        std::fs::read(blob_file(root.path(), &img.manifest.config.digest)).unwrap(),
        img.config
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );

    // A second pull finds everything in the store.
    let out = skiff.run(&["pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("0 B fetched"), "{}", stdout(&out));

    for extra in [&[][..], &["--local"][..]] {
        let mut args = vec!["inspect", reference.as_str(), "--format", "json"];
        args.extend_from_slice(extra);
        let out = skiff.run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["digest"], img.digest.to_string());
        assert_eq!(v["reference"], format!("{reference}"));
        assert_eq!(
            v["platform"],
            skiff_proto::image::Platform::host().to_string()
        );
        let layers = v["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3);
        for (l, want) in layers.iter().zip(&img.layers) {
            assert_eq!(l["size"], want.blob.len() as u64);
            assert_eq!(l["mediaType"], want.media_type);
            assert_eq!(l["digest"], Digest::of(&want.blob).to_string());
        }
        assert_eq!(
            v["config"]["rootfs"]["diff_ids"][1],
            img.layers[1].diff_id.to_string()
        );
    }
    let out = skiff.run(&["inspect", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("application/vnd.oci.image.layer.v1.tar+gzip"));

    let out = skiff.run(&["images", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["reference"], reference);
    assert_eq!(v[0]["manifest_digest"], img.digest.to_string());
    assert_eq!(v[0]["layers"], 3);
    let out = skiff.run(&["images"]);
    assert!(stdout(&out).contains(&reference), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_and_exit_codes() {
    let reg = Registry::start();
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let out = skiff.run(&["pull", "Bad/Name"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("\"Bad\""), "{}", stderr(&out));
    let out = skiff.run(&["pull", "busybox:bad!tag"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("bad!tag"), "{}", stderr(&out));
    fixtures::push_image(&reg.host(), "exists:v1", fixtures::sample_layers()).await;
    let out = skiff.run(&["pull", &reg.reference("exists:v2")]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("manifest unknown"),
        "{}",
        stderr(&out)
    );
    let out = skiff.run(&["pull", "--platform", "linux", &reg.reference("exists:v1")]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("os/arch"), "{}", stderr(&out));
    for cmd in ["pull", "inspect", "images"] {
        let out = skiff.run(&[cmd, "--help"]);
        assert!(out.status.success());
        assert!(stdout(&out).contains("--root"), "{cmd} --help");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_layer_never_lands_in_the_store() {
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "bad:v1", fixtures::sample_layers()).await;
    let proxy = FaultProxy::start(reg.addr());
    let layer = img.manifest.layers[1].digest;
    proxy.add_rule(Rule::new(
        &format!("/blobs/{layer}"),
        Fault::CorruptByte,
        None,
    ));
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let out = skiff.run(&["pull", &format!("{}/bad:v1", proxy.host())]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
    assert!(!blob_file(root.path(), &layer).exists());
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
    let out = skiff.run(&["images", "--format", "json"]);
    assert_eq!(stdout(&out).trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_flags_and_docker_config() {
    let reg = Registry::start_basic("dave", "hunter2");
    let image = fixtures::push_sample_as(&reg.host(), "dave", "hunter2", "locked", "v1").await;
    let reference = reg.reference("locked:v1");
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());

    let out = skiff.run(&["pull", &reference]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    let mut child = skiff
        .command()
        .args(["pull", "--username", "dave", "--password-stdin", &reference])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let cfg = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("dave:hunter2");
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let root2 = tempfile::tempdir().unwrap();
    let out = Skiff::new(root2.path())
        .command()
        .env("DOCKER_CONFIG", cfg.path())
        .args(["inspect", "--format", "json", &reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], image.digest.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_selects_platform() {
    let reg = Registry::start();
    let platforms: Vec<skiff_proto::image::Platform> = ["linux/amd64", "linux/arm64/v8"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let (index_digest, images) = fixtures::push_index(&reg.host(), "multi:v1", &platforms).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let out = skiff.run(&[
        "pull",
        "--platform",
        "linux/arm64",
        &reg.reference("multi:v1"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = skiff.run(&["images", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["platform"], "linux/arm64/v8");
    assert_eq!(v[0]["manifest_digest"], images[1].1.digest.to_string());
    assert_eq!(v[0]["index_digest"], index_digest.to_string());
    let arm_layer = Digest::of(&images[1].1.layers[0].blob);
    let amd_layer = Digest::of(&images[0].1.layers[0].blob);
    assert!(blob_file(root.path(), &arm_layer).exists());
    assert!(!blob_file(root.path(), &amd_layer).exists());
}

/// The registry must sit on a non-loopback address for this check, and no test may send
/// traffic off this machine's loopback: so the check runs in a network namespace of its
/// own (`unshare --net`) whose `lo` also carries 192.0.2.1 (TEST-NET-1), re-executing
/// this test binary there for `plain_http_inner`.
#[test]
fn plain_http_only_for_loopback_or_insecure_registries() {
    run_in_own_netns("plain_http_inner");
}

/// Re-executes this test binary for the ignored test `inner` in a network namespace of
/// its own whose `lo` also carries 192.0.2.1 (TEST-NET-1), passed to it as
/// `SKIFF_TEST_NETNS_IP`, and checks that it ran and passed.
fn run_in_own_netns(inner: &str) {
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        r#"ip link set lo up && ip addr add 192.0.2.1/32 dev lo && exec "$0" --exact {inner} --ignored --nocapture"#
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .arg(&exe)
        .env("SKIFF_TEST_NETNS_IP", "192.0.2.1")
        .output()
        .expect("running unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the inner test did not run: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the network namespace set up by plain_http_only_for_loopback_or_insecure_registries"]
async fn plain_http_inner() {
    let ip: std::net::IpAddr = std::env::var("SKIFF_TEST_NETNS_IP")
        .expect("SKIFF_TEST_NETNS_IP is set by the outer test")
        .parse()
        .unwrap();
    let reg = Registry::start_with(skiff_tests::registry::RegistryOptions {
        bind_ip: Some(ip),
        ..Default::default()
    });
    let c = skiff_proto::registry::Client::new(
        &reg.host(),
        skiff_proto::registry::ClientOptions {
            insecure_registries: vec![reg.host()],
            ..skiff_tests::test_client_options()
        },
    )
    .unwrap();
    let image = build_image(
        fixtures::sample_layers(),
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    push_built(&c, "lan/app", "v1", &image).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let reference = reg.reference("lan/app:v1");
    // Not loopback and not named insecure: Skiff speaks TLS, which this registry lacks.
    let out = skiff.run(&["inspect", &reference]);
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    assert!(stderr(&out).contains("https://"), "{}", stderr(&out));
    let out = skiff.run(&["pull", "--insecure-registry", &reg.host(), &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&image.digest.to_string()));
}

/// HTTPS on a non-loopback registry (in a network namespace of its own, as above): a
/// certificate from a CA the system does not trust is refused at once with a clear
/// error (no retries), and the same registry works once the CA is trusted
/// (`SSL_CERT_FILE`, which the platform verifier reads as OpenSSL does).
#[test]
fn https_registry_is_verified_and_an_untrusted_one_refused() {
    run_in_own_netns("https_inner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only inside the network namespace set up by https_registry_is_verified_and_an_untrusted_one_refused"]
async fn https_inner() {
    let ip =
        std::env::var("SKIFF_TEST_NETNS_IP").expect("SKIFF_TEST_NETNS_IP is set by the outer test");
    // A throwaway CA and a server certificate for the registry's address.
    let pki = tempfile::tempdir().unwrap();
    let p = |f: &str| pki.path().join(f);
    skiff_tests::pki::ca_and_certs(
        pki.path(),
        &[("srv", "registry", &format!("subjectAltName=IP:{ip}"))],
    );

    // Push over plain HTTP on loopback; serve the same storage over HTTPS on `ip`.
    let plain = Registry::start();
    let image = build_image(
        fixtures::sample_layers(),
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    push_built(&skiff_tests::client(&plain.host()), "tls/app", "v1", &image).await;
    let reg = Registry::start_with(skiff_tests::registry::RegistryOptions {
        bind_ip: Some(ip.parse().unwrap()),
        storage: Some(plain.storage().to_path_buf()),
        tls: Some((p("srv.crt"), p("srv.key"))),
        ..Default::default()
    });
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let reference = reg.reference("tls/app:v1");

    let out = skiff.run(&["inspect", &reference]);
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("TLS handshake refused"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        !err.contains("attempts"),
        "a certificate refusal was retried: {err}"
    );

    let out = skiff
        .command()
        .env("SSL_CERT_FILE", p("ca.crt"))
        .args(["pull", &reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&image.digest.to_string()),
        "{}",
        stdout(&out)
    );
}
