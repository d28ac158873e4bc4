//! The public data plane: serves declared HTTP routes and nothing else.
//!
//! Key types: [`Routes`] (the current route table, an immutable snapshot swapped whole when
//! routes change), [`public_router`] (the axum app of the public listener) and [`ErrorBody`]
//! (the JSON error every Gust listener answers with).
//!
//! The router never trusts a caller's `X-Gust-*` headers: it strips them and adds its own
//! (request id, path parameters, forwarding headers) before handing the request to the
//! [`gust_executor::Invoker`]. Bodies over the limit are refused with 413 before being read
//! in full. Route matching itself is pure and lives in `gust_model::RouteTable`.
//!
//! [`serve`] runs a listener (this one and the API's) under [`ConnectionLimits`].

mod body;
mod error_body;
mod ingress;
mod listener;

pub use body::{BodyBudget, BodyError, Reserved, read_limited, streamed_response};
pub use error_body::{ErrorBody, invoke_error_response};
pub use ingress::{
    MAX_ASYNC_REQUEST_BYTES, MAX_REQUEST_BYTES, PublicState, accepted_response, add_param_headers,
    forwardable_headers, function_response, public_router,
};
pub use listener::{ConnectionLimits, serve};

use std::sync::Arc;

use arc_swap::ArcSwap;
use gust_model::{Route, RouteTable};

/// The live route table, shared by the public listener (reads) and the control plane
/// (replaces it after every route change).
#[derive(Clone, Default)]
pub struct Routes(Arc<ArcSwap<RouteTable>>);

impl Routes {
    pub fn new(routes: Vec<Route>) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(RouteTable::new(routes))))
    }

    pub fn replace(&self, routes: Vec<Route>) {
        self.0.store(Arc::new(RouteTable::new(routes)));
    }

    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }
}
