//! Outbound HTTP from components: refused unless the function's allow-list names the origin.
//! The check is on the request's URI, which is where the connection goes (guests cannot set
//! `Host` themselves), not on a header the guest chose.

use gust_model::OutboundRule;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiHttpHooks};

type WasiBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, Error>;
type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

pub struct OutboundPolicy {
    pub allowed: Vec<OutboundRule>,
    pub function: String,
}

impl OutboundPolicy {
    fn permits(&self, uri: &http::Uri) -> bool {
        let Some(scheme) = uri.scheme_str() else {
            return false;
        };
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri.port_u16().or(match scheme {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
        port.is_some_and(|port| {
            self.allowed
                .iter()
                .any(|rule| rule.allows(scheme, host, port))
        })
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        if !self.permits(request.uri()) {
            tracing::info!(function = %self.function, uri = %request.uri(), "outbound request refused");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as IoFuture,
            ))
        })
    }
}
