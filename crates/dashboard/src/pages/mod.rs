//! One module per page, each with the writes its forms send.

pub(crate) mod asynchronous;
pub(crate) mod function;
pub(crate) mod functions;
pub(crate) mod overview;
pub(crate) mod sign_in;
pub(crate) mod triggers;
pub(crate) mod usage;
