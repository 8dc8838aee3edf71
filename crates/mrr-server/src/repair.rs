//! The operator's anti-entropy endpoint (`POST /v1/repair`, `mrr repair`): runs a comparison
//! of this region's records with its peers' and answers with what it found and repaired. The
//! comparison and the joins are `mrr_replication::repair`'s; this module parses the request
//! and maps its refusals to stable codes.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mrr_api::{ErrorBody, ErrorCode, RepairReport, RepairRequest};
use mrr_core::RegionName;
use mrr_replication::repair::{RunError, RunRequest};

use crate::http::{ApiError, ApiResult, AppState};

/// Compare this region's records with its peers' (every peer, or `peer`) and repair what
/// differs by joining record states; `dry_run` reports the differences and changes nothing.
/// Each repaired key is logged and counted (`mrr_repaired_total`), and `/health` warns for a
/// day: a repair means a bug or a bad disk.
#[utoipa::path(post, path = "/v1/repair", request_body = RepairRequest,
    responses((status = 200, body = RepairReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn repair(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RepairReport>> {
    let bytes = crate::request::body_bytes(body)?;
    let request: RepairRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RepairRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| crate::request::json_error(&e))?
    };
    let unknown = |peer: &str| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownRegion,
            format!("{peer} is not a peer of {}: name one of the regions in its `regions` list", state.region),
        )
    };
    let peer = match request.peer.as_deref() {
        None => None,
        Some(p) if p == state.region.as_str() => {
            return Err(ApiError::bad(
                ErrorCode::UnknownRegion,
                format!("{p} is this region: name a peer to compare with, or none for every peer"),
            ))
        }
        Some(p) => Some(RegionName::new(p.to_owned()).map_err(|_| unknown(p))?),
    };
    let run =
        RunRequest { peer, topics: request.topics.iter().cloned().collect::<BTreeSet<_>>(), dry_run: request.dry_run };
    let report = state.repairer.run(run).await.map_err(|e| match e {
        RunError::UnknownPeer(p) => unknown(&p),
        RunError::BadTopic { .. } => ApiError::bad(ErrorCode::InvalidTopic, e.to_string()),
    })?;
    Ok(Json(report))
}
