//! Loads a tenant's [`Catalog`] from its database with tokio-postgres, using the tenant's credentials from the
//! secret store and its backend target (host, port, database, TLS) exactly as the pool does.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, NoTls, TlsConnect};

use super::{Catalog, Column, QualName, Relation, SYSTEM_SCHEMAS};

mod resolution;
use crate::error::{Classified, ErrorKind};
use crate::policy::functions::TypeFamily;
use crate::route::Tenant;
use crate::secret::{DbCredentials, ExposeSecret, SecretError, SecretStore};

/// Errors loading a catalog.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Credentials could not be fetched.
    #[error("credentials: {0}")]
    Secret(#[from] SecretError),
    /// Host or database unknown.
    #[error("backend host or dbname not configured and not in the secret")]
    Incomplete,
    /// Connecting (TLS, login) failed.
    #[error("connect: {0}")]
    Connect(tokio_postgres::Error),
    /// A catalog query failed, or the connection broke during one.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// TCP connect failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// Timed out.
    #[error("timed out")]
    Timeout,
    /// The connection pool failed.
    #[error("pool: {0}")]
    Pool(String),
}

impl Classified for LoadError {
    fn kind(&self) -> ErrorKind {
        match self {
            LoadError::Secret(_) => ErrorKind::Secret,
            LoadError::Incomplete => ErrorKind::Incomplete,
            LoadError::Connect(_) | LoadError::Io(_) => ErrorKind::Connect,
            LoadError::Db(e) if e.is_closed() => ErrorKind::Io,
            LoadError::Db(_) => ErrorKind::Query,
            LoadError::Timeout => ErrorKind::Timeout,
            LoadError::Pool(_) => ErrorKind::Internal,
        }
    }
}

/// Loads the catalog of `tenant`.
pub async fn load(
    tenant: &Tenant,
    secrets: &dyn SecretStore,
    timeout: Duration,
) -> Result<Catalog, LoadError> {
    tokio::time::timeout(timeout, load_inner(tenant, secrets))
        .await
        .map_err(|_| LoadError::Timeout)?
}

async fn load_inner(tenant: &Tenant, secrets: &dyn SecretStore) -> Result<Catalog, LoadError> {
    let client = connect(tenant, secrets, "pgveil-catalog").await?;
    query_catalog(&client).await
}

/// Connects to `tenant`'s database with its credentials from the secret store and its backend target (host,
/// port, database, TLS) exactly as the pool does; the connection is driven in the background and closes when
/// the client is dropped. No timeout of its own: callers bound it (as [`load`] does).
pub async fn connect(
    tenant: &Tenant,
    secrets: &dyn SecretStore,
    application_name: &str,
) -> Result<tokio_postgres::Client, LoadError> {
    let creds = DbCredentials::fetch(secrets, &tenant.secret).await?;
    let target = tenant.target(&creds).ok_or(LoadError::Incomplete)?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.user(&creds.username)
        .password(creds.password.expose_secret())
        .dbname(&target.dbname)
        .application_name(application_name)
        .options("-c standard_conforming_strings=on");
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
    let _ = tcp.set_nodelay(true);
    let client = match target.tls {
        None => {
            let (client, conn) = cfg
                .connect_raw(tcp, NoTls)
                .await
                .map_err(LoadError::Connect)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
        Some(tls) => {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, conn) = cfg
                .connect_raw(tcp, RustlsConnect(tls, target.host))
                .await
                .map_err(LoadError::Connect)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
    };
    Ok(client)
}

/// Reads the catalog through an open connection (one repeatable-read, read-only transaction).
pub async fn query_catalog(client: &tokio_postgres::Client) -> Result<Catalog, LoadError> {
    // One repeatable-read transaction: every query sees the same schema.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let row = client
        .query_one(
            "SELECT pg_catalog.current_schemas(false), pg_catalog.current_setting('server_encoding')",
            &[],
        )
        .await?;
    let search_path: Vec<String> = row.get(0);
    let mut cat = Catalog {
        version: super::fresh_version(),
        search_path,
        server_encoding: Some(row.get(1)),
        ..Catalog::default()
    };
    let mut by_oid: HashMap<u32, QualName> = HashMap::new();
    for row in client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','v','m','f','S') AND n.nspname NOT LIKE 'pg\\_toast%' \
             AND n.nspname NOT LIKE 'pg\\_temp\\_%'",
            &[],
        )
        .await?
    {
        let (oid, schema, name, kind): (u32, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let key = (schema.clone(), name.clone());
        by_oid.insert(oid, key.clone());
        if SYSTEM_SCHEMAS.contains(&schema.as_str()) {
            cat.system_relations.insert(key);
        } else {
            cat.relations.insert(
                key,
                Relation {
                    schema,
                    name,
                    kind: kind.chars().next().unwrap_or('r'),
                    columns: Vec::new(),
                    parents: Vec::new(),
                    reads: HashMap::new(),
                    calls: Vec::new(),
                },
            );
        }
    }
    let mut attnames: HashMap<(u32, i16), String> = HashMap::new();
    for row in client
        .query(
            "SELECT a.attrelid, a.attnum, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
             bt.typcategory::text, bt.typname::text \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f','S') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_t%' \
             ORDER BY a.attrelid, a.attnum",
            &[],
        )
        .await?
    {
        let (oid, num, name, sql_type, cat_s, base): (u32, i16, String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        attnames.insert((oid, num), name.clone());
        if let Some(rel) = by_oid.get(&oid).and_then(|k| cat.relations.get_mut(k)) {
            rel.columns.push(Column {
                name,
                sql_type,
                family: TypeFamily::of(cat_s.chars().next().unwrap_or('X'), &base),
                base,
                generated_from: Vec::new(),
            });
        }
    }
    for row in client
        .query(
            "SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits",
            &[],
        )
        .await?
    {
        let (child, parent): (u32, u32) = (row.get(0), row.get(1));
        if let (Some(c), Some(p)) = (by_oid.get(&child), by_oid.get(&parent))
            && let Some(rel) = cat.relations.get_mut(c)
        {
            rel.parents.push(p.clone());
        }
    }
    // Generated columns and the columns they are computed from.
    for row in client
        .query(
            "SELECT ad.adrelid, ad.adnum, d.refobjsubid::int2 FROM pg_catalog.pg_attrdef ad \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid \
             WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ad.adrelid AND d.refobjsubid > 0",
            &[],
        )
        .await?
    {
        let (oid, num, src): (u32, i16, i16) = (row.get(0), row.get(1), row.get(2));
        let (Some(name), Some(src)) = (attnames.get(&(oid, num)).cloned(), attnames.get(&(oid, src)).cloned()) else {
            continue;
        };
        if let Some(col) = by_oid
            .get(&oid)
            .and_then(|k| cat.relations.get_mut(k))
            .and_then(|r| r.columns.iter_mut().find(|c| c.name == name))
        {
            col.generated_from.push(src);
        }
    }
    // Views: the relations each depends on (a whole-row reference is recorded with refobjsubid = 0, so
    // every dependency counts, column or relation), the user functions they call, and their definitions.
    let mut view_deps: HashMap<u32, Vec<QualName>> = HashMap::new();
    for row in client
        .query(
            "SELECT DISTINCT r.ev_class, d.refobjid FROM pg_catalog.pg_rewrite r \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
             WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid >= 0 AND d.refobjid <> r.ev_class",
            &[],
        )
        .await?
    {
        let (view, rel): (u32, u32) = (row.get(0), row.get(1));
        if let Some(r) = by_oid.get(&rel) {
            let deps = view_deps.entry(view).or_default();
            if !deps.contains(r) {
                deps.push(r.clone());
            }
        }
    }
    for row in client
        .query(
            "SELECT DISTINCT r.ev_class, n.nspname::text, p.proname::text FROM pg_catalog.pg_rewrite r \
             JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
             JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.refobjid \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname <> 'pg_catalog'",
            &[],
        )
        .await?
    {
        let (view, schema, name): (u32, String, String) = (row.get(0), row.get(1), row.get(2));
        if let Some(rel) = by_oid.get(&view).and_then(|k| cat.relations.get_mut(k)) {
            rel.calls.push((schema, name));
        }
    }
    for row in client
        .query(
            "SELECT c.oid, pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v','m') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await?
    {
        let (oid, def): (u32, Option<String>) = (row.get(0), row.get(1));
        let deps: Vec<(QualName, Vec<String>)> = view_deps
            .remove(&oid)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|q| {
                let cols = cat.relations.get(&q)?.columns.iter().map(|c| c.name.clone());
                Some((q.clone(), cols.collect()))
            })
            .collect();
        if let Some(rel) = by_oid.get(&oid).and_then(|k| cat.relations.get_mut(k)) {
            let names: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
            let def = def.as_deref().unwrap_or("");
            // A deep definition needs a deep stack (decode, conversion and walks recurse per level).
            rel.reads = crate::policy::rewrite::stack::deep_enough(def, || {
                super::lineage::view_reads(def, &names, &deps)
            })
            .unwrap_or_else(|| super::lineage::view_reads(def, &names, &deps));
        }
    }
    resolution::load(client, &mut cat).await?;
    client.batch_execute("COMMIT").await?;
    Ok(cat)
}

/// tokio-postgres TLS via tokio-rustls with the tenant's backend TLS config.
pub(super) struct RustlsConnect(pub(super) Arc<rustls::ClientConfig>, pub(super) String);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = rustls::pki_types::ServerName::try_from(self.1)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let s = tokio_rustls::TlsConnector::from(self.0)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

pub(super) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_are_classified_by_cause() {
        let kind = |e: LoadError| e.kind().as_label();
        assert_eq!(kind(LoadError::Timeout), "timeout");
        assert_eq!(kind(LoadError::Incomplete), "incomplete");
        let missing = SecretError::NotFound(crate::ids::SecretId::new("tenant/acme"));
        assert_eq!(kind(LoadError::Secret(missing)), "secret");
        assert_eq!(kind(LoadError::Pool("closed".into())), "internal");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(kind(LoadError::Io(refused)), "connect");
    }
}
