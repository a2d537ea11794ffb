//! Calling the local API from a command: the node's config and client, a 2xx-or-failure call,
//! and building paths and queries.

use http::{Method, StatusCode};
use serde_json::Value;

use super::client::ApiClient;
use crate::config::NodeConfig;

use super::args::ConfigArg;
use super::{Failure, EXIT_FAILURE, EXIT_USAGE};

pub fn load_config(arg: &ConfigArg) -> Result<NodeConfig, Failure> {
    NodeConfig::load(&arg.config).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))
}

pub async fn client(arg: &ConfigArg) -> Result<ApiClient, Failure> {
    let config = load_config(arg)?;
    ApiClient::connect(&config)
        .await
        .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))
}

pub fn api_failure(status: StatusCode, body: &Value) -> Failure {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    Failure::new(EXIT_FAILURE, format!("{} ({})", message, status.as_u16()))
}

pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, String)> = pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect();
    serde_urlencoded::to_string(present).unwrap_or_default()
}

/// Calls the API and insists on a 2xx answer, turning anything else into a failure that
/// carries the API's error text.
pub async fn ok_json(
    c: &ApiClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let (status, body) = c.json(method, path, body).await.map_err(fail)?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(api_failure(status, &body))
    }
}

pub fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(EXIT_FAILURE, e.to_string())
}

pub fn encode_segment(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}
