//! Authentication against a real `docker-registry`: htpasswd Basic auth, and the Bearer
//! token flow with a token issuer the registry trusts.

use skiff_proto::image::Platform;
use skiff_proto::reference::Reference;
use skiff_proto::registry::{Client, ClientOptions, Credentials, RegistryError};
use skiff_tests::fixtures::{self, build_image, push_built};
use skiff_tests::proxy::{Fault, FaultProxy, Rule};
use skiff_tests::registry::{Auth, Registry, RegistryOptions};
use skiff_tests::test_client_options;
use skiff_tests::token::{IssuerOptions, TokenIssuer, SERVICE};

fn client_with(host: &str, creds: Option<Credentials>) -> Client {
    Client::new(
        host,
        ClientOptions {
            credentials: creds,
            ..test_client_options()
        },
    )
    .unwrap()
}

/// Pushes the sample image as `repo:v1` with `c`, pulls it back, checks every byte.
async fn push_and_pull(c: &Client, host: &str, repo: &str) {
    let image = build_image(fixtures::sample_layers(), &Platform::host(), &["/bin/sh"]);
    push_built(c, repo, "v1", &image).await;
    let r = Reference::parse(&format!("{host}/{repo}:v1")).unwrap();
    let got = c.resolve(&r, None).await.unwrap();
    assert_eq!(got.manifest_digest, image.digest);
    for (desc, layer) in got.layers().iter().zip(&image.layers) {
        assert_eq!(c.get_blob(repo, desc.digest).await.unwrap(), layer.blob);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_htpasswd() {
    let reg = Registry::start_basic("alice", "wonderland");
    let anonymous = client_with(&reg.host(), None);
    let err = anonymous.ping().await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("no credentials"), "{err}");

    let wrong = client_with(&reg.host(), Some(Credentials::basic("alice", "nope")));
    let err = wrong.get_manifest("app", "v1").await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");

    let good = client_with(&reg.host(), Some(Credentials::basic("alice", "wonderland")));
    good.ping().await.unwrap();
    push_and_pull(&good, &reg.host(), "private/app").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow() {
    let issuer = TokenIssuer::start(IssuerOptions {
        users: Some(("bob".into(), "builder".into())),
        ..Default::default()
    });
    let reg = Registry::start_with(RegistryOptions {
        auth: issuer.registry_auth(),
        ..Default::default()
    });
    let c = client_with(&reg.host(), Some(Credentials::basic("bob", "builder")));
    push_and_pull(&c, &reg.host(), "tok/app").await;

    let seen = issuer.requests();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|r| r.issued && r.authorization.is_some()));
    assert!(seen.iter().all(|r| r.service.as_deref() == Some(SERVICE)));
    let scopes: Vec<String> = seen.iter().flat_map(|r| r.scopes.clone()).collect();
    assert!(
        scopes.contains(&"repository:tok/app:pull,push".to_string()),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&"repository:tok/app:pull".to_string()),
        "{scopes:?}"
    );
    // Tokens are cached per scope: more pulls need no new token.
    let before = issuer.requests().len();
    c.get_manifest("tok/app", "v1").await.unwrap();
    c.get_manifest("tok/app", "v1").await.unwrap();
    assert_eq!(issuer.requests().len(), before);

    // Without credentials the issuer refuses, and the error names the token endpoint.
    let anonymous = client_with(&reg.host(), None);
    let err = anonymous.get_manifest("tok/app", "v1").await.unwrap_err();
    assert!(matches!(err, RegistryError::Token { .. }), "{err}");
    assert!(err.to_string().contains(&issuer.realm()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_anonymous_access_token_and_short_expiry() {
    // Anonymous tokens, sent as `access_token`, valid for 1 s: too short to reuse, so
    // every request fetches a fresh one (expires_in is honored).
    let issuer = TokenIssuer::start(IssuerOptions {
        expires_in: 1,
        use_access_token_field: true,
        ..Default::default()
    });
    let reg = Registry::start_with(RegistryOptions {
        auth: issuer.registry_auth(),
        ..Default::default()
    });
    let c = client_with(&reg.host(), None);
    push_and_pull(&c, &reg.host(), "anon/app").await;
    let before = issuer.requests().len();
    c.get_manifest("anon/app", "v1").await.unwrap();
    c.get_manifest("anon/app", "v1").await.unwrap();
    assert_eq!(issuer.requests().len(), before + 2);
    assert!(issuer.requests().iter().all(|r| r.authorization.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_refreshed_when_refused() {
    // The first token is already expired although the issuer claims 300 s: the registry
    // answers 401 and the client must drop it and fetch another.
    let issuer = TokenIssuer::start(IssuerOptions {
        first_token_expired: true,
        ..Default::default()
    });
    let reg = Registry::start_with(RegistryOptions {
        auth: issuer.registry_auth(),
        ..Default::default()
    });
    let c = client_with(&reg.host(), None);
    let err = c.get_manifest("fresh/app", "v1").await.unwrap_err();
    // The request got through authentication; the repository is simply empty.
    assert!(
        matches!(
            err,
            RegistryError::ManifestUnknown { .. } | RegistryError::NameUnknown { .. }
        ),
        "{err}"
    );
    assert_eq!(issuer.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_token_endpoint_is_retried() {
    let issuer = TokenIssuer::start(IssuerOptions::default());
    // The registry sends clients to a proxy in front of the issuer.
    let proxy = FaultProxy::start(issuer.addr());
    let Auth::Token {
        service,
        issuer: name,
        rootcertbundle,
        ..
    } = issuer.registry_auth()
    else {
        unreachable!()
    };
    let reg = Registry::start_with(RegistryOptions {
        auth: Auth::Token {
            realm: format!("{}/token", proxy.base_url()),
            service,
            issuer: name,
            rootcertbundle,
        },
        ..Default::default()
    });
    proxy.add_rule(Rule::new("/token", Fault::Status(503), Some(1)));
    proxy.add_rule(Rule::new("/token", Fault::Drop, Some(1)));
    let c = client_with(&reg.host(), None);
    push_and_pull(&c, &reg.host(), "flaky/token").await;
    assert!(proxy.count(Some("GET"), "/token") >= 3);

    // A token endpoint that never recovers gives a clear error naming it.
    proxy.add_rule(Rule::new("/token", Fault::Status(503), None));
    let fresh = client_with(&reg.host(), None);
    let err = fresh.get_manifest("flaky/token", "v1").await.unwrap_err();
    assert!(matches!(err, RegistryError::Token { .. }), "{err}");
    assert!(
        err.to_string().contains("giving up after 4 attempts"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_token_is_exchanged_by_post_and_again_after_a_refusal() {
    // Docker's "identitytoken" is an OAuth2 refresh token: tokens are asked for with
    // POST grant_type=refresh_token (never GET, never Basic). The first token is
    // already expired, so the registry refuses it and a second POST must follow.
    let issuer = TokenIssuer::start(IssuerOptions {
        refresh_token: Some("rt-secret".into()),
        first_token_expired: true,
        ..Default::default()
    });
    let reg = Registry::start_with(RegistryOptions {
        auth: issuer.registry_auth(),
        ..Default::default()
    });
    let c = client_with(
        &reg.host(),
        Some(Credentials::IdentityToken("rt-secret".into())),
    );
    let err = c.get_manifest("oauth/app", "v1").await.unwrap_err();
    // Through authentication (twice: the first token was refused); the repository is
    // simply empty.
    assert!(
        matches!(
            err,
            RegistryError::ManifestUnknown { .. } | RegistryError::NameUnknown { .. }
        ),
        "{err}"
    );
    assert_eq!(issuer.requests().len(), 2);
    push_and_pull(&c, &reg.host(), "oauth/app").await;
    let seen = issuer.requests();
    assert!(seen.len() > 2, "{seen:?}");
    for r in &seen {
        assert_eq!(r.method, "POST", "{r:?}");
        assert_eq!(r.refresh_token.as_deref(), Some("rt-secret"));
        assert_eq!(r.service.as_deref(), Some(SERVICE));
        assert!(r.authorization.is_none(), "Basic sent with a refresh token");
        assert!(r.issued);
    }
    // The expired first token was refused and replaced: more tokens than scopes.
    assert!(seen
        .iter()
        .any(|r| r.scopes.iter().any(|s| s.contains("oauth/app"))));

    // A wrong refresh token: a clear error from the token endpoint, not a hang.
    let wrong = client_with(
        &reg.host(),
        Some(Credentials::IdentityToken("stale".into())),
    );
    let err = wrong.get_manifest("oauth/app", "v1").await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let last = issuer.requests().pop().unwrap();
    assert_eq!(last.method, "POST");
    assert!(!last.issued);
}
