//! Databases made the way Prisma Migrate makes them (`shared/reference/prisma-offline.md`): the
//! app's `"OutboundJob"` with the app's id (a cuid in TEXT, SERIAL, `@db.Uuid`, BIGINT), its
//! status (a PostgreSQL enum without `cancelled`, or text), `TIMESTAMP(3)` columns holding UTC,
//! `"updatedAt"` with no default, a `_prisma_migrations` table and one queued row; and the app's
//! inserts as Prisma Client makes them (explicit id, explicit `"updatedAt"`).

use chrono::Utc;
use sqlx::Row;

use super::TestDb;

/// The app's model's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// `String @id @default(cuid())`, `status` an enum, `TIMESTAMP(3)`.
    Cuid,
    /// `Int @id @default(autoincrement())`, `status` text, `TIMESTAMP(3)`.
    Serial,
    /// `String @id @default(uuid()) @db.Uuid`, `status` an enum, `TIMESTAMP(3)`.
    Uuid,
    /// `BigInt @id @default(autoincrement())`, `status` text, `@db.Timestamptz(3)`.
    BigInt,
}

impl IdKind {
    pub const ALL: [IdKind; 4] = [IdKind::Cuid, IdKind::Serial, IdKind::Uuid, IdKind::BigInt];

    fn id_column(self) -> &'static str {
        match self {
            IdKind::Cuid => r#""id" TEXT NOT NULL"#,
            IdKind::Serial => r#""id" SERIAL NOT NULL"#,
            IdKind::Uuid => r#""id" UUID NOT NULL"#,
            IdKind::BigInt => r#""id" BIGSERIAL NOT NULL"#,
        }
    }

    fn enum_status(self) -> bool {
        matches!(self, IdKind::Cuid | IdKind::Uuid)
    }

    fn time(self) -> &'static str {
        match self {
            IdKind::BigInt => "TIMESTAMPTZ(3)",
            _ => "TIMESTAMP(3)",
        }
    }

    /// What the app's client makes for a new row's id (`None`: the database's sequence).
    pub fn new_id(self) -> Option<String> {
        match self {
            IdKind::Cuid => Some(format!("c{:024x}", rand::random::<u128>() >> 32)),
            IdKind::Uuid => {
                let b: u128 = rand::random();
                let h = format!("{b:032x}");
                Some(format!(
                    "{}-{}-4{}-a{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[13..16],
                    &h[17..20],
                    &h[20..32]
                ))
            }
            IdKind::Serial | IdKind::BigInt => None,
        }
    }
}

/// Makes the app's schema on `db` (an empty database) and inserts one queued job the app's way;
/// returns its id.
pub async fn make_app_schema(db: &TestDb, kind: IdKind) -> String {
    let status = if kind.enum_status() {
        sqlx::raw_sql(
            r#"CREATE TYPE "OutboundJobStatus" AS ENUM ('queued', 'running', 'done', 'failed')"#,
        )
        .execute(&db.pool)
        .await
        .unwrap();
        r#""status" "OutboundJobStatus" NOT NULL DEFAULT 'queued'"#
    } else {
        r#""status" TEXT NOT NULL DEFAULT 'queued'"#
    };
    let t = kind.time();
    sqlx::raw_sql(&format!(
        r#"
        CREATE TABLE "_prisma_migrations" (
            "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
            "checksum"              VARCHAR(64) NOT NULL,
            "finished_at"           TIMESTAMPTZ,
            "migration_name"        VARCHAR(255) NOT NULL,
            "logs"                  TEXT,
            "rolled_back_at"        TIMESTAMPTZ,
            "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
            "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, applied_steps_count)
        VALUES ('00000000-0000-0000-0000-000000000001', 'e3b0c44298fc1c149afbf4c8996fb924', now(),
                '20261201000000_init', 1);
        CREATE TABLE "OutboundJob" (
            {id},
            {status},
            "payload" JSONB NOT NULL,
            "requestId" TEXT,
            "idempotencyKey" TEXT,
            "attempts" INTEGER NOT NULL DEFAULT 0,
            "lastError" TEXT,
            "tenantId" TEXT,
            "createdAt" {t} NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "updatedAt" {t} NOT NULL,
            "completedAt" {t},
            CONSTRAINT "OutboundJob_pkey" PRIMARY KEY ("id")
        );
        CREATE UNIQUE INDEX "OutboundJob_idempotencyKey_key" ON "OutboundJob"("idempotencyKey");
        CREATE INDEX "OutboundJob_status_createdAt_idx" ON "OutboundJob"("status", "createdAt");
        "#,
        id = kind.id_column(),
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    app_insert(db, kind, "15550009001", Some("before-adoption")).await
}

/// Inserts a job as Prisma Client does (`prisma.outboundJob.create`): the id made by the client
/// (cuid, uuid) or left to the sequence, `"updatedAt"` and `"createdAt"` given as UTC values, the
/// status as the enum's literal. Returns the id as text.
pub async fn app_insert(db: &TestDb, kind: IdKind, to: &str, key: Option<&str>) -> String {
    let payload = serde_json::json!({
        "to": to,
        "message": {"type": "text", "text": {"body": format!("hello {to}")}},
    });
    let now = Utc::now();
    let (cols, vals) = match kind.new_id() {
        Some(_) => ("\"id\", ", "$5::text::\"{T}\", "),
        None => ("", ""),
    };
    let id_ty = match kind {
        IdKind::Uuid => "uuid",
        _ => "text",
    };
    let time = match kind {
        // Prisma sends a DateTime as a UTC timestamp without a zone for TIMESTAMP(3).
        IdKind::BigInt => "$4::timestamptz",
        _ => "($4::timestamptz AT TIME ZONE 'UTC')",
    };
    let sql = format!(
        r#"INSERT INTO "OutboundJob" ({cols}"status", "payload", "requestId", "idempotencyKey",
                                      "createdAt", "updatedAt")
           VALUES ({vals}'queued', $1, $2, $3, {time}, {time})
           RETURNING "id"::text"#
    )
    .replace("{T}", id_ty);
    let mut q = sqlx::query(&sql)
        .bind(payload)
        .bind(format!("req-{to}"))
        .bind(key)
        .bind(now);
    if let Some(id) = kind.new_id() {
        q = q.bind(id);
    }
    q.fetch_one(&db.pool).await.unwrap().get(0)
}

/// Inserts `n` queued rows the app's way in one statement (ids as the app's client or the
/// sequence makes them), then ANALYZE.
pub async fn bulk_insert(db: &TestDb, kind: IdKind, n: i64) {
    let (cols, id) = match kind {
        IdKind::Cuid => ("\"id\", ", "'cbulk' || lpad(g::text, 19, '0'), "),
        IdKind::Uuid => ("\"id\", ", "gen_random_uuid(), "),
        IdKind::Serial | IdKind::BigInt => ("", ""),
    };
    sqlx::query(&format!(
        r#"INSERT INTO "OutboundJob" ({cols}"status", "payload", "createdAt", "updatedAt")
           SELECT {id}'queued', jsonb_build_object('to', '1555' || lpad(g::text, 7, '0'),
                      'message', jsonb_build_object('type', 'text',
                          'text', jsonb_build_object('body', 'bulk ' || g))),
                  now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
           FROM generate_series(1, $1) g"#
    ))
    .bind(n)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql(r#"ANALYZE "OutboundJob""#)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// The catalog as text: every relation, column (type, default, nullability), index (and its
/// validity), constraint, trigger, function and enum label of the public schema. Equal before
/// and after means nothing changed.
pub async fn catalog(db: &TestDb) -> String {
    let rows: Vec<String> = sqlx::query_scalar(
        r#"
        SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' ' || COALESCE(c.reloptions::text, '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'col ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || ' ' || a.attnotnull || ' ' || COALESCE(pg_get_expr(d.adbin, d.adrelid), '-')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'idx ' || pg_get_indexdef(i.indexrelid) || ' valid=' || i.indisvalid
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'trg ' || tgname FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL
        SELECT 'fn ' || p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'enum ' || t.typname || ' ' || e.enumlabel
        FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
        ORDER BY 1
        "#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.join("\n")
}

/// The app's columns of every row, as JSON text, by id: what adoption must leave as it was.
pub async fn app_rows(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(
        r#"SELECT jsonb_build_object('id', "id", 'status', "status", 'payload', "payload",
                  'requestId', "requestId", 'idempotencyKey', "idempotencyKey",
                  'attempts', "attempts", 'lastError', "lastError", 'tenantId', "tenantId",
                  'createdAt', "createdAt", 'updatedAt', "updatedAt",
                  'completedAt', "completedAt")::text
           FROM "OutboundJob" ORDER BY "id""#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// The app's columns as the catalog describes them (name, type, default, NOT NULL).
pub async fn app_columns(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(
        r#"SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
                  || a.attnotnull || ' ' || COALESCE(pg_get_expr(d.adbin, d.adrelid), '-')
           FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = '"OutboundJob"'::regclass AND a.attnum > 0 AND NOT a.attisdropped
             AND a.attname IN ('id', 'status', 'payload', 'requestId', 'idempotencyKey',
                               'attempts', 'lastError', 'tenantId', 'createdAt', 'updatedAt',
                               'completedAt')
           ORDER BY a.attnum"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}
