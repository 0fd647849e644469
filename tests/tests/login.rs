//! `skiff login` / `logout` against a real registry behind htpasswd Basic auth: a
//! wrong password is refused and writes nothing; a right one is stored in docker's
//! config.json (mode 0600, other keys kept) and `skiff pull` then works; logout
//! removes it and pulls fail again.

use skiff_tests::cli::Skiff;
use skiff_tests::fixtures;
use skiff_tests::registry::Registry;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `skiff <args>` with `password` on stdin and `config` as DOCKER_CONFIG.
fn skiff_with(skiff: &Skiff, config: &Path, args: &[&str], password: &str) -> Output {
    let mut child = skiff
        .command()
        .env("DOCKER_CONFIG", config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes());
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_pull_logout_against_basic_auth() {
    let reg = Registry::start_basic("erin", "c0rrect");
    fixtures::push_sample_as(&reg.host(), "erin", "c0rrect", "private", "v1").await;
    let reference = reg.reference("private:v1");
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join("docker");
    let config = config_dir.join("config.json");
    let host = reg.host();
    let login = |password: &str| {
        skiff_with(
            &skiff,
            &config_dir,
            &["login", "--username", "erin", "--password-stdin", &host],
            password,
        )
    };
    let pull = || skiff_with(&skiff, &config_dir, &["pull", &reference], "");

    // Without credentials the pull is refused.
    let out = pull();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));

    // A wrong password: refused by the registry, nothing written.
    let out = login("wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("login to"), "{}", stderr(&out));
    assert!(
        !config.exists(),
        "a failed login wrote {}",
        config.display()
    );

    // Other keys of an existing file survive the login.
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        &config,
        r#"{"detachKeys":"ctrl-x","auths":{"other:1":{"auth":"eDp5"}}}"#,
    )
    .unwrap();
    let out = login("c0rrect");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Login Succeeded\n");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(v["detachKeys"], "ctrl-x");
    assert_eq!(v["auths"]["other:1"]["auth"], "eDp5");
    use base64::Engine as _;
    assert_eq!(
        v["auths"][&host]["auth"],
        base64::engine::general_purpose::STANDARD.encode("erin:c0rrect")
    );

    // The stored credentials let a pull through.
    let out = pull();
    assert!(out.status.success(), "{}", stderr(&out));

    // Logout removes them; a pull is refused again.
    let out = skiff_with(&skiff, &config_dir, &["logout", &host], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Removing login credentials"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert!(v["auths"].get(&host).is_none(), "{v}");
    assert_eq!(v["auths"]["other:1"]["auth"], "eDp5");
    let root2 = tempfile::tempdir().unwrap();
    let out = skiff_with(
        &Skiff::new(root2.path()),
        &config_dir,
        &["pull", &reference],
        "",
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = skiff_with(&skiff, &config_dir, &["logout", &host], "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Not logged in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_docker_config_directory_is_private() {
    let reg = Registry::start_basic("fay", "pw");
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join("fresh");
    let out = skiff_with(
        &Skiff::new(root.path()),
        &config_dir,
        &["login", "-u", "fay", "--password-stdin", &reg.host()],
        "pw",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config_dir), 0o700);
    assert_eq!(mode(&config_dir.join("config.json")), 0o600);
}
