//! The registry client: one per registry, shared by all repositories on it.
//!
//! Every request goes through [`Client::send`], which adds authentication (Basic, or a
//! Bearer token fetched after a `401` challenge and refreshed when it expires or is
//! refused), retries transient failures (connection errors, 5xx, 429) with exponential
//! backoff and jitter up to [`RetryPolicy::max_attempts`], and follows redirects by hand
//! so that `Authorization` is only ever sent to the registry's own host.

use super::auth::{self, AuthState, CachedToken, Challenge, TokenReply};
use super::credentials::{self, Credentials};
use super::error::{RegistryError, Result};
use crate::digest::{Digest, Hasher};
use crate::image::{self, Descriptor, ManifestKind, Platform, ResolvedImage, MANIFEST_ACCEPT};
use crate::reference::{self, Reference};
use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use url::Url;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Largest manifest or index accepted (containerd uses 4 MiB; be a little lenient).
const MAX_MANIFEST_SIZE: usize = 8 << 20;
/// Largest blob [`Client::get_blob`] buffers (configs are KiBs; this is generous).
const MAX_SMALL_BLOB_SIZE: usize = 64 << 20;
/// Most bytes of an error body quoted in messages.
const ERROR_BODY_LIMIT: usize = 512;

/// How transient failures are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total attempts per request, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, with ±50% jitter.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based), jittered.
    fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_delay);
        exp.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// How to reach and authenticate to a registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Explicit credentials; they win over the Docker config file.
    pub credentials: Option<Credentials>,
    /// Look up credentials in `$DOCKER_CONFIG/config.json` / `~/.docker/config.json`
    /// when none are given.
    pub use_docker_config: bool,
    /// Registries (as `host[:port]`) to reach over plain HTTP. Loopback registries
    /// always use plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Blobs larger than this are uploaded in PATCH chunks of this size.
    pub upload_chunk_size: usize,
    /// Connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response before the attempt fails.
    pub read_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: None,
            use_docker_config: true,
            insecure_registries: Vec::new(),
            retry: RetryPolicy::default(),
            upload_chunk_size: 16 << 20,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Request and byte counters, shared and lock-free.
#[derive(Debug, Default)]
pub struct FetchStats {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl FetchStats {
    /// HTTP requests sent (every attempt, redirect hop and token request).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Blob body bytes received (streaming and Range reads).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

/// Whether a request may pull or also push (the Bearer scope's actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Pull,
    /// Read and write.
    Push,
}

/// What a request is about, to phrase its errors.
#[derive(Clone, Debug)]
pub(crate) enum Subject {
    /// A manifest, by full reference text.
    Manifest(String),
    /// A blob.
    Blob(Digest),
    /// Anything else.
    Other,
}

/// One request to send through [`Client::send`].
pub(crate) struct Req<'a> {
    pub method: Method,
    pub url: Url,
    pub repository: Option<&'a str>,
    pub access: Access,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// For blob GETs: remember where the registry redirects this blob.
    pub redirect_key: Option<Digest>,
}

impl<'a> Req<'a> {
    pub fn new(method: Method, url: Url, repository: Option<&'a str>) -> Self {
        Req {
            method,
            url,
            repository,
            access: Access::Pull,
            headers: HeaderMap::new(),
            body: None,
            redirect_key: None,
        }
    }
}

/// A client for one registry.
pub struct Client {
    registry: String,
    base: Url,
    /// Built on first use, so a run served from the local store never builds one. (With
    /// native-tls, building loaded the system CA bundle twice: ~90 ms here; rustls with
    /// the platform verifier reads the roots at the first TLS handshake.)
    http: OnceLock<reqwest::Client>,
    credentials: Option<Credentials>,
    options: ClientOptions,
    auth: Mutex<AuthState>,
    redirects: Mutex<HashMap<Digest, Url>>,
    stats: Arc<FetchStats>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Whether `host[:port]` names this machine (plain HTTP is allowed there).
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    /// A client for `registry` as named in references (`docker.io`, `localhost:5000`).
    /// Credentials: explicit ones in `options`, else the Docker config file (if enabled).
    pub fn new(registry: &str, options: ClientOptions) -> Result<Client> {
        let api_host = reference::api_host(registry);
        let plain = is_loopback(api_host)
            || options
                .insecure_registries
                .iter()
                .any(|r| r == registry || r == api_host);
        let scheme = if plain { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|e| {
            RegistryError::BadResponse {
                url: api_host.to_string(),
                message: format!("registry host does not form a URL: {e}"),
            }
        })?;
        let credentials = match &options.credentials {
            Some(c) => Some(c.clone()),
            None if options.use_docker_config => credentials::from_docker_config(registry)?,
            None => None,
        };
        Ok(Client {
            registry: registry.to_string(),
            base,
            http: OnceLock::new(),
            credentials,
            options,
            auth: Mutex::new(AuthState::default()),
            redirects: Mutex::new(HashMap::new()),
            stats: Arc::new(FetchStats::default()),
        })
    }

    /// The HTTP client, built on first use.
    fn http(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        // reqwest is built without a crypto provider (its default one, aws-lc-rs, needs
        // cmake and more to build); ring it is. An error only means one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let built = reqwest::Client::builder()
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.options.connect_timeout)
            .read_timeout(self.options.read_timeout)
            .build()
            .map_err(|e| RegistryError::Network {
                method: "INIT".into(),
                url: self.base.to_string(),
                source: e,
            })?;
        Ok(self.http.get_or_init(|| built))
    }

    /// The registry as named.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `scheme://host[:port]/` requests go to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Counters for everything this client has sent and received.
    pub fn stats(&self) -> &Arc<FetchStats> {
        &self.stats
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// `base/v2/<path>`.
    pub(crate) fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(&format!("v2/{path}"))
            .map_err(|e| RegistryError::BadResponse {
                url: self.base.to_string(),
                message: format!("cannot form URL for {path:?}: {e}"),
            })
    }

    /// `GET /v2/`: checks the registry answers and that we may talk to it.
    pub async fn ping(&self) -> Result<()> {
        let resp = self
            .send(Req::new(Method::GET, self.url("")?, None))
            .await?;
        self.expect(&Method::GET, resp, &[StatusCode::OK], &Subject::Other, None)
            .await?;
        Ok(())
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    fn scope(repository: Option<&str>, access: Access) -> String {
        match (repository, access) {
            (None, _) => String::new(),
            (Some(r), Access::Pull) => format!("repository:{r}:pull"),
            (Some(r), Access::Push) => format!("repository:{r}:pull,push"),
        }
    }

    /// The `Authorization` value for a request to our own host, fetching a token
    /// first when the registry wants Bearer and we hold none fresh for `scope`.
    async fn auth_header(&self, scope: &str) -> Result<Option<String>> {
        let challenge = {
            let state = self.lock_auth();
            match &state.challenge {
                None => return Ok(None),
                Some(Challenge::Basic) => None,
                Some(c @ Challenge::Bearer { .. }) => {
                    if let Some(t) = state.tokens.get(scope).filter(|t| t.fresh()) {
                        return Ok(Some(format!("Bearer {}", t.token)));
                    }
                    Some(c.clone())
                }
            }
        };
        match challenge {
            None => Ok(self.basic_header()),
            Some(c) => {
                let token = self.fetch_token(&c, scope).await?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn basic_header(&self) -> Option<String> {
        match &self.credentials {
            Some(Credentials::Basic { username, password }) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            _ => None,
        }
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the token endpoint for a token for `scope` and caches it.
    async fn fetch_token(&self, challenge: &Challenge, scope: &str) -> Result<String> {
        let Challenge::Bearer { realm, service, .. } = challenge else {
            return Err(RegistryError::Token {
                realm: String::new(),
                message: "registry did not ask for a Bearer token".into(),
            });
        };
        let terr = |message: String| RegistryError::Token {
            realm: realm.clone(),
            message,
        };
        let mut url = Url::parse(realm).map_err(|e| terr(format!("realm is not a URL: {e}")))?;
        let request = match &self.credentials {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh)
                    .append_pair("client_id", "skiff");
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                if !scope.is_empty() {
                    form.append_pair("scope", scope);
                }
                self.http()?
                    .post(url.clone())
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
            creds => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    if !scope.is_empty() {
                        q.append_pair("scope", scope);
                    }
                    if let Some(Credentials::Basic { username, .. }) = creds {
                        q.append_pair("account", username);
                    }
                }
                let mut req = self.http()?.get(url.clone());
                if let Some(b) = self.basic_header() {
                    req = req.header(header::AUTHORIZATION, b);
                }
                req
            }
        };
        // Transient failures of the token endpoint are retried like registry requests.
        let mut attempt = 0u32;
        let body = loop {
            attempt += 1;
            let last = match request.try_clone() {
                Some(r) => {
                    self.stats.add_request();
                    match r.send().await {
                        Ok(resp) => {
                            let status = resp.status();
                            match resp.bytes().await {
                                Ok(body) if status.is_success() => break body,
                                Ok(body)
                                    if status.is_server_error()
                                        || status == StatusCode::TOO_MANY_REQUESTS =>
                                {
                                    format!("status {status}: {}", excerpt(&body))
                                }
                                Ok(body) => {
                                    return Err(terr(format!(
                                        "status {status}: {}",
                                        excerpt(&body)
                                    )))
                                }
                                Err(e) => format!("reading reply: {e}"),
                            }
                        }
                        Err(e) => format!("request failed: {e}"),
                    }
                }
                None => return Err(terr("token request cannot be repeated".into())),
            };
            if attempt >= self.options.retry.max_attempts.max(1) {
                return Err(terr(format!("giving up after {attempt} attempts: {last}")));
            }
            tokio::time::sleep(self.options.retry.delay(attempt)).await;
        };
        let reply: TokenReply =
            serde_json::from_slice(&body).map_err(|e| terr(format!("malformed reply: {e}")))?;
        let token = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| terr("reply holds neither token nor access_token".into()))?;
        let lifetime = reply
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(auth::DEFAULT_TOKEN_LIFETIME);
        tracing::debug!(realm = %realm, scope, ?lifetime, "got bearer token");
        self.lock_auth().tokens.insert(
            scope.to_string(),
            CachedToken {
                token: token.clone(),
                expires: Instant::now() + lifetime,
            },
        );
        Ok(token)
    }

    /// Sends `req` with auth, retries and redirects. Returns the final response
    /// whatever its status (except 401, which becomes [`RegistryError::Unauthorized`]
    /// once authenticating did not help, and 5xx/429 after retries run out).
    pub(crate) async fn send(&self, req: Req<'_>) -> Result<Response> {
        let scope = Self::scope(req.repository, req.access);
        let mut attempt: u32 = 0;
        let mut auth_tries: u32 = 0;
        let mut retry_after: Option<Duration> = None;
        // A blob whose redirect target we remember goes straight there, once.
        let mut cached_target = req
            .redirect_key
            .and_then(|d| self.redirects.lock().ok()?.get(&d).cloned());
        loop {
            attempt += 1;
            let outcome = match cached_target.take() {
                Some(target) => {
                    let auth = if self.same_origin(&target) {
                        self.auth_header(&scope).await?
                    } else {
                        None
                    };
                    match self.send_once(&req, target.clone(), auth).await {
                        Ok(resp) if resp.status().is_success() => return Ok(resp),
                        other => {
                            // Expired or failing: forget it and ask the registry again.
                            tracing::debug!(target = %target, "cached redirect failed; re-resolving");
                            if let Some(d) = req.redirect_key {
                                if let Ok(mut m) = self.redirects.lock() {
                                    m.remove(&d);
                                }
                            }
                            drop(other);
                            attempt -= 1;
                            continue;
                        }
                    }
                }
                None => self.send_following(&req, &scope).await,
            };
            let last = match outcome {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED {
                        let challenge = resp
                            .headers()
                            .get_all(header::WWW_AUTHENTICATE)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .find_map(auth::parse_challenge);
                        auth_tries += 1;
                        let have_creds_for_basic = self.basic_header().is_some();
                        let retry_auth = match &challenge {
                            Some(Challenge::Bearer { .. }) => auth_tries <= 2,
                            Some(Challenge::Basic) => auth_tries <= 1 && have_creds_for_basic,
                            None => false,
                        };
                        if retry_auth {
                            let mut state = self.lock_auth();
                            // A refused token is stale: drop it so a new one is fetched.
                            state.tokens.remove(&scope);
                            state.challenge = challenge;
                            drop(state);
                            attempt -= 1;
                            continue;
                        }
                        let body = read_limited(resp).await;
                        let mut detail = registry_message(&body)
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default();
                        if self.credentials.is_none() {
                            detail.push_str(" (no credentials given: use --username/--password-stdin or docker login)");
                        }
                        return Err(RegistryError::Unauthorized {
                            registry: self.registry.clone(),
                            repository: req.repository.unwrap_or("/v2/").to_string(),
                            detail,
                        });
                    }
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        // Honor Retry-After (in seconds), within the policy's longest delay.
                        retry_after = resp
                            .headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(|secs| {
                                Duration::from_secs(secs).min(self.options.retry.max_delay)
                            });
                        format!("status {status}")
                    } else {
                        return Ok(resp);
                    }
                }
                Err(RegistryError::Network { source, .. }) if tls_rejection(&source).is_some() => {
                    // A certificate the system does not trust will not change on a retry.
                    return Err(RegistryError::TlsRejected {
                        method: req.method.to_string(),
                        url: req.url.to_string(),
                        reason: tls_rejection(&source).unwrap_or_default(),
                    });
                }
                Err(RegistryError::Network { source, .. }) if !source.is_builder() => {
                    error_chain(&source)
                }
                Err(e) => return Err(e),
            };
            if attempt >= self.options.retry.max_attempts.max(1) {
                return Err(RegistryError::RetriesExhausted {
                    method: req.method.to_string(),
                    url: req.url.to_string(),
                    attempts: attempt,
                    last,
                });
            }
            let delay = retry_after
                .take()
                .unwrap_or_else(|| self.options.retry.delay(attempt));
            tracing::info!(url = %req.url, attempt, ?delay, error = %last, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt, following redirects by hand.
    async fn send_following(&self, req: &Req<'_>, scope: &str) -> Result<Response> {
        let mut url = req.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let auth = if self.same_origin(&url) {
                self.auth_header(scope).await?
            } else {
                None
            };
            let resp = self.send_once(req, url.clone(), auth).await?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(location) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                return Ok(resp);
            };
            url = url.join(location).map_err(|e| RegistryError::BadResponse {
                url: url.to_string(),
                message: format!("bad redirect Location {location:?}: {e}"),
            })?;
            tracing::debug!(to = %url, "following redirect");
            if let Some(d) = req.redirect_key {
                if let Ok(mut m) = self.redirects.lock() {
                    m.insert(d, url.clone());
                }
            }
        }
        Err(RegistryError::TooManyRedirects {
            url: req.url.to_string(),
        })
    }

    async fn send_once(&self, req: &Req<'_>, url: Url, auth: Option<String>) -> Result<Response> {
        let mut builder = self
            .http()?
            .request(req.method.clone(), url.clone())
            .headers(req.headers.clone());
        if let Some(a) = auth {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        self.stats.add_request();
        builder
            .send()
            .await
            .map_err(|source| RegistryError::Network {
                method: req.method.to_string(),
                url: url.to_string(),
                source,
            })
    }

    /// Turns a response with a status outside `ok` into the right error.
    pub(crate) async fn expect(
        &self,
        method: &Method,
        resp: Response,
        ok: &[StatusCode],
        subject: &Subject,
        repository: Option<&str>,
    ) -> Result<Response> {
        let status = resp.status();
        if ok.contains(&status) {
            return Ok(resp);
        }
        let url = resp.url().to_string();
        let body = read_limited(resp).await;
        let code = registry_code(&body);
        let message = registry_message(&body).unwrap_or_else(|| excerpt(&body));
        let repository = repository.unwrap_or_default().to_string();
        Err(match (status, code.as_deref(), subject) {
            (StatusCode::NOT_FOUND, Some("NAME_UNKNOWN"), _) => RegistryError::NameUnknown {
                registry: self.registry.clone(),
                repository,
            },
            (StatusCode::NOT_FOUND, _, Subject::Manifest(r)) => RegistryError::ManifestUnknown {
                reference: r.clone(),
            },
            (StatusCode::NOT_FOUND, _, Subject::Blob(d)) => RegistryError::BlobUnknown {
                repository,
                digest: d.to_string(),
            },
            (StatusCode::FORBIDDEN, _, _) => RegistryError::Denied { url, message },
            _ => RegistryError::Status {
                method: method.to_string(),
                url,
                status: status.as_u16(),
                message,
            },
        })
    }

    /// Fetches a manifest (or index) by tag or digest. Verifies it against the digest
    /// when `reference` is one, and against `Docker-Content-Digest` when the registry
    /// sends it. Returns the bytes, the media type and the digest.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Bytes, Option<String>, Digest)> {
        let url = self.url(&format!("{repository}/manifests/{reference}"))?;
        let subject = Subject::Manifest(format!("{}/{repository}:{reference}", self.registry));
        let mut req = Req::new(Method::GET, url.clone(), Some(repository));
        req.headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(&MANIFEST_ACCEPT.join(", "))
                .unwrap_or(HeaderValue::from_static("*/*")),
        );
        let resp = self.send(req).await?;
        let resp = self
            .expect(
                &Method::GET,
                resp,
                &[StatusCode::OK],
                &subject,
                Some(repository),
            )
            .await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = read_capped(resp, MAX_MANIFEST_SIZE, &url).await?;
        let what = format!("manifest {}/{repository}:{reference}", self.registry);
        let digest = match reference.parse::<Digest>() {
            Ok(expected) => {
                expected.verify(&what, &bytes)?;
                expected
            }
            Err(_) => {
                let actual = Digest::of(&bytes);
                if let Some(expected) = header_digest {
                    expected.verify(&what, &bytes)?;
                }
                actual
            }
        };
        Ok((bytes, content_type, digest))
    }

    /// Fetches a small blob whole (configs, indexes; at most 64 MiB) and verifies it.
    pub async fn get_blob(&self, repository: &str, digest: Digest) -> Result<Bytes> {
        let resp = self.blob_get(repository, digest, None).await?;
        let url = resp.url().clone();
        let bytes = read_capped(resp, MAX_SMALL_BLOB_SIZE, &url).await?;
        self.stats.add_bytes(bytes.len() as u64);
        digest.verify(
            &format!("blob {digest} from {}/{repository}", self.registry),
            &bytes,
        )?;
        Ok(bytes)
    }

    /// GET of a blob (optionally a `Range`), past redirects, with success checked.
    pub(crate) async fn blob_get(
        &self,
        repository: &str,
        digest: Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Response> {
        let url = self.url(&format!("{repository}/blobs/{digest}"))?;
        let subject = Subject::Blob(digest);
        let mut req = Req::new(Method::GET, url, Some(repository));
        req.redirect_key = Some(digest);
        let mut ok = vec![StatusCode::OK];
        if let Some((start, end_inclusive)) = range {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={start}-{end_inclusive}")) {
                req.headers.insert(header::RANGE, v);
            }
            ok.push(StatusCode::PARTIAL_CONTENT);
        }
        let resp = self.send(req).await?;
        self.expect(&Method::GET, resp, &ok, &subject, Some(repository))
            .await
    }

    /// Reads `len` bytes at `offset` of a blob with one Range GET. The bytes are raw
    /// and unverified (chunk digests verify them). A registry that answers 200 (ignoring
    /// Range) gives [`RegistryError::RangeIgnored`].
    pub async fn get_blob_range(
        &self,
        repository: &str,
        digest: Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| RegistryError::BadResponse {
                url: digest.to_string(),
                message: format!("range {offset}+{len} overflows"),
            })?;
        let resp = self
            .blob_get(repository, digest, Some((offset, end)))
            .await?;
        let url = resp.url().to_string();
        if resp.status() == StatusCode::OK {
            return Err(RegistryError::RangeIgnored {
                digest: digest.to_string(),
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| RegistryError::Network {
                method: "GET".into(),
                url: url.clone(),
                source,
            })?;
        self.stats.add_bytes(bytes.len() as u64);
        if bytes.len() as u64 != len {
            return Err(RegistryError::BadResponse {
                url,
                message: format!(
                    "asked for {len} bytes at offset {offset}, got {}",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// Downloads a whole blob into `file` (from its start), verifying size and digest
    /// while streaming; `progress` gets the byte count after every chunk. A connection
    /// that breaks mid-body is resumed with a Range request (or restarted if the registry
    /// ignores Range), within the retry bound. On error the file's content is garbage.
    pub async fn download_blob(
        &self,
        repository: &str,
        desc: &Descriptor,
        file: &mut tokio::fs::File,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let io = |what: &str, source| RegistryError::Io {
            what: format!("{what} blob {}", desc.digest),
            source,
        };
        let mut hasher = Hasher::new();
        let mut done: u64 = 0;
        let mut failures: u32 = 0;
        loop {
            let range = (done > 0).then(|| (done, desc.size.saturating_sub(1)));
            let mut resp = self.blob_get(repository, desc.digest, range).await?;
            if done > 0 && resp.status() == StatusCode::OK {
                // Range ignored: start over.
                hasher = Hasher::new();
                done = 0;
                file.set_len(0).await.map_err(|e| io("truncating", e))?;
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(|e| io("seeking", e))?;
            }
            let url = resp.url().to_string();
            let broke = loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        done = done.saturating_add(chunk.len() as u64);
                        if done > desc.size {
                            return Err(RegistryError::BadResponse {
                                url,
                                message: format!(
                                    "blob {} is longer than its descriptor's {} bytes",
                                    desc.digest, desc.size
                                ),
                            });
                        }
                        self.stats.add_bytes(chunk.len() as u64);
                        hasher.update(&chunk);
                        file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
                        progress(done);
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            match broke {
                None if done == desc.size => break,
                None => {
                    failures += 1;
                    if failures >= self.options.retry.max_attempts.max(1) {
                        return Err(RegistryError::BadResponse {
                            url,
                            message: format!(
                                "blob {} ended after {done} of {} bytes",
                                desc.digest, desc.size
                            ),
                        });
                    }
                }
                Some(e) => {
                    failures += 1;
                    if failures >= self.options.retry.max_attempts.max(1) {
                        return Err(RegistryError::RetriesExhausted {
                            method: "GET".into(),
                            url,
                            attempts: failures,
                            last: e.to_string(),
                        });
                    }
                    tracing::info!(digest = %desc.digest, done, error = %e, "blob download broke; resuming");
                }
            }
            tokio::time::sleep(self.options.retry.delay(failures)).await;
        }
        file.flush().await.map_err(|e| io("flushing", e))?;
        let actual = hasher.finish();
        if actual != desc.digest {
            return Err(crate::digest::DigestError::Mismatch {
                what: format!("blob from {}/{repository}", self.registry),
                expected: desc.digest,
                actual,
            }
            .into());
        }
        Ok(())
    }

    /// Resolves `reference` to one platform's manifest and config: fetches the
    /// manifest, picks `platform` (default: the host's) from an index, fetches and
    /// verifies the config.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ResolvedImage> {
        let repo = reference.repository();
        let (bytes, ct, digest) = self
            .get_manifest(repo, &reference.manifest_reference())
            .await?;
        let wanted = platform.cloned().unwrap_or_else(Platform::host);
        let (index_digest, index_bytes, manifest_bytes, manifest_ct, manifest_digest, picked) =
            match ManifestKind::parse(ct.as_deref(), &bytes)? {
                ManifestKind::Manifest(_) => (None, None, bytes, ct, digest, None),
                ManifestKind::Index(index) => {
                    let entry =
                        index
                            .select(&wanted)
                            .ok_or_else(|| RegistryError::NoMatchingPlatform {
                                reference: reference.to_string(),
                                wanted: wanted.to_string(),
                                available: index
                                    .manifests
                                    .iter()
                                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            })?;
                    let (mbytes, mct, mdigest) =
                        self.get_manifest(repo, &entry.digest.to_string()).await?;
                    if mbytes.len() as u64 != entry.size {
                        return Err(RegistryError::BadResponse {
                            url: format!("{reference}@{}", entry.digest),
                            message: format!(
                                "manifest is {} bytes, index says {}",
                                mbytes.len(),
                                entry.size
                            ),
                        });
                    }
                    let mct = mct.or_else(|| Some(entry.media_type.clone()));
                    (
                        Some(digest),
                        Some(bytes.to_vec()),
                        mbytes,
                        mct,
                        mdigest,
                        entry.platform.clone(),
                    )
                }
            };
        let manifest = match ManifestKind::parse(manifest_ct.as_deref(), &manifest_bytes)? {
            ManifestKind::Manifest(m) => *m,
            ManifestKind::Index(_) => {
                return Err(RegistryError::BadResponse {
                    url: format!("{reference}@{manifest_digest}"),
                    message:
                        "index entry points to another index (nested indexes are not supported)"
                            .into(),
                })
            }
        };
        let config_bytes = self.get_blob(repo, manifest.config.digest).await?;
        let config = image::parse_config(manifest.config.digest, &config_bytes)?;
        let platform = picked.unwrap_or_else(|| image::config_platform(&config));
        let manifest_media_type = manifest
            .media_type
            .clone()
            .or(manifest_ct)
            .unwrap_or_else(|| image::MEDIA_OCI_MANIFEST.to_string());
        Ok(ResolvedImage {
            reference: reference.clone(),
            index_digest,
            index_bytes,
            manifest_digest,
            manifest_media_type,
            manifest_bytes: manifest_bytes.to_vec(),
            manifest,
            platform,
            config_bytes: config_bytes.to_vec(),
            config,
        })
    }
}

/// Reads a whole body, refusing more than `cap` bytes (a registry must not make us
/// buffer without bound).
async fn read_capped(mut resp: Response, cap: usize, url: &Url) -> Result<Bytes> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len().saturating_add(c.len()) > cap {
                    return Err(RegistryError::BadResponse {
                        url: url.to_string(),
                        message: format!("body is larger than the {cap}-byte limit"),
                    });
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(source) => {
                return Err(RegistryError::Network {
                    method: "GET".into(),
                    url: url.to_string(),
                    source,
                })
            }
        }
    }
}

/// Reads an error body (they are small; failures read as empty).
async fn read_limited(resp: Response) -> Bytes {
    let url = resp.url().clone();
    read_capped(resp, 64 << 10, &url).await.unwrap_or_default()
}

/// The first `errors[].code` of a distribution-spec error body.
fn registry_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("errors")?
        .get(0)?
        .get("code")?
        .as_str()
        .map(str::to_string)
}

/// `errors[].message` (with code) of a distribution-spec error body.
fn registry_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.get(0)?;
    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
    let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
    Some(
        format!("{code}: {msg}")
            .trim_matches([' ', ':'])
            .to_string(),
    )
}

fn excerpt(body: &[u8]) -> String {
    let n = body.len().min(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(body.get(..n).unwrap_or_default())
        .trim()
        .to_string()
}

/// `e` and its sources, joined with ": " (reqwest's own message says only "error
/// sending request"; the reason is further down).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// What rustls said if `e` is a TLS peer refusal (an untrusted or invalid
/// certificate), which a retry cannot fix.
fn tls_rejection(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(s) = cur {
        // Connectors wrap the TLS error in io::Errors, sometimes twice; an io::Error's
        // `source()` skips its payload, so unwrap those by hand.
        let mut inner: &(dyn std::error::Error + 'static) = s;
        while let Some(next) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = next;
        }
        if let Some(
            tls @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        cur = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.1.2.3"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry-1.docker.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn scheme_follows_loopback_and_insecure_list() {
        let opts = ClientOptions {
            use_docker_config: false,
            ..Default::default()
        };
        assert_eq!(
            Client::new("127.0.0.1:5000", opts.clone())
                .unwrap()
                .base_url()
                .scheme(),
            "http"
        );
        assert_eq!(
            Client::new("docker.io", opts.clone())
                .unwrap()
                .base_url()
                .as_str(),
            "https://registry-1.docker.io/"
        );
        let insecure = ClientOptions {
            insecure_registries: vec!["reg.lan:5000".into()],
            ..opts
        };
        assert_eq!(
            Client::new("reg.lan:5000", insecure)
                .unwrap()
                .base_url()
                .scheme(),
            "http"
        );
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for retry in 1..40 {
            let d = p.delay(retry);
            assert!(d <= Duration::from_millis(1000), "{d:?}");
            assert!(d >= Duration::from_millis(50));
        }
        assert!(p.delay(1) <= Duration::from_millis(100));
        assert!(p.delay(5) >= Duration::from_millis(500));
    }
}
