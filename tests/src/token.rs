//! A small Bearer token issuer for a real `docker-registry` configured with
//! `auth.token`: RS256 JWTs signed (with the `openssl` CLI) by a throwaway key whose
//! self-signed certificate is the registry's `rootcertbundle`; the certificate rides in
//! the JWT header's `x5c`, which registry 2.8 verifies against that bundle.

use crate::registry::Auth;
use base64::Engine as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// Service name the issuer and registry agree on.
pub const SERVICE: &str = "skiff-test-registry";
/// Issuer name in tokens.
pub const ISSUER: &str = "skiff-test-issuer";

/// How the issuer behaves.
#[derive(Clone, Debug)]
pub struct IssuerOptions {
    /// `expires_in` in replies (seconds).
    pub expires_in: u64,
    /// Make the first token already expired (the registry will refuse it with 401) while
    /// claiming `expires_in`: tests refresh-on-401.
    pub first_token_expired: bool,
    /// Require these Basic credentials on token requests (`None`: anonymous tokens).
    pub users: Option<(String, String)>,
    /// Answer with `access_token` instead of `token`.
    pub use_access_token_field: bool,
    /// Make tokens really expire after this many seconds, whatever `expires_in` claims
    /// (the registry allows 60 s of clock skew past `exp`, which this accounts for), to
    /// test re-authentication on 401 during long reads.
    pub real_lifetime: Option<u64>,
    /// Accept OAuth2 `POST` requests with `grant_type=refresh_token` carrying this
    /// refresh token (docker's "identity token"); any other refresh token gets 401.
    pub refresh_token: Option<String>,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            expires_in: 300,
            first_token_expired: false,
            users: None,
            use_access_token_field: false,
            real_lifetime: None,
            refresh_token: None,
        }
    }
}

/// One token request the issuer saw.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The `scope` parameters.
    pub scopes: Vec<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// Whether it carried Basic credentials.
    pub authorization: Option<String>,
    /// Whether a token was issued.
    pub issued: bool,
    /// `GET` or `POST`.
    pub method: String,
    /// The `refresh_token` of a `POST` form (`grant_type=refresh_token`).
    pub refresh_token: Option<String>,
}

struct Shared {
    options: IssuerOptions,
    key: PathBuf,
    cert_der_b64: String,
    seen: Mutex<Vec<TokenRequest>>,
    issued: Mutex<u64>,
}

/// The running issuer; stops on drop.
pub struct TokenIssuer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenIssuer {
    /// Generates a key and certificate and starts serving `/token` (`GET`, and `POST`
    /// for refresh tokens).
    pub fn start(options: IssuerOptions) -> TokenIssuer {
        let dir = tempfile::Builder::new()
            .prefix("skiff-issuer-")
            .tempdir()
            .expect("temp dir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ])
            .arg(format!("/CN={ISSUER}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running openssl (apt-get install openssl)");
        assert!(status.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        assert!(der.status.success(), "openssl x509 failed");
        let shared = Arc::new(Shared {
            options,
            key,
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(&der.stdout),
            seen: Mutex::new(Vec::new()),
            issued: Mutex::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding issuer");
        let addr = listener.local_addr().expect("issuer addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, sp) = (Arc::clone(&shared), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let sh = Arc::clone(&sh);
                std::thread::spawn(move || {
                    let _ = serve(conn, &sh);
                });
            }
        });
        TokenIssuer {
            addr,
            dir,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// The issuer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token endpoint (`realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry must trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The registry `auth` section that trusts this issuer.
    pub fn registry_auth(&self) -> Auth {
        Auth::Token {
            realm: self.realm(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            rootcertbundle: self.cert_path(),
        }
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn sign(key: &Path, input: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?
        .write_all(input)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other("openssl dgst -sign failed"));
    }
    Ok(out.stdout)
}

/// `repository:name:pull,push` → an access claim entry.
fn access_entry(scope: &str) -> Option<serde_json::Value> {
    let mut parts = scope.splitn(3, ':');
    let (typ, rest) = (parts.next()?, parts.next()?);
    let (name, actions) = match parts.next() {
        Some(a) => (rest, a),
        None => return None,
    };
    Some(serde_json::json!({
        "type": typ,
        "name": name,
        "actions": actions.split(',').collect::<Vec<_>>(),
    }))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn serve(mut conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("GET").to_string();
    let target = words.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let authorization = header("authorization");
    // A POST carries its parameters as a form body.
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(64 << 10);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let form = String::from_utf8_lossy(&body).to_string();
    let params = if method == "POST" {
        form.as_str()
    } else {
        query
    };
    let mut scopes = Vec::new();
    let mut service = None;
    let mut grant_type = None;
    let mut refresh_token = None;
    for pair in params.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            let v = percent_decode(v);
            match k {
                "scope" => scopes.push(v),
                "service" => service = Some(v),
                "grant_type" => grant_type = Some(v),
                "refresh_token" => refresh_token = Some(v),
                _ => {}
            }
        }
    }
    let authorized = if method == "POST" {
        grant_type.as_deref() == Some("refresh_token")
            && refresh_token.is_some()
            && refresh_token == shared.options.refresh_token
    } else {
        match &shared.options.users {
            None => shared.options.refresh_token.is_none(),
            Some((u, p)) => {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                );
                authorization.as_deref() == Some(want.as_str())
            }
        }
    };
    shared
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(TokenRequest {
            scopes: scopes.clone(),
            service: service.clone(),
            authorization: authorization.clone(),
            issued: authorized,
            method: method.clone(),
            refresh_token: refresh_token.clone(),
        });
    if !authorized {
        let body = r#"{"details":"bad credentials"}"#;
        write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let n = {
        let mut issued = shared.issued.lock().unwrap_or_else(|p| p.into_inner());
        *issued += 1;
        *issued
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // docker-registry accepts a token up to 60 s past its `exp` (clock skew leeway).
    const REGISTRY_LEEWAY: u64 = 60;
    let exp = if shared.options.first_token_expired && n == 1 {
        now.saturating_sub(600)
    } else if let Some(lifetime) = shared.options.real_lifetime {
        (now + lifetime).saturating_sub(REGISTRY_LEEWAY)
    } else {
        now + 600
    };
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [shared.cert_der_b64]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": shared.options.users.as_ref().map(|(u, _)| u.clone()).unwrap_or_default(),
        "aud": SERVICE,
        "exp": exp,
        "nbf": now.saturating_sub(1200),
        "iat": now.saturating_sub(1200),
        "jti": format!("skiff-test-{n}"),
        "access": scopes.iter().filter_map(|s| access_entry(s)).collect::<Vec<_>>(),
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = sign(&shared.key, input.as_bytes())?;
    let token = format!("{input}.{}", b64url(&sig));
    let field = if shared.options.use_access_token_field {
        "access_token"
    } else {
        "token"
    };
    let body =
        serde_json::json!({ field: token, "expires_in": shared.options.expires_in }).to_string();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}
