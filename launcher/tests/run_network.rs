//! `skiff run` networking through CNI: the default bridge, `-p`, named networks, and
//! teardown (also after SIGKILL of skiff). Each test first makes its own network
//! namespace (`ip netns add`) and runs skiff, its bridge, iptables rules and every
//! peer in it (`nsenter --net`, which changes nothing else, so mounts stay shared
//! with the host as skiff's cleanup expects); no traffic touches the host's
//! interfaces. Needs containernetworking-plugins, iproute2, iptables and busybox.

mod common;

use common::{code, KillOnDrop, Rootfs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The default network's gateway (skiff's default subnet is 10.89.0.0/16).
const GATEWAY: &str = "10.89.0.1";

/// A network namespace made for one test, deleted on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(test: &str) -> NetNs {
        let name = format!("skiff-{test}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = NetNs { name };
        ns.check(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `prog args` inside the namespace.
    fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(prog)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn check(&self, argv: &[&str]) -> String {
        let out = self.cmd(argv[0], &argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", stderr(&out));
        stdout(&out)
    }

    /// skiff --root STATE ARGS in the namespace, with the default network (bridge).
    fn skiff(&self, r: &Rootfs, args: &[&str]) -> Command {
        let mut c = self.cmd(common::skiff_bin(), &[]);
        c.env_remove("SKIFF_NETWORK")
            .arg("--root")
            .arg(&r.state)
            .args(args);
        c
    }

    /// skiff run --rootfs ROOTFS ARGS in the namespace.
    fn run(&self, r: &Rootfs, args: &[&str]) -> Command {
        let mut c = self.skiff(r, &["run", "--rootfs"]);
        c.arg(&r.rootfs).args(args);
        c
    }

    fn veths(&self) -> String {
        self.check(&["ip", "-o", "link", "show", "type", "veth"])
    }

    fn iptables(&self) -> String {
        self.check(&["iptables-save"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Removes the test's containers from inside its namespace (so their CNI DEL runs
/// there) before `Rootfs`'s own cleanup, which runs outside. Declared after both.
struct NsCleanup<'a>(&'a NetNs, &'a Rootfs);

impl Drop for NsCleanup<'_> {
    fn drop(&mut self) {
        let (ns, r) = (self.0, self.1);
        let Ok(out) = ns.skiff(r, &["ps", "-a", "-q"]).output() else {
            return;
        };
        let ids = stdout(&out);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = ns.skiff(r, &["rm", "-f"]).args(&ids).output();
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether CNI plugins are installed; without them the test fails under
/// SKIFF_TEST_REQUIRE_TOOLS=1 and is skipped otherwise.
fn have_plugins() -> bool {
    let have = Path::new("/usr/lib/cni/bridge").exists();
    if !have {
        assert!(
            std::env::var("SKIFF_TEST_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "containernetworking-plugins is not installed"
        );
        eprintln!("skipping: containernetworking-plugins is not installed");
    }
    have
}

/// The only container's id (its state directory's name).
fn only_container_id(r: &Rootfs) -> String {
    let mut ids: Vec<String> = std::fs::read_dir(r.state.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids.remove(0)
}

/// Address files host-local keeps for leases in `<root>/networks/ipam/<network>`.
fn leases(r: &Rootfs, network: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(r.state.join("networks/ipam").join(network)) else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.parse::<std::net::IpAddr>().is_ok()
        })
        .collect()
}

/// Asserts nothing of container `id` (address `ip`) is left in the namespace.
fn assert_torn_down(ns: &NetNs, r: &Rootfs, network: &str, id: &str, ip: &str) {
    assert_eq!(ns.veths(), "", "a veth is left");
    let rules = ns.iptables();
    assert!(!rules.contains(id), "rules with the id are left:\n{rules}");
    assert!(
        !rules.contains(&format!("{ip}/32")),
        "rules with {ip} are left:\n{rules}"
    );
    assert_eq!(leases(r, network), Vec::<PathBuf>::new(), "a lease is left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("{id}/netns")),
        "the netns is still pinned"
    );
}

/// Retries `f` for up to 15 s until it returns Some.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A shell command fetching `/` from `host:port` over HTTP/1.0 with busybox `nc`
/// (busybox's static `wget` crashes in a rootfs without glibc's shared libraries).
fn http_get(host: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} {port}")
}

/// Retries `f` for up to 15 s until it returns true; returns whether it did.
fn eventually_or_not(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The container's eth0 address as `ip -o -4 addr` shows it inside.
fn address_line(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.contains("eth0") && l.contains("inet "))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(|a| a.split('/').next().unwrap().to_string())
}

#[test]
fn the_default_bridge_reaches_a_server_on_its_gateway_and_none_has_only_lo() {
    if !have_plugins() {
        return;
    }
    let r = Rootfs::new();
    let ns = NetNs::new("gw");
    let _clean = NsCleanup(&ns, &r);
    let www = r.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from-the-gateway\n").unwrap();
    // Listens on every address of the namespace, so also on the bridge's once it exists.
    let _server = KillOnDrop::spawn(&mut ns.cmd(
        "/bin/busybox",
        &["httpd", "-f", "-p", "8000", "-h", www.to_str().unwrap()],
    ));

    let out = ns
        .run(
            &r,
            &[
                "--add-host",
                "gw:host-gateway",
                "--dns",
                "192.0.2.53",
                "sh",
                "-c",
                &format!(
                    "ip -o -4 addr show eth0; cat /etc/hosts /etc/resolv.conf; {}",
                    http_get("gw", 8000)
                ),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let ip = address_line(&text).unwrap_or_else(|| panic!("no eth0 address: {text}"));
    assert!(ip.starts_with("10.89."), "{text}");
    assert!(text.contains("from-the-gateway"), "{text}");
    assert!(text.contains(&format!("{GATEWAY}\tgw\n")), "{text}");
    assert!(
        text.contains(&format!("{ip}\t")),
        "own address in /etc/hosts: {text}"
    );
    assert!(text.contains("nameserver 192.0.2.53\n"), "{text}");
    let id = only_container_id(&r);
    assert_torn_down(&ns, &r, "bridge", &id, &ip);

    let out = ns
        .run(&r, &["--network", "none", "ip", "-o", "link"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let links: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .collect();
    assert_eq!(links, ["lo"], "{}", stdout(&out));
    r.assert_no_mounts();
}

#[test]
fn publish_serves_an_http_server_of_the_container_on_loopback() {
    if !have_plugins() {
        return;
    }
    let r = Rootfs::new();
    let ns = NetNs::new("pub");
    let _clean = NsCleanup(&ns, &r);
    let out = ns
        .run(
            &r,
            &[
                "-d",
                "--name",
                "web",
                "-p",
                "127.0.0.1:8080:80",
                "sh",
                "-c",
                "mkdir -p /www && echo from-the-container > /www/index.html && \
                 exec httpd -f -p 80 -h /www",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let got = eventually("the published port answers", || {
        let out = ns
            .cmd(
                "/bin/sh",
                &[
                    "-c",
                    &http_get("127.0.0.1", 8080).replace("| nc", "| busybox nc"),
                ],
            )
            .output()
            .unwrap();
        let text = stdout(&out);
        text.contains("200 OK").then_some(text)
    });
    assert!(got.ends_with("\nfrom-the-container\n"), "{got}");
    let ip = leases(&r, "bridge")[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(ns.iptables().contains(&id), "portmap rules carry the id");
    let out = ns.skiff(&r, &["rm", "-f", "web"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_torn_down(&ns, &r, "bridge", &id, &ip);
}

#[test]
fn containers_on_a_named_network_reach_each_other_by_name() {
    if !have_plugins() {
        return;
    }
    let r = Rootfs::new();
    let ns = NetNs::new("named");
    let _clean = NsCleanup(&ns, &r);
    let out = ns
        .skiff(
            &r,
            &["network", "create", "--subnet", "10.123.0.0/24", "backend"],
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = stdout(&ns.skiff(&r, &["network", "ls"]).output().unwrap());
    assert!(
        listed.contains("backend") && listed.contains("10.123.0.0/24"),
        "{listed}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(r.state.join("networks/backend.conflist"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Each serves its name and fetches the other's by name until it gets it: the first
    // one learns of the second only through the update of its /etc/hosts. (Both run on
    // the same rootfs directory, hence the per-name paths.)
    let serve_and_fetch = |me: &str, peer: &str| {
        format!(
            "mkdir -p /www-{me} /tmp && echo from-{me} > /www-{me}/index.html && \
             httpd -p 80 -h /www-{me} && \
             until {get} > /tmp/got-{me} && grep -q from- /tmp/got-{me}; do sleep 0.2; done; \
             tail -1 /tmp/got-{me}; exec sleep 1000",
            get = http_get(peer, 80)
        )
    };
    for (me, peer) in [("alpha", "beta"), ("beta", "alpha")] {
        let script = serve_and_fetch(me, peer);
        let out = ns
            .run(
                &r,
                &[
                    "-d",
                    "--name",
                    me,
                    "--network",
                    "backend",
                    "sh",
                    "-c",
                    &script,
                ],
            )
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    for (me, peer) in [("alpha", "beta"), ("beta", "alpha")] {
        let mut seen = String::new();
        let fetched = eventually_or_not(|| {
            let out = ns.skiff(&r, &["logs", me]).output().unwrap();
            seen = stdout(&out) + &stderr(&out);
            seen.contains(&format!("from-{peer}"))
        });
        assert!(fetched, "{me} never fetched from {peer}: {seen}");
    }
    let out = ns
        .skiff(&r, &["network", "rm", "backend"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "removing a network in use fails");
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    let out = ns
        .skiff(&r, &["rm", "-f", "alpha", "beta"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(ns.veths(), "");
    assert!(leases(&r, "backend").is_empty());
    let out = ns
        .skiff(&r, &["network", "rm", "backend"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!r.state.join("networks/backend.conflist").exists());
}

#[test]
fn after_sigkill_of_skiff_the_next_command_removes_veth_rules_and_lease() {
    if !have_plugins() {
        return;
    }
    let r = Rootfs::new();
    let ns = NetNs::new("kill");
    let _clean = NsCleanup(&ns, &r);
    let mut skiff = KillOnDrop::spawn(
        ns.run(&r, &["-p", "127.0.0.1:8081:80", "sleep", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // nsenter without a PID namespace execs skiff: the same pid.
    common::wait_for_child_of(skiff.id(), "sleep");
    let id = only_container_id(&r);
    let leased = leases(&r, "bridge");
    assert_eq!(leased.len(), 1, "{leased:?}");
    let ip = leased[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_ne!(ns.veths(), "");
    assert!(ns.iptables().contains(&id));

    skiff.kill().unwrap();
    skiff.wait().unwrap();
    let out = ns.skiff(&r, &["ps", "-a"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_torn_down(&ns, &r, "bridge", &id, &ip);
}

#[test]
fn network_flags_that_do_not_fit_the_mode_are_125_and_none_keeps_dns_and_hosts() {
    // No bridge is made here: --network none and host, or a failure before any.
    let r = Rootfs::new();
    for (args, needle) in [
        (
            &["--network", "none", "-p", "8080:80", "true"][..],
            "conflicting options: port publishing",
        ),
        (
            &["--network", "host", "--dns", "192.0.2.1", "true"][..],
            "conflicting options: dns",
        ),
        (
            &["--network", "none", "--add-host", "gw:host-gateway", "true"][..],
            "host-gateway needs a network",
        ),
        (&["--network", "none", "-p", "80", "true"][..], "invalid -p"),
        (
            &["--network", "none", "--dns", "x", "true"][..],
            "invalid --dns",
        ),
    ] {
        let out = r.skiff(args);
        assert_eq!(code(&out), 125, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let out = r.skiff(&[
        "--network",
        "none",
        "--dns",
        "192.0.2.53",
        "--dns-search",
        "example.test",
        "--add-host",
        "db:192.0.2.7",
        "cat",
        "/etc/resolv.conf",
        "/etc/hosts",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("nameserver 192.0.2.53\nsearch example.test\n"),
        "{text}"
    );
    assert!(text.contains("192.0.2.7\tdb\n127.0.1.1\t"), "{text}");
}
