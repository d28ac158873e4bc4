//! Apps as code: `gust.yaml` read and checked offline ([`load`]), compared with the server
//! ([`plan`]), applied step by step ([`apply`]), written back from the server ([`export`]),
//! and described as a JSON Schema for editors ([`schema`]).

pub mod apply;
pub mod dev;
pub mod export;
pub mod load;
pub mod plan;
pub mod schema;
pub mod spec;
