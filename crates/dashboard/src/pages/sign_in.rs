//! Signing in with an API token and out again.

use std::sync::Arc;

use axum::Form;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use gust_api_types::{NamespaceView, WhoAmIView};
use http::header::SET_COOKIE;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::Dashboard;
use crate::api::ApiPath;
use crate::layout::signed_out;
use crate::session::{Signed, forbidden, over_https, same_origin};

/// `GET /ui/login`.
pub(crate) async fn form() -> Response {
    Html(sign_in_page(None).into_string()).into_response()
}

fn sign_in_page(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Gust" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="/ui/assets/dashboard.css";
            }
            body.signin {
                main #main {
                    h1 { "Gust" }
                    form method="post" action="/ui/login" {
                        @if let Some(error) = error {
                            p.error role="alert" { (error) }
                        }
                        label for="token" { "API token" }
                        input #token type="password" name="token" autocomplete="off" required;
                        p.hint { "The admin token gust up wrote to admin.token in its data directory (~/.local/share/gust/admin.token by default), or one gust token create made." }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    #[serde(default)]
    token: String,
}

/// `POST /ui/login`: the token is checked by the API itself; the browser gets a session id.
pub(crate) async fn sign_in(State(dashboard): State<Arc<Dashboard>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    if !same_origin(&parts) {
        return forbidden("a sign-in from another site's page is refused");
    }
    let Ok(Form(form)) = Form::<SignInForm>::from_request(
        axum::extract::Request::from_parts(parts.clone(), body),
        &(),
    )
    .await
    else {
        return refused("the form did not carry a token");
    };
    let token = form.token.trim().to_owned();
    if token.is_empty() || token.len() > 4096 {
        return refused("enter an API token");
    }
    let Ok(me) = dashboard
        .api
        .get::<WhoAmIView>(&token, &ApiPath::new(["whoami"]))
        .await
    else {
        return refused("that token is not accepted by this server");
    };
    // A session this browser already had ends once the new one is sure: one browser, one
    // session, and a mistyped token signs nobody out.
    if let Ok(previous) = Signed::from_request_parts(&mut parts, &dashboard).await {
        dashboard.sessions.end(&previous.id);
    }
    let home = home_namespace(&dashboard, &token).await;
    let Ok(id) = dashboard.sessions.start(token, home, me.role) else {
        return refused(
            "this node has as many sessions as it keeps; try again when some have ended",
        );
    };
    let cookie = dashboard.sessions.cookie(Some(&id), over_https(&parts));
    ([(SET_COOKIE, cookie)], Redirect::to("/ui")).into_response()
}

/// `default`, or the first namespace the token reaches when it does not reach `default` (a
/// tenant's token lands on its own namespace).
async fn home_namespace(dashboard: &Dashboard, token: &str) -> String {
    let reached = dashboard
        .api
        .get::<Vec<NamespaceView>>(token, &ApiPath::new(["namespaces"]))
        .await
        .unwrap_or_default();
    let names: Vec<String> = reached
        .into_iter()
        .map(|n| n.record.name.to_string())
        .collect();
    if names.is_empty() || names.iter().any(|n| n == "default") {
        "default".to_owned()
    } else {
        names[0].clone()
    }
}

/// The form again, saying why. A 200, as sign-in forms answer: the browser shows the page,
/// not a failed load.
fn refused(message: &str) -> Response {
    Html(sign_in_page(Some(message)).into_string()).into_response()
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /ui/logout`: ends the session on the server, not only the cookie.
pub(crate) async fn sign_out(
    State(dashboard): State<Arc<Dashboard>>,
    signed: Signed,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = signed.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    dashboard.sessions.end(&signed.id);
    signed_out(&dashboard)
}
