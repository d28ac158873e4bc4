//! Private routes: who may call a route that is not public. A token route takes a Gust token
//! with the invoker role in the route's namespace (checked by the control plane's records,
//! through [`InvokerTokens`]); a JWT route takes a JSON Web Token signed by a key of the
//! route's key set (RS256 or ES256), from its issuer, for its audience, within its validity.

use std::sync::Arc;

use gust_model::{Namespace, RouteAuth};
use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Whether a bearer token may invoke functions of a namespace; the control plane answers.
pub trait InvokerTokens: Send + Sync {
    /// `None` for a token that is not valid now (unknown, expired, revoked); else whether it
    /// is an invoker (or more) of `namespace`. May read storage: called on a blocking thread.
    fn invoker_reaches(&self, token: &str, namespace: &Namespace) -> Option<bool>;
}

/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;

/// Why a caller is refused: 401 (no or a bad credential) or 403 (a valid one that may not).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(String),
    Forbidden(String),
}

/// The verifying keys of a key set with the algorithm each signs with; an error names what
/// is wrong with the set.
pub fn keys_of(jwks: &str) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, String> {
    let set: JwkSet =
        serde_json::from_str(jwks).map_err(|e| format!("the key set is not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a key of the set: {e}"))?;
        keys.push((jwk.common.key_id.clone(), algorithm, key));
    }
    if keys.is_empty() {
        return Err("the key set holds no RSA or P-256 key (RS256, ES256)".into());
    }
    Ok(keys)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks a request against its route's rule; for a JWT route, returns the token's claims
/// as ASCII JSON for the function.
pub async fn check(
    auth: &RouteAuth,
    namespace: &Namespace,
    headers: &HeaderMap,
    tokens: &Arc<dyn InvokerTokens>,
) -> Result<Option<String>, Refusal> {
    let missing = || Refusal::Unauthenticated("this route needs Authorization: Bearer".into());
    match auth {
        RouteAuth::Public => Ok(None),
        RouteAuth::Token => {
            let token = bearer(headers).ok_or_else(missing)?.to_owned();
            let (tokens, ns) = (tokens.clone(), namespace.clone());
            let allowed = tokio::task::spawn_blocking(move || tokens.invoker_reaches(&token, &ns))
                .await
                .unwrap_or(None);
            match allowed {
                Some(true) => Ok(None),
                Some(false) => Err(Refusal::Forbidden(format!(
                    "the token is not an invoker token of namespace {namespace}"
                ))),
                None => Err(Refusal::Unauthenticated(
                    "the token is not valid (unknown, expired or revoked)".into(),
                )),
            }
        }
        RouteAuth::Jwt {
            jwks,
            issuer,
            audience,
        } => {
            let token = bearer(headers).ok_or_else(missing)?;
            verify_jwt(token, jwks, issuer, audience).map(Some)
        }
    }
}

fn verify_jwt(token: &str, jwks: &str, issuer: &str, audience: &str) -> Result<String, Refusal> {
    let refused = |why: String| Refusal::Unauthenticated(format!("the token is refused: {why}"));
    let header = jsonwebtoken::decode_header(token).map_err(|e| refused(e.to_string()))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(refused(format!("{:?} is not RS256 or ES256", header.alg)));
    }
    let keys = keys_of(jwks).map_err(refused)?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let mut last = "no key of the set signs with its algorithm".to_owned();
    for (kid, algorithm, key) in &keys {
        if *algorithm != header.alg || (header.kid.is_some() && kid.is_some() && *kid != header.kid)
        {
            continue;
        }
        match jsonwebtoken::decode::<serde_json::Value>(token, key, &validation) {
            Ok(data) => return Ok(ascii_json(&data.claims)),
            Err(err) => last = err.to_string(),
        }
    }
    Err(refused(last))
}

/// JSON with every non-ASCII character escaped, so that it is a valid header value.
fn ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_travel_as_ascii_json() {
        let value = serde_json::json!({"sub": "zoë", "emoji": "🎉"});
        let ascii = ascii_json(&value);
        assert!(ascii.is_ascii(), "{ascii}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&ascii).unwrap(),
            value
        );
    }

    #[test]
    fn a_key_set_without_usable_keys_is_refused() {
        let error = |jwks: &str| keys_of(jwks).err().unwrap_or_default();
        assert!(!error("{}").is_empty());
        assert!(error(r#"{"keys": []}"#).contains("no RSA"));
        assert!(error("not json").contains("not a JWKS"));
    }
}
