use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const ISS: &str = "pgveil-test";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_700_000_000;

struct Fixture {
    signer: TokenSigner,
    verifier: TokenVerifier,
    public: String,
}

fn fixture() -> Fixture {
    let (private, public) = generate_keypair().unwrap();
    Fixture {
        signer: TokenSigner::from_pem(&private, ISS).unwrap(),
        verifier: TokenVerifier::from_pems(std::slice::from_ref(&public), ISS).unwrap(),
        public,
    }
}

fn mint(signer: &TokenSigner, amr: &[&str]) -> String {
    signer
        .mint(
            &UserId::new("alice"),
            &TenantId::new("acme"),
            &RoleName::new("analyst"),
            amr.iter().map(|s| s.to_string()).collect(),
            Duration::from_secs(3600),
            t(NOW),
        )
        .unwrap()
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn good_claims() -> serde_json::Value {
    json!({
        "sub": "alice", "tenant": "acme", "role": "analyst", "amr": ["pwd", "otp"],
        "iat": NOW, "exp": NOW + 3600, "jti": "j1", "iss": ISS,
    })
}

/// Signs arbitrary claims with the fixture's real key (through jsonwebtoken, bypassing `mint`).
fn sign_raw(claims: &serde_json::Value) -> (String, TokenVerifier) {
    let (private, public) = generate_keypair().unwrap();
    let key = EncodingKey::from_ed_pem(private.expose_secret().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap();
    (token, TokenVerifier::from_pems(&[public], ISS).unwrap())
}

#[test]
fn roundtrip() {
    let f = fixture();
    let token = mint(&f.signer, &["pwd", "otp"]);
    let c = f.verifier.verify(&token, t(NOW + 10)).unwrap();
    assert_eq!(c.sub, UserId::new("alice"));
    assert_eq!(c.tenant, TenantId::new("acme"));
    assert_eq!(c.role, RoleName::new("analyst"));
    assert_eq!(c.iat, NOW as i64);
    assert_eq!(c.exp, NOW as i64 + 3600);
    assert_eq!(c.iss, ISS);
    assert!(uuid::Uuid::parse_str(&c.jti).is_ok());
    assert!(c.has_mfa());
    let c2 = f
        .verifier
        .verify(&mint(&f.signer, &["pwd"]), t(NOW))
        .unwrap();
    assert!(!c2.has_mfa());
    assert_ne!(c.jti, c2.jti);
}

#[test]
fn tampered_payload() {
    let f = fixture();
    let token = mint(&f.signer, &["pwd"]);
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["tenant"] = json!("other");
    let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert!(matches!(
        f.verifier.verify(&forged, t(NOW)),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn tampered_signature() {
    let f = fixture();
    let token = mint(&f.signer, &["pwd"]);
    let (msg, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[0] ^= 1;
    let forged = format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert!(matches!(
        f.verifier.verify(&forged, t(NOW)),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn wrong_key_and_rotation() {
    let f = fixture();
    let other = fixture();
    let token = mint(&other.signer, &["pwd"]);
    assert!(matches!(
        f.verifier.verify(&token, t(NOW)),
        Err(TokenError::BadSignature)
    ));
    // During rotation both keys are accepted.
    let both = TokenVerifier::from_pems(&[f.public.clone(), other.public.clone()], ISS).unwrap();
    both.verify(&token, t(NOW)).unwrap();
    both.verify(&mint(&f.signer, &[]), t(NOW)).unwrap();
}

#[test]
fn alg_none_rejected() {
    let f = fixture();
    for sig in ["", "AAAA"] {
        let token = format!(
            "{}.{}.{sig}",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&good_claims())
        );
        let err = f.verifier.verify(&token, t(NOW)).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::UnsupportedAlgorithm | TokenError::Malformed
            ),
            "{err:?}"
        );
    }
    let token = format!(
        "{}.{}.AAAA",
        b64(&json!({"alg": "none"})),
        b64(&good_claims())
    );
    assert!(matches!(
        f.verifier.verify(&token, t(NOW)),
        Err(TokenError::UnsupportedAlgorithm)
    ));
}

#[test]
fn hs256_with_public_key_as_secret_rejected() {
    let f = fixture();
    // Classic key-confusion attack: HMAC over the token using the (public) verifying key bytes as secret.
    for secret in [
        f.public.as_bytes().to_vec(),
        f.public.trim().as_bytes().to_vec(),
    ] {
        let key = EncodingKey::from_secret(&secret);
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &good_claims(), &key).unwrap();
        assert!(matches!(
            f.verifier.verify(&token, t(NOW)),
            Err(TokenError::UnsupportedAlgorithm)
        ));
    }
}

#[test]
fn other_algorithms_rejected() {
    let f = fixture();
    for alg in ["RS256", "ES256", "HS512", "eddsa", "Ed25519"] {
        let token = format!("{}.{}.AAAA", b64(&json!({"alg": alg})), b64(&good_claims()));
        assert!(
            matches!(
                f.verifier.verify(&token, t(NOW)),
                Err(TokenError::UnsupportedAlgorithm)
            ),
            "{alg}"
        );
    }
    // A non-string alg and a critical extension are refused too.
    let token = format!("{}.{}.AAAA", b64(&json!({"alg": 1})), b64(&good_claims()));
    assert!(matches!(
        f.verifier.verify(&token, t(NOW)),
        Err(TokenError::UnsupportedAlgorithm)
    ));
    let token = format!(
        "{}.{}.AAAA",
        b64(&json!({"alg": "EdDSA", "crit": ["x"]})),
        b64(&good_claims())
    );
    assert!(matches!(
        f.verifier.verify(&token, t(NOW)),
        Err(TokenError::UnsupportedAlgorithm)
    ));
}

#[test]
fn expiry_uses_injected_clock_with_leeway() {
    let f = fixture();
    let token = mint(&f.signer, &["otp"]);
    let exp = NOW + 3600;
    f.verifier.verify(&token, t(exp)).unwrap();
    f.verifier
        .verify(&token, t(exp + EXP_LEEWAY_SECS as u64))
        .unwrap();
    assert!(matches!(
        f.verifier
            .verify(&token, t(exp + EXP_LEEWAY_SECS as u64 + 1)),
        Err(TokenError::Expired)
    ));
    assert!(matches!(
        f.verifier.verify(&token, t(exp + 86_400)),
        Err(TokenError::Expired)
    ));
}

#[test]
fn iat_far_in_future_rejected() {
    let f = fixture();
    let token = mint(&f.signer, &["otp"]);
    f.verifier
        .verify(&token, t(NOW - MAX_IAT_SKEW_SECS as u64))
        .unwrap();
    let early = t(NOW - MAX_IAT_SKEW_SECS as u64 - 1);
    assert!(matches!(
        f.verifier.verify(&token, early),
        Err(TokenError::NotYetValid)
    ));
}

#[test]
fn nbf_in_the_future_rejected() {
    let mut claims = good_claims();
    claims["nbf"] = json!(NOW + 600);
    let (token, verifier) = sign_raw(&claims);
    assert!(matches!(
        verifier.verify(&token, t(NOW)),
        Err(TokenError::NotYetValid)
    ));
    // Within the leeway, and once the time has come, it is accepted.
    verifier
        .verify(&token, t(NOW + 600 - EXP_LEEWAY_SECS as u64))
        .unwrap();
    verifier.verify(&token, t(NOW + 601)).unwrap();
    // A malformed nbf is refused, not ignored.
    claims["nbf"] = json!("soon");
    let (token, verifier) = sign_raw(&claims);
    assert!(matches!(
        verifier.verify(&token, t(NOW)),
        Err(TokenError::Malformed)
    ));
}

#[test]
fn wrong_issuer() {
    let f = fixture();
    let verifier =
        TokenVerifier::from_pems(std::slice::from_ref(&f.public), "someone-else").unwrap();
    let token = mint(&f.signer, &["otp"]);
    assert!(matches!(
        verifier.verify(&token, t(NOW)),
        Err(TokenError::WrongIssuer)
    ));
}

#[test]
fn missing_claims() {
    for claim in ["sub", "tenant", "role", "iat", "exp", "jti", "iss"] {
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove(claim);
        let (token, verifier) = sign_raw(&claims);
        match verifier.verify(&token, t(NOW)) {
            Err(TokenError::MissingClaim(c)) => assert_eq!(c, claim),
            other => panic!("{claim}: {other:?}"),
        }
    }
    // amr is optional and defaults to "no MFA".
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("amr");
    let (token, verifier) = sign_raw(&claims);
    assert!(!verifier.verify(&token, t(NOW)).unwrap().has_mfa());
}

#[test]
fn wrongly_typed_claim_is_malformed() {
    let mut claims = good_claims();
    claims["exp"] = json!("tomorrow");
    let (token, verifier) = sign_raw(&claims);
    assert!(matches!(
        verifier.verify(&token, t(NOW)),
        Err(TokenError::Malformed)
    ));
}

#[test]
fn oversize_rejected() {
    let f = fixture();
    let token = "a".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        f.verifier.verify(&token, t(NOW)),
        Err(TokenError::TooLong)
    ));
    let mut claims = good_claims();
    claims["pad"] = json!("x".repeat(MAX_TOKEN_LEN));
    let (token, verifier) = sign_raw(&claims);
    assert!(matches!(
        verifier.verify(&token, t(NOW)),
        Err(TokenError::TooLong)
    ));
}

#[test]
fn garbage_rejected_without_echo() {
    let f = fixture();
    for junk in [
        "",
        "hunter2",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "e30.e30.",
        "!!!.???.***",
        "e30.e30.e30",
    ] {
        let err = f.verifier.verify(junk, t(NOW)).unwrap_err();
        assert!(matches!(err, TokenError::Malformed), "{junk:?}: {err:?}");
    }
    let token = mint(&f.signer, &["otp"]);
    let truncated = &token[..token.len() - 5];
    let err = f.verifier.verify(truncated, t(NOW)).unwrap_err();
    assert!(!err.to_string().contains(truncated) && !format!("{err:?}").contains(truncated));
}

#[test]
fn secrets_not_in_debug() {
    let (private, public) = generate_keypair().unwrap();
    let signer = TokenSigner::from_pem(&private, ISS).unwrap();
    let body: String = private.expose_secret().lines().nth(1).unwrap().to_owned();
    assert!(!format!("{signer:?}").contains(&body));
    assert!(!format!("{private:?}").contains(&body));
    assert!(matches!(
        TokenSigner::from_pem(&SecretString::from(public.clone()), ISS),
        Err(TokenError::Key(_))
    ));
    let err = TokenVerifier::from_pems(&[private.expose_secret().to_owned()], ISS).unwrap_err();
    assert!(!err.to_string().contains(&body));
    assert!(TokenVerifier::from_pems(&[], ISS).is_err());
}

#[test]
fn write_keypair_files() {
    let dir = tempfile::tempdir().unwrap();
    let (signing, verifying) = write_keypair(dir.path()).unwrap();
    assert_eq!(signing.file_name().unwrap(), SIGNING_KEY_FILE);
    assert_eq!(verifying.file_name().unwrap(), VERIFYING_KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&signing).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let private = SecretString::from(std::fs::read_to_string(&signing).unwrap());
    let public = std::fs::read_to_string(&verifying).unwrap();
    let signer = TokenSigner::from_pem(&private, ISS).unwrap();
    let verifier = TokenVerifier::from_pems(&[public], ISS).unwrap();
    verifier.verify(&mint(&signer, &["otp"]), t(NOW)).unwrap();
    // A second run must not replace the live key.
    let before = std::fs::read(&signing).unwrap();
    assert!(matches!(
        write_keypair(dir.path()),
        Err(TokenError::Io { .. })
    ));
    assert_eq!(std::fs::read(&signing).unwrap(), before);
}

#[test]
fn lifetime_above_the_configured_maximum_refused() {
    let mut claims = good_claims();
    claims["exp"] = json!(NOW + 30 * 86_400);
    let (token, verifier) = sign_raw(&claims);
    verifier.verify(&token, t(NOW)).unwrap();
    let capped = verifier.with_max_ttl(Duration::from_secs(7 * 86_400));
    assert!(matches!(
        capped.verify(&token, t(NOW)),
        Err(TokenError::LifetimeTooLong)
    ));
    let f = fixture();
    let ok = mint(&f.signer, &["otp"]);
    let capped = f.verifier.with_max_ttl(Duration::from_secs(3600));
    capped.verify(&ok, t(NOW)).unwrap();
}
