//! Placeholder: replaced by the real fake (work in progress on a helper branch).

#[derive(Debug, Clone, Default)]
pub struct GhlOptions {}

#[derive(Clone)]
pub struct FakeGhl {}

impl FakeGhl {
    pub fn new(_options: GhlOptions) -> Self {
        Self {}
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
