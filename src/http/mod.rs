//! The one outbound HTTP path: `ApiClient` with timeouts, keyed rate limits, retries and
//! metrics. Nothing else in the crate builds a `reqwest` client (clippy enforces it).

mod client;
mod error;
mod limits;

pub use client::{ApiClient, ApiRequest, ApiResponse, Body, ClientSettings, HeaderScheme, RetryPolicy};
pub use error::{HttpError, LimitScope, TransportKind, is_retryable_status};
pub use limits::{BucketSnapshot, LimitObservation, Priority, QuotaSettings, RateLimits};
pub use reqwest::{Method, StatusCode};
