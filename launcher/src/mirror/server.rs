//! The HTTP side: the read half of the OCI distribution API on hyper 1, plus
//! `GET /skiff/stats`.
//!
//! Routes: `GET /v2/`; `GET|HEAD /v2/<name>/manifests/<ref>`; `GET|HEAD
//! /v2/<name>/blobs/<digest>` (with or without `Range: bytes=a-b`); `GET
//! /v2/<name>/referrers/<digest>` and `GET /v2/<name>/tags/list` passed through.
//! containerd's `?ns=<registry>` query is accepted and ignored: the mirror has one
//! upstream. Blob bodies stream from the block cache as blocks arrive, never whole in
//! memory.

use super::Mirror;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use skiff_proto::digest::Digest;
use skiff_proto::registry::RegistryError;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A response body: whole bytes or a stream of frames.
type Body = BoxBody<Bytes, std::io::Error>;

/// Frames of a streamed blob body buffered ahead of the client.
const STREAM_FRAMES: usize = 4;

/// Serves `mirror` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    mirror: Arc<Mirror>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let mirror = Arc::clone(&mirror);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let mirror = Arc::clone(&mirror);
                async move { Ok::<_, Infallible>(handle(&mirror, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

/// What a request asks for, from its path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// `/v2/`.
    Root,
    /// `/skiff/stats`.
    Stats,
    /// A manifest by tag or digest.
    Manifest { name: &'a str, reference: &'a str },
    /// A blob.
    Blob { name: &'a str, digest: Digest },
    /// The referrers of a manifest.
    Referrers { name: &'a str, digest: Digest },
    /// The repository's tags.
    Tags { name: &'a str },
}

/// Whether `name` is a repository name the distribution spec allows (lower-case
/// components of `[a-z0-9._-]` separated by `/`); anything else is not passed upstream.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

/// Whether `tag` is a valid tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
fn valid_tag(tag: &str) -> bool {
    tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/v2/" || path == "/v2" {
        return Some(Route::Root);
    }
    if path == "/skiff/stats" {
        return Some(Route::Stats);
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return valid_name(name).then_some(Route::Tags { name });
    }
    // The kind word nearest the end: repository names may contain the others.
    let (at, kind) = ["/manifests/", "/blobs/", "/referrers/"]
        .into_iter()
        .filter_map(|kind| Some((rest.rfind(kind)?, kind)))
        .max()?;
    let (name, last) = (&rest[..at], &rest[at + kind.len()..]);
    if !valid_name(name) {
        return None;
    }
    match kind {
        "/manifests/" => {
            (last.parse::<Digest>().is_ok() || valid_tag(last)).then_some(Route::Manifest {
                name,
                reference: last,
            })
        }
        "/blobs/" => Some(Route::Blob {
            name,
            digest: last.parse().ok()?,
        }),
        _ => Some(Route::Referrers {
            name,
            digest: last.parse().ok()?,
        }),
    }
}

/// The query without containerd's `ns=` (the mirror has one upstream).
fn query_without_ns(query: Option<&str>) -> String {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("ns="))
        .collect::<Vec<_>>()
        .join("&")
}

/// `path?query`, or `path` alone when the query is empty.
fn with_query(path: String, query: &str) -> String {
    if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    }
}

async fn handle(mirror: &Arc<Mirror>, req: Request<Incoming>) -> Response<Body> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    mirror.stats.requests.fetch_add(1, Ordering::Relaxed);
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror only serves pulls",
        );
    }
    let head = method == Method::HEAD;
    let response = match route(&path) {
        None => error(StatusCode::NOT_FOUND, "NAME_INVALID", "no such route"),
        Some(Route::Root) => with_body(StatusCode::OK, "application/json", Bytes::from("{}"), head),
        Some(Route::Stats) => with_body(
            StatusCode::OK,
            "application/json",
            Bytes::from(mirror.stats_json().to_string()),
            head,
        ),
        Some(Route::Manifest { name, reference }) => manifest(mirror, name, reference, head).await,
        Some(Route::Blob { name, digest }) => {
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            blob(mirror, name, digest, range.as_deref(), head).await
        }
        Some(Route::Referrers { name, digest }) => {
            let query = query_without_ns(req.uri().query());
            let path = with_query(format!("referrers/{digest}"), &query);
            let accept = "application/vnd.oci.image.index.v1+json";
            listing(mirror, name, &path, Some(accept), "MANIFEST_UNKNOWN", head).await
        }
        Some(Route::Tags { name }) => {
            let query = query_without_ns(req.uri().query());
            let path = with_query("tags/list".to_string(), &query);
            listing(mirror, name, &path, None, "NAME_UNKNOWN", head).await
        }
    };
    let mut response = response;
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    tracing::debug!(%method, %path, status = %response.status(), "served");
    response
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

/// A complete answer (headers only for `HEAD`, with the body's length).
fn with_body(status: StatusCode, content_type: &str, body: Bytes, head: bool) -> Response<Body> {
    let len = body.len();
    let body = if head {
        empty()
    } else {
        Full::new(body).map_err(|e| match e {}).boxed()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// An error in the distribution spec's shape.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    with_body(
        status,
        "application/json",
        Bytes::from(body.to_string()),
        false,
    )
}

/// Upstream's failure as this mirror's answer: what upstream does not have is 404,
/// what it refused is 403, anything else a bad gateway.
fn upstream_error(e: &RegistryError) -> Response<Body> {
    let message = e.to_string();
    match e {
        RegistryError::ManifestUnknown { .. } => {
            error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &message)
        }
        RegistryError::BlobUnknown { .. } => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &message),
        RegistryError::NameUnknown { .. } => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &message),
        RegistryError::Status { status: 404, .. } => {
            error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &message)
        }
        RegistryError::Unauthorized { .. } | RegistryError::Denied { .. } => {
            error(StatusCode::FORBIDDEN, "DENIED", &message)
        }
        _ => {
            tracing::warn!("upstream failed: {message}");
            error(StatusCode::BAD_GATEWAY, "UNKNOWN", &message)
        }
    }
}

async fn manifest(mirror: &Arc<Mirror>, name: &str, reference: &str, head: bool) -> Response<Body> {
    let got = match reference.parse::<Digest>() {
        Ok(d) => mirror.upstream.manifest_by_digest(name, d).await,
        Err(_) => mirror.upstream.manifest_by_tag(name, reference).await,
    };
    let m = match got {
        Ok(m) => m,
        Err(e) => return upstream_error(&e),
    };
    mirror.stats.served_bytes.fetch_add(
        if head { 0 } else { m.bytes.len() as u64 },
        Ordering::Relaxed,
    );
    let content_type = m
        .content_type
        .as_deref()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json");
    let mut resp = with_body(StatusCode::OK, content_type, m.bytes.clone(), head);
    if let Ok(v) = HeaderValue::from_str(&m.digest.to_string()) {
        resp.headers_mut().insert("docker-content-digest", v);
    }
    resp
}

async fn listing(
    mirror: &Arc<Mirror>,
    name: &str,
    path: &str,
    accept: Option<&str>,
    missing_code: &str,
    head: bool,
) -> Response<Body> {
    match mirror.upstream.listing(name, path, accept).await {
        Ok(Some(l)) => with_body(
            StatusCode::OK,
            l.content_type.as_deref().unwrap_or("application/json"),
            l.body,
            head,
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, missing_code, "upstream has none"),
        Err(e) => upstream_error(&e),
    }
}

/// What a blob request's `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// The whole blob (no Range, or one this mirror does not honour).
    Whole,
    /// `start..end` (end exclusive).
    Part(u64, u64),
    /// A range outside the blob.
    Unsatisfiable,
}

/// Parses one `bytes=a-b`, `bytes=a-` or `bytes=-n` against a blob of `size` bytes.
/// Several ranges at once are answered whole (as HTTP allows).
fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // Suffix: the last n bytes.
        (true, false) => b
            .parse::<u64>()
            .ok()
            .map(|n| (size.saturating_sub(n), size)),
        (false, true) => a.parse::<u64>().ok().map(|s| (s, size)),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if e >= s => Some((s, e.saturating_add(1).min(size))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => Wanted::Whole,
        Some((s, e)) if s >= size || s >= e => Wanted::Unsatisfiable,
        Some((s, e)) => Wanted::Part(s, e),
    }
}

async fn blob(
    mirror: &Arc<Mirror>,
    name: &str,
    digest: Digest,
    range: Option<&str>,
    head: bool,
) -> Response<Body> {
    let size = match mirror.upstream.blob_size(name, digest).await {
        Ok(s) => s,
        Err(e) => return upstream_error(&e),
    };
    let (status, start, end) = match wanted(range, size) {
        Wanted::Whole => (StatusCode::OK, 0, size),
        Wanted::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e),
        Wanted::Unsatisfiable => {
            let mut resp = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                "range outside the blob",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let body = if head || start == end {
        empty()
    } else {
        let cached = match mirror.blocks.blob(digest, size) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string());
            }
        };
        let fetch = mirror.upstream.fetcher(name, digest);
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_FRAMES);
        tokio::spawn(super::stream::stream_blob(
            Arc::clone(mirror),
            cached,
            fetch,
            start,
            end,
            tx,
        ));
        StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{size}", end - 1);
        if let Ok(v) = HeaderValue::from_str(&range) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// One frame of a streamed body.
pub(super) type BodyFrame = Result<Frame<Bytes>, std::io::Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let d = Digest::of(b"x");
        assert_eq!(route("/v2/"), Some(Route::Root));
        assert_eq!(
            route(&format!("/v2/a/b/blobs/{d}")),
            Some(Route::Blob {
                name: "a/b",
                digest: d
            })
        );
        assert_eq!(
            route("/v2/bench/python/manifests/esgz"),
            Some(Route::Manifest {
                name: "bench/python",
                reference: "esgz"
            })
        );
        assert_eq!(route("/v2/a/tags/list"), Some(Route::Tags { name: "a" }));
        assert_eq!(route("/v2/../x/manifests/v1"), None);
        assert_eq!(route("/v2/a/manifests/bad tag"), None);
        assert_eq!(route("/v2/a/blobs/sha256:zz"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(wanted(None, 10), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=2-4"), 10), Wanted::Part(2, 5));
        assert_eq!(wanted(Some("bytes=2-40"), 10), Wanted::Part(2, 10));
        assert_eq!(wanted(Some("bytes=7-"), 10), Wanted::Part(7, 10));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7, 10));
        assert_eq!(wanted(Some("bytes=10-12"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,4-5"), 10), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=5-2"), 10), Wanted::Whole);
    }

    #[test]
    fn ns_is_dropped_from_queries() {
        assert_eq!(
            query_without_ns(Some("ns=docker.io&artifactType=x")),
            "artifactType=x"
        );
        assert_eq!(query_without_ns(Some("ns=a")), "");
        assert_eq!(query_without_ns(None), "");
    }
}
