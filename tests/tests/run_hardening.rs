//! Issue 16, "any local user can run the image's setuid binaries as root": with a
//! detached container running from an image that holds a setuid-root busybox, an
//! unprivileged host user can neither execute, read nor list anything under the
//! container's rootfs, its upper directory, the chunk cache or its log, while the
//! container itself keeps working. The root was created with the wide modes an older
//! skiff left, so the test also covers tightening an existing root.

use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::{self, build_image, push_built, Entry, Layer};
use skiff_tests::registry::Registry;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `argv` as nobody. runuser drops every id and capability before it execs;
/// `setpriv --reuid` keeps the saved uid 0 and its permitted capabilities until the
/// exec, so its own exec of a target is not what a host user can do.
fn as_nobody(argv: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .args(argv)
        .output()
        .expect("runuser (util-linux)")
}

/// Asserts nobody's `argv` fails with EACCES.
fn refused(argv: &[&str]) {
    let out = as_nobody(argv);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "nobody ran {argv:?}: {}",
        describe(&out)
    );
}

/// Stops and removes the container when the test ends, passed or not, so a failed
/// assertion leaves no FUSE mount or container behind.
struct Cleanup<'a>(&'a Skiff, &'static str);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["stop", "-t", "0", self.1]);
        let _ = self.0.run(&["rm", "--force", self.1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_users_cannot_reach_a_running_containers_tree() {
    let reg = Registry::start();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut layers = fixtures::busybox_layers(1 << 16);
    layers.push(Layer::tar_gzip(&[Entry::file(
        "bin/busybox-suid",
        &busybox,
        0o4755,
    )]));
    let image = build_image(layers, &skiff_proto::image::Platform::host(), &["/bin/sh"]);
    push_built(
        &skiff_tests::client(&reg.host()),
        "hard/suid",
        "latest",
        &image,
    )
    .await;

    // A root an older skiff made: reachable and listable by everyone.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    for sub in ["", "containers", "cache"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        std::fs::set_permissions(root.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let skiff = Skiff::new(&root);
    let _cleanup = Cleanup(&skiff, "suid");
    let out = skiff.run(&[
        "run",
        "-d",
        "--name",
        "suid",
        &reg.reference("hard/suid:latest"),
        "sh",
        "-c",
        "echo started > /tmp/mark; cat /tmp/mark; /bin/busybox-suid echo suid-works; exec sleep 300",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let container = root.join("containers").join(&id);
    let (rootfs, upper, log) = (
        container.join("rootfs"),
        container.join("upper"),
        container.join("container.log"),
    );

    // The container works (its output reaches the log) ...
    let mut logs = String::new();
    for _ in 0..200 {
        logs = String::from_utf8_lossy(&skiff.run(&["logs", "suid"]).stdout).into_owned();
        if logs.contains("suid-works") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        logs.contains("started") && logs.contains("suid-works"),
        "{logs}"
    );
    assert!(rootfs.join("bin/busybox-suid").exists());

    // ... and nobody on the host gets in.
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&root), 0o711);
    assert_eq!(mode(&root.join("containers")), 0o700);
    assert_eq!(mode(&root.join("cache")), 0o700);
    assert_eq!(mode(&log), 0o600);
    let p = |p: &Path| p.to_string_lossy().into_owned();
    refused(&[&p(&rootfs.join("bin/busybox-suid")), "id", "-u"]);
    refused(&["/bin/cat", &p(&rootfs.join("etc/passwd"))]);
    refused(&["/bin/ls", &p(&rootfs)]);
    refused(&["/bin/ls", &p(&upper)]);
    refused(&["/bin/ls", &p(&root.join("cache"))]);
    refused(&["/bin/ls", &p(&root.join("containers"))]);
    refused(&["/bin/cat", &p(&log)]);
    refused(&["/bin/cat", &p(&container.join("state.json"))]);

    let out = skiff.run(&["stop", "-t", "0", "suid"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = skiff.run(&["rm", "suid"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// Issue 16, CVE-2019-5736: a process the container's setup executes as a
/// `#!/proc/self/exe` script runs skiff's binary inside the container; a process of the
/// container opens it through `/proc/<pid>/exe`, waits for it to exit, and reopens that
/// descriptor for writing. The setup executes a read-only handle on the binary, so the
/// write is refused and the binary is unchanged. The test runs a copy of skiff, so a
/// broken build damages only the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_cannot_write_skiffs_binary_through_proc_exe() {
    use std::process::Stdio;
    let reg = Registry::start();
    let mut layers = fixtures::busybox_layers(1 << 12);
    // Executed by skiff's setup, the kernel runs `/proc/self/exe login /x`: skiff's own
    // `login`, which waits for a user name on stdin. skiff is linked dynamically, so
    // the image gets the host's loader and the libraries skiff needs (a glibc image
    // would have them).
    let mut entries = vec![
        Entry::dir("lib", 0o755),
        Entry::dir("lib/x86_64-linux-gnu", 0o755),
        Entry::dir("lib64", 0o755),
        Entry::file("x", b"#!/proc/self/exe login\n", 0o755),
    ];
    for library in shared_libraries(&skiff_tests::cli::skiff_bin()) {
        let content = std::fs::read(&library).unwrap();
        let path = library
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        entries.push(Entry::file(&path, &content, 0o755));
    }
    layers.push(Layer::tar_gzip(&entries));
    let image = build_image(layers, &skiff_proto::image::Platform::host(), &["/bin/sh"]);
    push_built(
        &skiff_tests::client(&reg.host()),
        "hard/exe",
        "latest",
        &image,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("bin/skiff");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(skiff_tests::cli::skiff_bin(), &binary).unwrap();
    let before = std::fs::read(&binary).unwrap();
    let root = dir.path().join("root");
    let skiff = Skiff::with_binary(&root, &binary);
    let _cleanup = Cleanup(&skiff, "exe");
    let out = skiff.run(&[
        "run",
        "-d",
        "--name",
        "exe",
        &reg.reference("hard/exe:latest"),
        "sleep",
        "300",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // The victim: `skiff exec -t` of the script (skiff's `login` then waits on the
    // terminal for a user name).
    let mut victim = skiff
        .command()
        .args(["exec", "-i", "-t", "exe", "/x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The attacker: finds the victim (its command line holds "login", spelled so the
    // attacker's own does not), opens its executable, kills it, waits for it to be
    // gone (or a zombie), and writes through the descriptor.
    let script = r#"
        pat="lo""gin"
        for i in $(seq 1 400); do
            for p in /proc/[0-9]*; do
                if tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q "exe $pat /x"; then pid=${p#/proc/}; fi
            done
            [ -n "$pid" ] && break
            sleep 0.05
        done
        [ -n "$pid" ] || { echo "no victim"; exit 1; }
        exec 3< /proc/$pid/exe || { echo "cannot open the victim's executable"; exit 1; }
        kill -9 $pid
        while [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat 2>/dev/null; do sleep 0.05; done
        if echo PWNED >> /proc/self/fd/3; then echo WROTE; else echo REFUSED; fi
    "#;
    let out = skiff.run(&["exec", "exe", "sh", "-c", script]);
    drop(victim.stdin.take());
    let _ = victim.kill();
    let _ = victim.wait();
    let rest: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let status = out.status;
    assert!(status.success(), "attacker: {rest:?} {stderr}");
    assert_eq!(rest, ["REFUSED"], "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(
        std::fs::read(&binary).unwrap() == before,
        "skiff's binary was written from inside the container"
    );
}

/// The shared libraries `binary` loads (with the loader), as `ldd` lists them: host
/// paths, which the image mirrors.
fn shared_libraries(binary: &Path) -> Vec<std::path::PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd (libc-bin)");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/')
                .then(|| std::path::PathBuf::from(path))
        })
        .collect()
}
