#![allow(dead_code)]
//! A minimal raw protocol client for exact reply comparisons: sends scripted frontend messages and records
//! every reply (tags, error codes, rows), so a proxy's answers can be compared with PostgreSQL's own.

use anyhow::{Result, bail};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A frontend message.
#[derive(Debug, Clone)]
pub enum Msg<'a> {
    /// Parse(name, sql).
    Parse(&'a str, &'a str),
    /// Bind(portal, statement, text parameters).
    Bind(&'a str, &'a str, &'a [&'a str]),
    /// Describe(kind, name).
    Describe(char, &'a str),
    /// Execute(portal), all rows.
    Execute(&'a str),
    /// Execute(portal, at most n rows).
    ExecuteMax(&'a str, i32),
    /// Close(kind, name).
    Close(char, &'a str),
    /// Sync.
    Sync,
    /// Flush.
    Flush,
    /// Simple query.
    Query(&'a str),
}

/// A backend reply, reduced to what must match exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Marks the start of a batch in recorded conversations.
    Batch,
    ParseComplete,
    BindComplete,
    CloseComplete,
    ParameterDescription(usize),
    RowDescription(Vec<String>),
    NoData,
    Row(Vec<Option<String>>),
    Complete(String),
    Error(String),
    Ready(char),
    Suspended,
    EmptyQuery,
}

/// A connected raw client.
pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

fn frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    body(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut BytesMut, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.put_u8(0);
}

impl Raw {
    /// Connects with a cleartext password (pgveil tokens, or a `password` pg_hba line).
    pub async fn connect(addr: &str, user: &str, db: &str, password: &str) -> Result<Raw> {
        let mut s = TcpStream::connect(addr).await?;
        let mut out = BytesMut::new();
        out.put_i32(0);
        out.put_i32(196608);
        for (k, v) in [("user", user), ("database", db)] {
            cstr(&mut out, k);
            cstr(&mut out, v);
        }
        out.put_u8(0);
        let len = out.len() as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        s.write_all(&out).await?;
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
        };
        loop {
            let (tag, body) = raw.read().await?;
            match tag {
                b'R' => match i32::from_be_bytes(body[..4].try_into()?) {
                    0 => {}
                    3 => {
                        let mut out = BytesMut::new();
                        frame(&mut out, b'p', |b| cstr(b, password));
                        raw.s.write_all(&out).await?;
                    }
                    m => bail!("unsupported auth method {m}"),
                },
                b'E' => bail!("connect failed: {:?}", error_code(&body)),
                b'Z' => return Ok(raw),
                _ => {}
            }
        }
    }

    async fn read(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into()?) as usize;
                if self.buf.len() > len {
                    let f = self.buf.split_to(1 + len);
                    return Ok((f[0], f[5..].to_vec()));
                }
            }
            if self.s.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }

    /// Sends `msgs` in one write and reads replies until every Sync/Query got its ReadyForQuery.
    pub async fn round(&mut self, msgs: &[Msg<'_>]) -> Result<Vec<Reply>> {
        let mut expect = self.send(msgs).await?;
        let mut replies = Vec::new();
        while expect > 0 {
            let Some(r) = self.next_reply().await? else {
                continue;
            };
            if matches!(r, Reply::Ready(_)) {
                expect -= 1;
            }
            replies.push(r);
        }
        Ok(replies)
    }

    /// Sends `msgs` in one write; returns how many ReadyForQuery they will be answered with.
    pub async fn send(&mut self, msgs: &[Msg<'_>]) -> Result<usize> {
        let mut out = BytesMut::new();
        let mut expect = 0;
        for m in msgs {
            match m {
                Msg::Parse(n, sql) => frame(&mut out, b'P', |b| {
                    cstr(b, n);
                    cstr(b, sql);
                    b.put_i16(0);
                }),
                Msg::Bind(p, n, params) => frame(&mut out, b'B', |b| {
                    cstr(b, p);
                    cstr(b, n);
                    b.put_i16(0);
                    b.put_i16(params.len() as i16);
                    for v in params.iter() {
                        b.put_i32(v.len() as i32);
                        b.extend_from_slice(v.as_bytes());
                    }
                    b.put_i16(0);
                }),
                Msg::Describe(k, n) => frame(&mut out, b'D', |b| {
                    b.put_u8(*k as u8);
                    cstr(b, n);
                }),
                Msg::Execute(p) => frame(&mut out, b'E', |b| {
                    cstr(b, p);
                    b.put_i32(0);
                }),
                Msg::ExecuteMax(p, n) => frame(&mut out, b'E', |b| {
                    cstr(b, p);
                    b.put_i32(*n);
                }),
                Msg::Close(k, n) => frame(&mut out, b'C', |b| {
                    b.put_u8(*k as u8);
                    cstr(b, n);
                }),
                Msg::Sync => {
                    expect += 1;
                    frame(&mut out, b'S', |_| {})
                }
                Msg::Flush => frame(&mut out, b'H', |_| {}),
                Msg::Query(sql) => {
                    expect += 1;
                    frame(&mut out, b'Q', |b| cstr(b, sql))
                }
            }
        }
        self.s.write_all(&out).await?;
        Ok(expect)
    }

    /// The next backend reply (`None` for ParameterStatus, notices and other messages not compared).
    pub async fn next_reply(&mut self) -> Result<Option<Reply>> {
        let (tag, body) = self.read().await?;
        Ok(Some(match tag {
            b'1' => Reply::ParseComplete,
            b'2' => Reply::BindComplete,
            b'3' => Reply::CloseComplete,
            b't' => Reply::ParameterDescription(i16::from_be_bytes(body[..2].try_into()?) as usize),
            b'T' => Reply::RowDescription(column_names(&body)),
            b'n' => Reply::NoData,
            b'D' => Reply::Row(row(&body)),
            b'C' => Reply::Complete(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()),
            b'E' => Reply::Error(error_code(&body).unwrap_or_default()),
            b'Z' => Reply::Ready(body[0] as char),
            b's' => Reply::Suspended,
            b'I' => Reply::EmptyQuery,
            _ => return Ok(None), // ParameterStatus, notices
        }))
    }

    /// Reads replies until one matches `pred` (returned), failing on a closed connection.
    pub async fn until(&mut self, pred: impl Fn(&Reply) -> bool) -> Result<Reply> {
        loop {
            if let Some(r) = self.next_reply().await?
                && pred(&r)
            {
                return Ok(r);
            }
        }
    }
}

fn error_code(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if t == b'C' {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

fn column_names(body: &[u8]) -> Vec<String> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut names = Vec::new();
    for _ in 0..n {
        let end = rest.iter().position(|&b| b == 0).unwrap_or(0);
        names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[(end + 1 + 18).min(rest.len())..];
    }
    names
}

fn row(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut p = &body[2..];
    let mut out = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(p[..4].try_into().unwrap());
        p = &p[4..];
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(
                String::from_utf8_lossy(&p[..len as usize]).into_owned(),
            ));
            p = &p[len as usize..];
        }
    }
    out
}
