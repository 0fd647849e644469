//! Requests a pull-through mirror (`skiff mirror`) makes on behalf of its clients: a
//! blob's size with pull access only, and listings (`tags/list`, `referrers`) passed on
//! as the registry wrote them.

use super::client::{read_capped, Client, Req, Subject};
use super::endpoint::Route;
use super::error::Result;
use super::options::Access;
use crate::digest::Digest;
use bytes::Bytes;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};

/// Largest listing passed on (it comes from the network).
const MAX_LISTING: usize = 4 << 20;

/// A listing as the registry sent it.
#[derive(Clone, Debug)]
pub struct Listing {
    /// The body.
    pub body: Bytes,
    /// Its `Content-Type`, if the registry sent one.
    pub content_type: Option<String>,
}

impl Client {
    /// The size of blob `digest` in `repository` (`HEAD` with pull access, through the
    /// hosts that may pull), `None` if the registry does not have it.
    pub async fn blob_size(&self, repository: &str, digest: Digest) -> Result<Option<u64>> {
        self.head_blob(repository, digest, Access::Pull, Route::Pull)
            .await
    }

    /// `GET /v2/<repository>/<path>` (`path` may carry a query, e.g.
    /// `tags/list?n=10`), with `accept` if given: the body and its type, `None` when
    /// the registry answers `404` (no such repository, or no such API).
    pub async fn get_listing(
        &self,
        repository: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Option<Listing>> {
        let url = self.url(&format!("{repository}/{path}"))?;
        let mut req = Req::new(Method::GET, url.clone(), Some(repository));
        req.route = Route::Resolve;
        req.final_404 = true;
        if let Some(v) = accept.and_then(|a| HeaderValue::from_str(a).ok()) {
            req.headers.insert(header::ACCEPT, v);
        }
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self
            .expect(
                &Method::GET,
                resp,
                &[StatusCode::OK],
                &Subject::Other,
                Some(repository),
            )
            .await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(resp, MAX_LISTING, &url).await?;
        Ok(Some(Listing { body, content_type }))
    }
}
