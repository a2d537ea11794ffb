//! How the CLI reaches a node: over HTTP to the running node's local API, or, when no node is
//! running for that config, by loading the node's state and calling the same API router
//! in-process. Either way the CLI goes through exactly the code paths the EMR uses.

use std::sync::Arc;

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::config::NodeConfig;
use crate::node::load_state;
use crate::state::NodeState;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: cannot read the API token: {problem}")]
    Token { path: String, problem: String },
    #[error("local api {addr}: {problem}")]
    Http { addr: String, problem: String },
    #[error("no node is running for this config and it cannot be opened offline: {0}")]
    Offline(String),
}

enum Target {
    Remote(std::net::SocketAddr),
    /// The node's state opened by this process (the node is not running).
    InProcess {
        router: axum::Router,
        _state: Arc<NodeState>,
        _stop: watch::Sender<bool>,
    },
}

pub struct ApiClient {
    target: Target,
    token: String,
}

impl ApiClient {
    pub async fn connect(config: &NodeConfig) -> Result<ApiClient, ClientError> {
        let token = read_token(config)?;
        let addr = config.local_api.listen;
        let target = match TcpStream::connect(addr).await {
            Ok(_) => Target::Remote(addr),
            Err(_) => {
                let (stop, rx) = watch::channel(false);
                let state = load_state(config.clone(), rx)
                    .map_err(|e| ClientError::Offline(e.to_string()))?;
                Target::InProcess {
                    router: crate::api::router(state.clone()),
                    _state: state,
                    _stop: stop,
                }
            }
        };
        Ok(ApiClient { target, token })
    }

    /// Only over HTTP to a running node: never opens the store in-process (for tests and
    /// tools that must not take the node's place).
    pub fn remote(config: &NodeConfig) -> Result<ApiClient, ClientError> {
        Ok(ApiClient {
            target: Target::Remote(config.local_api.listen),
            token: read_token(config)?,
        })
    }

    pub fn is_offline(&self) -> bool {
        matches!(self.target, Target::InProcess { .. })
    }

    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Body,
        content_type: Option<&str>,
    ) -> Result<Response<Body>, ClientError> {
        self.call_with_headers(method, path_and_query, body, content_type, &[])
            .await
    }

    /// [`ApiClient::call`] with extra request headers (e.g. `content-digest`).
    pub async fn call_with_headers(
        &self,
        method: Method,
        path_and_query: &str,
        body: Body,
        content_type: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<Response<Body>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        if let Some(ct) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, ct);
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        match &self.target {
            Target::Remote(addr) => {
                let http_err = |problem: String| ClientError::Http {
                    addr: addr.to_string(),
                    problem,
                };
                let request = builder
                    .header(http::header::HOST, addr.to_string())
                    .body(body)
                    .map_err(|e| http_err(e.to_string()))?;
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| http_err(e.to_string()))?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| http_err(e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| http_err(e.to_string()))?;
                Ok(response.map(Body::new))
            }
            Target::InProcess { router, .. } => {
                let request = builder.body(body).map_err(|e| ClientError::Http {
                    addr: "in-process".to_owned(),
                    problem: e.to_string(),
                })?;
                let response = router.clone().oneshot(request).await;
                response.map_err(|never| match never {})
            }
        }
    }

    /// Calls and collects a JSON answer (a body that is not JSON becomes a string).
    pub async fn json(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let (body, ct) = match body {
            Some(v) => (
                Body::from(serde_json::to_vec(&v).unwrap_or_default()),
                Some("application/json"),
            ),
            None => (Body::empty(), None),
        };
        let response = self.call(method, path_and_query, body, ct).await?;
        collect_json(response).await
    }

    /// GETs one page of a paged listing: its status, its JSON body and the path of the next
    /// page, from the `Link: <…>; rel="next"` header the node sends while there may be more.
    pub async fn page(&self, path_and_query: &str) -> Result<Page, ClientError> {
        let response = self
            .call(Method::GET, path_and_query, Body::empty(), None)
            .await?;
        let next = response
            .headers()
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let (status, body) = collect_json(response).await?;
        Ok(Page { status, body, next })
    }
}

/// One page of a listing, as [`ApiClient::page`] reads it.
pub struct Page {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub next: Option<String>,
}

/// The target of the `next` link in a `Link` header value (RFC 8288): `<path?query>` with a
/// `rel` parameter, quoted or not, whose space-separated relation types include `next`.
/// Hand-written: the node writes one simple form, and no well-kept crate exists (`http-link`
/// was last released in 2021; `parse_link_header` brings regex and lazy_static for this).
/// Our targets never hold a comma (they are our own paths and query strings).
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        params
            .split(';')
            .filter_map(|p| p.split_once('='))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("rel"))
            .any(|(_, value)| {
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                value
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
            .then(|| target.to_owned())
    })
}

pub async fn collect_json(
    response: Response<Body>,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http {
            addr: "local api".to_owned(),
            problem: e.to_string(),
        })?
        .to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    Ok((status, value))
}

fn read_token(config: &NodeConfig) -> Result<String, ClientError> {
    let path = &config.local_api.token_file;
    let err = |problem: String| ClientError::Token {
        path: path.display().to_string(),
        problem,
    };
    pki_tools::files::check_private_key_permissions(path).map_err(|e| err(e.to_string()))?;
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(err("the file is empty".to_owned()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn the_next_link_is_read_from_a_link_header() {
        assert_eq!(
            next_link(r#"</v1/audit?patient=p&since=1000&limit=1000>; rel="next""#).as_deref(),
            Some("/v1/audit?patient=p&since=1000&limit=1000")
        );
        assert_eq!(
            next_link(r#"</a>; rel="prev", </b?x=1> ; rel="next""#).as_deref(),
            Some("/b?x=1")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
        assert_eq!(next_link("</a>; rel=next").as_deref(), Some("/a"));
        assert_eq!(
            next_link(r#"</a>; title="x"; REL="last next""#).as_deref(),
            Some("/a")
        );
        assert_eq!(next_link(r#"</a>; rel="nextish""#), None);
        assert_eq!(next_link("garbage"), None);
    }
}
