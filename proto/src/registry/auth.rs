//! Authentication: parsing `WWW-Authenticate` challenges, fetching and caching Bearer
//! tokens, and the `Authorization` header each request carries.

use super::client::{excerpt, Client};
use super::credentials::Credentials;
use super::endpoint::Endpoint;
use super::error::{RegistryError, Result};
use super::retry::{retry, Attempt};
use base64::Engine as _;
use reqwest::header;
use reqwest::StatusCode;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use url::Url;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// The `service` parameter to send back.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. Unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// `key="quoted, value",key2=token` → map (keys lower-cased).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
            value = value.trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

/// The token endpoint's JSON answer.
#[derive(serde::Deserialize)]
pub(crate) struct TokenReply {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Tokens are assumed to live this long when the endpoint does not say (the spec's
/// default).
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A cached Bearer token.
#[derive(Clone, Debug)]
pub(crate) struct CachedToken {
    pub token: String,
    pub expires: Instant,
}

impl CachedToken {
    /// Usable for at least a few more seconds.
    pub fn fresh(&self) -> bool {
        Instant::now() + Duration::from_secs(5) < self.expires
    }
}

/// What the client knows about authenticating to one registry.
#[derive(Default, Debug)]
pub(crate) struct AuthState {
    /// The last challenge seen (decides Basic vs Bearer).
    pub challenge: Option<Challenge>,
    /// Bearer tokens by scope string.
    pub tokens: HashMap<String, CachedToken>,
}

/// `Basic <base64>` when `host` holds a username and password.
pub(crate) fn basic_header(host: &Endpoint) -> Option<String> {
    match &host.credentials {
        Some(Credentials::Basic { username, password }) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        )),
        _ => None,
    }
}

fn lock_auth(host: &Endpoint) -> std::sync::MutexGuard<'_, AuthState> {
    host.auth.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remembers `host`'s latest challenge and forgets the token it refused for `scope`, so
/// the next request fetches a new one.
pub(crate) fn challenged(host: &Endpoint, challenge: Option<Challenge>, scope: &str) {
    let mut state = lock_auth(host);
    state.tokens.remove(scope);
    state.challenge = challenge;
}

impl Client {
    /// The `Authorization` value for a request to `host` itself, fetching a token first
    /// when it wants Bearer and we hold none fresh for `scope`. Each host (a mirror, the
    /// registry) has its own challenge, tokens and credentials: a mirror never sees the
    /// registry's.
    pub(crate) async fn auth_header(&self, host: &Endpoint, scope: &str) -> Result<Option<String>> {
        let challenge = {
            let state = lock_auth(host);
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
            None => Ok(basic_header(host)),
            Some(c) => {
                let token = self.fetch_token(host, &c, scope).await?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Asks the token endpoint for a token for `scope` and caches it.
    async fn fetch_token(
        &self,
        host: &Endpoint,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<String> {
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
        realm_may_get_credentials(&host.api_root, &url, host.credentials.is_some())
            .map_err(terr)?;
        let http = host.http(&self.options)?;
        let request = match &host.credentials {
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
                http.post(url.clone())
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
                let mut req = http.get(url.clone());
                if let Some(b) = basic_header(host) {
                    req = req.header(header::AUTHORIZATION, b);
                }
                req
            }
        };
        // Transient failures of the token endpoint are retried like registry requests.
        let request = &request;
        let terr = &terr;
        let body = retry(&self.options.retry, realm, (), |(), attempt| async move {
            let Some(r) = request.try_clone() else {
                return ((), Err(terr("token request cannot be repeated".into())));
            };
            self.stats.add_request();
            let last = match r.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(body) if status.is_success() => return ((), Ok(Attempt::Done(body))),
                        Ok(body)
                            if status.is_server_error()
                                || status == StatusCode::TOO_MANY_REQUESTS =>
                        {
                            format!("status {status}: {}", excerpt(&body))
                        }
                        Ok(body) => {
                            return (
                                (),
                                Err(terr(format!("status {status}: {}", excerpt(&body)))),
                            )
                        }
                        Err(e) => format!("reading reply: {e}"),
                    }
                }
                Err(e) => format!("request failed: {e}"),
            };
            let give_up = terr(format!("giving up after {attempt} attempts: {last}"));
            (
                (),
                Ok(Attempt::Failed {
                    last,
                    after: None,
                    give_up,
                }),
            )
        })
        .await?;
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
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        tracing::debug!(realm = %realm, scope, ?lifetime, "got bearer token");
        lock_auth(host).tokens.insert(
            scope.to_string(),
            CachedToken {
                token: token.clone(),
                expires: Instant::now() + lifetime,
            },
        );
        Ok(token)
    }
}

/// Whether credentials may be sent to token `realm` for a registry at `api_root`: an
/// https registry whose challenge names a plain-http realm would make skiff send the
/// Basic credentials or the refresh token in cleartext (a man in the middle of the
/// registry connection could not, but one on the way to the realm could read them).
/// Anonymous token requests carry no secret and stay allowed.
fn realm_may_get_credentials(
    api_root: &Url,
    realm: &Url,
    credentials: bool,
) -> std::result::Result<(), String> {
    if credentials && api_root.scheme() == "https" && realm.scheme() != "https" {
        return Err(format!(
            "refusing to send credentials for https registry {} to plain-http token realm {}",
            api_root.host_str().unwrap_or_default(),
            realm.host_str().unwrap_or_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_go_to_a_plain_http_realm_of_an_https_registry() {
        let https = Url::parse("https://reg.example/v2/").unwrap();
        let http = Url::parse("http://reg.example/v2/").unwrap();
        let plain_realm = Url::parse("http://auth.example/token").unwrap();
        let tls_realm = Url::parse("https://auth.example/token").unwrap();
        let err = realm_may_get_credentials(&https, &plain_realm, true).unwrap_err();
        assert!(err.contains("plain-http token realm auth.example"), "{err}");
        assert!(realm_may_get_credentials(&https, &tls_realm, true).is_ok());
        // Nothing secret to leak, or a registry that is plain http anyway.
        assert!(realm_may_get_credentials(&https, &plain_realm, false).is_ok());
        assert!(realm_may_get_credentials(&http, &plain_realm, true).is_ok());
    }

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="http://h/t", scope="repository:a:pull,push""#),
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: None,
                scope: Some("repository:a:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }
}
