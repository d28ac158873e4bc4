//! Carrying out a plan, one step at a time in the plan's order. A step that fails stops the
//! apply: what was applied and what was not are said, and applying again completes it
//! (the next plan starts from what the server then has).

use gust_api_types::{FunctionSpec, FunctionView};
use gust_model::{MqTriggerConfig, RouteConfig, TimerConfig};
use http::Method;

use super::load::LoadedApp;
use super::plan::{Action, Kind, Plan, Step};
use crate::client::{ApiClient, ApiPath, NO_BODY};
use crate::code_upload;
use crate::commands::function::wait_live;

/// Applies every changing step of `plan`; prints each as it is done.
pub async fn execute(client: &ApiClient, loaded: &LoadedApp, plan: &Plan) -> anyhow::Result<()> {
    let changing: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| s.action != Action::Unchanged)
        .collect();
    for (done, step) in changing.iter().enumerate() {
        if let Err(err) = run(client, loaded, step).await {
            let list = |steps: &[&Step]| {
                if steps.is_empty() {
                    "  (none)".to_owned()
                } else {
                    steps
                        .iter()
                        .map(|s| format!("  {s}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            };
            anyhow::bail!(
                "{step} failed: {err:#}\napplied:\n{}\nnot applied:\n{}\nfix the cause and apply again: what was applied is not done twice",
                list(&changing[..done]),
                list(&changing[done..]),
            );
        }
        println!("{step}: done");
    }
    Ok(())
}

async fn run(client: &ApiClient, loaded: &LoadedApp, step: &Step) -> anyhow::Result<()> {
    let name = step.name.as_str();
    let item = ApiPath::new(["v1", step.kind.collection(), name]);
    let collection = ApiPath::new(["v1", step.kind.collection()]);
    let trigger = step.kind != Kind::Function;
    let remade = trigger && matches!(step.action, Action::Update(_));
    if trigger && (remade || step.action == Action::Delete) {
        // Routes, timers and queue triggers change by being made again.
        client.call(Method::DELETE, &item, NO_BODY).await?;
        if step.action == Action::Delete {
            return Ok(());
        }
    }
    let made = make(client, loaded, step, &collection, &item).await;
    match made {
        Err(err) if remade => Err(err.context(format!(
            "the old {} {name} was deleted and the new one could not be created: it is gone until the next apply",
            step.kind.as_str()
        ))),
        made => made,
    }
}

/// Creates, updates or (a function) deletes what `step` names.
async fn make(
    client: &ApiClient,
    loaded: &LoadedApp,
    step: &Step,
    collection: &ApiPath,
    item: &ApiPath,
) -> anyhow::Result<()> {
    let spec = &loaded.spec;
    let app = Some(spec.app.clone());
    let name = step.name.as_str();
    match step.kind {
        Kind::Environment => {
            let mut config = spec.environments[name].clone();
            config.name = name.to_owned();
            client.call(Method::POST, collection, Some(&config)).await?;
        }
        Kind::Function if step.action == Action::Delete => {
            client.call(Method::DELETE, item, NO_BODY).await?;
        }
        Kind::Function => {
            let entry = &spec.functions[name];
            let code = match &step.code {
                Some(packed) => Some(
                    code_upload::send(client, packed.filename.clone(), packed.bytes.clone())
                        .await?,
                ),
                None => None,
            };
            let body = FunctionSpec {
                name: Some(name.to_owned()),
                code,
                settings: entry.settings(&spec.app),
            };
            let (view, done): (FunctionView, &str) = if step.action == Action::Create {
                (
                    client.json(Method::POST, collection, Some(&body)).await?,
                    "created",
                )
            } else {
                let replace = item.clone().query("replace", true);
                (
                    client.json(Method::PUT, &replace, Some(&body)).await?,
                    "updated",
                )
            };
            if !wait_live(client, &view, done, false).await? {
                anyhow::bail!("its dependency build failed (see above)");
            }
        }
        Kind::Route => {
            let config = RouteConfig {
                name: Some(name.to_owned()),
                app,
                ..spec.routes[name].clone()
            };
            client.call(Method::POST, collection, Some(&config)).await?;
        }
        Kind::Timer => {
            let config = TimerConfig {
                name: Some(name.to_owned()),
                app,
                ..spec.timers[name].clone()
            };
            client.call(Method::POST, collection, Some(&config)).await?;
        }
        Kind::QueueTrigger => {
            let config = MqTriggerConfig {
                name: Some(name.to_owned()),
                app,
                ..spec.queue_triggers[name].clone()
            };
            client.call(Method::POST, collection, Some(&config)).await?;
        }
    }
    Ok(())
}
