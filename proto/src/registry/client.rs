//! The registry client: one per registry, shared by all repositories on it.
//!
//! Every request goes through [`Client::send`], which adds authentication (Basic, or a
//! Bearer token fetched after a `401` challenge and refreshed when it expires or is
//! refused; see [`super::auth`]), retries transient failures (connection errors, 5xx,
//! 429) through the one retry loop in `retry.rs`, and follows redirects by hand so
//! that `Authorization` is only ever sent to the registry's own host. Pulls and tag
//! resolution go to the mirrors of `hosts.toml` first (`endpoint.rs`), falling back to
//! the next host when one fails and finally to the registry itself. The requests
//! themselves live beside it: `manifests.rs`, `blobs.rs`, `push.rs`, `referrers.rs`.

use super::auth::{self, basic_header, challenged, Challenge};
use super::credentials;
use super::endpoint::{Endpoint, Route};
use super::error::{ErrorCode, ErrorEnvelope, RegistryError, Result};
use super::host_set::{HostInputs, HostSet};
pub use super::options::{Access, ClientOptions};
use super::retry::{retry, Attempt, RetryPolicy};
use super::whole_read::InFlight;
use crate::digest::Digest;
use crate::reference;
use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Most bytes of an error body quoted in messages.
const ERROR_BODY_LIMIT: usize = 512;

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
    /// Which hosts may serve it (mirrors only for pulls and tag resolution).
    pub route: Route,
    /// A mirror's `404` is its answer, not a reason to ask the next host (a
    /// referrers listing: `404` says the host has no referrers API).
    pub final_404: bool,
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
            route: Route::Upstream,
            final_404: false,
        }
    }
}

/// The host that answered a request, attached to its [`Response`]'s extensions.
#[derive(Clone, Debug)]
pub(crate) struct ServedBy(pub String);

/// A client for one registry.
pub struct Client {
    pub(super) registry: String,
    pub(super) base: Url,
    /// `base/v2/`: request URLs are built under it, then moved onto the host serving them.
    v2_root: Url,
    /// The hosts to try: mirrors from `hosts.toml` in file order, the registry last
    /// (re-read when the file changes). Each builds its HTTP client on first use, so a
    /// run served from the local store never builds one.
    hosts: HostSet,
    pub(super) options: ClientOptions,
    pub(super) stats: Arc<FetchStats>,
    /// Whole-blob reads under way (a registry that ignored Range), one per blob.
    pub(super) in_flight: InFlight,
    /// Which host last served each blob or manifest, by digest.
    served: Mutex<HashMap<Digest, String>>,
    /// Blob tails read ahead of their manifest (`tails_ahead.rs`).
    pub(super) tails_ahead: super::tails_ahead::TailsAhead,
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
        let v2_root = base.join("v2/").map_err(|e| RegistryError::BadResponse {
            url: base.to_string(),
            message: format!("cannot form the API root: {e}"),
        })?;
        let credentials = match &options.credentials {
            Some(c) => Some(c.clone()),
            None if options.use_docker_config => credentials::from_docker_config(registry)?,
            None => None,
        };
        let hosts = HostSet::new(
            HostInputs {
                registry: registry.to_string(),
                v2_root: v2_root.clone(),
                credentials,
            },
            &options,
        )?;
        Ok(Client {
            registry: registry.to_string(),
            base,
            v2_root,
            hosts,
            options,
            stats: Arc::new(FetchStats::default()),
            in_flight: InFlight::default(),
            served: Mutex::new(HashMap::new()),
            tails_ahead: Default::default(),
        })
    }

    /// The hosts this client tries, in order (`host[:port]`; the registry last).
    pub fn hosts(&self) -> Vec<String> {
        let hosts = self.hosts.current(&self.options);
        hosts.endpoints.iter().map(|e| e.name.clone()).collect()
    }

    /// The host (`host[:port]`) that last served the blob or manifest `digest`: a mirror
    /// or the registry itself.
    pub fn served_by(&self, digest: &Digest) -> Option<String> {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Remembers which host `resp` came from for `digest`.
    pub(crate) fn note_served(&self, digest: Digest, resp: &Response) {
        if let Some(ServedBy(host)) = resp.extensions().get::<ServedBy>() {
            self.note_served_host(digest, host.clone());
        }
    }

    /// Remembers that `host` served `digest`.
    pub(crate) fn note_served_host(&self, digest: Digest, host: String) {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, host);
    }

    /// The registry as named.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `scheme://host[:port]/` of the registry as named (a `hosts.toml` `server` or
    /// mirror may serve requests instead; see [`Client::hosts`]).
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
        let req = Req::new(Method::GET, self.url("")?, None);
        self.send_expecting(req, &[StatusCode::OK], &Subject::Other)
            .await?;
        Ok(())
    }

    /// Sends `req` to the first host that can serve it: the mirrors its route allows
    /// (in `hosts.toml` order, skipping those that failed lately), then the registry.
    /// A mirror that fails (unreachable, 5xx after retries, refused auth) or does not
    /// have the content (any non-2xx answer) hands over to the next host. Returns the
    /// final response whatever its status (except as [`Client::send_to`] says).
    pub(crate) async fn send(&self, req: Req<'_>) -> Result<Response> {
        let current = self.hosts.current(&self.options);
        let hosts: Vec<&Endpoint> = current
            .endpoints
            .iter()
            .filter(|e| e.serves(req.route))
            .collect();
        let last = hosts.len().saturating_sub(1);
        for (i, host) in hosts.into_iter().enumerate() {
            let outcome = self.send_to(host, &req).await;
            if i < last {
                match &outcome {
                    Ok(resp) if resp.status().is_success() => {}
                    Ok(resp) if req.final_404 && resp.status() == StatusCode::NOT_FOUND => {}
                    Ok(resp) => {
                        tracing::info!(mirror = %host.name, url = %req.url, status = %resp.status(), "mirror cannot serve this; trying the next host");
                        continue;
                    }
                    Err(e) => {
                        host.mark_down();
                        tracing::warn!(mirror = %host.name, url = %req.url, error = %e, "mirror failed; trying the next host");
                        continue;
                    }
                }
            }
            let mut resp = outcome?;
            resp.extensions_mut().insert(ServedBy(host.name.clone()));
            if let Some(d) = req.redirect_key {
                if resp.status().is_success() {
                    self.note_served(d, &resp);
                }
            }
            return Ok(resp);
        }
        Err(RegistryError::BadResponse {
            url: req.url.to_string(),
            message: "no host may serve this request".into(),
        })
    }

    /// Sends `req` to one host with auth, retries and redirects. Returns the final
    /// response whatever its status (except 401, which becomes
    /// [`RegistryError::Unauthorized`] once authenticating did not help, and 5xx/429
    /// after retries run out).
    async fn send_to(&self, host: &Endpoint, req: &Req<'_>) -> Result<Response> {
        let scope = req.access.scope(req.repository);
        let url = host.map_url(&req.url, &self.v2_root);
        // A blob whose redirect target we remember goes straight there, once.
        let cached_target = req
            .redirect_key
            .and_then(|d| host.redirects.lock().ok()?.get(&d).cloned());
        let state = SendState {
            cached_target,
            auth_tries: 0,
        };
        // A mirror gets few retries: the next host is the better bet.
        let policy = if host.is_mirror {
            RetryPolicy {
                max_attempts: self.options.retry.max_attempts.min(2),
                ..self.options.retry.clone()
            }
        } else {
            self.options.retry.clone()
        };
        let (scope, url) = (scope.as_str(), &url);
        retry(
            &policy,
            url.as_str(),
            state,
            |mut state, attempt| async move {
                let outcome = self
                    .send_attempt(host, req, url, scope, &mut state, attempt)
                    .await;
                (state, outcome)
            },
        )
        .await
    }

    /// One attempt of [`Client::send`]: says whether to stop, retry at once (a stale
    /// redirect or token was dropped) or retry after a pause (a transient failure).
    async fn send_attempt(
        &self,
        host: &Endpoint,
        req: &Req<'_>,
        url: &Url,
        scope: &str,
        state: &mut SendState,
        attempt: u32,
    ) -> Result<Attempt<Response>> {
        let outcome = match state.cached_target.take() {
            Some(target) => {
                let auth = if host.same_origin(&target) {
                    self.auth_header(host, scope).await?
                } else {
                    None
                };
                return match self.send_once(host, req, target.clone(), auth).await {
                    Ok(resp) if resp.status().is_success() => Ok(Attempt::Done(resp)),
                    _ => {
                        // Expired or failing: forget it and ask the registry again.
                        tracing::debug!(target = %redacted(&target), "cached redirect failed; re-resolving");
                        if let Some(d) = req.redirect_key {
                            if let Ok(mut m) = host.redirects.lock() {
                                m.remove(&d);
                            }
                        }
                        Ok(Attempt::Again)
                    }
                };
            }
            None => self.send_following(host, req, url, scope).await,
        };
        let exhausted = |last: &str| RegistryError::RetriesExhausted {
            method: req.method.to_string(),
            url: url.to_string(),
            attempts: attempt,
            last: last.to_string(),
        };
        match outcome {
            Ok(resp) => {
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED {
                    let challenge = resp
                        .headers()
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .find_map(auth::parse_challenge);
                    state.auth_tries += 1;
                    let have_creds_for_basic = basic_header(host).is_some();
                    let retry_auth = match &challenge {
                        Some(Challenge::Bearer { .. }) => state.auth_tries <= 2,
                        Some(Challenge::Basic) => state.auth_tries <= 1 && have_creds_for_basic,
                        None => false,
                    };
                    if retry_auth {
                        // A refused token is stale: drop it so a new one is fetched.
                        challenged(host, challenge, scope);
                        return Ok(Attempt::Again);
                    }
                    let body = read_limited(resp).await;
                    let mut detail = ErrorEnvelope::parse(&body)
                        .map(|e| format!(": {}", e.summary()))
                        .unwrap_or_default();
                    if host.credentials.is_none() {
                        detail.push_str(" (no credentials given: use --username/--password-stdin or docker login)");
                    }
                    return Err(RegistryError::Unauthorized {
                        registry: if host.is_mirror {
                            host.name.clone()
                        } else {
                            self.registry.clone()
                        },
                        repository: req.repository.unwrap_or("/v2/").to_string(),
                        detail,
                    });
                }
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    // Honor Retry-After (in seconds); the retry loop bounds it.
                    let after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let last = format!("status {status}");
                    return Ok(Attempt::Failed {
                        give_up: exhausted(&last),
                        last,
                        after,
                    });
                }
                Ok(Attempt::Done(resp))
            }
            Err(RegistryError::Network { source, .. }) if tls_rejection(&source).is_some() => {
                // A certificate the system does not trust will not change on a retry.
                Err(RegistryError::TlsRejected {
                    method: req.method.to_string(),
                    url: url.to_string(),
                    reason: tls_rejection(&source).unwrap_or_default(),
                })
            }
            Err(RegistryError::Network { source, .. }) if !source.is_builder() => {
                let last = error_chain(&source);
                Ok(Attempt::Failed {
                    give_up: exhausted(&last),
                    last,
                    after: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// One attempt, following redirects by hand.
    async fn send_following(
        &self,
        host: &Endpoint,
        req: &Req<'_>,
        start: &Url,
        scope: &str,
    ) -> Result<Response> {
        let mut url = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let auth = if host.same_origin(&url) {
                self.auth_header(host, scope).await?
            } else {
                None
            };
            let resp = self.send_once(host, req, url.clone(), auth).await?;
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
                url: redacted(&url),
                message: format!(
                    "bad redirect Location {:?}: {e}",
                    location.split('?').next().unwrap_or_default()
                ),
            })?;
            tracing::debug!(to = %redacted(&url), "following redirect");
            if let Some(d) = req.redirect_key {
                if let Ok(mut m) = host.redirects.lock() {
                    m.insert(d, url.clone());
                }
            }
        }
        Err(RegistryError::TooManyRedirects {
            url: start.to_string(),
        })
    }

    async fn send_once(
        &self,
        host: &Endpoint,
        req: &Req<'_>,
        url: Url,
        auth: Option<String>,
    ) -> Result<Response> {
        let mut headers = req.headers.clone();
        if host.same_origin(&url) {
            for (k, v) in &host.headers {
                headers.append(k, v.clone());
            }
        }
        let mut builder = host
            .http(&self.options)?
            .request(req.method.clone(), url.clone())
            .headers(headers);
        if let Some(a) = auth {
            builder = builder.header(header::AUTHORIZATION, a);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        self.stats.add_request();
        let sent = std::time::Instant::now();
        let answer = builder.send().await;
        // One line per request (headers in, body not yet read): the trace that shows
        // where a cold start waits on round trips.
        tracing::debug!(
            method = %req.method,
            url = %redacted(&url),
            status = answer.as_ref().map(|r| r.status().as_u16()).unwrap_or(0),
            ms = sent.elapsed().as_millis() as u64,
            range = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or(""),
            "registry request"
        );
        answer.map_err(|source| RegistryError::Network {
            method: req.method.to_string(),
            url: redacted(&url),
            // reqwest's message names the URL again, query and all.
            source: source.without_url(),
        })
    }

    /// [`Client::send`], then [`Client::expect`] one of the `ok` statuses.
    pub(crate) async fn send_expecting(
        &self,
        req: Req<'_>,
        ok: &[StatusCode],
        subject: &Subject,
    ) -> Result<Response> {
        let (method, repository) = (req.method.clone(), req.repository);
        let resp = self.send(req).await?;
        self.expect(&method, resp, ok, subject, repository).await
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
        let envelope = ErrorEnvelope::parse(&body);
        let code = envelope.as_ref().and_then(|e| e.code());
        let message = envelope
            .as_ref()
            .map_or_else(|| excerpt(&body), ErrorEnvelope::summary);
        let repository = repository.unwrap_or_default().to_string();
        Err(match (status, code, subject) {
            (StatusCode::NOT_FOUND, Some(ErrorCode::NameUnknown), _) => {
                RegistryError::NameUnknown {
                    registry: self.registry.clone(),
                    repository,
                }
            }
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
}

/// What [`Client::send`] carries from one attempt to the next.
struct SendState {
    /// A remembered redirect target to try first (taken on the first attempt).
    cached_target: Option<Url>,
    /// How many times a 401 has been answered by re-authenticating.
    auth_tries: u32,
}

/// Reads a whole body, refusing more than `cap` bytes (a registry must not make us
/// buffer without bound).
pub(crate) async fn read_capped(mut resp: Response, cap: usize, url: &Url) -> Result<Bytes> {
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

/// The start of an error body, for messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
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

/// `url` as logs and errors may show it: without its query, fragment and user info.
/// A blob redirect usually points at object storage with a presigned query (a
/// signature and credentials valid for minutes) that must not end up in logs.
pub(crate) fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    let mut out = shown.to_string();
    if had_query {
        out.push_str("?…");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_targets_are_shown_without_their_signature() {
        let u = Url::parse(
            "https://user:pw@bucket.s3.example/blobs/x?X-Amz-Signature=abc&X-Amz-Credential=k#f",
        )
        .unwrap();
        assert_eq!(redacted(&u), "https://bucket.s3.example/blobs/x?…");
        let plain = Url::parse("http://127.0.0.1:5000/v2/a/blobs/sha256:00").unwrap();
        assert_eq!(redacted(&plain), plain.as_str());
    }

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
}
