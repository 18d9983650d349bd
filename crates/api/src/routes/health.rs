//! `/livez` (the process answers) and `/readyz` (the store answers too).

use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;
use crate::problem::ApiError;

/// The process is alive.
#[utoipa::path(get, path = "/livez", tag = "health", responses((status = 200, description = "Alive")))]
pub async fn livez() -> StatusCode {
    StatusCode::OK
}

/// The process can serve requests: its store answers.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, body = crate::problem::Problem))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state
        .inner
        .store
        .ping()
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(StatusCode::OK)
}
