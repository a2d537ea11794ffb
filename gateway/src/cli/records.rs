//! `gateway records`: the node's own record source, which answers peers' pull requests.

use axum::body::Body;
use http::Method;

use super::client::collect_json;

use super::args::RecordsAction;
use super::call::{api_failure, client, encode_segment, fail, query};
use super::{outln, Failure, EXIT_FAILURE};

pub async fn records(action: RecordsAction) -> Result<(), Failure> {
    match action {
        RecordsAction::Put {
            config,
            patient,
            file,
            content_type,
        } => {
            let c = client(&config).await?;
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("{}: {e}", file.display())))?;
            let path = format!(
                "/v1/records/{}?{}",
                encode_segment(&patient),
                query(&[("content_type", Some(content_type))])
            );
            let resp = c
                .call(Method::PUT, &path, Body::from(bytes), None)
                .await
                .map_err(fail)?;
            let (status, body) = collect_json(resp).await.map_err(fail)?;
            if !status.is_success() {
                return Err(api_failure(status, &body));
            }
            outln!("stored the record for this patient")?;
            Ok(())
        }
    }
}
