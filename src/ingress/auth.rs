//! Who may do what: per-role bearer tokens (`[auth]`) on the HTTP API and the RESP listener.
//!
//! Three roles, one token each (`docs/remote.md`):
//!
//! | role      | may                                                              |
//! |-----------|------------------------------------------------------------------|
//! | `publish` | `POST /v1/publish` (and `/v1/publish/...`); RESP `AUTH <token>`  |
//! | `worker`  | the lease API under `/v1/worker/` (remote workers)               |
//! | `admin`   | everything: status, dead letters, metrics, and the routes above  |
//!
//! Every route not listed is an admin route (status, dead-letter admin, and whatever is
//! added later): a new route is closed until someone decides otherwise. `/healthz` is open
//! by default, `/metrics` is not; `[auth]` says. A request without a token gets `401`, one
//! whose token belongs to no role `401`, one whose token belongs to another role `403` —
//! each with the API's JSON error saying which role the route needs.
//!
//! Tokens are compared in constant time ([`subtle`]), against every role's token whatever
//! matched, so neither timing nor an early exit tells an attacker how close a guess was or
//! which role it hit. Without `[auth]` nothing is checked (a hub on loopback, as before);
//! [`warn_if_exposed`] says so in the log when the listener is reachable from elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::http::ApiState;
use super::resp::auth::{AuthError, Authenticator, Principal};
use crate::config::{AuthConfig, ResolvedTokens};

/// A role a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Publishing.
    Publish,
    /// Remote workers.
    Worker,
    /// Operators; may do everything.
    Admin,
}

impl Role {
    /// As in `[auth]`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nothing.
    Open,
    /// A token of this role (or the admin token).
    Role(Role),
}

/// The roles a presented token holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    publish: bool,
    worker: bool,
    admin: bool,
}

impl Grants {
    /// Whether these grants allow `role`'s routes.
    pub fn allow(self, role: Role) -> bool {
        self.admin
            || match role {
                Role::Publish => self.publish,
                Role::Worker => self.worker,
                Role::Admin => false,
            }
    }

    /// Whether the token belongs to any role.
    pub fn any(self) -> bool {
        self.publish || self.worker || self.admin
    }

    fn names(self) -> String {
        let mut names = Vec::new();
        if self.publish {
            names.push("publish");
        }
        if self.worker {
            names.push("worker");
        }
        if self.admin {
            names.push("admin");
        }
        names.join(" and ")
    }
}

/// The tokens and which routes are open.
pub struct HttpAuth {
    tokens: ResolvedTokens,
    healthz_open: bool,
    metrics_open: bool,
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAuth")
            .field("healthz_open", &self.healthz_open)
            .field("metrics_open", &self.metrics_open)
            .finish_non_exhaustive()
    }
}

fn same(presented: &[u8], expected: Option<&str>) -> bool {
    match expected {
        Some(expected) => presented.ct_eq(expected.as_bytes()).into(),
        None => false,
    }
}

impl HttpAuth {
    /// From `[auth]`; the error (key, problem) is the config check's.
    pub fn new(config: &AuthConfig) -> Result<HttpAuth, (String, String)> {
        Ok(HttpAuth {
            tokens: config.resolve()?,
            healthz_open: config.healthz_open,
            metrics_open: config.metrics_open,
        })
    }

    /// The roles `token` holds; every role's token is compared, whatever matches.
    pub fn grants(&self, token: &[u8]) -> Grants {
        let publish = same(token, self.tokens.publish.as_deref());
        let worker = same(token, self.tokens.worker.as_deref());
        let admin = same(token, Some(&self.tokens.admin));
        Grants {
            publish,
            worker,
            admin,
        }
    }

    /// What a request for `path` needs.
    pub fn access(&self, method: &Method, path: &str) -> Access {
        match path {
            "/healthz" if self.healthz_open => Access::Open,
            "/metrics" if self.metrics_open => Access::Open,
            p if method == Method::POST
                && (p == "/v1/publish" || p.starts_with("/v1/publish/")) =>
            {
                Access::Role(Role::Publish)
            }
            p if p.starts_with("/v1/worker/") => Access::Role(Role::Worker),
            _ => Access::Role(Role::Admin),
        }
    }

    /// Decides a request: `Ok` to serve it, or the refusal.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), Box<Response>> {
        let Access::Role(role) = self.access(method, path) else {
            return Ok(());
        };
        // Built only when refusing: a granted request does not pay for it.
        let needs = || {
            format!(
                "{method} {path} needs the {} token{}",
                role.name(),
                if role == Role::Admin {
                    ""
                } else {
                    " (or the admin token)"
                }
            )
        };
        let how =
            "send `Authorization: Bearer <token>`; the regis CLI takes --token or REGIS_TOKEN";
        let token = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            crate::metrics::AuthRefused { reason: "missing" }.emit();
            return Err(Box::new(refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("no bearer token: {}; {how}", needs()),
                role,
            )));
        };
        let grants = self.grants(token.as_bytes());
        if grants.allow(role) {
            return Ok(());
        }
        if !grants.any() {
            crate::metrics::AuthRefused { reason: "invalid" }.emit();
            return Err(Box::new(refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "the bearer token is not one of this hub's tokens: {}",
                    needs()
                ),
                role,
            )));
        }
        crate::metrics::AuthRefused {
            reason: "wrong_role",
        }
        .emit();
        Err(Box::new(refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this is the {} token: {}", grants.names(), needs()),
            role,
        )))
    }
}

/// The API's JSON error plus `"needs": "<role>"`; a 401 also says `WWW-Authenticate: Bearer`.
fn refusal(status: StatusCode, code: &str, message: String, role: Role) -> Response {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "needs": role.name() }
    });
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"regis\""),
        );
    }
    response
}

/// The middleware: refuses what the request's token does not allow.
pub async fn require<B: Clone + Send + Sync + 'static>(
    State(state): State<ApiState<B>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(auth) = &state.auth
        && let Err(refusal) = auth.check(
            request.method(),
            request.uri().path(),
            request.headers().get(header::AUTHORIZATION),
        )
    {
        return *refusal;
    }
    next.run(request).await
}

/// Logs a warning when the API is open to anyone who can reach a non-loopback listener.
pub fn warn_if_exposed(listen: SocketAddr, auth: Option<&HttpAuth>) {
    if auth.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "the HTTP API listens beyond loopback without [auth]: anyone who can reach it may publish, lease a region's messages and purge dead letters; add an [auth] section (see docs/remote.md)"
        );
    }
}

/// The RESP listener's `AUTH` with `[auth]`: the publish token (or the admin token), as
/// `AUTH <token>` or `AUTH <user> <token>` with user `default`, `publish` or `admin`; and
/// `[resp] password` too, when it is set.
pub struct TokenAuth {
    tokens: ResolvedTokens,
    password: Option<String>,
}

impl TokenAuth {
    /// From the resolved tokens and the optional `[resp] password`.
    pub fn new(tokens: ResolvedTokens, password: Option<String>) -> Arc<TokenAuth> {
        Arc::new(TokenAuth { tokens, password })
    }
}

impl Authenticator for TokenAuth {
    fn required(&self) -> bool {
        true
    }

    fn authenticate(&self, user: Option<&[u8]>, password: &[u8]) -> Result<Principal, AuthError> {
        let publish = same(password, self.tokens.publish.as_deref());
        let admin = same(password, Some(&self.tokens.admin));
        let shared = same(password, self.password.as_deref());
        let user = user.unwrap_or(b"default");
        let ok = match user {
            b"default" => publish | admin | shared,
            b"publish" => publish,
            b"admin" => admin,
            _ => false,
        };
        if ok {
            Ok(Principal {
                user: String::from_utf8_lossy(user).into_owned(),
            })
        } else {
            Err(AuthError::WrongPass)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> HttpAuth {
        HttpAuth::new(&AuthConfig {
            publish: Some("publish-token-0123456789".into()),
            worker: Some("worker-token-0123456789".into()),
            admin: Some("admin-token-0123456789".into()),
            healthz_open: true,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn status(auth: &HttpAuth, method: Method, path: &str, token: Option<&str>) -> u16 {
        let header = token.map(|t| HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        match auth.check(&method, path, header.as_ref()) {
            Ok(()) => 200,
            Err(response) => response.status().as_u16(),
        }
    }

    #[test]
    fn each_route_needs_its_role_and_admin_may_do_everything() {
        let a = auth();
        let p = Some("publish-token-0123456789");
        let w = Some("worker-token-0123456789");
        let adm = Some("admin-token-0123456789");
        for (method, path, role) in [
            (Method::POST, "/v1/publish", "publish"),
            (Method::POST, "/v1/publish/batch", "publish"),
            (Method::POST, "/v1/worker/regions/r0/lease", "worker"),
            (Method::GET, "/v1/worker/regions/r0", "worker"),
            (Method::GET, "/v1/status", "admin"),
            (Method::GET, "/metrics", "admin"),
            (Method::POST, "/v1/regions/r0/dead-letters/purge", "admin"),
            (Method::GET, "/v1/something-new", "admin"),
        ] {
            assert_eq!(
                status(&a, method.clone(), path, None),
                401,
                "{path} without a token"
            );
            assert_eq!(
                status(&a, method.clone(), path, Some("not-a-token-at-all")),
                401,
                "{path}"
            );
            assert_eq!(
                status(&a, method.clone(), path, adm),
                200,
                "{path} with admin"
            );
            for (name, token) in [("publish", p), ("worker", w)] {
                let expected = if name == role { 200 } else { 403 };
                assert_eq!(
                    status(&a, method.clone(), path, token),
                    expected,
                    "{path} with {name}"
                );
            }
        }
        assert_eq!(status(&a, Method::GET, "/healthz", None), 200);
    }

    #[test]
    fn refusals_say_which_role_is_needed() {
        let a = auth();
        let header = HeaderValue::from_static("Bearer publish-token-0123456789");
        let refusal = a
            .check(&Method::GET, "/v1/status", Some(&header))
            .unwrap_err();
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        let missing = a.check(&Method::GET, "/v1/status", None).unwrap_err();
        assert!(missing.headers().contains_key(header::WWW_AUTHENTICATE));
        let basic = HeaderValue::from_static("Basic YWRtaW46eA==");
        assert_eq!(
            a.check(&Method::GET, "/v1/status", Some(&basic))
                .unwrap_err()
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn resp_accepts_the_publish_and_admin_tokens_only() {
        let tokens = AuthConfig {
            publish: Some("publish-token-0123456789".into()),
            worker: Some("worker-token-0123456789".into()),
            admin: Some("admin-token-0123456789".into()),
            ..AuthConfig::default()
        }
        .resolve()
        .unwrap();
        let auth = TokenAuth::new(tokens, None);
        assert!(auth.required());
        assert!(auth.authenticate(None, b"publish-token-0123456789").is_ok());
        assert!(
            auth.authenticate(Some(b"admin"), b"admin-token-0123456789")
                .is_ok()
        );
        assert!(
            auth.authenticate(Some(b"publish"), b"admin-token-0123456789")
                .is_err()
        );
        assert_eq!(
            auth.authenticate(None, b"worker-token-0123456789"),
            Err(AuthError::WrongPass)
        );
    }
}
