//! The server: the protocol's routes table, and `serve`.

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use super::connection::serve_connections;
use super::generation;
use super::routes;
use super::state::ServerState;

/// The protocol's routes over `state`.
pub fn router(state: Arc<ServerState>) -> Router {
    let mut router = Router::new()
        .route("/v2", get(routes::server_metadata))
        .route("/v2/health/live", get(routes::live))
        .route("/v2/health/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics));
    // Each model route with and without `/versions/{version}`.
    for base in ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"] {
        router = router
            .route(base, get(routes::model_metadata))
            .route(&format!("{base}/ready"), get(routes::model_ready))
            .route(&format!("{base}/config"), get(routes::model_config))
            .route(&format!("{base}/infer"), post(routes::infer))
            .route(&format!("{base}/generate"), post(generation::generate))
            .route(
                &format!("{base}/generate_stream"),
                post(generation::generate_stream),
            );
    }
    router
        .fallback(|| async { routes::error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            routes::error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` completes: then stops accepting, takes every
/// connection the kernel accepted (on Linux a socket filter first drops new connections' SYNs
/// while handshakes under way complete), answers every request they carry (an idle kept-alive
/// connection is closed), and stops the models.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let served = serve_connections(listener, app, &state.options, shutdown).await;
    let s = state.clone();
    let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
    served
}
