//! Throwaway certificates for TLS tests, made with the `openssl` CLI.

use std::path::Path;
use std::process::Command;

/// Runs `openssl args…` in `dir`, failing the test with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir` (`ca.crt`, `ca.key`), and for each `(name, common name, extensions)`
/// a key and certificate it signed (`NAME.key`, `NAME.crt`; `extensions` is an
/// openssl extension file's text, e.g. `subjectAltName=IP:127.0.0.1`).
pub fn ca_and_certs(dir: &Path, certs: &[(&str, &str, &str)]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=skiff test CA",
        ],
    );
    for (name, cn, ext) in certs {
        std::fs::write(dir.join(format!("{name}.cnf")), format!("{ext}\n")).expect("ext file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.cnf"),
            ],
        );
    }
}
