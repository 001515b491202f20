//! Connecting without a valid token (28P01), with a valid token for something not served here (28000), and
//! naming a database that is not the token's tenant's (3D000).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pgveil::ids::{RoleName, TenantId, UserId};
use pgveil::token::{TokenSigner, generate_keypair};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::common::{current_database, expect_refused};
use crate::support::{Fixture, raw};

const MFA: &[&str] = &["pwd", "otp"];

fn mint(signer: &TokenSigner, tenant: &str, role: &str, ttl: Duration, now: SystemTime) -> String {
    signer
        .mint(
            &UserId::new("mallory"),
            &TenantId::new(tenant),
            &RoleName::new(role),
            MFA.iter().map(|s| s.to_string()).collect(),
            ttl,
            now,
        )
        .expect("mint")
}

/// Expects `token` (for tenant acme) to be refused with 28P01 without being echoed back.
fn expect_bad_token(fx: &Fixture, token: &str) -> Result<()> {
    let conn = fx.conn_str(fx.proxy.addr, "acme", "tester", token);
    // The signature segment is the part that proves possession of the key; never echo any of it.
    let sig = token.rsplit('.').next().unwrap_or(token);
    let mut secrets = vec![token];
    if sig.len() >= 8 {
        secrets.push(sig);
    }
    fx.block_on(expect_refused(&conn, "28P01", &secrets))?;
    Ok(())
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims(fx: &Fixture, tenant: &str) -> Value {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "sub": "mallory", "tenant": tenant, "role": "admin", "amr": MFA,
        "iat": now, "exp": now + 3600, "jti": "5b0f0a3e-1111-4222-8333-444455556666",
        "iss": fx.env.config.auth.issuer,
    })
}

pub fn forged_token(fx: &Fixture) -> Result<()> {
    let (private, _public) = generate_keypair()?;
    let forger = TokenSigner::from_pem(&private, &fx.env.config.auth.issuer)?;
    let token = mint(
        &forger,
        "acme",
        "admin",
        Duration::from_secs(3600),
        SystemTime::now(),
    );
    expect_bad_token(fx, &token)
}

pub fn tampered_payload(fx: &Fixture) -> Result<()> {
    let token = fx.token("mallory", "acme", "analyst");
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    // Another tenant, and a more privileged role.
    payload["tenant"] = json!("globex");
    let forged = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    let conn = fx.conn_str(fx.proxy.addr, "globex", "tester", &forged);
    fx.block_on(expect_refused(&conn, "28P01", &[&forged, parts[2]]))?;
    payload["tenant"] = json!("acme");
    payload["role"] = json!("admin");
    let forged = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    expect_bad_token(fx, &forged)
}

pub fn tampered_signature(fx: &Fixture) -> Result<()> {
    let token = fx.token("mallory", "acme", "admin");
    let (head, sig) = token.rsplit_once('.').context("token shape")?;
    let mut sig = URL_SAFE_NO_PAD.decode(sig)?;
    sig[10] ^= 0x01;
    expect_bad_token(fx, &format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig)))?;
    // Truncated signature.
    expect_bad_token(
        fx,
        &format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig[..32])),
    )
}

pub fn expired_token(fx: &Fixture) -> Result<()> {
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    let token = mint(
        &fx.env.signer,
        "acme",
        "admin",
        Duration::from_secs(3600),
        two_hours_ago,
    );
    let conn = fx.conn_str(fx.proxy.addr, "acme", "tester", &token);
    let r = fx.block_on(expect_refused(&conn, "28P01", &[&token]))?;
    ensure!(
        r.text.contains("expired"),
        "the client should be told the token expired: {r:?}"
    );
    Ok(())
}

pub fn alg_none(fx: &Fixture) -> Result<()> {
    let body = b64(&claims(fx, "acme"));
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"alg": "NONE"}),
    ] {
        let h = b64(&header);
        expect_bad_token(fx, &format!("{h}.{body}."))?;
        expect_bad_token(fx, &format!("{h}.{body}.c2lnbmF0dXJl"))?;
    }
    Ok(())
}

pub fn hs256_with_public_key(fx: &Fixture) -> Result<()> {
    let public = fx.env.verifying_key_pem()?.into_bytes();
    let key = jsonwebtoken::EncodingKey::from_secret(&public);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(fx, "acme"),
        &key,
    )?;
    expect_bad_token(fx, &token)?;
    // Same, with the header claiming EdDSA (the HMAC is then just a wrong-length signature).
    let (_, rest) = token.split_once('.').context("shape")?;
    expect_bad_token(
        fx,
        &format!("{}.{rest}", b64(&json!({"alg": "EdDSA", "typ": "JWT"}))),
    )
}

pub fn wrong_issuer(fx: &Fixture) -> Result<()> {
    let pem = fx.env.signing_key_pem()?;
    let other = TokenSigner::from_pem(&pem, "someone-else")?;
    let token = mint(
        &other,
        "acme",
        "admin",
        Duration::from_secs(3600),
        SystemTime::now(),
    );
    expect_bad_token(fx, &token)
}

pub fn garbage_and_empty_password(fx: &Fixture) -> Result<()> {
    for garbage in [
        "garbage-CANARY-7f3a9c2e41",
        "a.b.c",
        "eyJhbGciOiJFZERTQSJ9.e30.",
        &"A".repeat(8000),
    ] {
        expect_bad_token(fx, garbage)?;
    }
    // Longer than any token: refused as a malformed password message before it is parsed.
    let long = "A".repeat(9000);
    fx.block_on(expect_refused(
        &fx.conn_str(fx.proxy.addr, "acme", "tester", &long),
        "08P01",
        &[&long],
    ))?;
    fx.block_on(async {
        // Raw, to be sure an empty password is really sent (libraries may refuse to send one).
        let mut s = TcpStream::connect(fx.proxy.addr).await?;
        s.write_all(&raw::startup(&[("user", "tester"), ("database", "acme")]))
            .await?;
        let m = raw::next_msg(&mut s).await?;
        ensure!(
            m.auth_code() == Some(3),
            "expected a password request, got {m}"
        );
        s.write_all(&raw::password("")).await?;
        raw::expect_fatal(&mut s, "28P01").await?;
        // A garbage token over raw as well: FATAL, then the connection is closed.
        let mut s = TcpStream::connect(fx.proxy.addr).await?;
        s.write_all(&raw::startup(&[("user", "tester"), ("database", "acme")]))
            .await?;
        raw::next_msg(&mut s).await?;
        s.write_all(&raw::password("garbage-CANARY-7f3a9c2e41"))
            .await?;
        let e = raw::expect_fatal(&mut s, "28P01").await?;
        ensure!(!e.text().contains("CANARY"), "error echoes the token: {e}");
        Ok(())
    })
}

pub fn unknown_tenant_and_role(fx: &Fixture) -> Result<()> {
    let nope = fx.token("mallory", "nope", "admin");
    let conn = fx.conn_str(fx.proxy.addr, "nope", "tester", &nope);
    fx.block_on(expect_refused(&conn, "28000", &[&nope]))?;
    let conn = fx.conn_str(fx.proxy.addr, "", "tester", &nope);
    fx.block_on(expect_refused(&conn, "28000", &[&nope]))?;
    for role in ["superuser", "postgres", "Admin"] {
        let t = fx.token("mallory", "acme", role);
        let conn = fx.conn_str(fx.proxy.addr, "acme", "tester", &t);
        fx.block_on(expect_refused(&conn, "28000", &[&t]))?;
    }
    Ok(())
}

pub fn other_tenant_database(fx: &Fixture) -> Result<()> {
    let acme = fx.token("mallory", "acme", "admin");
    let globex = fx.token("mallory", "globex", "admin");
    fx.block_on(async {
        // The control: each token reaches its own database.
        ensure!(
            current_database(&fx.conn_str(fx.proxy.addr, "acme", "tester", &acme)).await? == "acme"
        );
        ensure!(
            current_database(&fx.conn_str(fx.proxy.addr, "globex", "tester", &globex)).await?
                == "globex"
        );
        // Any other tenant's database is refused as nonexistent; the session never starts, so no row of it
        // can come back.
        for (token, db) in [
            (&acme, "globex"),
            (&acme, "tlsco"),
            (&acme, "clearco"),
            (&globex, "acme"),
            (&acme, "ACME"),
        ] {
            let r = expect_refused(
                &fx.conn_str(fx.proxy.addr, db, "tester", token),
                "3D000",
                &[token],
            )
            .await?;
            ensure!(
                r.text.contains(db),
                "message should name the database: {r:?}"
            );
        }
        Ok(())
    })
}

pub fn system_databases(fx: &Fixture) -> Result<()> {
    let acme = fx.token("mallory", "acme", "admin");
    fx.block_on(async {
        for db in ["postgres", "template1", "template0"] {
            expect_refused(
                &fx.conn_str(fx.proxy.addr, db, "tester", &acme),
                "3D000",
                &[&acme],
            )
            .await?;
        }
        Ok(())
    })
}

pub fn empty_or_omitted_database(fx: &Fixture) -> Result<()> {
    let acme = fx.token("mallory", "acme", "admin");
    let addr = fx.proxy.addr;
    fx.block_on(async {
        // dbname='' is sent as an empty `database`: the tenant's database.
        let empty = format!(
            "host={} port={} dbname='' user=tester password={acme} sslmode=disable",
            addr.ip(),
            addr.port()
        );
        ensure!(current_database(&empty).await? == "acme");
        // tokio-postgres omits `database` when no dbname is given (it does not default it to the user name as
        // libpq does); pgveil then routes to the tenant's database.
        let omitted = format!(
            "host={} port={} user=tester password={acme} sslmode=disable",
            addr.ip(),
            addr.port()
        );
        ensure!(current_database(&omitted).await? == "acme");
        // A libpq-style default (database = user name) that is not the tenant id is refused cleanly.
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&raw::startup(&[("user", "tester"), ("database", "tester")]))
            .await?;
        raw::next_msg(&mut s).await?;
        s.write_all(&raw::password(&acme)).await?;
        raw::expect_fatal(&mut s, "3D000").await?;
        // A raw startup without `database` at all works too.
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&raw::startup(&[("user", "tester")])).await?;
        raw::authenticate(&mut s, &acme).await?;
        ensure!(raw::query_value(&mut s, "SELECT current_database()").await? == "acme");
        Ok(())
    })
}
