//! The CLI's API client: finds the server and token (flag > environment > CLI config >
//! default), sends JSON, and turns Gust's error bodies into one-line errors.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cli_config::CliConfig;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";

#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// API URL, given before the command [default: $GUST_URL, the CLI config's current
    /// server, or http://127.0.0.1:8081]
    #[arg(long)]
    pub url: Option<String>,
    /// API token, given before the command [default: $GUST_TOKEN, or the CLI config's token
    /// for the URL]
    #[arg(long)]
    pub token: Option<String>,
    /// Namespace of the resources
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "GUST_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
}

pub fn block_on<F: std::future::Future<Output = anyhow::Result<std::process::ExitCode>>>(
    future: F,
) -> anyhow::Result<std::process::ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

pub struct ApiClient {
    base: String,
    token: Option<String>,
    pub namespace: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A raw API answer.
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ApiResponse {
    /// The error message of a Gust error body, if this is one.
    pub fn gust_error(&self) -> Option<String> {
        let reason = self.headers.get("x-gust-error")?.to_str().ok()?.to_owned();
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        let message = body
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_owned();
        let request = body
            .get("request_id")
            .and_then(|r| r.as_str())
            .map(|id| format!(", request {id}"))
            .unwrap_or_default();
        Some(format!("{message} ({reason}{request})"))
    }
}

impl ApiClient {
    pub fn new(args: &ConnectionArgs) -> anyhow::Result<Self> {
        let config = CliConfig::load()?;
        let base = args
            .url
            .clone()
            .or_else(|| std::env::var("GUST_URL").ok().filter(|u| !u.is_empty()))
            .or_else(|| config.current.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let base = base.trim_end_matches('/').to_owned();
        let token = args
            .token
            .clone()
            .or_else(|| std::env::var("GUST_TOKEN").ok().filter(|t| !t.is_empty()))
            .or_else(|| config.servers.get(&base).map(|entry| entry.token.clone()));
        Ok(Self {
            base,
            token,
            namespace: args.namespace.clone(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Sends a request; `path_and_query` starts with `/v1/`.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> anyhow::Result<ApiResponse> {
        let separator = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{path_and_query}{separator}namespace={}",
            self.base, self.namespace
        );
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (key, value) in headers {
            request = request.header(key.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .with_context(|| format!("invalid request to {url}"))?;
        let response = self.http.request(request).await.with_context(|| {
            format!(
                "cannot reach the Gust API at {} (is `gust up` running?)",
                self.base
            )
        })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("the Gust API at {} closed the connection", self.base))?
            .to_bytes();
        Ok(ApiResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends JSON (or nothing) and decodes a JSON answer; Gust errors become `Err`.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let response = self.call(method, path, body).await?;
        serde_json::from_slice(&response.body).context("the API answered with unexpected JSON")
    }

    /// Like [`ApiClient::json`] for calls whose answer has no body worth decoding.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<ApiResponse> {
        let (headers, bytes) = match body {
            Some(body) => (
                vec![("content-type".to_owned(), "application/json".to_owned())],
                Bytes::from(serde_json::to_vec(body).context("cannot encode the request")?),
            ),
            None => (Vec::new(), Bytes::new()),
        };
        let response = self.send(method, path, &headers, bytes).await?;
        if !response.status.is_success() {
            match response.gust_error() {
                Some(message) => bail!("{message}"),
                None => bail!("the API answered {}", response.status),
            }
        }
        Ok(response)
    }
}

/// A placeholder body type for calls without one.
pub const NO_BODY: Option<&()> = None;
