//! Transaction-mode poolers (PgBouncer, Supabase's pooler, Neon's `-pooler` host): the URL's
//! Prisma parameters, the [`Pool`] every statement goes through, and the advice we log when a
//! pooler is in the way and nobody told us (docs/operations.md, "Poolers"). Also how the pool's
//! statements are planned: once for any values on the daemon's direct connections
//! ([`GENERIC_PLANS`]), for their values for the operator's ([`Pool::custom_plans`]).
//!
//! Behind a transaction-mode pooler a client's connection is lent a server connection for one
//! transaction at a time; between transactions the next statement may run on another server.
//! sqlx prepares every statement with Parse/Describe/Sync, then runs it with Bind/Execute/Sync:
//! two exchanges, and outside a transaction the pooler may send them to two different servers.
//! With sqlx's named, cached statements that means `prepared statement "sqlx_s_1" does not
//! exist` (or `already exists`), and worse, the Bind can reach another client's statement of the
//! same name and run *its* SQL. Unnamed statements have the same hole. So in pooler mode every
//! statement runs inside its own `BEGIN … COMMIT`, unnamed: the pooler keeps one server for the
//! whole exchange and nothing outlives it on the server. That costs two more round trips (the
//! `BEGIN` and the `COMMIT`) and a parse per statement; `cargo bench --bench queue -- --only
//! pooler` measures it.
//!
//! Measured against a stock PgBouncer 1.18 in transaction mode lending 4 server connections to 20
//! clients, each running 200 two-kinds-of-SELECT statements concurrently: sqlx's cached named
//! statements gave 338 errors and 1,315 *wrong results* of 4,000; unnamed statements without a
//! transaction 0 errors and 1,934 wrong results; unnamed inside a transaction 0 and 0.
//!
//! One limit: sqlx looks up a type it does not know (an enum, a domain) with a named statement of
//! its own. The schema uses built-in types only; keep it that way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use sqlx::Describe;
use sqlx::Either;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo,
};
use sqlx::{Execute, Executor, Postgres};

use super::warm::Warm;

/// Prisma's parameters taken out of a URL: a configuration matter, so it lives with the
/// settings (`config` validates `database.url` with it and must not import `db`).
pub use crate::config::database_url::{CleanUrl, clean_url};

/// Connection options a transaction-mode pooler accepts: no `extra_float_digits` startup
/// parameter (stock PgBouncer refuses it: `unsupported startup parameter`; what sqlx sends
/// besides, `DateStyle`, `client_encoding`, `TimeZone` and `application_name`, it tracks), and no
/// statement cache (nothing is prepared by name; see the module docs).
pub fn pooler_options(opts: PgConnectOptions) -> PgConnectOptions {
    opts.extra_float_digits(None).statement_cache_capacity(0)
}

/// Connection options that ask for [`GENERIC_PLANS`], unless `opts` (the URL's `options`)
/// already say how to plan.
pub fn generic_plan_options(opts: PgConnectOptions) -> PgConnectOptions {
    if opts
        .get_options()
        .is_some_and(|o| o.contains(GENERIC_PLANS.0))
    {
        opts
    } else {
        opts.options([GENERIC_PLANS])
    }
}

/// The pool every statement of the runner goes through. Direct: sqlx's own pool, cached named
/// statements and all. Behind a transaction-mode pooler: each statement in a transaction of its
/// own, unnamed (see the module docs). Either way a pooler's tell-tale error is explained once in
/// the log ([`advise`]).
///
/// It deliberately does not dereference to [`PgPool`]: code that wants a `&PgPool` must say so
/// with [`Pool::pg`], and know that statements on it are not pooler-safe.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: PgPool,
    pooled: bool,
    /// Each statement in a transaction that plans it for its values (never behind a pooler).
    custom_plans: bool,
    /// Direct statements take the connection used last ([`super::warm`]).
    warm: Arc<Warm>,
}

impl Pool {
    /// `pooled`: the URL goes through a transaction-mode pooler.
    pub fn new(inner: PgPool, pooled: bool) -> Pool {
        let warm = Arc::new(Warm::new(inner.options().get_max_connections()));
        Pool {
            inner,
            pooled,
            custom_plans: false,
            warm,
        }
    }

    /// The same connections, each statement planned for the values it is given: run in a
    /// transaction of its own that starts `SET LOCAL plan_cache_mode = force_custom_plan`. For
    /// the operator's statements (the console, the admin API, the CLI), whose optional filters
    /// (`$1 IS NULL OR …`) only a plan made for their values can use an index for; the daemon's
    /// own connections otherwise keep generic plans ([`GENERIC_PLANS`]). Costs the
    /// `BEGIN`/`COMMIT` round trips, so not for the queue's hot path. Behind a pooler every
    /// statement is unnamed and planned for its values anyway.
    pub fn custom_plans(&self) -> Pool {
        Pool {
            custom_plans: !self.pooled,
            ..self.clone()
        }
    }

    /// True behind a transaction-mode pooler.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// sqlx's pool underneath. Statements run on it directly bypass the pooler handling: use it
    /// for what needs a connection of its own (a transaction, tests, benchmarks), not for the
    /// queue's SQL. When the pool is full, the connections kept for the next statement
    /// ([`super::warm`]) go back to it first, so a caller never waits for one that is idle.
    pub fn pg(&self) -> &PgPool {
        self.warm.release_if_full(&self.inner);
        &self.inner
    }

    pub fn connect_options(&self) -> Arc<PgConnectOptions> {
        self.inner.connect_options()
    }

    /// Closes the pool: gives back the kept connections, then waits for the rest.
    pub async fn close(&self) {
        self.warm.close();
        self.inner.close().await
    }

    /// Connections open (in use or idle).
    pub fn size(&self) -> u32 {
        self.inner.size()
    }
}

impl From<PgPool> for Pool {
    /// A direct pool.
    fn from(inner: PgPool) -> Pool {
        Pool::new(inner, false)
    }
}

/// A statement with sqlx's statement cache switched off for it: it is prepared unnamed.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }
    fn statement(&self) -> Option<&PgStatement<'q>> {
        None
    }
    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }
    fn persistent(&self) -> bool {
        false
    }
}

type Results = Vec<Either<PgQueryResult, PgRow>>;

/// The daemon's direct connections plan every statement once, for any values, and keep that
/// plan (a startup option of the connection, see `db::pool`): PostgreSQL's default makes five
/// plans for the values of each prepared statement on each connection before it considers the
/// generic one, and the runner's statements are many texts (a claim per size) on several
/// connections, so at Meta's default 80 messages/s most of its claims, prepares and
/// completions were planned anew: planning was a third of the time they took
/// (docs/benchmarks.md, "Issue 27, fourth round").
/// Every statement of the queue's hot path is written, and tested, for a generic plan; the
/// operator's statements take [`Pool::custom_plans`].
pub const GENERIC_PLANS: (&str, &str) = ("plan_cache_mode", "force_generic_plan");

/// The `BEGIN` of [`Pool::custom_plans`]' transactions: one round trip.
const BEGIN_CUSTOM: &str = "BEGIN; SET LOCAL plan_cache_mode = force_custom_plan";

/// Runs one statement in a transaction of its own, unnamed; collects its results. `custom`:
/// planned for its values ([`Pool::custom_plans`]).
async fn in_transaction<'q, E: 'q + Execute<'q, Postgres>>(
    pool: PgPool,
    query: E,
    custom: bool,
) -> Result<Results, sqlx::Error> {
    let mut tx = if custom {
        pool.begin_with(BEGIN_CUSTOM).await?
    } else {
        pool.begin().await?
    };
    let results: Results = (&mut *tx).fetch_many(Unnamed(query)).try_collect().await?;
    tx.commit().await?;
    Ok(results)
}

impl<'p> Executor<'p> for &'_ Pool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let results: BoxFuture<'e, Result<Results, sqlx::Error>> =
            if self.pooled || self.custom_plans {
                self.warm.release_if_full(&self.inner);
                Box::pin(in_transaction(self.inner.clone(), query, self.custom_plans))
            } else {
                let (pool, warm) = (self.inner.clone(), self.warm.clone());
                Box::pin(async move {
                    let mut lease = warm.lease(&pool).await?;
                    let results: Results = lease.conn().fetch_many(query).try_collect().await?;
                    lease.done();
                    Ok(results)
                })
            };
        stream::once(results)
            .map_ok(|results| stream::iter(results.into_iter().map(Ok)))
            .try_flatten()
            .inspect_err(advise)
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if self.pooled || self.custom_plans {
            self.warm.release_if_full(&self.inner);
            let pool = self.inner.clone();
            let custom = self.custom_plans;
            Box::pin(async move {
                let results = in_transaction(pool, query, custom)
                    .await
                    .inspect_err(advise)?;
                Ok(results.into_iter().find_map(|r| match r {
                    Either::Right(row) => Some(row),
                    Either::Left(_) => None,
                }))
            })
        } else {
            let (pool, warm) = (self.inner.clone(), self.warm.clone());
            Box::pin(async move {
                let run = async {
                    let mut lease = warm.lease(&pool).await?;
                    let row = lease.conn().fetch_optional(query).await?;
                    lease.done();
                    Ok(row)
                };
                run.await.inspect_err(advise)
            })
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        if self.pooled {
            return Box::pin(async { Err(not_through_a_pooler()) });
        }
        let pool = self.inner.clone();
        Box::pin(async move { pool.prepare_with(sql, parameters).await })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        if self.pooled {
            return Box::pin(async { Err(not_through_a_pooler()) });
        }
        let pool = self.inner.clone();
        Box::pin(async move { pool.describe(sql).await })
    }
}

/// A statement prepared by name would outlive the transaction the pooler lent its server for.
fn not_through_a_pooler() -> sqlx::Error {
    sqlx::Error::Configuration(
        "named prepared statements are not available through a transaction-mode pooler".into(),
    )
}

/// What a pooler's error means, when `e` is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerSign {
    /// PgBouncer refused a startup parameter (`extra_float_digits`): we connected to a pooler
    /// as if it were PostgreSQL.
    StartupParameter,
    /// A named prepared statement is missing on, or already on, the server a pooler lent us.
    PreparedStatement,
}

/// Recognises a pooler's tell-tale errors.
pub fn pooler_sign(e: &sqlx::Error) -> Option<PoolerSign> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let message = db.message();
    if message.contains("unsupported startup parameter") {
        return Some(PoolerSign::StartupParameter);
    }
    let statement_code = matches!(db.code().as_deref(), Some("26000") | Some("42P05"));
    if message.contains("prepared statement")
        && (statement_code
            || message.contains("does not exist")
            || message.contains("already exists"))
    {
        return Some(PoolerSign::PreparedStatement);
    }
    None
}

static ADVISED_STARTUP: AtomicBool = AtomicBool::new(false);
static ADVISED_STATEMENT: AtomicBool = AtomicBool::new(false);

/// True once this process has seen a pooler's missing (or duplicate) prepared statement error.
pub fn prepared_statement_errors_seen() -> bool {
    ADVISED_STATEMENT.load(Ordering::Relaxed)
}

/// Logs, once per process and kind, what a pooler's error means and which setting fixes it.
pub fn advise(e: &sqlx::Error) {
    let (flag, what) = match pooler_sign(e) {
        Some(PoolerSign::StartupParameter) => (
            &ADVISED_STARTUP,
            "database.url goes through a transaction-mode pooler (PgBouncer) that refuses a \
             startup parameter sqlx sends by default",
        ),
        Some(PoolerSign::PreparedStatement) => (
            &ADVISED_STATEMENT,
            "a prepared statement went missing (or was already there) between two statements: \
             database.url goes through a transaction-mode pooler (Supabase's port 6543, Neon's \
             -pooler host, PgBouncer) but pooler mode is off",
        ),
        None => return,
    };
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::error!(
            error = %super::redact_sqlx(e),
            "{what}; add ?pgbouncer=true to the URL or set database.pooler = \"transaction\", and \
             put a direct connection in database.direct_url (docs/operations.md, \"Poolers\")"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prisma_parameters_are_removed() {
        let c = clean_url(
            "postgres://u:pw@h:6543/db?pgbouncer=true&connection_limit=1&sslmode=require&schema=public&pool_timeout=0",
        )
        .unwrap();
        assert!(c.pgbouncer);
        assert_eq!(c.url, "postgres://u:pw@h:6543/db?sslmode=require");
        assert_eq!(c.removed, ["connection_limit", "schema", "pool_timeout"]);

        let c = clean_url("postgres://u@h/db").unwrap();
        assert!(!c.pgbouncer);
        assert_eq!(c.url, "postgres://u@h/db");

        let c = clean_url("postgres://u@h/db?pgbouncer=false&sslpassword=hunter2").unwrap();
        assert!(!c.pgbouncer);
        assert_eq!(c.url, "postgres://u@h/db");
        assert_eq!(c.removed, ["sslpassword"]);
    }

    /// A server error as sqlx reports it.
    #[derive(Debug)]
    struct Server(&'static str, &'static str);

    impl std::fmt::Display for Server {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }
    impl std::error::Error for Server {}
    impl sqlx::error::DatabaseError for Server {
        fn message(&self) -> &str {
            self.1
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn sign(code: &'static str, message: &'static str) -> Option<PoolerSign> {
        pooler_sign(&sqlx::Error::Database(Box::new(Server(code, message))))
    }

    #[test]
    fn a_poolers_errors_are_recognised() {
        assert_eq!(
            sign("26000", r#"prepared statement "sqlx_s_7" does not exist"#),
            Some(PoolerSign::PreparedStatement)
        );
        assert_eq!(
            sign("42P05", r#"prepared statement "sqlx_s_1" already exists"#),
            Some(PoolerSign::PreparedStatement)
        );
        assert_eq!(
            sign("08P01", "unsupported startup parameter: extra_float_digits"),
            Some(PoolerSign::StartupParameter)
        );
        assert_eq!(sign("23505", "duplicate key value"), None);
        assert_eq!(pooler_sign(&sqlx::Error::PoolTimedOut), None);
    }

    #[test]
    fn another_schema_is_refused_without_echoing_the_url() {
        let e = clean_url("postgres://u:hunter2@h/db?schema=app").unwrap_err();
        assert!(e.contains("schema=app"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
