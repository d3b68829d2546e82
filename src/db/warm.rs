//! The pool's idle connections, most recently used first.
//!
//! sqlx's pool hands out its idle connections oldest first: at Meta's default 80 messages/s the
//! runner's few statements a second (a claim, a prepare, a completion every quarter second) went
//! round all of its connections in turn, so every statement ran on the backend that had waited
//! longest, its caches and its plans cold, and each statement was planned once per connection.
//! Here a statement of [`super::Pool`] takes the connection used last: at a low rate one backend
//! does nearly all the work, planned once; under load every connection is used as before; and
//! the connections a burst opened sink to the bottom, go back to sqlx's pool after [`IDLE`] and
//! are closed by it after its idle timeout, so a quiet runner holds few of the app's connections
//! (docs/operations.md, "Connections"; docs/benchmarks.md, "Issue 27, sixth round").
//!
//! The connections kept here are checked out as far as sqlx knows, so they must never keep a
//! connection from someone who waits for one in sqlx's pool:
//! - at most all but one of the pool's connections are kept;
//! - a connection goes back to sqlx's pool instead when the pool is full and sqlx has none idle
//!   (someone may be waiting), when its statement did not end cleanly (sqlx checks it on return),
//!   and at least every [`VISIT`] (sqlx's liveness check and lifetime);
//! - when the pool is full, [`super::Pool::pg`] (the way to sqlx's pool itself: transactions)
//!   and the statements that run in a transaction of their own (the operator's) give back the
//!   kept connections before they wait; [`super::Pool::close`] gives them all back and keeps
//!   none after.
//!
//! Behind a transaction-mode pooler nothing is kept: every statement there is a transaction of
//! its own on whatever server the pooler lends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};

/// A kept connection unused this long goes back to sqlx's pool (which closes it after its own
/// idle timeout, unless it is needed again).
pub const IDLE: Duration = Duration::from_secs(10);

/// A kept connection goes back through sqlx's pool at least this often.
pub const VISIT: Duration = Duration::from_secs(60);

struct Kept {
    conn: PoolConnection<Postgres>,
    /// Since when it is idle.
    since: Instant,
    /// Since when it is out of sqlx's pool.
    out: Instant,
}

/// The kept connections, the most recently used on top.
pub struct Warm {
    stack: Mutex<Stack>,
    capacity: usize,
}

#[derive(Default)]
struct Stack {
    kept: Vec<Kept>,
    /// The pool is closing: nothing is kept any more (sqlx's close waits for every connection).
    closed: bool,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("kept", &self.kept())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Warm {
    /// For a pool of `max_connections`: keeps at most all but one.
    pub fn new(max_connections: u32) -> Warm {
        Warm {
            stack: Mutex::new(Stack::default()),
            capacity: max_connections.saturating_sub(1) as usize,
        }
    }

    /// How many connections are kept now.
    pub fn kept(&self) -> usize {
        self.lock().kept.len()
    }

    /// The connection used last, or one from sqlx's pool when none is kept. Kept connections
    /// idle longer than [`IDLE`] go back to sqlx's pool on the way.
    pub async fn lease(self: &Arc<Self>, pool: &PgPool) -> sqlx::Result<Lease> {
        let (top, stale) = {
            let mut stack = self.lock();
            let now = Instant::now();
            let stale = stack
                .kept
                .iter()
                .take_while(|k| now.duration_since(k.since) > IDLE)
                .count();
            let stale: Vec<Kept> = stack.kept.drain(..stale).collect();
            (stack.kept.pop(), stale)
        };
        drop(stale);
        let (conn, out) = match top {
            Some(k) => (k.conn, k.out),
            None => (pool.acquire().await?, Instant::now()),
        };
        Ok(Lease {
            conn: Some(conn),
            out,
            clean: false,
            warm: self.clone(),
            pool: pool.clone(),
        })
    }

    /// The pool is closing: gives every kept connection back and keeps none from now on.
    pub fn close(&self) {
        drop(self.take_all(true));
    }

    /// Every kept connection, to be dropped outside the lock (sqlx takes one back on a task).
    fn take_all(&self, closing: bool) -> Vec<Kept> {
        let mut stack = self.lock();
        stack.closed |= closing;
        std::mem::take(&mut stack.kept)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stack> {
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives every kept connection back to sqlx's pool if it is full: for a caller about to
    /// wait in it.
    pub fn release_if_full(&self, pool: &PgPool) {
        if at_most(pool) {
            drop(self.take_all(false));
        }
    }

    fn keep(&self, conn: PoolConnection<Postgres>, out: Instant, pool: &PgPool) {
        // Full, none idle: someone may be waiting in sqlx's pool for this one.
        let wanted = at_most(pool) && pool.num_idle() == 0;
        if !wanted && out.elapsed() < VISIT {
            let mut stack = self.lock();
            if !stack.closed && stack.kept.len() < self.capacity {
                stack.kept.push(Kept {
                    conn,
                    since: Instant::now(),
                    out,
                });
                return;
            }
        }
        drop(conn);
    }
}

/// sqlx's pool has opened all the connections it may.
fn at_most(pool: &PgPool) -> bool {
    pool.size() >= pool.options().get_max_connections()
}

impl Drop for Warm {
    /// The last handle went away. Outside a runtime (a command ending) sqlx cannot take a
    /// connection back (it returns one on a task of its own): each is closed here instead.
    fn drop(&mut self) {
        let all = self.take_all(false);
        if tokio::runtime::Handle::try_current().is_err() {
            for kept in all {
                drop(kept.conn.detach());
            }
        }
    }
}

/// A connection lent for one statement. Kept for the next one if [`Lease::done`] was called;
/// otherwise (an error, a statement cut short) it goes back to sqlx's pool, which checks it.
pub struct Lease {
    conn: Option<PoolConnection<Postgres>>,
    out: Instant,
    clean: bool,
    warm: Arc<Warm>,
    pool: PgPool,
}

impl Lease {
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// The statement ended cleanly: the connection may be kept.
    pub fn done(mut self) {
        self.clean = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.clean {
                self.warm.keep(conn, self.out, &self.pool);
            }
        }
    }
}
