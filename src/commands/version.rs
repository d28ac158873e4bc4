//! `gust version`: this client's release and commit, and the server's, as other CLIs print
//! both (`kubectl version`, `fission version`).

use std::process::ExitCode;

use gust_api_types::VersionView;
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};

/// The release and commit this binary was built from.
pub fn this_build() -> VersionView {
    VersionView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("GUST_COMMIT").to_owned(),
    }
}

/// `gust --version`'s text: the release and the commit.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GUST_COMMIT"), ")");

pub async fn run(connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let client = this_build();
    println!("client: gust {} ({})", client.version, client.commit);
    let server: anyhow::Result<VersionView> = async {
        ApiClient::new(connection)?
            .json(Method::GET, &ApiPath::new(["v1", "version"]), NO_BODY)
            .await
    }
    .await;
    match server {
        Ok(server) => {
            println!("server: gust {} ({})", server.version, server.commit);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            println!("server: unknown");
            eprintln!("error: cannot reach the server: {err:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}
