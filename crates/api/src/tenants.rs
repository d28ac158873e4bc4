//! `/v1/namespaces`, `/v1/tokens` and `/v1/audit`: tenants, the tokens that reach them and
//! the log of what was changed. Who may call each is decided before the handler runs (see
//! `access`); a handler only narrows what a namespaced admin sees and makes to what its own
//! token reaches.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use bytes::Bytes;
use gust_api_types::{
    AuditList, AuditQuery, NamespaceCreate, NamespaceQuery, NamespaceUpdate, NamespaceView,
    TokenCreate, TokenCreated, TokenView, WhoAmIView,
};
use gust_model::{ApiToken, Name, Namespace, NamespaceRecord, TOKEN_PREFIX};
use http::StatusCode;
use rand::RngExt;

use crate::access::{Principal, secret_hash};

#[utoipa::path(get, path = "/whoami", tag = "tokens", responses((status = 200, body = WhoAmIView, description = "the calling token's name, role and namespaces")))]
pub async fn whoami(Extension(principal): Extension<Principal>) -> Json<WhoAmIView> {
    Json(WhoAmIView {
        name: principal.name,
        role: principal.role,
        namespaces: principal.namespaces,
    })
}
use crate::functions::now_ms;
use crate::{ApiError, ApiState, NamespaceExt, parse_json};

type Shared = State<Arc<ApiState>>;

fn namespace_view(state: &ApiState, record: NamespaceRecord) -> Result<NamespaceView, ApiError> {
    let ns = Some(&record.name);
    let (running_instances, running_memory_mb) = state.executor.quotas().running(&record.name);
    Ok(NamespaceView {
        running_instances,
        running_memory_mb,
        functions: state.store.functions(ns)?.len(),
        routes: state.store.routes(ns)?.len(),
        timers: state.store.timers(ns)?.len(),
        mq_triggers: state.store.mq_triggers(ns)?.len(),
        record,
    })
}

#[utoipa::path(get, path = "/namespaces", tag = "namespaces", responses((status = 200, body = [NamespaceView], description = "the namespaces the token reaches")))]
pub async fn list_namespaces(
    State(state): Shared,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<NamespaceView>>, ApiError> {
    state
        .blocking(move |s| {
            s.store
                .namespace_records()?
                .into_iter()
                .filter(|record| principal.reaches(&record.name))
                .map(|record| namespace_view(s, record))
                .collect()
        })
        .await
        .map(Json)
}

/// Refuses hosts that another namespace was granted (a host is one team's), or that another
/// namespace's routes claim already.
fn check_hosts_free(state: &ApiState, record: &NamespaceRecord) -> Result<(), ApiError> {
    for other in state.store.namespace_records()? {
        if other.name == record.name {
            continue;
        }
        for granted in &record.hosts {
            if let Some(theirs) = other.hosts.iter().find(|h| h.overlaps(granted)) {
                return Err(ApiError::Conflict(format!(
                    "host {granted} overlaps {theirs}, granted to namespace {}",
                    other.name
                )));
            }
        }
    }
    for route in state.store.routes(None)? {
        if route.namespace != record.name
            && let Some(host) = &route.host
            && let Some(granted) = record.hosts.iter().find(|h| h.matches(host))
        {
            return Err(ApiError::Conflict(format!(
                "host {granted} takes in {host}, which route {} of namespace {} serves",
                route.name, route.namespace
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/namespaces", tag = "namespaces", request_body = NamespaceCreate, responses((status = 201, body = NamespaceView)))]
pub async fn create_namespace(
    State(state): Shared,
    body: Bytes,
) -> Result<(StatusCode, Json<NamespaceView>), ApiError> {
    let create: NamespaceCreate = parse_json(&body)?;
    let record = NamespaceRecord {
        name: create.name,
        created_at_ms: now_ms(),
        quotas: create.quotas,
        hosts: create.hosts,
    };
    state
        .blocking(move |s| {
            let _granting = s.bounded_writes.lock().expect("never poisoned");
            check_hosts_free(s, &record)?;
            s.store.create_namespace(&record)?;
            s.sync_namespaces()?;
            namespace_view(s, record)
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/namespaces/{name}", tag = "namespaces", params(("name" = String, Path, description = "the namespace")), responses((status = 200, body = NamespaceView)))]
pub async fn show_namespace(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<NamespaceView>, ApiError> {
    let namespace = Namespace::parse(&name)?;
    state
        .blocking(move |s| {
            let record =
                s.store
                    .namespace_record(&namespace)?
                    .ok_or_else(|| ApiError::NotFound {
                        kind: "namespace",
                        name: namespace.to_string(),
                    })?;
            namespace_view(s, record)
        })
        .await
        .map(Json)
}

#[utoipa::path(put, path = "/namespaces/{name}", tag = "namespaces", params(("name" = String, Path, description = "the namespace")), request_body = NamespaceUpdate, responses((status = 200, body = NamespaceView)))]
pub async fn update_namespace(
    State(state): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<NamespaceView>, ApiError> {
    let namespace = Namespace::parse(&name)?;
    let update: NamespaceUpdate = parse_json(&body)?;
    state
        .blocking(move |s| {
            let mut record =
                s.store
                    .namespace_record(&namespace)?
                    .ok_or_else(|| ApiError::NotFound {
                        kind: "namespace",
                        name: namespace.to_string(),
                    })?;
            record.quotas = update.quotas;
            let _granting = s.bounded_writes.lock().expect("never poisoned");
            if let Some(hosts) = update.hosts {
                record.hosts = hosts;
                check_hosts_free(s, &record)?;
            }
            s.store.update_namespace(&record)?;
            s.sync_namespaces()?;
            namespace_view(s, record)
        })
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/namespaces/{name}", tag = "namespaces", params(("name" = String, Path, description = "the namespace")), responses((status = 204, description = "deleted, with the tokens that reached only it")))]
pub async fn delete_namespace(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let namespace = Namespace::parse(&name)?;
    state
        .blocking(move |s| {
            s.store.delete_namespace(&namespace)?;
            s.sync_namespaces()?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}

#[utoipa::path(get, path = "/tokens", tag = "tokens", params(NamespaceQuery), responses((status = 200, body = [TokenView], description = "the tokens that reach the namespace and nothing the caller does not; never their secrets")))]
pub async fn list_tokens(
    State(state): Shared,
    Extension(principal): Extension<Principal>,
    Query(query): Query<NamespaceQuery>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| {
            Ok(s.store
                .tokens()?
                .iter()
                .filter(|token| token.reaches(&namespace))
                .filter(|token| principal.covers(token.namespaces.as_deref()))
                .map(TokenView::from)
                .collect())
        })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/tokens", tag = "tokens", params(NamespaceQuery), request_body = TokenCreate, responses((status = 201, body = TokenCreated, description = "the token's text, shown this once")))]
pub async fn create_token(
    State(state): Shared,
    Extension(principal): Extension<Principal>,
    Query(query): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let create: TokenCreate = parse_json(&body)?;
    let namespaces = if create.all_namespaces {
        if !create.namespaces.is_empty() {
            return Err(ApiError::Invalid(
                "a token for every namespace lists none".into(),
            ));
        }
        None
    } else if create.namespaces.is_empty() {
        Some(vec![query.namespace()?])
    } else {
        let mut listed = create.namespaces;
        listed.sort();
        listed.dedup();
        Some(listed)
    };
    if !principal.covers(namespaces.as_deref()) {
        return Err(ApiError::Forbidden(format!(
            "token {:?} may only make tokens for namespaces it reaches{}",
            principal.name,
            if namespaces.is_none() {
                " (a token for every namespace needs one itself)"
            } else {
                ""
            }
        )));
    }
    let expires_at_ms = match create.expires {
        Some(expires) if expires.get() < Duration::from_secs(1) => {
            return Err(ApiError::Invalid(
                "expires: a token lives at least 1s".into(),
            ));
        }
        Some(expires) => Some(
            now_ms().saturating_add(u64::try_from(expires.get().as_millis()).unwrap_or(u64::MAX)),
        ),
        None => None,
    };
    let (id, secret) = {
        let mut rng = rand::rng();
        let id: [u8; 8] = rng.random();
        let secret: [u8; 32] = rng.random();
        (hex::encode(id), hex::encode(secret))
    };
    let name = match create.name {
        Some(name) => name,
        None => Name::parse("token", &format!("token-{}", &id[..8]))?,
    };
    let token = ApiToken {
        id: id.clone(),
        name,
        role: create.role,
        namespaces,
        secret_sha256: secret_hash(&secret),
        created_at_ms: now_ms(),
        expires_at_ms,
        created_by: principal.name,
    };
    state
        .blocking(move |s| {
            if let Some(missing) = token
                .namespaces
                .iter()
                .flatten()
                .find(|ns| !matches!(s.store.namespace_record(ns), Ok(Some(_))))
            {
                return Err(ApiError::NotFound {
                    kind: "namespace",
                    name: missing.to_string(),
                });
            }
            s.store.create_token(&token)?;
            Ok(TokenCreated {
                token: format!("{TOKEN_PREFIX}{id}_{secret}"),
                view: TokenView::from(&token),
            })
        })
        .await
        .map(|created| (StatusCode::CREATED, Json(created)))
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "the token's id or name"), NamespaceQuery), responses((status = 204, description = "revoked: refused from now on, on every node")))]
pub async fn revoke_token(
    State(state): Shared,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .blocking(move |s| {
            let found = s
                .store
                .tokens()?
                .into_iter()
                .find(|token| token.id == id || token.name.as_str() == id)
                // A token beyond the caller's reach is as good as absent to it.
                .filter(|token| principal.covers(token.namespaces.as_deref()))
                .ok_or_else(|| ApiError::NotFound {
                    kind: "token",
                    name: id.clone(),
                })?;
            s.store.delete_token(&found.id)?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}

/// Entries listed at most.
const AUDIT_LIMIT: usize = 10_000;

#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery), responses((status = 200, body = AuditList)))]
pub async fn audit(
    State(state): Shared,
    Extension(principal): Extension<Principal>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let namespace = match query.all {
        Some(true) if principal.is_cluster_admin() => None,
        Some(true) => {
            return Err(ApiError::Forbidden(format!(
                "token {:?} may only read the audit log of namespaces it reaches",
                principal.name
            )));
        }
        _ => Some(
            NamespaceQuery {
                namespace: query.namespace,
            }
            .namespace()?,
        ),
    };
    let since = query
        .since
        .map_or(Duration::from_secs(24 * 3600), |since| since.get());
    let since_ms = now_ms().saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let limit = query.limit.unwrap_or(1_000).clamp(1, AUDIT_LIMIT);
    state
        .blocking(move |s| {
            Ok(AuditList {
                entries: s.audit.audit(since_ms, namespace.as_ref(), limit)?,
            })
        })
        .await
        .map(Json)
}

/// Deletes audit entries older than `retention`, a batch a minute (more at once while a
/// backlog lasts), until `stop`.
pub async fn prune_audit(
    audit: Arc<dyn gust_store::AuditStore>,
    retention: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    const BATCH: usize = 10_000;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before_ms =
            now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let audit = audit.clone();
        match tokio::task::spawn_blocking(move || audit.prune_audit(before_ms, BATCH)).await {
            Ok(Ok(pruned)) if pruned >= BATCH => tick.reset_immediately(),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "cannot delete old audit entries"),
            Err(err) => tracing::error!(error = %err, "audit pruning task failed"),
        }
    }
}
