//! The HTTP edge both listeners share (the public one and the API's): [`serve`] runs a
//! listener under [`ConnectionLimits`] (connection caps, per-client caps, header and send
//! timeouts); [`BodyBudget`] lets a request body in within a limit, a shared memory budget and
//! a minimum rate, whole or streamed; [`forwardable_headers`] and [`function_response`] decide which headers
//! cross in each direction; [`ErrorBody`] is the JSON error every listener answers with.
//!
//! Nothing here knows routes or functions' settings: the router and the API build on it.

mod body;
mod error_body;
mod exchange;
mod listener;

pub use body::{BodyBudget, Reserved, read_limited, streamed_response};
pub use error_body::{ErrorBody, invoke_error_response};
pub use exchange::{
    DASHBOARD_COOKIE_PREFIX, MAX_ASYNC_REQUEST_BYTES, MAX_REQUEST_BYTES, accepted_response,
    add_param_headers, forwardable_headers, function_response, put_header,
    unsupported_transfer_coding,
};
pub use listener::{ConnectionLimits, serve};
