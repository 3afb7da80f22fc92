//! The `limit` and `cursor` of a REST list, read and checked once for every list handler.

use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::db::ListParams;
use crate::error::{ApiError, Query};

/// A list's page: `limit` within bounds (50 when absent) and the `cursor` as the id the
/// list is ordered by. A wrong one answers 400, as a query that does not parse does.
pub struct ListQuery<C> {
    pub limit: i64,
    pub cursor: Option<C>,
}

impl<C: FromStr, S: Send + Sync> FromRequestParts<S> for ListQuery<C> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(page) = Query::<ListParams>::from_request_parts(parts, state).await?;
        Ok(Self {
            limit: page.limit().map_err(ApiError::BadRequest)?,
            cursor: page.cursor().map_err(ApiError::BadRequest)?,
        })
    }
}
