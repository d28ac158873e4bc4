//! The CLI's API client: finds the server and token (flag > environment > CLI config >
//! default), sends JSON over HTTP or HTTPS (the system's roots, or `--ca-cert`), builds every
//! URL from encoded path segments and query pairs, and turns Gust's error bodies into one-line
//! errors.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, Method, StatusCode};
use reqwest::Url;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cli_config::CliConfig;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";
/// How long reaching the API (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API may stay silent while a request or an answer is under way (a large upload
/// is not bounded as a whole, only by its progress).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// API URL, http:// or https://, given before the command [default: $GUST_URL, the CLI
    /// config's current server, or http://127.0.0.1:8081]
    #[arg(long)]
    pub url: Option<String>,
    /// API token, given before the command [default: $GUST_TOKEN, or the CLI config's token
    /// for the URL]
    #[arg(long)]
    pub token: Option<String>,
    /// PEM file of a certificate authority to trust for an https:// URL, besides the system's
    #[arg(long, env = "GUST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Namespace of the resources (`gust token create` takes several)
    #[arg(
        long = "namespace",
        short = 'n',
        global = true,
        env = "GUST_NAMESPACE",
        default_value = "default",
        action = clap::ArgAction::Append
    )]
    pub namespaces: Vec<String>,
}

impl ConnectionArgs {
    /// The one namespace a command acts in.
    pub fn namespace(&self) -> anyhow::Result<&str> {
        match self.namespaces.as_slice() {
            [one] => Ok(one),
            [] => Ok("default"),
            _ => bail!(
                "-n/--namespace is given more than once; only `gust token create` takes several"
            ),
        }
    }
}

/// A path of the API (`["v1", "functions", name]`) and its query; each part is encoded when
/// the URL is built, so a name can never change which path is called.
#[derive(Debug, Clone)]
pub struct ApiPath {
    segments: Vec<String>,
    query: Vec<(String, String)>,
}

impl ApiPath {
    pub fn new<S: AsRef<str>>(segments: impl IntoIterator<Item = S>) -> Self {
        Self {
            segments: segments
                .into_iter()
                .map(|s| s.as_ref().to_owned())
                .collect(),
            query: Vec::new(),
        }
    }

    pub fn query(mut self, key: &str, value: impl ToString) -> Self {
        self.query.push((key.to_owned(), value.to_string()));
        self
    }
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
    base: Url,
    token: Option<String>,
    pub namespace: String,
    http: reqwest::Client,
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

    /// This answer if it is a success; otherwise an error with Gust's message.
    pub fn success(self) -> anyhow::Result<Self> {
        if self.status.is_success() {
            return Ok(self);
        }
        match self.gust_error() {
            Some(message) => bail!("{message}"),
            None => bail!("the API answered {}", self.status),
        }
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
        let parsed = Url::parse(&base).with_context(|| format!("invalid API URL {base:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
            bail!("invalid API URL {base:?}: expected http://HOST[:PORT] or https://HOST[:PORT]");
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            // A redirect would resend the token to wherever it points.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
            if certificates.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        Ok(Self {
            base: parsed,
            token,
            namespace: args.namespace()?.to_owned(),
            http: http.build().context("cannot set up the HTTP client")?,
        })
    }

    /// The base URL as the user wrote it (without the slash the URL type adds).
    fn shown_base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The URL of `path` under the API's base, with the namespace in its query.
    fn url(&self, path: &ApiPath) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the API URL {} cannot have a path", self.base))?
            .pop_if_empty()
            .extend(&path.segments);
        url.query_pairs_mut()
            .extend_pairs(&path.query)
            .append_pair("namespace", &self.namespace);
        Ok(url)
    }

    /// Sends a request to `path` (under `/v1/`).
    pub async fn send(
        &self,
        method: Method,
        path: &ApiPath,
        headers: &[(String, String)],
        body: Bytes,
    ) -> anyhow::Result<ApiResponse> {
        let url = self.url(path)?;
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (key, value) in headers {
            request = request.header(key.as_str(), value.as_str());
        }
        let response = request.body(body).send().await.map_err(|err| {
            let hint = if err.is_timeout() {
                "it did not answer in time"
            } else {
                "is `gust up` running, and is the URL right?"
            };
            anyhow::anyhow!(
                "cannot reach the Gust API at {} ({hint}): {}",
                self.shown_base(),
                error_chain(&err)
            )
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|err| {
            anyhow::anyhow!(
                "the Gust API at {} broke off its answer: {}",
                self.shown_base(),
                error_chain(&err)
            )
        })?;
        Ok(ApiResponse {
            status,
            headers,
            body,
        })
    }

    /// Sends JSON (or nothing) and decodes a JSON answer; Gust errors become `Err`.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &ApiPath,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let response = self.call(method, path, body).await?;
        serde_json::from_slice(&response.body).context("the API answered with unexpected JSON")
    }

    /// Like [`ApiClient::json`] for calls whose answer has no body worth decoding.
    pub async fn call(
        &self,
        method: Method,
        path: &ApiPath,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<ApiResponse> {
        let (headers, bytes) = match body {
            Some(body) => (
                vec![("content-type".to_owned(), "application/json".to_owned())],
                Bytes::from(serde_json::to_vec(body).context("cannot encode the request")?),
            ),
            None => (Vec::new(), Bytes::new()),
        };
        self.send(method, path, &headers, bytes).await?.success()
    }
}

/// A placeholder body type for calls without one.
pub const NO_BODY: Option<&()> = None;

/// An error and its causes on one line (reqwest's own message leaves out why it failed).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
