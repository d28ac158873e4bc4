//! The public data plane: serves declared HTTP routes and nothing else.
//!
//! Key types: [`Routes`] (the current route table, an immutable snapshot swapped whole when
//! routes change) and [`public_router`] (the axum app of the public listener). What both
//! listeners share (limits, timeouts, header hygiene, the error body) is `gust_edge`'s.
//!
//! The router never trusts a caller's `X-Gust-*` headers: it strips them and adds its own
//! (request id, path parameters, forwarding headers) before handing the request to the
//! [`gust_executor::Invoker`]. Bodies over the limit are refused with 413 before being read
//! in full. Route matching itself is pure and lives in `gust_model::RouteTable`.

mod auth;
mod ingress;
mod rates;

pub use auth::{InvokerTokens, keys_of};
pub use ingress::{PublicState, public_router};
pub use rates::NamespaceRates;

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
