//! `gust nodes`: the nodes this Gust runs on (one, or a cluster's live nodes).

use std::process::ExitCode;

use gust_api_types::NodeView;
use http::Method;

use crate::client::{ApiClient, ApiPath, ConnectionArgs, NO_BODY};
use crate::output::{self, OutputArgs, Table, time_ms};

pub async fn run(output: OutputArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    let nodes: Vec<NodeView> = ApiClient::new(connection)?
        .json(Method::GET, &ApiPath::new(["v1", "nodes"]), NO_BODY)
        .await?;
    output::print(output.format, &nodes, || {
        let mut table = Table::new(vec![
            "ID",
            "API",
            "PUBLIC",
            "VERSION",
            "STARTED",
            "INSTANCES",
            "IN-FLIGHT",
            "HEARTBEAT",
        ]);
        for node in &nodes {
            table.row(vec![
                node.id.clone(),
                node.api.clone().unwrap_or_else(|| "-".to_owned()),
                node.public.clone().unwrap_or_else(|| "-".to_owned()),
                node.version.clone(),
                time_ms(Some(node.started_at_ms)),
                node.instances.to_string(),
                node.in_flight.to_string(),
                time_ms(Some(node.heartbeat_at_ms)),
            ]);
        }
        table
    })?;
    Ok(ExitCode::SUCCESS)
}
