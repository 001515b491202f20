//! The scripted layer of the raw client: [`Raw`] sends [`Frontend`] messages (encoded with
//! [`super::message`]) and reduces every backend message it reads (with [`super::next_msg`]) to a [`Reply`]
//! holding what must match exactly: tags, SQLSTATEs, column names, rows, command tags, transaction status.
//! Used to compare a proxy's answers with PostgreSQL's own, and to leave a backend in a chosen protocol state.

use anyhow::{Result, anyhow, ensure};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Msg, authenticate, column_names, cstr, data_row, message, next_msg, query, startup};

/// A frontend message of a script.
#[derive(Debug, Clone)]
pub enum Frontend<'a> {
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

impl Frontend<'_> {
    /// The message on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let tag = match self {
            Frontend::Parse(name, sql) => {
                cstr(&mut b, name);
                cstr(&mut b, sql);
                b.extend_from_slice(&0i16.to_be_bytes()); // no parameter types
                b'P'
            }
            Frontend::Bind(portal, name, params) => {
                cstr(&mut b, portal);
                cstr(&mut b, name);
                b.extend_from_slice(&0i16.to_be_bytes()); // parameters in text
                b.extend_from_slice(&(params.len() as i16).to_be_bytes());
                for v in params.iter() {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                b.extend_from_slice(&0i16.to_be_bytes()); // results in text
                b'B'
            }
            Frontend::Describe(kind, name) => {
                b.push(*kind as u8);
                cstr(&mut b, name);
                b'D'
            }
            Frontend::Execute(portal) => {
                cstr(&mut b, portal);
                b.extend_from_slice(&0i32.to_be_bytes()); // no row limit
                b'E'
            }
            Frontend::ExecuteMax(portal, n) => {
                cstr(&mut b, portal);
                b.extend_from_slice(&n.to_be_bytes());
                b'E'
            }
            Frontend::Close(kind, name) => {
                b.push(*kind as u8);
                cstr(&mut b, name);
                b'C'
            }
            Frontend::Sync => b'S',
            Frontend::Flush => b'H',
            Frontend::Query(sql) => return query(sql),
        };
        message(tag, &b)
    }

    /// The backend answers it with a ReadyForQuery.
    fn answered_by_ready(&self) -> bool {
        matches!(self, Frontend::Sync | Frontend::Query(_))
    }
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

impl Reply {
    /// What a backend message is compared as; `None` for ParameterStatus, notices and other messages that are
    /// not compared.
    pub fn of(m: &Msg) -> Result<Option<Reply>> {
        let body = &m.body[..];
        Ok(Some(match m.tag {
            b'1' => Reply::ParseComplete,
            b'2' => Reply::BindComplete,
            b'3' => Reply::CloseComplete,
            b't' => {
                ensure!(body.len() >= 2, "short ParameterDescription");
                Reply::ParameterDescription(i16::from_be_bytes([body[0], body[1]]) as usize)
            }
            b'T' => Reply::RowDescription(column_names(body)),
            b'n' => Reply::NoData,
            b'D' => Reply::Row(data_row(body)),
            b'C' => {
                let tag = body
                    .strip_suffix(&[0])
                    .ok_or_else(|| anyhow!("CommandComplete without its NUL"))?;
                Reply::Complete(String::from_utf8_lossy(tag).into_owned())
            }
            b'E' => Reply::Error(m.sqlstate().unwrap_or_default()),
            b'Z' => {
                let status = body.first().ok_or_else(|| anyhow!("empty ReadyForQuery"))?;
                Reply::Ready(*status as char)
            }
            b's' => Reply::Suspended,
            b'I' => Reply::EmptyQuery,
            _ => return Ok(None),
        }))
    }
}

/// A connected scripted client.
pub struct Raw {
    s: BufReader<TcpStream>,
}

impl Raw {
    /// Connects and logs in with a cleartext password (pgveil tokens, or a `password` pg_hba line).
    pub async fn connect(addr: &str, user: &str, db: &str, password: &str) -> Result<Raw> {
        let mut s = BufReader::new(TcpStream::connect(addr).await?);
        s.write_all(&startup(&[("user", user), ("database", db)]))
            .await?;
        authenticate(&mut s, password).await?;
        Ok(Raw { s })
    }

    /// Sends `msgs` in one write and reads replies until every Sync/Query got its ReadyForQuery.
    pub async fn round(&mut self, msgs: &[Frontend<'_>]) -> Result<Vec<Reply>> {
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
    pub async fn send(&mut self, msgs: &[Frontend<'_>]) -> Result<usize> {
        let out: Vec<u8> = msgs.iter().flat_map(Frontend::encode).collect();
        self.s.write_all(&out).await?;
        Ok(msgs.iter().filter(|m| m.answered_by_ready()).count())
    }

    /// The next backend reply (`None` for messages not compared, see [`Reply::of`]).
    pub async fn next_reply(&mut self) -> Result<Option<Reply>> {
        Reply::of(&next_msg(&mut self.s).await?)
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
