//! The `limit` and `cursor` of a REST list, read and checked once for every list handler.

use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::db::PageParams;
use crate::error::{AppError, Query};

/// A list's page: `limit` within bounds (50 when absent) and the `cursor` as the id the
/// list is ordered by. A wrong one answers 400, as a query that does not parse does.
pub struct Paging<C> {
    pub limit: i64,
    pub cursor: Option<C>,
}

impl<C: FromStr, S: Send + Sync> FromRequestParts<S> for Paging<C> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Query(page) = Query::<PageParams>::from_request_parts(parts, state).await?;
        Ok(Self {
            limit: page.limit().map_err(AppError::BadRequest)?,
            cursor: page.cursor().map_err(AppError::BadRequest)?,
        })
    }
}
