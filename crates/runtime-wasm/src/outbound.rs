//! Outbound HTTP from components. Refused by default: a component reaches no host until an
//! allow-list says otherwise.

use wasmtime_wasi_http::{Error, RequestOptions, WasiHttpHooks};

pub struct DenyOutbound;

type WasiBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, Error>;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        tracing::debug!(uri = %request.uri(), "outbound request refused");
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}
