//! Placeholder: replaced by the real fake (work in progress on a helper branch).

#[derive(Debug, Clone, Default)]
pub struct SinkOptions {}

#[derive(Clone)]
pub struct Sink {}

impl Sink {
    pub fn new(_options: SinkOptions) -> Self {
        Self {}
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
