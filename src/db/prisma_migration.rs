//! Our DDL as Prisma migrations (`outbound-runner prisma migration DIR`), for teams whose Prisma
//! Migrate applies every DDL statement (docs/prisma.md, "Path B").
//!
//! What is written is what `migrate` (or, on an app's own `"OutboundJob"`, `adopt`) would run
//! now: the pending migrations of `migrations/`, then the rows that record them in
//! `_sqlx_migrations`, so `outbound-runner migrate` and the start-up check agree afterwards.
//!
//! How Prisma runs a migration file shapes it:
//! - Prisma's native engine sends the whole file as one multi-statement query, which PostgreSQL
//!   runs as one implicit transaction: `CREATE INDEX CONCURRENTLY` fails there ("cannot run
//!   inside a transaction block") unless it is the file's only statement. So every statement
//!   that must run outside a transaction gets a migration folder of its own, after the main one.
//! - The driver-adapter engine (`engine: "js"`) splits a file at every `;` and runs the pieces one
//!   by one: a `;` inside a function body or a comment would cut a statement in two. So comments
//!   are dropped and a dollar-quoted body is written as an `E'…'` string whose semicolons are
//!   `\073`: the same statement for PostgreSQL, one piece for the splitter.

use std::fmt::Write as _;

use sqlx::PgPool;

use super::MIGRATOR;

/// One migration folder's worth: statements Prisma may run together, or one that must run alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Together(Vec<String>),
    /// What it does, and the statement (`CREATE INDEX CONCURRENTLY`, `ALTER TYPE … ADD VALUE`).
    Alone(String, String),
}

/// The folders to write, in the order they must be applied.
#[derive(Debug, Default, Clone)]
pub struct MigrationPlan {
    pub parts: Vec<Part>,
    /// Said to the operator after the files are written.
    pub notes: Vec<String>,
}

impl MigrationPlan {
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn together(&mut self, statements: impl IntoIterator<Item = String>) {
        let statements: Vec<String> = statements.into_iter().collect();
        if statements.is_empty() {
            return;
        }
        match self.parts.last_mut() {
            Some(Part::Together(last)) => last.extend(statements),
            _ => self.parts.push(Part::Together(statements)),
        }
    }

    /// `(folder name, migration.sql)` for each folder, named after `stamp` (YYYYMMDDHHMMSS) and
    /// numbered so Prisma applies them in this order (it sorts the folders by name).
    pub fn folders(&self, stamp: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let name = if i == 0 {
                format!("{stamp}_outbound_runner")
            } else {
                format!("{stamp}_outbound_runner_{i:02}")
            };
            let sql = match part {
                Part::Together(statements) => {
                    let mut sql = String::from(HEADER);
                    for s in statements {
                        let _ = writeln!(sql, "\n{}", for_prisma(s));
                    }
                    sql
                }
                Part::Alone(what, statement) => {
                    let mut sql = String::from(ALONE);
                    // No semicolon in a comment either: the driver-adapter engine cuts there too.
                    let _ = writeln!(
                        sql,
                        "-- {}\n{}",
                        what.replace('\n', " ").replace(';', ","),
                        for_prisma(statement)
                    );
                    sql
                }
            };
            out.push((name, sql));
        }
        out
    }
}

const HEADER: &str = "-- outbound-runner's schema, written by `outbound-runner prisma migration` for a Prisma that\n\
-- owns every DDL statement (docs/prisma.md). Its last statements record our migrations in\n\
-- _sqlx_migrations, so `outbound-runner migrate` and the daemon's start-up check agree.\n\
-- Comments are left out and function bodies written as E'' strings: Prisma's driver-adapter\n\
-- engine cuts a file at every semicolon.\n";

const ALONE: &str = "-- outbound-runner (`outbound-runner prisma migration`): one statement that must run outside a\n\
-- transaction, alone in its file so Prisma runs it by itself (docs/prisma.md). An index built\n\
-- CONCURRENTLY does not block the app's writes. If its build fails it leaves an INVALID index:\n\
-- drop that index, `prisma migrate resolve --rolled-back` this folder, deploy again.\n";

/// What to write for this database now.
pub async fn plan(pool: &PgPool) -> anyhow::Result<MigrationPlan> {
    let (has_job, has_bookkeeping): (bool, bool) = sqlx::query_as(
        r#"SELECT to_regclass('"OutboundJob"') IS NOT NULL,
                  to_regclass('_sqlx_migrations') IS NOT NULL"#,
    )
    .fetch_one(pool)
    .await?;
    let applied: Vec<i64> = if has_bookkeeping {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let mut plan = MigrationPlan::default();
    if has_job && applied.is_empty() {
        // The app's own table: adoption's steps (its bookkeeping included), not our first
        // migration.
        let adopt = super::adopt::plan(pool).await?;
        for step in adopt.steps {
            if step.outside_transaction {
                for s in split(&step.sql) {
                    plan.parts.push(Part::Alone(step.what.clone(), s));
                }
            } else {
                plan.together(split(&step.sql));
            }
        }
        plan.notes.extend(adopt.notes);
        return Ok(plan);
    }
    for m in MIGRATOR.iter().filter(|m| !applied.contains(&m.version)) {
        plan.together(split(&m.sql));
    }
    if !plan.is_empty() {
        plan.together(bookkeeping(&applied));
    }
    Ok(plan)
}

/// Creates `_sqlx_migrations` as sqlx does and records every compiled-in migration not yet in it.
fn bookkeeping(applied: &[i64]) -> Vec<String> {
    let mut out = vec![
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (\n    version BIGINT PRIMARY KEY,\n    \
         description TEXT NOT NULL,\n    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),\n    \
         success BOOLEAN NOT NULL,\n    checksum BYTEA NOT NULL,\n    execution_time BIGINT NOT NULL\n)"
            .to_string(),
    ];
    let rows: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| {
            format!(
                "    ({}, '{}', true, decode('{}', 'hex'), 0)",
                m.version,
                m.description.replace('\'', "''"),
                hex::encode(&*m.checksum)
            )
        })
        .collect();
    if !rows.is_empty() {
        out.push(format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)\nVALUES\n{}\nON CONFLICT (version) DO NOTHING",
            rows.join(",\n")
        ));
    }
    out
}

/// Splits SQL into statements (no trailing `;`), without its comments: quotes, quoted
/// identifiers and dollar quotes kept whole.
pub fn split(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let end = sql[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
            cur.push(' ');
            continue;
        }
        if c == b'\'' || c == b'"' {
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == c {
                    if b.get(j + 1) == Some(&c) {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            let end = (j + 1).min(b.len());
            cur.push_str(&sql[i..end]);
            i = end;
            continue;
        }
        if c == b'$' {
            if let Some(tag_len) = sql[i + 1..].find('$').filter(|&n| {
                sql[i + 1..i + 1 + n]
                    .bytes()
                    .all(|x| x.is_ascii_alphanumeric() || x == b'_')
            }) {
                let tag = &sql[i..i + tag_len + 2];
                let body_start = i + tag.len();
                if let Some(e) = sql[body_start..].find(tag) {
                    let end = body_start + e + tag.len();
                    cur.push_str(&sql[i..end]);
                    i = end;
                    continue;
                }
            }
        }
        if c == b';' {
            let s = tidy(&cur);
            if !s.is_empty() {
                out.push(s);
            }
            cur.clear();
            i += 1;
            continue;
        }
        let ch = sql[i..].chars().next().expect("in bounds");
        cur.push(ch);
        i += ch.len_utf8();
    }
    let s = tidy(&cur);
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// A statement's lines without trailing blanks or empty lines.
fn tidy(s: &str) -> String {
    s.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One statement as written into a Prisma migration: dollar-quoted bodies as `E'…'` strings
/// with no literal semicolon, and the statement's own `;`.
pub fn for_prisma(statement: &str) -> String {
    let mut out = String::new();
    let mut rest = statement;
    while let Some(start) = rest.find('$') {
        let after = &rest[start + 1..];
        let Some(n) = after.find('$') else { break };
        let tag_name = &after[..n];
        if !tag_name
            .bytes()
            .all(|x| x.is_ascii_alphanumeric() || x == b'_')
        {
            out.push_str(&rest[..start + 1]);
            rest = &rest[start + 1..];
            continue;
        }
        let tag = &rest[start..start + n + 2];
        let body_start = start + tag.len();
        let Some(e) = rest[body_start..].find(tag) else {
            break;
        };
        let body = &rest[body_start..body_start + e];
        out.push_str(&rest[..start]);
        out.push_str("E'");
        for ch in body.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                ';' => out.push_str("\\073"),
                c => out.push(c),
            }
        }
        out.push('\'');
        rest = &rest[body_start + e + tag.len()..];
    }
    out.push_str(rest);
    out.push(';');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_bodies_and_strings_whole_and_drops_comments() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE t (a text DEFAULT 'x;y'); \
                   CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  \
                   PERFORM 1; -- inner\n  RETURN NULL;\nEND\n$$;\n/* block; */ SELECT \"a;b\"";
        let s = split(sql);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0], "CREATE TABLE t (a text DEFAULT 'x;y')");
        assert!(s[1].contains("RETURN NULL;\nEND"), "{}", s[1]);
        assert_eq!(s[2].trim(), "SELECT \"a;b\"");
    }

    #[test]
    fn bodies_become_e_strings_without_a_semicolon() {
        let s = for_prisma(
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  PERFORM pg_notify('c', '');\n  RETURN NULL;\nEND\n$$",
        );
        assert_eq!(s.matches(';').count(), 1, "{s}");
        assert!(s.ends_with("END\n';"), "{s}");
        assert!(s.contains("pg_notify(\\'c\\', \\'\\')\\073"), "{s}");
    }

    #[test]
    fn no_semicolon_but_the_statements_own() {
        let plan = MigrationPlan {
            parts: vec![
                Part::Alone("a; b".into(), "CREATE INDEX CONCURRENTLY i ON t (a)".into()),
                Part::Together(vec!["SELECT 1".into(), "SELECT 2".into()]),
            ],
            notes: vec![],
        };
        for (_, sql) in plan.folders("20261206000000") {
            let statements = sql
                .lines()
                .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
                .count();
            assert_eq!(sql.matches(';').count(), statements, "{sql}");
        }
    }

    #[test]
    fn every_migration_splits_into_statements_the_splitter_keeps_whole() {
        for m in MIGRATOR.iter() {
            for s in split(&m.sql) {
                let written = for_prisma(&s);
                // Prisma's driver-adapter engine cuts at every ';': exactly one, at the end.
                assert_eq!(written.matches(';').count(), 1, "{}: {written}", m.version);
            }
        }
    }
}
