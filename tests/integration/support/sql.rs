//! The database helpers the integration tests and the benches (which include this file by path)
//! share: where the test PostgreSQL is, and the statements a test uses to stage a job.

/// The test PostgreSQL unless `TEST_DATABASE_URL` names another.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// Expires the lease of running job `id` (whatever the id's type), as if its runner hung: the
/// rescuer may take it back.
pub async fn expire_lease<'e, E>(db: E, id: impl std::fmt::Display)
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query(
        r#"UPDATE "OutboundJob" SET "leaseUntil" = now() - interval '1 second'
           WHERE id = outbound_job_id($1)"#,
    )
    .bind(id.to_string())
    .execute(db)
    .await
    .expect("expiring a job's lease");
}
