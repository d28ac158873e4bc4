//! `/v1/secrets` and `/v1/configs`: named values of a namespace that functions mount. A
//! secret's values are sealed before they are stored and never come back out of the API: a
//! secret shows its keys and version only. An update makes the functions that mount the set
//! start new instances with the new values, as a deploy does.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use bytes::Bytes;
use gust_api_types::{NamespaceQuery, ValuesCreate, ValuesUpdate, ValuesView};
use gust_model::{
    MAX_VALUE_KEYS, MAX_VALUE_SET_BYTES, Name, Namespace, ValueKind, ValueSet, validate_value_key,
};
use http::StatusCode;

use crate::functions::now_ms;
use crate::{ApiError, ApiState, NamespaceExt, Scoped, parse_json};

type Shared = State<Arc<ApiState>>;

/// The stored form of `data` (key → base64 of the value): checked, and for a secret sealed
/// for its place and version.
fn stored_data(
    state: &ApiState,
    kind: ValueKind,
    (namespace, name, version): (&Namespace, &Name, u32),
    data: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    if data.len() > MAX_VALUE_KEYS {
        return Err(ApiError::Invalid(format!(
            "a {} holds at most {MAX_VALUE_KEYS} keys",
            kind.noun()
        )));
    }
    let mut total = 0usize;
    let mut stored = BTreeMap::new();
    for (key, encoded) in data {
        validate_value_key(&key)?;
        // The value is never echoed: an error names the key only.
        let value = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|_| ApiError::Invalid(format!("data: the value of {key:?} is not base64")))?;
        total += value.len();
        if total > MAX_VALUE_SET_BYTES {
            return Err(ApiError::Invalid(format!(
                "a {}'s values take at most {} KiB together",
                kind.noun(),
                MAX_VALUE_SET_BYTES / 1024
            )));
        }
        let kept = match kind {
            ValueKind::Secret => state
                .sealer
                .seal((namespace, name, &key, version), &value)?,
            ValueKind::Config => encoded,
        };
        stored.insert(key, kept);
    }
    Ok(stored)
}

/// Functions of the namespace whose current revision mounts the set.
fn users(state: &ApiState, set: &ValueSet) -> Result<Vec<Name>, ApiError> {
    Ok(state
        .store
        .functions(Some(&set.namespace))?
        .into_iter()
        .filter(|f| f.current_revision().mounts.of(set.kind).contains(&set.name))
        .map(|f| f.name)
        .collect())
}

async fn list(
    state: Arc<ApiState>,
    kind: ValueKind,
    query: NamespaceQuery,
) -> Result<Json<Vec<ValuesView>>, ApiError> {
    let namespace = query.namespace()?;
    state
        .blocking(move |s| {
            s.store
                .value_sets(kind, &namespace)?
                .iter()
                .map(|set| Ok(ValuesView::of(set, users(s, set)?)))
                .collect()
        })
        .await
        .map(Json)
}

async fn create(
    state: Arc<ApiState>,
    kind: ValueKind,
    query: NamespaceQuery,
    body: Bytes,
) -> Result<(StatusCode, Json<ValuesView>), ApiError> {
    let namespace = query.namespace()?;
    let create: ValuesCreate = parse_json(&body)?;
    state
        .blocking(move |s| {
            let now = now_ms();
            let set = ValueSet {
                kind,
                data: stored_data(s, kind, (&namespace, &create.name, 1), create.data)?,
                namespace,
                name: create.name,
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
                restarted: false,
            };
            s.store.create_values(&set)?;
            Ok(ValuesView::of(&set, Vec::new()))
        })
        .await
        .map(|view| (StatusCode::CREATED, Json(view)))
}

/// The stored set, or a 404 naming it.
fn stored(
    state: &ApiState,
    kind: ValueKind,
    namespace: &Namespace,
    name: &Name,
) -> Result<ValueSet, ApiError> {
    state
        .store
        .values(kind, namespace, name)?
        .ok_or_else(|| ApiError::NotFound {
            kind: kind.noun(),
            name: name.to_string(),
        })
}

async fn show(
    state: Arc<ApiState>,
    kind: ValueKind,
    scoped: Scoped,
) -> Result<Json<ValuesView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name(kind.noun())?;
    state
        .blocking(move |s| {
            let set = stored(s, kind, &namespace, &name)?;
            Ok(ValuesView::of(&set, users(s, &set)?))
        })
        .await
        .map(Json)
}

async fn update(
    state: Arc<ApiState>,
    kind: ValueKind,
    scoped: Scoped,
    body: Bytes,
) -> Result<Json<ValuesView>, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name(kind.noun())?;
    let update: ValuesUpdate = parse_json(&body)?;
    state
        .blocking(move |s| {
            let stored = stored(s, kind, &namespace, &name)?;
            let version = stored.version + 1;
            let set = ValueSet {
                data: stored_data(s, kind, (&namespace, &name, version), update.data)?,
                version,
                updated_at_ms: now_ms(),
                restarted: update.restart,
                ..stored
            };
            s.store.update_values(&set)?;
            // Its functions' new instances get the new values; with `restart`, warm ones are
            // replaced as after a deploy (requests in flight finish on the old ones).
            let users = users(s, &set)?;
            for function in &users {
                s.executor
                    .function_values_changed(&namespace, function, update.restart);
            }
            Ok(ValuesView::of(&set, users))
        })
        .await
        .map(Json)
}

async fn delete(
    state: Arc<ApiState>,
    kind: ValueKind,
    scoped: Scoped,
) -> Result<StatusCode, ApiError> {
    let namespace = scoped.namespace.clone();
    let name = scoped.name(kind.noun())?;
    state
        .blocking(move |s| {
            s.store.delete_values(kind, &namespace, &name)?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}

/// The five handlers of one kind, each with its documented path.
macro_rules! value_routes {
    ($kind:expr, $tag:literal, $path:literal, $list:ident, $create:ident, $show:ident, $update:ident, $delete:ident) => {
        #[utoipa::path(get, path = $path, tag = $tag, params(NamespaceQuery), responses((status = 200, body = [ValuesView])))]
        pub async fn $list(
            State(state): Shared,
            Query(query): Query<NamespaceQuery>,
        ) -> Result<Json<Vec<ValuesView>>, ApiError> {
            list(state, $kind, query).await
        }

        #[utoipa::path(post, path = $path, tag = $tag, params(NamespaceQuery), request_body = ValuesCreate, responses((status = 201, body = ValuesView)))]
        pub async fn $create(
            State(state): Shared,
            Query(query): Query<NamespaceQuery>,
            body: Bytes,
        ) -> Result<(StatusCode, Json<ValuesView>), ApiError> {
            create(state, $kind, query, body).await
        }

        #[utoipa::path(get, path = concat!($path, "/{name}"), tag = $tag, params(("name" = String, Path, description = "its name"), NamespaceQuery), responses((status = 200, body = ValuesView)))]
        pub async fn $show(State(state): Shared, scoped: Scoped) -> Result<Json<ValuesView>, ApiError> {
            show(state, $kind, scoped).await
        }

        #[utoipa::path(put, path = concat!($path, "/{name}"), tag = $tag, params(("name" = String, Path, description = "its name"), NamespaceQuery), request_body = ValuesUpdate, responses((status = 200, body = ValuesView, description = "updated; the functions that mount it start new instances with the new values, and with `restart` replace their warm ones")))]
        pub async fn $update(
            State(state): Shared,
            scoped: Scoped,
            body: Bytes,
        ) -> Result<Json<ValuesView>, ApiError> {
            update(state, $kind, scoped, body).await
        }

        #[utoipa::path(delete, path = concat!($path, "/{name}"), tag = $tag, params(("name" = String, Path, description = "its name"), NamespaceQuery), responses((status = 204, description = "deleted")))]
        pub async fn $delete(State(state): Shared, scoped: Scoped) -> Result<StatusCode, ApiError> {
            delete(state, $kind, scoped).await
        }
    };
}

value_routes!(
    ValueKind::Secret,
    "secrets",
    "/secrets",
    list_secrets,
    create_secret,
    show_secret,
    update_secret,
    delete_secret
);
value_routes!(
    ValueKind::Config,
    "configs",
    "/configs",
    list_configs,
    create_config,
    show_config,
    update_config,
    delete_config
);
