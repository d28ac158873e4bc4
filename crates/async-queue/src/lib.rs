//! Asynchronous invocations: accepted durably, delivered through the executor with retries,
//! ended in exactly one terminal state (`succeeded`, `dead` or `expired`).
//!
//! Key types:
//! - [`AsyncQueue`]: what producers call (async routes, the API, timers, redrives). An
//!   invocation is accepted once its batch is on disk ([`QueueWriter`]'s group commit), so a
//!   `202` is never sent for something a crash could lose.
//! - [`Dispatcher`]: reads due invocations, delivers each attempt through the
//!   [`gust_executor::Invoker`] (the same scaling and metering as synchronous calls), and
//!   applies the retry rules of `gust_model::classify_status` and `gust_model::backoff`.
//!
//! Not here: the storage format (`gust-store`), HTTP handling (router, API), schedules
//! (`gust-trigger-timer`).

mod dispatcher;
mod error;
mod queue;
mod request;
mod writer;

pub use dispatcher::{DeliveryPolicies, Dispatcher};
pub use error::QueueError;
pub use gust_store::{QueueBounds, QueueFull};
pub use queue::{AsyncQueue, QueueLimits};
pub use writer::QueueWriter;

pub use gust_executor::{Clock, SystemClock};
