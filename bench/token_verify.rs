//! Per-connection token cost: EdDSA signature + claims check (`TokenVerifier::verify`) and the revocation
//! lookup shape (hash sets), measured over many iterations. Run:
//! `cargo run --release --example token_verify`.
// Measurement code: a failed unwrap ends the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use pgveil::ids::{RoleName, TenantId, UserId};
use pgveil::token::{TokenSigner, TokenVerifier, generate_keypair};

fn main() {
    let (signing, verifying) = generate_keypair().expect("keypair");
    let signer = TokenSigner::from_pem(&signing, "pgveil").unwrap();
    let verifier = TokenVerifier::from_pems(&[verifying], "pgveil").unwrap();
    let now = SystemTime::now();
    let token = signer
        .mint(
            &UserId::new("alice@acme.example"),
            &TenantId::new("acme"),
            &RoleName::new("analyst"),
            vec!["pwd".into(), "otp".into()],
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
    let revoked: HashSet<String> = (0..10_000).map(|i| format!("jti-{i}")).collect();
    let n = 20_000;
    for _ in 0..1000 {
        verifier.verify(&token, now).unwrap();
    }
    let t = Instant::now();
    for _ in 0..n {
        let c = verifier.verify(&token, now).unwrap();
        assert!(!revoked.contains(&c.jti));
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("token verification + revocation lookup: {per:.1} µs per connection ({n} iterations)");
}
