//! Redaction and decoding of secret values.

use super::*;

const CANARY: &str = "hunter2-canary-7f3a";

#[test]
fn debug_never_shows_password() {
    let id = SecretId::new("t/acme");
    let v = SecretString::from(format!(
        r#"{{"username":"u","password":"{CANARY}","host":"h","port":"6543"}}"#
    ));
    let c = DbCredentials::from_secret(&id, &v).unwrap();
    let dbg = format!("{c:?} {v:?}");
    assert!(!dbg.contains(CANARY), "{dbg}");
    assert_eq!(c.password.expose_secret(), CANARY);
    assert_eq!(c.port, Some(6543));
}

#[test]
fn malformed_error_never_shows_value() {
    let id = SecretId::new("t/acme");
    for text in [
        format!(r#"{{"user":"u","password":"{CANARY}"}}"#),
        format!(r#"{{"username":"u","password":"{CANARY}"#),
        format!(r#"{{"username":"u","password":"x","port":"{CANARY}"}}"#),
        CANARY.to_owned(),
    ] {
        let err = DbCredentials::from_secret(&id, &SecretString::from(text)).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("t/acme"), "{shown}");
    }
}

#[test]
fn key_bytes_are_base64_and_redacted() {
    let id = SecretId::new("pgveil/pseudonym/acme");
    let key = decode_key_bytes(&id, &SecretString::from(" AAECAwQ= \n".to_owned())).unwrap();
    assert_eq!(key.expose_secret().as_slice(), &[0, 1, 2, 3, 4]);
    assert!(!format!("{key:?}").contains('0'), "{key:?}");
    let err = decode_key_bytes(&id, &SecretString::from(CANARY.to_owned())).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(CANARY));
}

#[tokio::test]
async fn file_store_reads_strings_and_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    std::fs::write(
        &path,
        format!(r#"{{"k":"AAEC","db":{{"username":"u","password":"{CANARY}"}},"n":1}}"#),
    )
    .unwrap();
    let store = FileSecretStore::new(path);
    let k = fetch_bytes(&store, &SecretId::new("k")).await.unwrap();
    assert_eq!(k.expose_secret().as_slice(), &[0, 1, 2]);
    let c = DbCredentials::fetch(&store, &SecretId::new("db"))
        .await
        .unwrap();
    assert_eq!(c.username, "u");
    assert!(matches!(
        store.fetch(&SecretId::new("nope")).await,
        Err(SecretError::NotFound(_))
    ));
    let err = store.fetch(&SecretId::new("n")).await.unwrap_err();
    assert!(!err.to_string().contains(CANARY));
}
