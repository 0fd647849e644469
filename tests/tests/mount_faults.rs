//! A registry that goes away under a mounted image: the reads that need it fail with
//! EIO, everything already cached keeps working, and reads succeed once it is back.

use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, build_image, push_built, Entry, Layer};
use skiff_tests::proxy::{Fault, FaultProxy, Rule};
use skiff_tests::registry::Registry;
use std::path::{Path, PathBuf};

/// Unmounts on drop, lazily if need be, so a failed assertion leaves nothing mounted.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.0)
                .status();
        }
    }
}

/// Pushes a one-layer image as `repo:v1`.
async fn push_one_layer(reg: &Registry, repo: &str, layer: Layer) -> fixtures::BuiltImage {
    let image = build_image(
        vec![layer],
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    push_built(&skiff_tests::client(&reg.host()), repo, "v1", &image).await;
    image
}

/// `skiff mount -d IMAGE MNT`, which must succeed.
fn mount_detached(skiff: &Skiff, image: &str, mnt: &Path) {
    let out = skiff.run(&["mount", "-d", image, mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_registry_fails_only_uncached_reads_and_recovers() {
    let reg = Registry::start();
    let a = fixtures::pseudo_random(1, 3 << 20);
    let b = fixtures::pseudo_random(2, 3 << 20);
    let layer = Layer::tar(&[
        Entry::dir("data", 0o755),
        Entry::file("data/a", &a, 0o644),
        Entry::file("data/b", &b, 0o644),
    ]);
    push_one_layer(&reg, "faults/data", layer).await;
    let proxy = FaultProxy::start(reg.addr());

    let tmp = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(&tmp.path().join("root"));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mount_detached(&skiff, &format!("{}/faults/data:v1", proxy.host()), &mnt);
    let guard = MountGuard(mnt.clone());
    assert!(is_mounted(&mnt));

    assert!(std::fs::read(mnt.join("data/a")).unwrap() == a);

    // The registry dies: every blob request has its connection dropped.
    proxy.add_rule(Rule::new("/blobs/", Fault::Drop, None));
    let err = std::fs::read(mnt.join("data/b")).expect_err("an uncached read must fail");
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    // What is cached, and the tree itself, still work.
    assert!(std::fs::read(mnt.join("data/a")).unwrap() == a);
    let mut names: Vec<_> = std::fs::read_dir(mnt.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);

    // It comes back: the same read now succeeds with the right bytes.
    proxy.clear_rules();
    assert!(std::fs::read(mnt.join("data/b")).unwrap() == b);

    let out = skiff.run(&["umount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..100 {
        if !is_mounted(&mnt) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!is_mounted(&mnt), "still mounted after skiff umount");
    drop(guard);
}

/// EIO, without a libc dependency for one constant.
fn libc_eio() -> i32 {
    5
}

/// How a read through the mount ended: the exact bytes, EIO, or (a failure) anything
/// else, other bytes above all.
fn right_bytes_or_eio(path: &Path, want: &[u8], what: &str) -> Result<(), ()> {
    match std::fs::read(path) {
        Ok(got) => {
            assert!(
                got == want,
                "{what}: {} read {} bytes that are not its content",
                path.display(),
                got.len()
            );
            Ok(())
        }
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc_eio()), "{what}: {e}");
            Err(())
        }
    }
}

/// A registry that misbehaves under a lazy mount: a flipped byte in a range answer, a
/// registry that ignores Range (answers 200 with the whole blob), and one that stalls
/// the first request for a while. Each read ends with EIO or the right bytes, never
/// other bytes, within a bound; once the registry behaves, every file reads right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_faults_give_eio_or_the_right_bytes_and_the_mount_recovers() {
    let reg = Registry::start();
    // Files of 3 MiB: each is its own chunk of the tar index, far above any
    // neighbour window, so reading one does not bring in the next.
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| fixtures::pseudo_random(40 + i, 3 << 20))
        .collect();
    let mut entries = vec![Entry::dir("data", 0o755)];
    for (i, f) in files.iter().enumerate() {
        entries.push(Entry::file(&format!("data/f{i}"), f, 0o644));
    }
    let image = push_one_layer(&reg, "faults/kinds", Layer::tar(&entries)).await;
    let layer = skiff_proto::Digest::of(&image.layers[0].blob).to_string();
    let proxy = FaultProxy::start(reg.addr());

    let tmp = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(&tmp.path().join("root"));
    let _guard = skiff.guard(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mount_detached(&skiff, &format!("{}/faults/kinds:v1", proxy.host()), &mnt);
    assert!(is_mounted(&mnt));

    let cases = [
        ("a flipped byte", Fault::CorruptByte, None),
        ("Range ignored", Fault::StripRange, None),
        (
            "a 3 s stall, once",
            Fault::Stall(std::time::Duration::from_secs(3)),
            Some(1),
        ),
    ];
    for (i, (what, fault, times)) in cases.iter().enumerate() {
        proxy.clear_rules();
        proxy.clear_requests();
        proxy.add_rule(Rule::new(&layer, fault.clone(), *times).method("GET"));
        let path = mnt.join(format!("data/f{i}"));
        let started = std::time::Instant::now();
        let outcome = right_bytes_or_eio(&path, &files[i], what);
        let took = started.elapsed();
        eprintln!("{what}: {outcome:?} after {took:?}");
        assert!(
            took < std::time::Duration::from_secs(120),
            "{what}: the read took {took:?}"
        );
        // The fault was met: the file was not served from the cache.
        assert!(
            proxy
                .requests()
                .iter()
                .any(|r| r.fault.as_ref() == Some(fault)),
            "{what}: no request met the fault: {:?}",
            proxy.requests()
        );
        if matches!(fault, Fault::CorruptByte) {
            assert_eq!(
                outcome,
                Err(()),
                "{what}: a corrupted chunk is never served"
            );
        }
    }

    // The registry behaves again: every file reads right, the faulted ones included.
    proxy.clear_rules();
    for (i, want) in files.iter().enumerate() {
        assert!(
            std::fs::read(mnt.join(format!("data/f{i}"))).unwrap() == *want,
            "f{i} after recovery"
        );
    }
    let out = skiff.run(&["umount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
