//! Every token case, and the JWKS refetch on a new key id.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::fakes::{Key, claims, now};
use super::*;

fn with_header(name: &str, value: &str) -> Request<Body> {
    req(Method::GET, "/data")
        .header(name, value)
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn a_token_is_accepted_in_all_three_places() {
    let h = Harness::start().await;
    let app = h.app().await;
    let token = h.user();
    for (name, value) in [
        ("authorization", format!("Bearer {token}")),
        ("authorization", format!("bearer {token}")),
        ("authorization", token.clone()),
        ("x-token", token.clone()),
    ] {
        let a = send(&app, with_header(name, &value)).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {value:.20}: {}", a.json);
        assert_eq!(a.json["key"], "my_data");
    }
}

/// Asserts a `401` with the JSON shape, `code` and `WWW-Authenticate: Bearer...`.
fn assert_401(a: &Answer, code: &str, bearer_error: bool) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.json);
    assert_eq!(a.error(), code, "{}", a.json);
    let www = a.header("www-authenticate");
    assert!(www.starts_with("Bearer"), "{www}");
    assert_eq!(
        www.contains("error=\"invalid_token\""),
        bearer_error,
        "{www}"
    );
}

#[tokio::test]
async fn bad_tokens_get_401_with_www_authenticate() {
    let h = Harness::start().await;
    let app = h.app().await;
    let key = h.auth.key();

    let missing = send(&app, req(Method::GET, "/data").body(Body::empty()).unwrap()).await;
    assert_401(&missing, "missing_token", false);

    for garbage in ["abc", "a.b.c", "Bearer", "Basic dXNlcjpwYXNz", "Bearer a b"] {
        let a = send(&app, with_header("authorization", garbage)).await;
        assert_401(&a, "invalid_token", true);
    }

    // Signed by a key that is not the one its kid names.
    let forger = Key::generate("forger");
    let forged = forger.sign_as(&key.kid, &claims("mallory", &["admin"], now() + 600));
    assert_401(
        &send(&app, get_with_token("/data", &forged)).await,
        "invalid_token",
        true,
    );

    // Expired beyond the leeway.
    let expired = key.sign(&claims("alice", &["user"], now() - 60));
    assert_401(
        &send(&app, get_with_token("/data", &expired)).await,
        "token_expired",
        true,
    );

    // alg: none, with a valid-looking payload and no signature.
    let header = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
        key.kid
    ));
    let payload = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims("mallory", &["admin"], now() + 600)).unwrap());
    for none in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert_401(
            &send(&app, get_with_token("/data", &none)).await,
            "invalid_token",
            true,
        );
    }

    // HS256 when no secret is configured, even with a guessable secret.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(key.kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs,
        &claims("mallory", &["admin"], now() + 600),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert_401(
        &send(&app, get_with_token("/data", &hs256)).await,
        "invalid_token",
        true,
    );

    // Another issuer.
    let mut other = claims("alice", &["user"], now() + 600);
    other.iss = "someone-else".into();
    assert_401(
        &send(&app, get_with_token("/data", &key.sign(&other))).await,
        "invalid_token",
        true,
    );

    // A payload tampered with after signing.
    let good = h.user();
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    assert_401(
        &send(&app, get_with_token("/data", &tampered)).await,
        "invalid_token",
        true,
    );

    // The db was never read for any of these.
    assert_eq!(h.db.gets(), 0);
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_then_401() {
    let mut h = Harness::start().await;
    h.config.auth.jwks_min_refresh_ms = 60_000;
    let state = h.state().await;
    let app = router(state.clone());
    // Let the background load finish, so that the count below only sees refetches.
    let ok = send(&app, get_with_token("/data", &h.user())).await;
    assert_eq!(ok.status, StatusCode::OK);
    wait_until("the JWKS loaded", || state.inner.verifier.is_loaded()).await;
    let before = h.auth.fetches();

    let stranger = Key::generate("never-published");
    for _ in 0..5 {
        let t = stranger.sign(&claims("alice", &["user"], now() + 600));
        assert_401(
            &send(&app, get_with_token("/data", &t)).await,
            "invalid_token",
            true,
        );
    }
    // Five tokens with an unknown kid: one refetch at most (jwks_min_refresh_ms).
    assert!(
        h.auth.fetches() - before <= 1,
        "{} refetches",
        h.auth.fetches() - before
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_and_the_old_one_forgotten() {
    let mut h = Harness::start().await;
    h.config.auth.jwks_min_refresh_ms = 0;
    let app = h.app().await;
    let old = h.user();
    assert_eq!(
        send(&app, get_with_token("/data", &old)).await.status,
        StatusCode::OK
    );
    let before = h.auth.fetches();

    let new_key = h.auth.rotate("key-2");
    let fresh = new_key.sign(&claims("alice", &["user"], now() + 600));
    // Ten concurrent requests with the new kid: the refetches coalesce into one.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (app, fresh) = (app.clone(), fresh.clone());
        tasks.push(tokio::spawn(async move {
            send(&app, get_with_token("/data", &fresh)).await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    }
    assert_eq!(h.auth.fetches() - before, 1, "one refetch for the new kid");

    // The old key is no longer published: its tokens stop working (a deleted key id).
    assert_401(
        &send(&app, get_with_token("/data", &old)).await,
        "invalid_token",
        true,
    );
}

#[tokio::test]
async fn hs256_is_accepted_only_with_a_configured_secret() {
    let mut h = Harness::start().await;
    h.config.auth.hs256_secret = Some("a-long-enough-shared-secret-for-tests".into());
    let app = h.app().await;
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("hs256".into());
    let sign = |secret: &[u8]| {
        jsonwebtoken::encode(
            &hs,
            &claims("alice", &["user"], now() + 600),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let good = sign(b"a-long-enough-shared-secret-for-tests");
    assert_eq!(
        send(&app, get_with_token("/data", &good)).await.status,
        StatusCode::OK
    );
    let bad = sign(b"another-secret");
    assert_401(
        &send(&app, get_with_token("/data", &bad)).await,
        "invalid_token",
        true,
    );
}

#[tokio::test]
async fn checks_can_be_turned_off_for_demos() {
    let mut h = Harness::start().await;
    h.config.auth.required = false;
    let app = h.app().await;
    let a = send(&app, req(Method::GET, "/data").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    // Even a broken token is ignored, but admin routes still need an admin.
    let a = send(&app, with_header("authorization", "garbage")).await;
    assert_eq!(a.status, StatusCode::OK);
    let stats = send(
        &app,
        req(Method::GET, "/cache/stats")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(stats.status, StatusCode::FORBIDDEN);
    let stats = send(&app, get_with_token("/cache/stats", &h.admin())).await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.json);
}

#[tokio::test]
async fn a_verified_token_skips_the_signature_check_until_it_changes_or_expires() {
    let mut h = Harness::start().await;
    h.config.auth.leeway_secs = 0;
    let state = h.state().await;
    wait_until("the JWKS loaded", || state.inner.verifier.is_loaded()).await;
    let app = router(state.clone());
    let token = h.user();
    for _ in 0..5 {
        let a = send(&app, get_with_token("/data", &token)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    }
    assert_eq!(state.inner.verifier.signature_checks(), 1, "four hits");

    // The whole token is the key: a tampered copy of a remembered token is checked, and refused.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims("alice", &["admin"], now() + 600)).unwrap());
    let mut sig = parts[2].to_string();
    let last = if sig.ends_with('A') { "B" } else { "A" };
    sig.replace_range(sig.len() - 1.., last);
    for bad in [
        format!("{}.{}.{}", parts[0], forged_payload, parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], sig),
    ] {
        assert_401(
            &send(&app, get_with_token("/data", &bad)).await,
            "invalid_token",
            true,
        );
    }
    assert_eq!(state.inner.verifier.signature_checks(), 3);

    // A remembered token is refused once its exp is past, exactly as verification would.
    let short = h.auth.key().sign(&claims("bob", &["user"], now() + 1));
    let a = send(&app, get_with_token("/data", &short)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let exp = now() + 1;
    wait_until("the short token's exp to pass", || now() > exp).await;
    assert_401(
        &send(&app, get_with_token("/data", &short)).await,
        "token_expired",
        true,
    );
}

#[tokio::test]
async fn a_token_verified_before_its_key_was_withdrawn_is_refused_after() {
    let mut h = Harness::start().await;
    h.config.auth.jwks_min_refresh_ms = 0;
    let state = h.state().await;
    wait_until("the JWKS loaded", || state.inner.verifier.is_loaded()).await;
    let app = router(state.clone());
    let old = h.user();
    for _ in 0..2 {
        assert_eq!(
            send(&app, get_with_token("/data", &old)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(state.inner.verifier.signature_checks(), 1, "remembered");
    // Auth withdraws key-1; a token of the new key makes the gateway fetch the new set.
    let new_key = h.auth.rotate("key-2");
    let fresh = new_key.sign(&claims("alice", &["user"], now() + 600));
    assert_eq!(
        send(&app, get_with_token("/data", &fresh)).await.status,
        StatusCode::OK
    );
    assert_401(
        &send(&app, get_with_token("/data", &old)).await,
        "invalid_token",
        true,
    );
}

#[tokio::test]
async fn the_cache_of_verified_tokens_can_be_turned_off() {
    let mut h = Harness::start().await;
    h.config.auth.verified_cache_entries = 0;
    let state = h.state().await;
    wait_until("the JWKS loaded", || state.inner.verifier.is_loaded()).await;
    let app = router(state.clone());
    let token = h.user();
    for _ in 0..3 {
        assert_eq!(
            send(&app, get_with_token("/data", &token)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(state.inner.verifier.signature_checks(), 3);
}
