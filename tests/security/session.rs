//! After authentication: protocol violations end the session (and only that session), and startup settings
//! that would change identity or SQL parsing are refused while ordinary ones are applied.

use anyhow::{Result, ensure};
use pgveil::server::ServerOptions;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::common::{healthy, login_expect_fatal, raw_session};
use crate::support::{Fixture, raw};

pub fn unknown_message_type(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        for (tag, body) in [
            (b'Y', &b""[..]),
            (b'p', b"again\0"),
            (0x00, b""),
            (0xff, b"xyz"),
        ] {
            let mut s = raw_session(fx, fx.proxy.addr, "acme").await?;
            s.write_all(&raw::message(tag, body)).await?;
            raw::expect_fatal(&mut s, "08P01")
                .await
                .map_err(|e| e.context(format!("tag 0x{tag:02x}")))?;
        }
        // A message whose tag is unknown and whose announced body never arrives must be refused on its tag,
        // as PostgreSQL does, not waited for.
        let mut s = raw_session(fx, fx.proxy.addr, "acme").await?;
        s.write_all(&[b'Y', 0, 0, 0x10, 0]).await?;
        raw::expect_fatal(&mut s, "08P01")
            .await
            .map_err(|e| e.context("tag Y with a 4 KB body announced"))?;
        healthy(fx, fx.proxy.addr, "acme").await
    })
}

pub fn oversize_query(fx: &Fixture) -> Result<()> {
    let srv = fx.start_server(
        |c| c.listen.max_query_bytes = 4096,
        ServerOptions::default(),
    )?;
    fx.block_on(async {
        // Within the limit: fine.
        let mut s = raw_session(fx, srv.addr, "acme").await?;
        let small = format!("SELECT '{}'", "x".repeat(3000));
        ensure!(raw::query_value(&mut s, &small).await?.len() == 3000);
        // A 10 KB query: FATAL 54000, closed.
        let big = format!("SELECT '{}'", "x".repeat(10 * 1024));
        s.write_all(&raw::query(&big)).await?;
        raw::expect_fatal(&mut s, "54000").await?;
        // A Query announcing 100 MB, header only: refused on the announced length.
        let mut s = raw_session(fx, srv.addr, "acme").await?;
        let mut header = vec![b'Q'];
        header.extend_from_slice(&(100 * 1024 * 1024_i32).to_be_bytes());
        s.write_all(&header).await?;
        raw::expect_fatal(&mut s, "54000").await?;
        // The same for Parse.
        let mut s = raw_session(fx, srv.addr, "acme").await?;
        let mut header = vec![b'P'];
        header.extend_from_slice(&(100 * 1024 * 1024_i32).to_be_bytes());
        s.write_all(&header).await?;
        raw::expect_fatal(&mut s, "54000").await?;
        // A negative length.
        let mut s = raw_session(fx, srv.addr, "acme").await?;
        s.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xf0]).await?;
        raw::expect_fatal(&mut s, "08P01").await?;
        healthy(fx, srv.addr, "acme").await
    })
}

pub fn ssl_request_mid_session(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let mut s = raw_session(fx, fx.proxy.addr, "acme").await?;
        s.write_all(&raw::ssl_request()).await?;
        raw::expect_fatal(&mut s, "08P01").await?;
        // A StartupMessage mid-session (a client confused about the state, or a smuggling attempt).
        let mut s = raw_session(fx, fx.proxy.addr, "acme").await?;
        s.write_all(&raw::startup(&[
            ("user", "postgres"),
            ("database", "globex"),
        ]))
        .await?;
        raw::expect_fatal(&mut s, "08P01").await?;
        healthy(fx, fx.proxy.addr, "acme").await
    })
}

pub fn identity_settings_refused(fx: &Fixture) -> Result<()> {
    let token = fx.token("alice", "acme", "admin");
    let cases: &[&[(&str, &str)]] = &[
        &[("options", "-c role=postgres")],
        &[("options", "-crole=postgres")],
        &[("options", "--role=postgres")],
        &[("options", "-c ROLE=postgres")],
        &[("options", "-c session_authorization=postgres")],
        &[("options", "--session-authorization=postgres")],
        &[("options", "-c standard_conforming_strings=off")],
        &[("options", "-c application_name=x -c role=pg_read_all_data")],
        &[("session_authorization", "postgres")],
        &[("role", "postgres")],
        &[("Role", "postgres")],
        &[("standard_conforming_strings", "off")],
    ];
    fx.block_on(async {
        for params in cases {
            let e = login_expect_fatal(fx.proxy.addr, "acme", &token, params, "42501")
                .await
                .map_err(|e| e.context(format!("{params:?}")))?;
            ensure!(!e.text().contains(&token), "error echoes the token");
        }
        // standard_conforming_strings=on is what pgveil forces anyway: accepted.
        let mut s = TcpStream::connect(fx.proxy.addr).await?;
        raw::login(
            &mut s,
            "acme",
            &token,
            &[("standard_conforming_strings", "on")],
        )
        .await?;
        ensure!(raw::query_value(&mut s, "SHOW standard_conforming_strings").await? == "on");
        // The proxy is unaffected: the next session is the tenant's own role.
        let mut s = raw_session(fx, fx.proxy.addr, "acme").await?;
        ensure!(raw::query_value(&mut s, "SELECT current_user").await? == "acme_app");
        ensure!(raw::query_value(&mut s, "SELECT session_user").await? == "acme_app");
        Ok(())
    })
}

pub fn normal_settings_applied(fx: &Fixture) -> Result<()> {
    let token = fx.token("alice", "acme", "admin");
    let params = [
        ("application_name", "sec-test"),
        ("DateStyle", "SQL, DMY"),
        ("TimeZone", "Asia/Tokyo"),
        ("extra_float_digits", "3"),
        ("search_path", "public, pg_catalog"),
        ("client_encoding", "UTF8"),
        ("options", "-c statement_timeout=5s -c work_mem=8MB"),
    ];
    fx.block_on(async {
        // What PostgreSQL itself makes of a list-valued startup setting (the reference for pgveil).
        let direct = crate::support::connect(&format!(
            "{} options='-c search_path=public,pg_catalog'",
            fx.direct_str("acme")
        ))
        .await?;
        let schemas: String = direct
            .query_one("SELECT array_to_string(current_schemas(false), ',')", &[])
            .await?
            .get(0);
        ensure!(
            schemas == "public,pg_catalog",
            "PostgreSQL itself gives {schemas:?}"
        );
        let mut s = TcpStream::connect(fx.proxy.addr).await?;
        let seen = raw::login(&mut s, "acme", &token, &params).await?;
        // The ParameterStatus messages at startup already show the applied values (drivers rely on them).
        let status = |name: &str| {
            seen.iter()
                .filter(|m| m.tag == b'S')
                .find(|m| m.body.starts_with(format!("{name}\0").as_bytes()))
                .map(|m| {
                    String::from_utf8_lossy(&m.body[name.len() + 1..m.body.len() - 1]).into_owned()
                })
        };
        ensure!(
            status("application_name").as_deref() == Some("sec-test"),
            "{:?}",
            status("application_name")
        );
        ensure!(
            status("DateStyle").as_deref() == Some("SQL, DMY"),
            "{:?}",
            status("DateStyle")
        );
        ensure!(
            status("TimeZone").as_deref() == Some("Asia/Tokyo"),
            "{:?}",
            status("TimeZone")
        );
        for (sql, want) in [
            ("SHOW application_name", "sec-test"),
            ("SHOW DateStyle", "SQL, DMY"),
            ("SHOW TimeZone", "Asia/Tokyo"),
            ("SHOW extra_float_digits", "3"),
            ("SHOW client_encoding", "UTF8"),
            ("SHOW statement_timeout", "5s"),
            ("SHOW work_mem", "8MB"),
            (
                "SELECT array_to_string(current_schemas(false), ',')",
                "public,pg_catalog",
            ),
        ] {
            let got = raw::query_value(&mut s, sql).await?;
            let path = raw::query_value(&mut s, "SHOW search_path").await?;
            ensure!(
                got == want,
                "{sql}: expected {want:?}, got {got:?} (search_path is {path:?})"
            );
        }
        // A value the server rejects is a clean FATAL, not a half-configured session.
        login_expect_fatal(
            fx.proxy.addr,
            "acme",
            &token,
            &[("DateStyle", "not-a-style")],
            "22023",
        )
        .await?;
        // Settings never leak into the next session that gets the same pooled backend.
        let mut s = raw_session(fx, fx.proxy.addr, "acme").await?;
        ensure!(raw::query_value(&mut s, "SHOW application_name").await? != "sec-test");
        Ok(())
    })
}
