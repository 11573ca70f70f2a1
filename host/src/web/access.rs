//! Who may use the dashboard: a token that every request carries (made at start when none is
//! given), a `Host` that names this server (so a DNS-rebinding page is refused), an `Origin`
//! that is this server, and the cookie that carries the token for the page.
//!
//! Every refusal, and every other error response of the server, is `{"error": ...}` JSON.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::ApiError;
use crate::cli::UsageError;

/// The shortest token accepted: anything shorter could be guessed by another local user.
pub const MIN_TOKEN_LEN: usize = 16;

/// Refuses a token given with `--token` or `HOST_WEB_TOKEN` that is too short, or that is not
/// all visible ASCII: a blank one (16 spaces) is no secret, and a space, control or non-ASCII
/// character does not travel unchanged in the `Authorization` header or the cookie. A usage
/// error (exit 2), whose text does not repeat the token.
pub fn check_token(token: &str) -> Result<(), UsageError> {
    if token.chars().count() >= MIN_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(UsageError(format!(
        "the dashboard token must be at least {MIN_TOKEN_LEN} characters, all letters, digits \
         or ASCII punctuation, with no spaces (leave out --token and HOST_WEB_TOKEN to have one \
         made)"
    )))
}

/// What a request must show to be served.
pub struct Access {
    token: String,
    /// The cookie that carries the token; named after the port, so that two servers on one
    /// machine do not overwrite each other's cookie (cookies ignore ports).
    cookie: String,
    bound: SocketAddr,
    /// Host names accepted besides loopback names and the bound address.
    allowed_hosts: Vec<String>,
}

impl Access {
    /// The rules for a server bound to `bound`: `token` when given (refused unless
    /// [`check_token`] accepts it), else a new random one.
    pub fn new(
        token: Option<String>,
        bound: SocketAddr,
        allowed_hosts: Vec<String>,
    ) -> anyhow::Result<Access> {
        let token = match token {
            Some(token) => {
                check_token(&token)?;
                token
            }
            None => queue::secret::random_hex(32)
                .map_err(|err| anyhow::anyhow!("cannot make a token: {err}"))?,
        };
        let mut allowed_hosts: Vec<String> =
            allowed_hosts.iter().map(|h| h.to_lowercase()).collect();
        if bound.ip().is_unspecified() {
            // Reachable by any of this machine's names; the one it calls itself is the usual.
            allowed_hosts.push(crate::worker::hostname().to_lowercase());
        }
        Ok(Access {
            token,
            cookie: format!("host_token_{}", bound.port()),
            bound,
            allowed_hosts,
        })
    }

    /// The URL to open: the server's address with the token in it.
    pub fn url(&self) -> String {
        let host = if self.bound.ip().is_unspecified() {
            format!("{}:{}", crate::worker::hostname(), self.bound.port())
        } else {
            self.bound.to_string()
        };
        format!("http://{host}/?token={}", encoded(&self.token))
    }

    /// Whether `Host` names this server: a loopback name or address, the address it is bound
    /// to, any IP address when it is bound to all of them, or a name given with
    /// `--allow-host`. A DNS-rebinding page always comes with its own domain name.
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_lowercase();
        if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            return ip.is_loopback() || ip == self.bound.ip() || self.bound.ip().is_unspecified();
        }
        name == "localhost" || name.ends_with(".localhost") || self.allowed_hosts.contains(&name)
    }

    /// Where the request carries the right token, if it does.
    fn presented(&self, request: &Request) -> Option<Presented> {
        let headers = request.headers();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        if bearer.is_some_and(|t| self.is(t)) {
            return Some(Presented::Header);
        }
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.cookie);
        let decoded =
            cookie.map(|(_, t)| percent_encoding::percent_decode_str(t).decode_utf8_lossy());
        if decoded.is_some_and(|t| self.is(&t)) {
            return Some(Presented::Header);
        }
        let query = request.uri().query().unwrap_or_default();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        pairs
            .iter()
            .any(|(key, value)| key == "token" && self.is(value))
            .then_some(Presented::Query)
    }

    /// Compares in constant time, so that the time of a refusal says nothing about the token.
    fn is(&self, candidate: &str) -> bool {
        queue::secret::same(&self.token, candidate)
    }

    /// The cookie that hands the token to the page: not readable by its scripts, never sent
    /// by another site's requests.
    fn set_cookie(&self) -> HeaderValue {
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie,
            encoded(&self.token)
        );
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The token as it travels in the printed URL and in the cookie: every character but letters
/// and digits percent-encoded, since a token may hold `+ & # % ;` (any ASCII punctuation), which
/// a URL or a cookie would otherwise cut or change.
fn encoded(token: &str) -> String {
    percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// How a request showed the token.
enum Presented {
    /// `Authorization: Bearer` or the cookie.
    Header,
    /// `?token=` in the URL.
    Query,
}

/// Checks `Host`, `Origin`, the token and, for requests that change the queue, the body type.
/// Opening the page with `?token=` sets the cookie and redirects to the URL without it, so the
/// token does not stay in the address bar or the history.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    if let Err(refusal) = check_host_and_origin(&access, request.headers()) {
        return refusal.into_response();
    }
    let Some(presented) = access.presented(&request) else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "a valid token is required: open the URL that `host serve` printed, or send \
             Authorization: Bearer TOKEN"
                .into(),
        )
        .into_response();
    };
    if request.method() == Method::GET && request.uri().path() == "/" {
        let mut response = match presented {
            Presented::Query => Redirect::to("/").into_response(),
            Presented::Header => next.run(request).await,
        };
        response
            .headers_mut()
            .insert(header::SET_COOKIE, access.set_cookie());
        return response;
    }
    if request.method() == Method::POST {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send JSON (Content-Type: application/json)".into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Refuses a request for another host name (DNS rebinding) or from a page of another origin.
fn check_host_and_origin(access: &Access, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !access.host_allowed(host) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not this server's address (use a loopback name or its \
                 address, or start it with --allow-host NAME)"
            ),
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(()); // not from a browser page, or a same-origin GET
    };
    let origin = origin.to_str().unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if origin_host.is_some_and(|o| o.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("requests from {origin} may not use this queue"),
        ))
    }
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme's name is
/// case-insensitive (RFC 7235: `bearer` and `BEARER` too), and one or more spaces follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// The host name of a `Host` header value, without the port.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &host[..=h.len()]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Turns every error response that is not JSON yet (axum's own: unknown route, wrong method,
/// body too large, a body that does not fit the route) into `{"error": ...}`.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().replace('\n', " ");
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's own words say nothing of the limit.
        format!(
            "the request is over the {} bytes taken: a task's description and payload may take \
             at most {} bytes (2 MiB) together",
            super::MAX_BODY,
            queue::MAX_TASK_BYTES
        )
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut json = ApiError(status, message).into_response();
    for (name, value) in &parts.headers {
        if *name != header::CONTENT_TYPE && *name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(bound: &str, allowed: &[&str]) -> Access {
        let allowed = allowed.iter().map(|s| s.to_string()).collect();
        Access::new(None, bound.parse().unwrap(), allowed).unwrap()
    }

    #[test]
    fn host_names_this_server_or_loopback_only() {
        let local = access("127.0.0.1:7777", &["queue.example"]);
        for ok in [
            "127.0.0.1:7777",
            "localhost:7777",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:7777",
            "queue.example:7777",
        ] {
            assert!(local.host_allowed(ok), "{ok}");
        }
        for refused in [
            "evil.example:7777",
            "10.0.0.1:7777",
            "",
            "127.0.0.1.evil:7777",
        ] {
            assert!(!local.host_allowed(refused), "{refused}");
        }
        let everywhere = access("0.0.0.0:7777", &[]);
        assert!(everywhere.host_allowed("192.168.1.20:7777"));
        assert!(!everywhere.host_allowed("evil.example:7777"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer   abc",
            " bEaReR abc ",
        ] {
            assert_eq!(bearer_token(value), Some("abc"), "{value:?}");
        }
        for value in ["Basic abc", "Bearerabc", "Bearer", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn tokens_are_long_and_random() {
        let bound: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(Access::new(Some(String::new()), bound, vec![]).is_err());
        assert!(Access::new(Some("short".into()), bound, vec![]).is_err());
        for weak in [
            " ".repeat(16),
            "0123456789 abcdef".into(),
            "0123456789abcdéf".into(),
        ] {
            assert!(check_token(&weak).is_err(), "{weak:?}");
        }
        assert!(check_token("0123456789abcdef").is_ok());
        let (a, b) = (access("127.0.0.1:1", &[]), access("127.0.0.1:1", &[]));
        assert_eq!(a.token.len(), 64);
        assert_ne!(a.token, b.token);
        assert!(a.is(&a.token.clone()) && !a.is(&b.token));
    }
}
