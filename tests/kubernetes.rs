//! `deploy/kubernetes/`: no Kubernetes runs here, so every manifest is parsed into the
//! `k8s-openapi` types (and must come back from them unchanged: a misspelt field would be
//! dropped) and the references between them are checked: selectors, ports, the NATS servers
//! Gust's nodes name, the flags they pass, and the probe paths, asked of a running Gust.

use std::collections::BTreeMap;
use std::path::Path;

use gust_harness::{Gust, GustOptions};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodTemplateSpec, Probe, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const GUST: &str = env!("CARGO_BIN_EXE_gust");
const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    services: Vec<Service>,
    budgets: Vec<PodDisruptionBudget>,
    config_maps: Vec<ConfigMap>,
}

/// Parses `document` as `T` and checks nothing was lost on the way.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, document: &Value) -> T {
    let parsed: T = serde_json::from_value(document.clone())
        .unwrap_or_else(|e| panic!("{file}: {} is not valid: {e}", document["kind"]));
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        &back, document,
        "{file}: {} {} has fields Kubernetes does not know",
        document["kind"], document["metadata"]["name"]
    );
    parsed
}

fn load() -> Manifests {
    let mut manifests = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(MANIFESTS)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {MANIFESTS}");
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let document: Value =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
            if document.is_null() {
                continue;
            }
            match document["kind"].as_str() {
                Some("Deployment") => manifests.deployments.push(typed(&file, &document)),
                Some("StatefulSet") => manifests.stateful_sets.push(typed(&file, &document)),
                Some("Service") => manifests.services.push(typed(&file, &document)),
                Some("PodDisruptionBudget") => manifests.budgets.push(typed(&file, &document)),
                Some("ConfigMap") => manifests.config_maps.push(typed(&file, &document)),
                other => panic!("{file}: a {other:?} the test does not check"),
            }
        }
    }
    manifests
}

/// Every workload's name and pod template.
fn templates(manifests: &Manifests) -> Vec<(String, &PodTemplateSpec)> {
    let deployments = manifests.deployments.iter().map(|d| {
        let spec = d.spec.as_ref().unwrap();
        (d.metadata.name.clone().unwrap(), &spec.template)
    });
    let sets = manifests.stateful_sets.iter().map(|s| {
        let spec = s.spec.as_ref().unwrap();
        (s.metadata.name.clone().unwrap(), &spec.template)
    });
    deployments.chain(sets).collect()
}

fn labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container port a Service's or probe's port refers to, by name or number.
fn container_port(container: &Container, port: &IntOrString) -> Option<i32> {
    container.ports.as_ref()?.iter().find_map(|p| match port {
        IntOrString::Int(n) => (p.container_port == *n).then_some(p.container_port),
        IntOrString::String(name) => (p.name.as_deref() == Some(name)).then_some(p.container_port),
    })
}

fn probes(container: &Container) -> Vec<&Probe> {
    [
        &container.startup_probe,
        &container.liveness_probe,
        &container.readiness_probe,
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn every_manifest_parses_and_its_references_hold() {
    let manifests = load();
    let workloads = templates(&manifests);
    for name in ["gust", "nats"] {
        assert!(
            workloads.iter().any(|(n, _)| n == name),
            "no {name} workload"
        );
    }

    // Each workload selects its own pods, and every container's probes use its own ports.
    for deployment in &manifests.deployments {
        let spec = deployment.spec.as_ref().unwrap();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(selects(&selector, &labels(&spec.template)));
    }
    for set in &manifests.stateful_sets {
        let spec = set.spec.as_ref().unwrap();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(selects(&selector, &labels(&spec.template)));
        let service = spec.service_name.as_deref().unwrap();
        let headless = manifests
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(service))
            .unwrap_or_else(|| panic!("no Service {service} for StatefulSet"));
        assert_eq!(
            headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
    }
    for (name, template) in &workloads {
        let pod = template.spec.as_ref().unwrap();
        for container in &pod.containers {
            for probe in probes(container) {
                let get = probe.http_get.as_ref().expect("HTTP probes");
                assert!(
                    container_port(container, &get.port).is_some(),
                    "{name}: a probe's port {:?} is not the container's",
                    get.port
                );
            }
        }
        // Volumes name ConfigMaps these manifests make.
        for volume in pod.volumes.iter().flatten() {
            if let Some(config) = &volume.config_map {
                assert!(
                    manifests
                        .config_maps
                        .iter()
                        .any(|c| c.metadata.name == Some(config.name.clone())),
                    "{name}: no ConfigMap {}",
                    config.name
                );
            }
        }
    }

    // Every Service and disruption budget selects a workload's pods, on ports they have.
    for service in &manifests.services {
        let name = service.metadata.name.clone().unwrap();
        let spec = service.spec.as_ref().unwrap();
        let selector = spec.selector.clone().unwrap_or_default();
        let (_, template) = workloads
            .iter()
            .find(|(_, t)| selects(&selector, &labels(t)))
            .unwrap_or_else(|| panic!("Service {name} selects no pods"));
        let containers = &template.spec.as_ref().unwrap().containers;
        for port in spec.ports.iter().flatten() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            assert!(
                containers
                    .iter()
                    .any(|c| container_port(c, &target).is_some()),
                "Service {name}: target port {target:?} is no container's"
            );
        }
    }
    for budget in &manifests.budgets {
        let selector = budget.spec.as_ref().unwrap().selector.as_ref().unwrap();
        let selector = selector.match_labels.clone().unwrap_or_default();
        assert!(
            workloads
                .iter()
                .any(|(_, t)| selects(&selector, &labels(t))),
            "PodDisruptionBudget {:?} selects no pods",
            budget.metadata.name
        );
    }
}

#[test]
fn gust_nodes_name_the_nats_servers_pass_real_flags_and_probe_paths_gust_serves() {
    let manifests = load();
    let gust = manifests
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("gust"))
        .unwrap();
    let container = &gust
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "up");

    // Every flag is one `gust up` has.
    let help = std::process::Command::new(GUST)
        .args(["up", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flag = |arg: &str| arg.split('=').next().unwrap().to_owned();
    for arg in &args[1..] {
        assert!(arg.starts_with("--"), "{arg:?}: pass flags as --name=value");
        assert!(
            help.contains(&format!("{} ", flag(arg))),
            "`gust up` has no {}",
            flag(arg)
        );
    }
    let value = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}"))
            .to_owned()
    };

    // The cluster's URLs are the NATS pods' stable names on their client port.
    let nats = manifests
        .stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("nats"))
        .unwrap();
    let nats_spec = nats.spec.as_ref().unwrap();
    let replicas = nats_spec.replicas.unwrap();
    let service = nats_spec.service_name.clone().unwrap();
    let client_port = container_port(
        &nats_spec.template.spec.as_ref().unwrap().containers[0],
        &IntOrString::String("client".into()),
    )
    .unwrap();
    let urls: Vec<String> = value("--cluster").split(',').map(str::to_owned).collect();
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("nats://nats-{i}.{service}:{client_port}"))
        .collect();
    assert_eq!(urls, expected);
    let config = &manifests.config_maps[0].data.as_ref().unwrap()["nats.conf"];
    assert!(config.contains("jetstream"), "{config}");
    for i in 0..replicas {
        assert!(config.contains(&format!("nats://nats-{i}.{service}:6222")));
    }

    // The listeners' ports are the container's named ports, and the advertised API is this
    // pod's on the API port.
    let port_of = |address: String| address.rsplit(':').next().unwrap().parse::<i32>().unwrap();
    let http = container_port(container, &IntOrString::String("http".into())).unwrap();
    let api = container_port(container, &IntOrString::String("api".into())).unwrap();
    assert_eq!(port_of(value("--listen")), http);
    assert_eq!(port_of(value("--api-listen")), api);
    assert_eq!(value("--advertise-api"), format!("http://$(POD_IP):{api}"));
    assert!(
        container.env.iter().flatten().any(|e| e.name == "POD_IP"),
        "POD_IP is not set"
    );
    // The admin token is mounted where `gust up` reads it.
    let data_dir = value("--data-dir");
    let mounts = container.volume_mounts.clone().unwrap();
    assert!(mounts.iter().any(|m| Path::new(&m.mount_path)
        == Path::new(&data_dir).join("admin.token")
        && m.sub_path.as_deref() == Some("admin.token")));

    // Each probe's path answers 200 on the listener its port names, asked of a real Gust.
    let running = Gust::start(GUST, GustOptions::default());
    for probe in probes(container) {
        let get = probe.http_get.as_ref().unwrap();
        let path = get.path.clone().unwrap();
        let url = match container_port(container, &get.port) {
            Some(port) if port == api => format!("{}{path}", running.api_url()),
            Some(port) if port == http => running.public_url(&path),
            other => panic!("probe on port {other:?}"),
        };
        let status = running.http().get(&url).send().unwrap().status();
        assert_eq!(status, 200, "{url}");
    }
}
