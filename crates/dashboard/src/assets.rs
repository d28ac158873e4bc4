//! The dashboard's scripts and styles, compiled into the binary: no CDN, no build step.
//! htmx (0BSD) and uPlot (MIT) are vendored as their projects publish them; see
//! `assets/LICENSES.md`.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};

const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "htmx.min.js",
        "text/javascript",
        include_bytes!("../assets/htmx.min.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript",
        include_bytes!("../assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css",
        include_bytes!("../assets/uPlot.min.css"),
    ),
    (
        "dashboard.js",
        "text/javascript",
        include_bytes!("../assets/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css",
        include_bytes!("../assets/dashboard.css"),
    ),
];

/// `GET /ui/assets/{file}`. Served without a session: they hold code and styles, no data.
pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => (
            [
                (CONTENT_TYPE, *content_type),
                (CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
