//! Who may call what. A bearer token is authenticated once per request (the admin token
//! `gust up` made, or a created token found by its id and checked against its secret's hash)
//! into a [`Principal`]; every route then has one [`Rule`], looked up by its method and path
//! pattern, that says which action it is and in which namespace. A token of another namespace
//! gets 403 before anything about the resource is read, so a refusal says nothing about what
//! exists there. Every write, allowed or refused, goes to the audit log.

use std::sync::Arc;

use axum::extract::{MatchedPath, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gust_api_types::NamespaceQuery;
use gust_model::{Action, ApiToken, AuditEntry, Namespace, Role, split_token};
use http::Method;
use sha2::Digest;

use crate::{ApiError, ApiState, NamespaceExt, Shared};

/// Who is calling, as far as permissions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`admin` for the token `gust up` made).
    pub name: String,
    pub role: Role,
    /// The namespaces it reaches; `None` for every namespace.
    pub namespaces: Option<Vec<Namespace>>,
}

impl Principal {
    /// The admin token a node makes at first start: every namespace, every action.
    pub fn bootstrap() -> Self {
        Self {
            name: "admin".into(),
            role: Role::Admin,
            namespaces: None,
        }
    }

    pub fn reaches(&self, namespace: &Namespace) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|reached| reached.contains(namespace))
    }

    /// Reaches every namespace with the admin role: may manage what belongs to none
    /// (environments, namespaces, nodes).
    pub fn is_cluster_admin(&self) -> bool {
        self.role == Role::Admin && self.namespaces.is_none()
    }

    /// Whether a token reaching `namespaces` (`None`: all) reaches nothing this one does not.
    pub fn covers(&self, namespaces: Option<&[Namespace]>) -> bool {
        match (&self.namespaces, namespaces) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(own), Some(theirs)) => theirs.iter().all(|ns| own.contains(ns)),
        }
    }
}

/// SHA-256 of a token's secret part, in hex: what a token's record holds.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The principal a presented token stands for, if it is valid now.
pub(crate) async fn authenticate(state: &Arc<ApiState>, presented: &str) -> Option<Principal> {
    let presented = presented.to_owned();
    state
        .blocking(move |state| {
            Ok(principal_of(
                state.store.as_ref(),
                state.tokens.as_ref(),
                &presented,
            ))
        })
        .await
        .ok()
        .flatten()
}

/// [`authenticate`] for callers that may block: reads the token's record.
pub fn principal_of(
    store: &dyn gust_store::MetadataStore,
    admin_tokens: &dyn crate::TokenCheck,
    presented: &str,
) -> Option<Principal> {
    let Some((id, secret)) = split_token(presented) else {
        return admin_tokens.accepts(presented).then(Principal::bootstrap);
    };
    let token: ApiToken = store.token(id).ok().flatten()?;
    if !same(&token.secret_sha256, &secret_hash(secret))
        || token.expired(crate::functions::now_ms())
    {
        return None;
    }
    Some(Principal {
        name: token.name.to_string(),
        role: token.role,
        namespaces: token.namespaces,
    })
}

/// Answers the public listener's question for routes with `auth: token`: an invoker (or more)
/// of the route's namespace, by the same records and rules as the API.
pub struct RouteTokens {
    pub store: Arc<dyn gust_store::MetadataStore>,
    pub admin_tokens: Arc<dyn crate::TokenCheck>,
}

impl gust_router::InvokerTokens for RouteTokens {
    fn invoker_reaches(&self, token: &str, namespace: &Namespace) -> Option<bool> {
        principal_of(self.store.as_ref(), self.admin_tokens.as_ref(), token)
            .map(|principal| principal.role.allows(Action::Invoke) && principal.reaches(namespace))
    }
}

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// No token (health, the OpenAPI document).
    Open,
    /// Any valid token.
    Anyone,
    /// An action in the call's namespace (`?namespace=`, `default` when absent).
    In(Action),
    /// An action in the namespace the path names (`/v1/namespaces/{name}`).
    InNamed(Action),
    /// A token that reaches every namespace as admin.
    ClusterAdmin,
}

/// The rule of every route, by method and path pattern. A route without one is refused to
/// everybody: a new route cannot be served before somebody decided who may call it (a test
/// checks that every documented operation has one).
pub(crate) fn rule(method: &Method, path: &str) -> Option<Rule> {
    use Action::*;
    use Rule::*;
    let read = *method == Method::GET || *method == Method::HEAD;
    Some(match path {
        "/healthz" | "/readyz" | "/v1/openapi.json" => Open,
        "/v1/version" | "/v1/whoami" | "/metrics" => Anyone,
        "/v1/environments" | "/v1/environments/{name}" if read => Anyone,
        "/v1/environments" | "/v1/environments/{name}" => ClusterAdmin,
        "/v1/nodes" => ClusterAdmin,
        "/v1/namespaces" if read => Anyone,
        "/v1/namespaces/{name}" if read => InNamed(Read),
        "/v1/namespaces" | "/v1/namespaces/{name}" => ClusterAdmin,
        "/v1/tokens" | "/v1/tokens/{id}" | "/v1/audit" => In(Administer),
        "/v1/functions/{name}/invoke" => In(Invoke),
        "/v1/functions"
        | "/v1/functions/{name}"
        | "/v1/functions/{name}/revisions"
        | "/v1/functions/{name}/stats"
        | "/v1/functions/{name}/code"
        | "/v1/functions/{name}/logs"
        | "/v1/functions/{name}/build"
        | "/v1/functions/{name}/build/log"
        | "/v1/routes"
        | "/v1/routes/{name}"
        | "/v1/timers"
        | "/v1/timers/{name}"
        | "/v1/mqtriggers"
        | "/v1/mqtriggers/{name}"
        | "/v1/invocations/{id}"
        | "/v1/async"
        | "/v1/dlq"
        | "/v1/dlq/{id}"
        | "/v1/usage"
        | "/v1/usage/records"
        | "/v1/secrets"
        | "/v1/secrets/{name}"
        | "/v1/configs"
        | "/v1/configs/{name}"
            if read =>
        {
            In(Read)
        }
        "/v1/functions"
        | "/v1/functions/{name}"
        | "/v1/functions/{name}/rollback"
        | "/v1/routes"
        | "/v1/routes/{name}"
        | "/v1/timers"
        | "/v1/timers/{name}"
        | "/v1/mqtriggers"
        | "/v1/mqtriggers/{name}"
        | "/v1/dlq/redrive"
        | "/v1/dlq/purge"
        | "/v1/secrets"
        | "/v1/secrets/{name}"
        | "/v1/configs"
        | "/v1/configs/{name}"
        | "/v1/uploads" => In(Deploy),
        _ => return None,
    })
}

/// Checks the caller against the route's rule, then runs it; writes go to the audit log
/// with their result.
pub(crate) async fn authorize(State(state): Shared, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let pattern = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned())
        .unwrap_or_default();
    let principal = request.extensions().get::<Principal>().cloned();
    let resource = request.uri().path().to_owned();
    let resource_for_log = resource.clone();
    let uri = request.uri().clone();
    let mut namespace = None;
    let decided = decide(
        &state,
        &uri,
        &method,
        &pattern,
        principal.as_ref(),
        &mut namespace,
    )
    .await;
    let response = match decided {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    };
    if let Some(principal) = principal
        && audited(&method, &pattern)
    {
        let entry = AuditEntry {
            at_ms: crate::functions::now_ms(),
            token: principal.name,
            role: principal.role,
            namespace,
            action: format!("{method} {pattern}"),
            resource,
            status: response.status().as_u16(),
            request_id: None,
        };
        // The answer stands whether or not its entry could be kept; a failure is logged.
        let audit = state.audit.clone();
        let written = tokio::task::spawn_blocking(move || audit.append_audit(&entry)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(%resource_for_log, "cannot write the audit log");
        }
    }
    response
}

/// Whether the call may go on, or why not; `namespace` is set to the namespace it names, if
/// any, as soon as that is known (a refused call is logged with it too).
async fn decide(
    state: &Arc<ApiState>,
    uri: &http::Uri,
    method: &Method,
    pattern: &str,
    principal: Option<&Principal>,
    namespace_out: &mut Option<Namespace>,
) -> Result<(), ApiError> {
    let Some(rule) = rule(method, pattern) else {
        return Err(ApiError::Forbidden(format!(
            "{method} {pattern} has no access rule"
        )));
    };
    if rule == Rule::Open {
        return Ok(());
    }
    let principal = principal.ok_or(ApiError::Unauthorized)?;
    let (action, namespace) = match rule {
        Rule::Open | Rule::Anyone => return Ok(()),
        Rule::ClusterAdmin if principal.is_cluster_admin() => return Ok(()),
        Rule::ClusterAdmin => {
            return Err(ApiError::Forbidden(format!(
                "token {:?} may not do this: it needs the admin role in every namespace",
                principal.name
            )));
        }
        Rule::In(action) => (action, query_namespace(uri)?),
        Rule::InNamed(action) => {
            let name = uri.path().rsplit('/').next().unwrap_or_default();
            (action, Namespace::parse(name)?)
        }
    };
    *namespace_out = Some(namespace.clone());
    if !principal.reaches(&namespace) {
        return Err(ApiError::Forbidden(format!(
            "token {:?} does not reach namespace {namespace}",
            principal.name
        )));
    }
    if !principal.role.allows(action) {
        return Err(ApiError::Forbidden(format!(
            "token {:?} has the {} role, which may not {}",
            principal.name,
            principal.role,
            match action {
                Action::Read => "read",
                Action::Invoke => "invoke functions",
                Action::Deploy => "change resources",
                Action::Administer => "manage tokens or read the audit log",
            }
        )));
    }
    let checked = namespace.clone();
    let exists = state
        .blocking(move |state| Ok(state.store.namespace_record(&checked)?.is_some()))
        .await?;
    if !exists {
        return Err(ApiError::NotFound {
            kind: "namespace",
            name: namespace.to_string(),
        });
    }
    Ok(())
}

fn query_namespace(uri: &http::Uri) -> Result<Namespace, ApiError> {
    let Query(query) = Query::<NamespaceQuery>::try_from_uri(uri)
        .map_err(|err| ApiError::Invalid(format!("invalid query string: {}", err.body_text())))?;
    query.namespace()
}

/// Writes of the control plane; invoking a function is not one (it is metered instead).
fn audited(method: &Method, pattern: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && pattern != "/v1/functions/{name}/invoke"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_operation_has_an_access_rule() {
        let document = crate::openapi_document();
        let mut operations = 0;
        for (path, item) in &document.paths.paths {
            for (method, present) in [
                (Method::GET, item.get.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::DELETE, item.delete.is_some()),
                (Method::PATCH, item.patch.is_some()),
            ] {
                if present {
                    operations += 1;
                    assert!(rule(&method, path).is_some(), "{method} {path} has no rule");
                }
            }
        }
        assert!(operations > 40, "only {operations} operations documented");
    }

    #[test]
    fn a_namespaced_admin_covers_only_tokens_within_its_namespaces() {
        let ns = |s: &str| Namespace::parse(s).unwrap();
        let admin = Principal {
            name: "a".into(),
            role: Role::Admin,
            namespaces: Some(vec![ns("a"), ns("b")]),
        };
        assert!(admin.covers(Some(&[ns("a")])));
        assert!(admin.covers(Some(&[ns("a"), ns("b")])));
        assert!(!admin.covers(Some(&[ns("a"), ns("c")])));
        assert!(!admin.covers(None));
        assert!(!admin.is_cluster_admin());
        assert!(Principal::bootstrap().covers(None));
    }
}
