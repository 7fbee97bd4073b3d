//! Bearer JWT authentication (DESIGN.md 6.4): HS256 with a shared secret (Supabase's legacy JWT
//! secret works), RS256/ES256 with keys from a JWKS file. `exp` is required; `aud`/`iss` are
//! checked when configured.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::AUTHORIZATION;
use copilot_domain::{Principal, TenantId, TenantRole, UserId};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::settings::JwtSettings;
use crate::verified_tokens::VerifiedTokens;

pub const SERVICE_ROLE: &str = "service_role";
pub const AUTHENTICATED_ROLE: &str = "authenticated";
/// RFC 7518 3.2: an HS256 key must be at least as long as the hash output.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("COPILOT_JWKS_FILE {path}: {message}")]
    Jwks { path: String, message: String },
    #[error("no JWT key configured: set COPILOT_JWT_SECRET or COPILOT_JWKS_FILE")]
    NoKey,
    #[error(
        "COPILOT_JWT_SECRET is {0} bytes; an HS256 secret must be at least {MIN_SECRET_BYTES} bytes"
    )]
    ShortSecret(usize),
}

struct AsymmetricKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens and turns their claims into a [`Principal`].
pub struct Authenticator {
    verified: VerifiedTokens,
    hs256: Option<DecodingKey>,
    asymmetric: Vec<AsymmetricKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Required (`Validation` checks it); kept to know how long a verified token may be reused.
    exp: u64,
    sub: Option<String>,
    role: Option<String>,
    tenant_id: Option<String>,
    app_metadata: Option<AppMetadata>,
    tenant_role: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AppMetadata {
    tenant_id: Option<String>,
}

impl Authenticator {
    /// `secret` is the HS256 secret in force (configured or generated).
    pub fn new(jwt: &JwtSettings, secret: Option<&str>) -> Result<Self, AuthSetupError> {
        let mut asymmetric = Vec::new();
        if let Some(path) = &jwt.jwks_file {
            let jwks_error = |message: String| AuthSetupError::Jwks {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| jwks_error(e.to_string()))?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| jwks_error(e.to_string()))?;
            for jwk in &set.keys {
                let algorithm = match jwk.common.key_algorithm.map(|a| a.to_string()).as_deref() {
                    Some("RS256") => Algorithm::RS256,
                    Some("ES256") => Algorithm::ES256,
                    None => match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                            Algorithm::ES256
                        }
                        _ => continue,
                    },
                    Some(_) => continue,
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| jwks_error(e.to_string()))?;
                asymmetric.push(AsymmetricKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                });
            }
            if asymmetric.is_empty() {
                return Err(jwks_error("no RS256 or ES256 key in the set".into()));
            }
        }
        if let Some(secret) = secret
            && secret.len() < MIN_SECRET_BYTES
        {
            return Err(AuthSetupError::ShortSecret(secret.len()));
        }
        let hs256 = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
        if hs256.is_none() && asymmetric.is_empty() {
            return Err(AuthSetupError::NoKey);
        }
        Ok(Self {
            verified: VerifiedTokens::default(),
            hs256,
            asymmetric,
            audience: jwt.audience.clone(),
            issuer: jwt.issuer.clone(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let key = VerifiedTokens::key(token);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(principal) = self.verified.get(&key, now) {
            return Ok(principal);
        }
        let (principal, exp) = self.verify_uncached(token)?;
        self.verified.insert(key, principal.clone(), exp);
        Ok(principal)
    }

    /// Verifies `token`; its principal and `exp`.
    fn verify_uncached(&self, token: &str) -> Result<(Principal, u64), ApiError> {
        let unauthenticated = |m: &str| ApiError::Unauthenticated(m.to_owned());
        let header = decode_header(token).map_err(|_| unauthenticated("malformed bearer token"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            alg @ (Algorithm::RS256 | Algorithm::ES256) => self
                .asymmetric
                .iter()
                .filter(|k| k.algorithm == alg)
                .find(|k| header.kid.is_none() || k.kid == header.kid)
                .map(|k| &k.key),
            _ => None,
        }
        .ok_or_else(|| unauthenticated("token algorithm or key is not accepted"))?;
        let mut validation = Validation::new(header.alg);
        // A configured audience or issuer must be present, not merely equal when present.
        let mut required = vec!["exp"];
        required.extend(self.audience.as_ref().map(|_| "aud"));
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        validation.leeway = 30;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let claims = decode::<Claims>(token, key, &validation)
            .map_err(|e| ApiError::Unauthenticated(format!("invalid token: {e}")))?
            .claims;
        let exp = claims.exp;
        Ok((principal_from(claims)?, exp))
    }
}

fn principal_from(claims: Claims) -> Result<Principal, ApiError> {
    let unauthenticated = |m: &str| ApiError::Unauthenticated(m.to_owned());
    match claims.role.as_deref() {
        Some(SERVICE_ROLE) => Ok(Principal::service(
            claims.sub.unwrap_or_else(|| SERVICE_ROLE.to_owned()),
        )),
        Some(AUTHENTICATED_ROLE) => {
            let sub = claims
                .sub
                .ok_or_else(|| unauthenticated("token has no sub"))?;
            let user = UserId::parse(&sub)
                .map_err(|_| unauthenticated("token sub is not a valid user id"))?;
            let tenant = claims
                .tenant_id
                .or_else(|| claims.app_metadata.and_then(|m| m.tenant_id))
                .ok_or_else(|| unauthenticated("token has no tenant_id"))?;
            let tenant = TenantId::parse(&tenant)
                .map_err(|_| unauthenticated("token tenant_id is not a valid id"))?;
            let role = match claims.tenant_role.as_deref() {
                Some("admin") => TenantRole::Admin,
                _ => TenantRole::Member,
            };
            Ok(Principal::user(&tenant, &user, role))
        }
        _ => Err(unauthenticated(
            "token role must be authenticated or service_role",
        )),
    }
}

/// A principal the rate limiter already verified for this request (so the token is checked once).
#[derive(Clone, Debug)]
pub struct VerifiedPrincipal(pub Principal);

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The role a minted token carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    Member,
    Admin,
    Service,
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    role: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_role: Option<&'a str>,
    iat: u64,
    exp: u64,
}

/// Signs an HS256 token (the `token` command, the start-up banner, tests).
pub fn issue_token(
    secret: &str,
    tenant: Option<&TenantId>,
    user: &str,
    role: TokenRole,
    ttl_seconds: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = MintClaims {
        sub: user,
        role: if role == TokenRole::Service {
            SERVICE_ROLE
        } else {
            AUTHENTICATED_ROLE
        },
        tenant_id: tenant.map(TenantId::as_str),
        tenant_role: match role {
            TokenRole::Admin => Some("admin"),
            TokenRole::Member => Some("member"),
            TokenRole::Service => None,
        },
        iat: now,
        exp: now + ttl_seconds,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_SECRET: &str = "unit-test-secret-of-32-bytes-min";

    fn authenticator(secret: &str) -> Authenticator {
        Authenticator::new(&JwtSettings::default(), Some(secret)).unwrap()
    }

    #[test]
    fn issued_tokens_verify_into_principals() {
        let a = authenticator(TEST_SECRET);
        let t = TenantId::parse("acme").unwrap();
        let token = issue_token(TEST_SECRET, Some(&t), "alice", TokenRole::Admin, 60).unwrap();
        assert_eq!(
            a.verify(&token).unwrap(),
            Principal::user(&t, &UserId::parse("alice").unwrap(), TenantRole::Admin)
        );
        let token = issue_token(TEST_SECRET, None, "backend", TokenRole::Service, 60).unwrap();
        assert_eq!(a.verify(&token).unwrap(), Principal::service("backend"));
    }

    #[test]
    fn bad_tokens_are_unauthenticated() {
        let a = authenticator(TEST_SECRET);
        let t = TenantId::parse("acme").unwrap();
        let wrong_key = issue_token(
            "another-secret-of-32-bytes-or-so",
            Some(&t),
            "alice",
            TokenRole::Member,
            60,
        )
        .unwrap();
        assert!(matches!(
            a.verify(&wrong_key),
            Err(ApiError::Unauthenticated(_))
        ));
        let no_tenant = issue_token(TEST_SECRET, None, "alice", TokenRole::Member, 60).unwrap();
        assert!(matches!(
            a.verify(&no_tenant),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.verify("not-a-jwt"),
            Err(ApiError::Unauthenticated(_))
        ));
        // Expired beyond the leeway.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({"sub": "a", "role": "authenticated", "tenant_id": "acme", "exp": now - 3600});
        let expired = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            a.verify(&expired),
            Err(ApiError::Unauthenticated(_))
        ));
        // No exp at all.
        let claims = serde_json::json!({"sub": "a", "role": "authenticated", "tenant_id": "acme"});
        let no_exp = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            a.verify(&no_exp),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn supabase_style_app_metadata_tenant() {
        let a = authenticator(TEST_SECRET);
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let claims = serde_json::json!({"sub": "u1", "role": "authenticated", "exp": exp, "app_metadata": {"tenant_id": "acme"}});
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .unwrap();
        assert!(
            a.verify(&token)
                .unwrap()
                .is_member_of(&TenantId::parse("acme").unwrap())
        );
        let anon =
            serde_json::json!({"sub": "u1", "role": "anon", "exp": exp, "tenant_id": "acme"});
        let token = encode(
            &Header::new(Algorithm::HS256),
            &anon,
            &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .unwrap();
        assert!(a.verify(&token).is_err());
    }

    #[test]
    fn a_short_hs256_secret_stops_start_up() {
        let err = Authenticator::new(&JwtSettings::default(), Some("too-short")).err();
        assert!(
            matches!(err, Some(AuthSetupError::ShortSecret(9))),
            "{err:?}"
        );
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let jwt = JwtSettings {
            audience: Some("copilot".into()),
            issuer: Some("https://idp".into()),
            ..Default::default()
        };
        let a = Authenticator::new(&jwt, Some(TEST_SECRET)).unwrap();
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let sign = |claims: serde_json::Value| {
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
            )
            .unwrap()
        };
        let good = sign(
            serde_json::json!({"sub": "s", "role": "service_role", "exp": exp, "aud": "copilot", "iss": "https://idp"}),
        );
        assert!(a.verify(&good).is_ok());
        let bad_aud = sign(
            serde_json::json!({"sub": "s", "role": "service_role", "exp": exp, "aud": "x", "iss": "https://idp"}),
        );
        assert!(a.verify(&bad_aud).is_err());
        let bad_iss = sign(
            serde_json::json!({"sub": "s", "role": "service_role", "exp": exp, "aud": "copilot", "iss": "x"}),
        );
        assert!(a.verify(&bad_iss).is_err());
        // Configured but missing: refused too (it used to pass).
        let no_aud = sign(
            serde_json::json!({"sub": "s", "role": "service_role", "exp": exp, "iss": "https://idp"}),
        );
        assert!(a.verify(&no_aud).is_err(), "a missing aud is refused");
        let no_iss = sign(
            serde_json::json!({"sub": "s", "role": "service_role", "exp": exp, "aud": "copilot"}),
        );
        assert!(a.verify(&no_iss).is_err(), "a missing iss is refused");
        // Not valid yet (beyond the leeway).
        let early = sign(
            serde_json::json!({"sub": "s", "role": "service_role", "exp": exp + 3600, "nbf": exp + 600, "aud": "copilot", "iss": "https://idp"}),
        );
        assert!(a.verify(&early).is_err(), "nbf in the future is refused");
    }

    /// RS256 and ES256 keys from a JWKS file, chosen by `kid`.
    #[test]
    fn jwks_file_with_rs256_and_es256_keys() {
        use jsonwebtoken::jwk::Jwk;
        let rsa = EncodingKey::from_rsa_pem(include_bytes!("../tests/fixtures/rs256-test-key.pem"))
            .unwrap();
        let ec = EncodingKey::from_ec_pem(include_bytes!("../tests/fixtures/es256-test-key.pem"))
            .unwrap();
        let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
        rsa_jwk.common.key_id = Some("rsa-1".into());
        let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
        ec_jwk.common.key_id = Some("ec-1".into());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            serde_json::to_string(&JwkSet {
                keys: vec![rsa_jwk, ec_jwk],
            })
            .unwrap(),
        )
        .unwrap();
        let a = Authenticator::new(
            &JwtSettings {
                jwks_file: Some(path),
                ..Default::default()
            },
            None,
        )
        .unwrap();

        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let claims = serde_json::json!({"sub": "u1", "role": "authenticated", "tenant_id": "acme", "exp": exp});
        let sign = |alg, kid: &str, key: &EncodingKey| {
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            encode(&header, &claims, key).unwrap()
        };
        assert!(a.verify(&sign(Algorithm::RS256, "rsa-1", &rsa)).is_ok());
        assert!(a.verify(&sign(Algorithm::ES256, "ec-1", &ec)).is_ok());
        // Wrong kid, or a key signing under another key's id: refused.
        assert!(a.verify(&sign(Algorithm::RS256, "rsa-2", &rsa)).is_err());
        assert!(a.verify(&sign(Algorithm::ES256, "rsa-1", &ec)).is_err());
        // No HS256 secret configured: HS256 tokens are refused.
        let hs = issue_token(
            "whatever",
            Some(&TenantId::parse("acme").unwrap()),
            "u1",
            TokenRole::Member,
            60,
        )
        .unwrap();
        assert!(a.verify(&hs).is_err());
        // A broken JWKS file stops start-up.
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        assert!(
            Authenticator::new(
                &JwtSettings {
                    jwks_file: Some(bad),
                    ..Default::default()
                },
                None
            )
            .is_err()
        );
    }
}
