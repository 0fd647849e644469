//! `skiff exec` into a container running on an image's lazy FUSE view: it reads the
//! image's files (fetched on demand) and what the container wrote to its upper.

use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::push_busybox;
use skiff_tests::registry::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reads_the_lazy_view_and_the_containers_writes() {
    let reg = Registry::start();
    push_busybox(&reg.host(), "exec/busybox", 1 << 20).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());
    let image = reg.reference("exec/busybox:latest");

    let out = skiff.run(&[
        "run",
        "-d",
        "--name",
        "lazy",
        &image,
        "sh",
        "-c",
        "echo mine > /written; while :; do sleep 0.05; done",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut written = String::new();
    for _ in 0..500 {
        let out = skiff.run(&["exec", "lazy", "cat", "/written"]);
        written = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(written, "mine\n");
    let out = skiff.run(&["exec", "lazy", "cat", "/etc/motd"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );
    let out = skiff.run(&["exec", "-u", "alice", "lazy", "id", "-u"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n",
        "{}",
        describe(&out)
    );
    let out = skiff.run(&["stop", "-t", "0", "lazy"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}
