//! A small blocking client of the admin HTTP interface, for the command
//! line, `xmpp-ring local`, tests and benchmarks.

use std::sync::OnceLock;
use std::time::Duration;

/// The bearer token this process sends (see [`use_token`]).
static TOKEN: OnceLock<String> = OnceLock::new();

/// Sends `token` with every request of this process (the CLI's
/// `--admin-token-file`). Without it, `XMPP_RING_ADMIN_TOKEN` is used when
/// set.
pub fn use_token(token: String) {
    let _ = TOKEN.set(token);
}

fn token() -> Option<String> {
    TOKEN
        .get()
        .cloned()
        .or_else(|| std::env::var("XMPP_RING_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty())
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered 400: the request itself was wrong.
    #[error("{0}")]
    BadRequest(String),
    /// Anything else: unreachable, other status, unexpected body.
    #[error("{0}")]
    Failed(String),
}

fn base_url(admin: &str) -> String {
    let a = admin.trim_end_matches('/');
    if a.starts_with("http://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// GETs `path_and_query` from the admin server at `admin` and parses JSON.
pub fn get_json<T: serde::de::DeserializeOwned>(
    admin: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<T, ClientError> {
    request_json(admin, path_and_query, None, token().as_deref(), timeout)
}

/// POSTs `body` to `path_and_query` and parses the JSON answer.
pub fn post_json<T: serde::de::DeserializeOwned>(
    admin: &str,
    path_and_query: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<T, ClientError> {
    request_json(
        admin,
        path_and_query,
        Some(body),
        token().as_deref(),
        timeout,
    )
}

/// A URL shortened for error messages (queries can carry long values).
fn shown(url: &str) -> String {
    if url.len() <= 120 {
        return url.to_string();
    }
    let mut end = 120;
    while !url.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &url[..end])
}

/// A request with an explicit bearer token (`body`: POST, else GET).
pub fn request_json<T: serde::de::DeserializeOwned>(
    admin: &str,
    path_and_query: &str,
    body: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<T, ClientError> {
    let full = format!("{}{}", base_url(admin), path_and_query);
    let url = shown(&full);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let sent = match (body, &auth) {
        (None, None) => agent.get(&full).call(),
        (None, Some(a)) => agent.get(&full).header("authorization", a).call(),
        (Some(b), None) => agent.post(&full).send(b),
        (Some(b), Some(a)) => agent.post(&full).header("authorization", a).send(b),
    };
    let mut resp = sent.map_err(|e| ClientError::Failed(format!("{url}: {e}")))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| ClientError::Failed(format!("{url}: {e}")))?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        return Err(if status.as_u16() == 400 {
            ClientError::BadRequest(msg)
        } else {
            ClientError::Failed(format!("{url}: {status}: {msg}"))
        });
    }
    serde_json::from_str(&body)
        .map_err(|e| ClientError::Failed(format!("{url}: unexpected answer: {e}")))
}

/// GETs a plain-text document (for `/metrics`).
pub fn get_text(admin: &str, path: &str, timeout: Duration) -> Result<String, ClientError> {
    let url = format!("{}{}", base_url(admin), path);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut req = agent.get(&url);
    if let Some(t) = token() {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.call()
        .map_err(|e| ClientError::Failed(format!("{url}: {e}")))?
        .body_mut()
        .read_to_string()
        .map_err(|e| ClientError::Failed(format!("{url}: {e}")))
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_encoding() {
        assert_eq!(super::url_encode("a b@c/d"), "a%20b%40c%2Fd");
        assert_eq!(super::url_encode("é"), "%C3%A9");
    }
}
