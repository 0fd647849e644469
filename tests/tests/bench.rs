//! `skiff pull` vs `skopeo copy` of the same ~80 MB image from the same local registry,
//! in the same run. A measurement, not a test: it asserts only correctness and prints
//! the times. Run: `cargo test -p skiff-tests --test bench -- --ignored --nocapture`.

use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, pseudo_random, Entry, Layer};
use skiff_tests::registry::Registry;
use std::process::Command;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn pull_vs_skopeo_copy() {
    let reg = Registry::start();
    // Four 20 MiB layers: three incompressible (gzip), one text-like (gzip shrinks it).
    let mut layers: Vec<Layer> = (0..3)
        .map(|i| {
            Layer::tar_gzip(&[Entry::file(
                &format!("data/{i}.bin"),
                &pseudo_random(100 + i, 20 << 20),
                0o644,
            )])
        })
        .collect();
    let text: Vec<u8> = (0..(20u32 << 20))
        .map(|i| b"skiff lazily pulls layers\n"[(i % 26) as usize])
        .collect();
    layers.push(Layer::tar_gzip(&[Entry::file("data/text", &text, 0o644)]));
    let total: usize = layers.iter().map(|l| l.blob.len()).sum();
    fixtures::push_image(&reg.host(), "bench/img:v1", layers).await;
    let reference = reg.reference("bench/img:v1");

    // Build the binary outside the timed region.
    skiff_tests::cli::skiff_bin();
    let mut skiff_times = Vec::new();
    let mut skopeo_times = Vec::new();
    for _ in 0..5 {
        let root = tempfile::tempdir().unwrap();
        let skiff = Skiff::new(root.path());
        let t = Instant::now();
        let out = skiff.run(&["pull", "-q", &reference]);
        skiff_times.push(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let out = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", dir.path().join("out").display()))
            .output()
            .unwrap();
        skopeo_times.push(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mb = total as f64 / 1e6;
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!("image: {mb:.1} MB in 4 layers, local docker-registry");
    println!(
        "skiff pull:  {} (best {:.2}s, {:.0} MB/s)",
        fmt(&skiff_times),
        best(&skiff_times),
        mb / best(&skiff_times)
    );
    println!(
        "skopeo copy: {} (best {:.2}s, {:.0} MB/s)",
        fmt(&skopeo_times),
        best(&skopeo_times),
        mb / best(&skopeo_times)
    );
}
