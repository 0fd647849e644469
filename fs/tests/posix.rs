//! POSIX conformance on the writable mount (pjdfstest) and data integrity of a
//! copied-up file (fsx). Both need tools from crates.io and run for a while, so they
//! are ignored by default:
//!
//! ```sh
//! cargo install --locked pjdfstest fsx
//! cargo test -p skiff-fs --test posix -- --ignored --nocapture
//! FSX_OPS=100000 cargo test -p skiff-fs --test posix fsx -- --ignored --nocapture
//! ```

mod common;

use common::*;
use std::process::Command;

#[test]
#[ignore = "needs pjdfstest (cargo install pjdfstest) and ~10 s; run with --ignored"]
fn pjdfstest_passes_at_least_380() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(
        &tmp.path().join("img"),
        &[build_layer(&[
            Item::Dir("etc", 0o755),
            Item::File("etc/hosts", 0o644, b"x\n"),
        ])],
    );
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(
        options(
            &img,
            &tmp.path().join("cache"),
            Some(tmp.path().join("upper")),
        ),
        &mnt,
    );
    let script =
        std::env::var("POSIX_SUITE").unwrap_or_else(|_| "/work/shared/peers/posix-suite.sh".into());
    let out = Command::new("bash")
        .arg(&script)
        .arg(&mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let line = text
        .lines()
        .find(|l| l.contains(" passed, "))
        .expect("pjdfstest summary");
    let passed: u32 = line.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 380, "pjdfstest: {line}");
    drop(m);
}

#[test]
#[ignore = "needs fsx (cargo install fsx); FSX_OPS operations (default 10000); run with --ignored"]
fn fsx_on_a_copied_up_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let img = image(
        &tmp.path().join("img"),
        &[build_layer(&[Item::File("victim", 0o644, &data)])],
    );
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(
        options(
            &img,
            &tmp.path().join("cache"),
            Some(tmp.path().join("upper")),
        ),
        &mnt,
    );
    // Copy the file up with a write that keeps its content, then let fsx loose on it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("victim"))
        .unwrap();
    drop(f);
    assert!(tmp.path().join("upper/victim").exists());
    let ops = std::env::var("FSX_OPS").unwrap_or_else(|_| "10000".into());
    let out = Command::new("fsx")
        .args(["-N", &ops, "-S", "42", "-P"])
        .arg(tmp.path())
        .arg(mnt.join("victim"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fsx: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
}
