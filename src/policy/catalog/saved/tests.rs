use std::path::Path;

use super::{FORMAT, SavedError, from_json, load, save, to_json};
use crate::ids::TenantId;
use crate::policy::catalog::{Catalog, fixture};

fn same_schema(a: &Catalog, b: &Catalog) {
    assert_eq!(a.search_path, b.search_path);
    assert_eq!(a.relations, b.relations);
    assert_eq!(a.system_relations, b.system_relations);
    assert_eq!(a.functions, b.functions);
    assert_eq!(a.operators, b.operators);
}

#[test]
fn fixture_round_trips_through_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acme.catalog.json");
    let original = fixture::catalog();
    let tenant = TenantId::new("acme");
    save(&path, &tenant, &original).expect("save");
    let saved = load(&path).expect("load");
    assert_eq!(saved.tenant, tenant);
    same_schema(&saved.catalog, &original);
    // A fresh version, like a live load, never the saved one.
    assert_ne!(saved.catalog.version, original.version);
    assert_ne!(
        load(&path).expect("load").catalog.version,
        saved.catalog.version
    );
    // Only the file itself is left behind (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec!["acme.catalog.json"]);
}

#[test]
fn output_is_stable_and_sorted() {
    let tenant = TenantId::new("acme");
    let text = to_json(&tenant, &fixture::catalog()).expect("json");
    // Hash sets and maps are written in order: saving again (other hash seeds) gives the same bytes.
    for _ in 0..5 {
        let again = from_json(&text, Path::new("x.json")).expect("parse");
        assert_eq!(to_json(&tenant, &again.catalog).expect("json"), text);
    }
    assert!(
        text.starts_with("{\n  \"format\": 1,\n  \"tenant\": \"acme\",\n"),
        "{text}"
    );
    let audit = text.find("\"schema\": \"audit\"").expect("audit.payers");
    let public = text
        .find("\"schema\": \"public\"")
        .expect("public relations");
    assert!(audit < public, "relations not sorted");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let events = v["relations"]
        .as_array()
        .expect("relations")
        .iter()
        .find(|r| r["name"] == "events_2024")
        .expect("events_2024");
    assert_eq!(events["kind"], "r");
    assert_eq!(events["parents"][0]["name"], "events");
    assert_eq!(events["columns"][2]["family"], "json");
    assert_eq!(v["functions"]["public"][0], "dblink");
}

fn err(text: &str) -> SavedError {
    from_json(text, Path::new("/tmp/bad.catalog.json")).expect_err(text)
}

#[test]
fn malformed_files_are_refused_naming_the_file() {
    let good = to_json(&TenantId::new("acme"), &fixture::catalog()).expect("json");
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not a saved catalog"),
        ("{}".into(), "missing field `format`"),
        (
            good.replacen("\"format\": 1", "\"format\": 2", 1),
            "format 2 is not supported",
        ),
        (
            good.replacen("\"format\": 1", "\"format\": \"1\"", 1),
            "format \"1\" is not supported",
        ),
        (
            good.replacen("\"tenant\"", "\"owner\"", 1),
            "unknown field `owner`",
        ),
        (
            good.replacen("\"kind\": \"r\"", "\"kind\": \"rx\"", 1),
            "kind \"rx\"",
        ),
        (
            good.replacen("\"kind\": \"r\"", "\"kind\": \"i\"", 1),
            "kind \"i\"",
        ),
        (
            good.replacen("\"family\": \"text\"", "\"family\": \"blob\"", 1),
            "unknown variant `blob`",
        ),
        (good[..good.len() / 2].to_owned(), "EOF"),
        (
            good.replacen("\"schema\": \"audit\"", "\"schema\": \"pg_catalog\"", 1),
            "belong in system_relations",
        ),
    ];
    for (text, want) in cases {
        let msg = err(&text).to_string();
        assert!(msg.starts_with("/tmp/bad.catalog.json: "), "{msg}");
        assert!(msg.contains(want), "want {want:?} in {msg}");
    }
    let format = err(&good.replacen("\"format\": 1", "\"format\": 7", 1));
    assert!(matches!(format, SavedError::Format { .. }), "{format:?}");
    assert!(
        format
            .to_string()
            .contains(&format!("reads format {FORMAT}"))
    );

    // The same relation twice.
    let mut v: serde_json::Value = serde_json::from_str(&good).expect("json");
    let rels = v["relations"].as_array_mut().expect("relations");
    rels.push(rels[0].clone());
    let msg = err(&v.to_string()).to_string();
    assert!(msg.contains("listed twice"), "{msg}");
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let e = load(Path::new("/nonexistent/pgveil/acme.json")).expect_err("missing");
    assert!(matches!(e, SavedError::Read { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("/nonexistent/pgveil/acme.json: "),
        "{e}"
    );
}

#[test]
fn unwritable_destination_is_an_error_naming_it() {
    let path = Path::new("/nonexistent/pgveil/out.json");
    let e = save(path, &TenantId::new("acme"), &fixture::catalog()).expect_err("no folder");
    assert!(
        e.to_string()
            .starts_with("writing /nonexistent/pgveil/out.json: "),
        "{e}"
    );
}

/// The fuzz targets decide statements against this fixture, saved as fuzz/catalog.json; the file must stay the
/// fixture's (`PGVEIL_WRITE_FUZZ_CATALOG=1` rewrites it).
#[test]
fn fuzz_catalog_is_the_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/catalog.json");
    let json = to_json(&TenantId::new("acme"), &fixture::catalog()).expect("json");
    if std::env::var_os("PGVEIL_WRITE_FUZZ_CATALOG").is_some() {
        std::fs::write(&path, &json).expect("write fuzz/catalog.json");
    }
    let saved = std::fs::read_to_string(&path).expect("fuzz/catalog.json");
    assert!(
        saved == json,
        "fuzz/catalog.json is not the fixture: run with PGVEIL_WRITE_FUZZ_CATALOG=1"
    );
}
