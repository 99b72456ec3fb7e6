//! Placeholder: replaced by the real fake (work in progress on a helper branch).

#[derive(Debug, Clone, Default)]
pub struct LushaOptions {}

#[derive(Clone)]
pub struct FakeLusha {}

impl FakeLusha {
    pub fn new(_options: LushaOptions) -> Self {
        Self {}
    }

    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }
}
