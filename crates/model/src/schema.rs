//! OpenAPI schemas of the types that travel as text: their JSON is a string however they are
//! held in memory, so their schema says so (with the form the string takes).

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::route::{Method, MethodSet, PathPattern};
use crate::timer::{Schedule, ScheduleConfig};
use crate::{BrokerUrl, HumanDuration, Name, Namespace, OutboundRule};

fn text(description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .examples([example])
        .into()
}

macro_rules! text_schema {
    ($type:ty, $description:expr, $example:expr) => {
        impl PartialSchema for $type {
            fn schema() -> RefOr<Schema> {
                text($description, $example)
            }
        }
        impl ToSchema for $type {}
    };
}

text_schema!(
    Name,
    "1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
    "hello"
);
text_schema!(Namespace, "a name; `default` when none is given", "default");
text_schema!(
    HumanDuration,
    "a duration such as 500ms, 30s, 5m or 1h 30m",
    "30s"
);
text_schema!(
    OutboundRule,
    "an origin a function may call: scheme://host[:port], * for any scheme, *. for subdomains",
    "https://api.example.com"
);
text_schema!(
    PathPattern,
    "a route path: literal segments and {param} segments",
    "/orders/{id}"
);
text_schema!(
    BrokerUrl,
    "a broker's URL; its password is never shown",
    "nats://127.0.0.1:4222"
);

impl PartialSchema for MethodSet {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Method::schema())
            .description(Some("HTTP methods; empty is any method"))
            .into()
    }
}
impl ToSchema for MethodSet {}

impl PartialSchema for Schedule {
    fn schema() -> RefOr<Schema> {
        ScheduleConfig::schema()
    }
}
impl ToSchema for Schedule {
    fn name() -> Cow<'static, str> {
        ScheduleConfig::name()
    }
}
