//! The TLS policy and the handshake before authentication: SSLRequest, direct TLS (ALPN), GSSENCRequest,
//! oversize and garbage startup packets, old protocol versions, silent clients, protocol 3.2 negotiation and
//! replication connections.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use pgveil::server::ServerOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::expect_refused;
use crate::support::{Fixture, raw};

const USER_DB: &[(&str, &str)] = &[("user", "tester"), ("database", "acme")];

fn tls_only(fx: &Fixture) -> Result<crate::support::Running> {
    fx.start_server(
        |c| c.listen.allow_plaintext_loopback = false,
        ServerOptions::default(),
    )
}

pub fn plaintext_refused_before_password(fx: &Fixture) -> Result<()> {
    let srv = tls_only(fx)?;
    let token = fx.token("alice", "acme", "admin");
    fx.block_on(async {
        let mut s = TcpStream::connect(srv.addr).await?;
        s.write_all(&raw::startup(USER_DB)).await?;
        let e = raw::expect_error_no_password(&mut s).await?;
        ensure!(
            e.sqlstate().as_deref() == Some("28000"),
            "expected 28000, got {e}"
        );
        ensure!(
            e.field(b'S').as_deref() == Some("FATAL"),
            "expected FATAL, got {e}"
        );
        raw::expect_closed(&mut s).await?;
        // A client that asks for TLS, is told 'S', and then does not do TLS gets nowhere either.
        let mut s = TcpStream::connect(srv.addr).await?;
        s.write_all(&raw::ssl_request()).await?;
        ensure!(raw::read_byte(&mut s).await? == b'S');
        s.write_all(&raw::startup(USER_DB)).await?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(raw::SAFETY, s.read(&mut buf))
            .await?
            .unwrap_or(0);
        ensure!(
            n == 0 || buf[0] == 0x15,
            "expected a TLS alert or close, got {:?}",
            &buf[..n]
        );
        // The same through tokio-postgres.
        expect_refused(
            &fx.conn_str(srv.addr, "acme", "tester", &token),
            "28000",
            &[&token],
        )
        .await?;
        Ok(())
    })
}

pub fn ssl_request_then_login(fx: &Fixture) -> Result<()> {
    let srv = tls_only(fx)?;
    let token = fx.token("alice", "acme", "admin");
    fx.block_on(async {
        let tcp = TcpStream::connect(srv.addr).await?;
        let mut tls = raw::ssl_upgrade(tcp, &fx.env.certs.ca_cert).await?;
        let seen = raw::login(&mut tls, "acme", &token, &[]).await?;
        ensure!(
            seen.iter().any(|m| m.tag == b'K'),
            "no BackendKeyData in {seen:?}"
        );
        ensure!(raw::query_value(&mut tls, "SELECT current_database()").await? == "acme");
        tls.write_all(&raw::terminate()).await?;
        Ok(())
    })
}

pub fn direct_tls_with_alpn(fx: &Fixture) -> Result<()> {
    let srv = tls_only(fx)?;
    let token = fx.token("alice", "acme", "admin");
    fx.block_on(async {
        let tcp = TcpStream::connect(srv.addr).await?;
        let mut tls = raw::tls_handshake(tcp, &fx.env.certs.ca_cert, true).await?;
        ensure!(
            tls.get_ref().1.alpn_protocol() == Some(b"postgresql"),
            "ALPN not negotiated"
        );
        raw::login(&mut tls, "acme", &token, &[]).await?;
        ensure!(raw::query_value(&mut tls, "SELECT 40 + 2").await? == "42");
        Ok(())
    })
}

pub fn direct_tls_without_alpn_refused(fx: &Fixture) -> Result<()> {
    let srv = tls_only(fx)?;
    fx.block_on(async {
        let tcp = TcpStream::connect(srv.addr).await?;
        // The handshake itself may fail or succeed; either way no password may be asked for.
        let Ok(mut tls) = raw::tls_handshake(tcp, &fx.env.certs.ca_cert, false).await else {
            return Ok(());
        };
        match raw::read_msg(&mut tls).await {
            Ok(None) | Err(_) => Ok(()),
            Ok(Some(m)) if m.tag == b'E' => {
                ensure!(
                    m.sqlstate().as_deref() == Some("08P01"),
                    "unexpected error {m}"
                );
                match raw::read_msg(&mut tls).await {
                    Ok(None) | Err(_) => Ok(()),
                    Ok(Some(m)) => bail!("connection not closed after the refusal: {m}"),
                }
            }
            Ok(Some(m)) => bail!("direct TLS without ALPN got {m}"),
        }
    })
}

pub fn gssenc_then_startup(fx: &Fixture) -> Result<()> {
    let token = fx.token("alice", "acme", "admin");
    fx.block_on(async {
        let mut s = TcpStream::connect(fx.proxy.addr).await?;
        s.write_all(&raw::gssenc_request()).await?;
        ensure!(
            raw::read_byte(&mut s).await? == b'N',
            "GSSENCRequest must be declined"
        );
        raw::login(&mut s, "acme", &token, &[]).await?;
        ensure!(raw::query_value(&mut s, "SELECT current_database()").await? == "acme");
        // GSSENC declined, then SSL accepted, then login over TLS (what libpq does with gssencmode=prefer).
        let mut s = TcpStream::connect(fx.proxy.addr).await?;
        s.write_all(&raw::gssenc_request()).await?;
        ensure!(raw::read_byte(&mut s).await? == b'N');
        let mut tls = raw::ssl_upgrade(s, &fx.env.certs.ca_cert).await?;
        raw::login(&mut tls, "acme", &token, &[]).await?;
        ensure!(raw::query_value(&mut tls, "SELECT 1").await? == "1");
        Ok(())
    })
}

pub fn too_many_negotiation_requests(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        let mut s = TcpStream::connect(fx.proxy.addr).await?;
        for _ in 0..3 {
            s.write_all(&raw::gssenc_request()).await?;
            ensure!(raw::read_byte(&mut s).await? == b'N');
        }
        s.write_all(&raw::gssenc_request()).await?;
        raw::expect_fatal(&mut s, "08P01").await?;
        Ok(())
    })
}

pub fn oversize_startup_packets(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        // Only the header is sent: an answer proves the proxy refused on the announced length alone, without
        // waiting for (or allocating) the body.
        for len in [0x7fff_ffff_i32, 20_000, 10_001, -1, 4, 7] {
            let mut s = TcpStream::connect(fx.proxy.addr).await?;
            let mut p = len.to_be_bytes().to_vec();
            p.extend_from_slice(&raw::PROTOCOL_3_0.to_be_bytes());
            s.write_all(&p).await?;
            raw::expect_fatal(&mut s, "08P01")
                .await
                .map_err(|e| e.context(format!("length {len}")))?;
        }
        Ok(())
    })
}

pub fn garbage_is_closed(fx: &Fixture) -> Result<()> {
    let mut random: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    // A first byte that is neither TLS (0x16) nor a small length, so the proxy cannot be left waiting for a
    // body that never comes.
    random[0] = 0x47;
    let mut tls_junk: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    tls_junk[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x00, 59]);
    let mut bad_code = 64i32.to_be_bytes().to_vec();
    bad_code.extend((0..60).map(|_| rand::random::<u8>()));
    bad_code[4] = 0x7f; // major version 0x7fxx: neither 3 nor a negotiation code
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random", random),
        (
            "http",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("tls junk", tls_junk),
        ("bad code", bad_code),
        ("no params", raw::startup_packet(raw::PROTOCOL_3_0, b"")),
        (
            "unterminated",
            raw::startup_packet(raw::PROTOCOL_3_0, b"user\0tester"),
        ),
    ];
    fx.block_on(async {
        for (name, bytes) in cases {
            let mut s = TcpStream::connect(fx.proxy.addr).await?;
            s.write_all(&bytes).await?;
            // Closed, possibly after a FATAL error (never a password request).
            let first = raw::read_msg(&mut s)
                .await
                .or_else(|e| if name == "tls junk" { Ok(None) } else { Err(e) });
            match first.map_err(|e| e.context(name))? {
                None => {}
                Some(m) if m.tag == b'E' => {
                    let code = m.sqlstate().unwrap_or_default();
                    ensure!(code == "08P01" || code == "0A000", "{name}: unexpected {m}");
                    raw::expect_closed(&mut s)
                        .await
                        .map_err(|e| e.context(name))?;
                }
                Some(m) => bail!("{name}: expected close, got {m}"),
            }
        }
        Ok(())
    })
}

pub fn protocol_2_refused(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        for (major, minor) in [(2, 0), (1, 0)] {
            let mut s = TcpStream::connect(fx.proxy.addr).await?;
            s.write_all(&raw::startup_version(major, minor, USER_DB))
                .await?;
            let e = raw::expect_fatal(&mut s, "0A000").await?;
            ensure!(
                e.field(b'M').unwrap_or_default().contains("protocol"),
                "{e}"
            );
        }
        Ok(())
    })
}

pub fn silent_client_times_out(fx: &Fixture) -> Result<()> {
    let srv = fx.start_server(
        |c| c.listen.startup_timeout = Duration::from_secs(1),
        ServerOptions::default(),
    )?;
    fx.block_on(async {
        // Connects and sends nothing.
        let mut s = TcpStream::connect(srv.addr).await?;
        raw::expect_closed(&mut s).await?;
        // Sends a startup message, then never answers the password request.
        let mut s = TcpStream::connect(srv.addr).await?;
        s.write_all(&raw::startup(USER_DB)).await?;
        ensure!(raw::next_msg(&mut s).await?.auth_code() == Some(3));
        raw::expect_closed(&mut s).await?;
        // Sends half a startup packet.
        let mut s = TcpStream::connect(srv.addr).await?;
        s.write_all(&raw::startup(USER_DB)[..10]).await?;
        raw::expect_closed(&mut s).await?;
        Ok(())
    })
}

pub fn protocol_3_2_negotiated(fx: &Fixture) -> Result<()> {
    let token = fx.token("alice", "acme", "admin");
    fx.block_on(async {
        for (minor, opts) in [
            (2, vec![("_pq_.test_option", "on")]),
            (2, vec![]),
            (0, vec![("_pq_.x", "1")]),
        ] {
            let mut params = USER_DB.to_vec();
            params.extend(opts.iter().copied());
            let mut s = TcpStream::connect(fx.proxy.addr).await?;
            s.write_all(&raw::startup_version(3, minor, &params))
                .await?;
            let v = raw::next_msg(&mut s).await?;
            ensure!(v.tag == b'v', "expected NegotiateProtocolVersion, got {v}");
            let newest = i32::from_be_bytes(v.body[..4].try_into()?);
            let n = i32::from_be_bytes(v.body[4..8].try_into()?);
            ensure!(newest == 0, "server should offer 3.0, offered 3.{newest}");
            ensure!(
                n as usize == opts.len(),
                "unsupported options: expected {}, got {n}",
                opts.len()
            );
            for (name, _) in &opts {
                ensure!(
                    v.body.windows(name.len()).any(|w| w == name.as_bytes()),
                    "{name} not listed"
                );
            }
            raw::authenticate(&mut s, &token).await?;
            ensure!(raw::query_value(&mut s, "SELECT 1").await? == "1");
        }
        Ok(())
    })
}

pub fn replication_refused(fx: &Fixture) -> Result<()> {
    fx.block_on(async {
        for mode in ["database", "true", "on", "1"] {
            let mut s = TcpStream::connect(fx.proxy.addr).await?;
            let mut params = USER_DB.to_vec();
            params.push(("replication", mode));
            s.write_all(&raw::startup(&params)).await?;
            let e = raw::expect_error_no_password(&mut s).await?;
            ensure!(
                e.sqlstate().as_deref() == Some("0A000"),
                "replication={mode}: {e}"
            );
            ensure!(
                e.field(b'S').as_deref() == Some("FATAL"),
                "replication={mode}: {e}"
            );
            raw::expect_closed(&mut s).await?;
        }
        Ok(())
    })
}
