//! The web dashboard: static assets built into the binary, served at `/` (no Node at run time).
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::Route;

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

pub fn routes() -> Vec<Route> {
    vec![
        Route { path: "/", methods: &["GET"], handler: get(|| async { Html(INDEX) }), long: false },
        Route {
            path: "/ui/app.js",
            methods: &["GET"],
            handler: get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
            long: false,
        },
        Route {
            path: "/ui/style.css",
            methods: &["GET"],
            handler: get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
            long: false,
        },
    ]
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([("content-type", content_type), ("cache-control", "no-cache")], body).into_response()
}
