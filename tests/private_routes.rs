//! Private routes through the binary: `--auth token` takes an invoker token of the route's
//! namespace; `--auth jwt` a JSON Web Token signed by a key of the route's key set (RS256 and
//! ES256, keys made by openssl here), checked for issuer, audience, signature and validity,
//! whose claims reach the function in a header no caller can forge.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use gust_harness::tls::openssl;
use gust_harness::{Gust, GustOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const GUST: &str = env!("CARGO_BIN_EXE_gust");

/// Answers with what it was given: the claims header and whether it saw an Authorization.
const ECHO: &str = "def main(req):\n    return '%s|%s' % (req.headers.get('X-Gust-Jwt-Claims', '-'), req.headers.get('Authorization', '-'))\n";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An RSA key: its signing key and its JWK.
fn rsa_key(dir: &Path, name: &str) -> (EncodingKey, Value) {
    let pem = format!("{name}.pem");
    openssl(dir, &["genrsa", "-out", &pem, "2048"]);
    let der = openssl(
        dir,
        &["rsa", "-in", &pem, "-traditional", "-outform", "DER"],
    );
    let modulus =
        String::from_utf8(openssl(dir, &["rsa", "-in", &pem, "-noout", "-modulus"])).unwrap();
    let hex_modulus = modulus.trim().trim_start_matches("Modulus=");
    let n = hex::decode(hex_modulus).unwrap();
    let jwk = json!({"kty": "RSA", "kid": name, "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB"});
    (EncodingKey::from_rsa_der(&der), jwk)
}

/// A P-256 key: its signing key and its JWK.
fn ec_key(dir: &Path, name: &str) -> (EncodingKey, Value) {
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &pem,
        ],
    );
    let pkcs8 = openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", &pem, "-outform", "DER",
        ],
    );
    let public = openssl(dir, &["ec", "-in", &pem, "-pubout", "-outform", "DER"]);
    // The uncompressed point ends the SubjectPublicKeyInfo: 0x04, x, y.
    let point = &public[public.len() - 65..];
    assert_eq!(point[0], 4);
    let jwk = json!({"kty": "EC", "kid": name, "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..])});
    (EncodingKey::from_ec_der(&pkcs8), jwk)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(key: &EncodingKey, algorithm: Algorithm, kid: &str, claims: Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn call(
    gust: &Gust,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, String, bool) {
    let mut request = gust.http().get(gust.public_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let challenged = response.headers().get("www-authenticate").is_some();
    (status, response.text().unwrap(), challenged)
}

#[test]
fn a_token_route_takes_an_invoker_of_its_namespace_and_hides_the_token() {
    let gust = Gust::start(GUST, GustOptions::default());
    gust.cli(&["ns", "create", "team-a"]).ok();
    gust.cli(&["ns", "create", "team-b"]).ok();
    let code = gust.write_file("echo.py", ECHO);
    gust.cli(&[
        "fn",
        "create",
        "echo",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
        "-n",
        "team-a",
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "echo", "--url", "/private", "--auth", "token", "-n", "team-a",
    ])
    .ok();
    gust.cli(&[
        "route", "create", "--fn", "echo", "--url", "/open", "-n", "team-a",
    ])
    .ok();
    let token = |role: &str, ns: &str| {
        gust.cli(&["token", "create", "--role", role, "-n", ns])
            .ok()
            .stdout
            .trim()
            .to_owned()
    };
    let invoker = token("invoker", "team-a");
    let (status, _, challenged) = call(&gust, "/private", None, &[]);
    assert_eq!((status, challenged), (401, true));
    assert_eq!(
        call(&gust, "/private", Some("gust_0000000000000000_00"), &[]).0,
        401
    );
    assert_eq!(
        call(&gust, "/private", Some(&token("viewer", "team-a")), &[]).0,
        403
    );
    assert_eq!(
        call(&gust, "/private", Some(&token("invoker", "team-b")), &[]).0,
        403
    );
    let (status, body, _) = call(&gust, "/private", Some(&invoker), &[]);
    assert_eq!(status, 200);
    assert_eq!(body, "-|-", "the function sees no token");
    assert_eq!(
        call(&gust, "/private", Some(&token("deployer", "team-a")), &[]).0,
        200
    );
    assert_eq!(call(&gust, "/private", Some(&gust.token()), &[]).0, 200);
    // A public route stays public.
    assert_eq!(call(&gust, "/open", None, &[]).0, 200);
    // Revoked: refused from then on.
    let named = gust
        .cli(&[
            "token", "create", "--role", "invoker", "-n", "team-a", "--name", "short",
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(call(&gust, "/private", Some(&named), &[]).0, 200);
    gust.cli(&["token", "revoke", "short", "-n", "team-a"]).ok();
    assert_eq!(call(&gust, "/private", Some(&named), &[]).0, 401);
}

#[test]
fn a_jwt_route_checks_signature_issuer_audience_and_validity() {
    let gust = Gust::start(GUST, GustOptions::default());
    let dir = gust.scratch();
    let (rsa, rsa_jwk) = rsa_key(&dir, "rsa-1");
    let (ec, ec_jwk) = ec_key(&dir, "ec-1");
    let (stranger, _) = rsa_key(&dir, "stranger");
    let jwks = gust.write_file("jwks.json", json!({"keys": [rsa_jwk, ec_jwk]}).to_string());
    let code = gust.write_file("echo.py", ECHO);
    gust.cli(&[
        "fn",
        "create",
        "echo",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ])
    .ok();
    gust.cli(&[
        "route",
        "create",
        "--fn",
        "echo",
        "--url",
        "/jwt",
        "--auth",
        "jwt",
        "--jwks",
        jwks.to_str().unwrap(),
        "--issuer",
        "https://issuer.example",
        "--audience",
        "orders",
    ])
    .ok();
    let claims = |iss: &str, aud: &str, exp: u64, nbf: u64| json!({"sub": "zoë", "iss": iss, "aud": aud, "exp": exp, "nbf": nbf, "scope": "orders:read"});
    let good = claims("https://issuer.example", "orders", now() + 600, now() - 10);

    // RS256 and ES256, each by its key: served, with the claims for the function.
    for token in [
        sign(&rsa, Algorithm::RS256, "rsa-1", good.clone()),
        sign(&ec, Algorithm::ES256, "ec-1", good.clone()),
    ] {
        let (status, body, _) = call(&gust, "/jwt", Some(&token), &[]);
        assert_eq!(status, 200, "{body}");
        let (seen, _) = body.split_once('|').unwrap();
        let seen: Value = serde_json::from_str(seen).unwrap();
        assert_eq!(seen["sub"], "zoë");
        assert_eq!(seen["scope"], "orders:read");
    }
    // A caller's own claims header never reaches the function.
    let token = sign(&rsa, Algorithm::RS256, "rsa-1", good.clone());
    let (_, body, _) = call(
        &gust,
        "/jwt",
        Some(&token),
        &[("X-Gust-Jwt-Claims", "{\"sub\":\"admin\"}")],
    );
    assert!(!body.contains("\"admin\""), "{body}");
    let (_, body, _) = call(
        &gust,
        "/jwt",
        None,
        &[("X-Gust-Jwt-Claims", "{\"sub\":\"admin\"}")],
    );
    assert!(body.contains("this route needs Authorization"), "{body}");

    let refused = [
        ("no token", None),
        (
            "wrong issuer",
            Some(sign(
                &rsa,
                Algorithm::RS256,
                "rsa-1",
                claims("https://evil.example", "orders", now() + 600, now() - 10),
            )),
        ),
        (
            "wrong audience",
            Some(sign(
                &rsa,
                Algorithm::RS256,
                "rsa-1",
                claims("https://issuer.example", "billing", now() + 600, now() - 10),
            )),
        ),
        (
            "wrong signature",
            Some(sign(&stranger, Algorithm::RS256, "rsa-1", good.clone())),
        ),
        (
            "expired",
            Some(sign(
                &rsa,
                Algorithm::RS256,
                "rsa-1",
                claims(
                    "https://issuer.example",
                    "orders",
                    now() - 600,
                    now() - 1200,
                ),
            )),
        ),
        (
            "not yet valid",
            Some(sign(
                &rsa,
                Algorithm::RS256,
                "rsa-1",
                claims(
                    "https://issuer.example",
                    "orders",
                    now() + 1200,
                    now() + 600,
                ),
            )),
        ),
        (
            "HS256 with the key id",
            Some(
                jsonwebtoken::encode(
                    &Header {
                        kid: Some("rsa-1".into()),
                        ..Header::new(Algorithm::HS256)
                    },
                    &good,
                    &EncodingKey::from_secret(b"guess"),
                )
                .unwrap(),
            ),
        ),
        ("garbage", Some("not.a.jwt".to_owned())),
    ];
    for (what, token) in refused {
        let (status, body, challenged) = call(&gust, "/jwt", token.as_deref(), &[]);
        assert_eq!((status, challenged), (401, true), "{what}: {body}");
        assert!(
            body.contains("\"reason\":\"unauthorized\""),
            "{what}: {body}"
        );
    }

    // A key set that is not one is refused when the route is made.
    let bad = gust.write_file(
        "bad.json",
        "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
    );
    let made = gust.cli(&[
        "route",
        "create",
        "--fn",
        "echo",
        "--url",
        "/bad",
        "--auth",
        "jwt",
        "--jwks",
        bad.to_str().unwrap(),
        "--issuer",
        "i",
        "--audience",
        "a",
    ]);
    assert!(made.stderr.contains("auth.jwks"), "{}", made.stderr);
}
