//! `outbound-runner prisma schema|migration DIR`: living beside Prisma Migrate (docs/prisma.md).
//!
//! `schema` prints our tables as `schema.prisma` blocks ([`crate::db::prisma`]) so the app's
//! Prisma sees no drift once it baselines them. `migration DIR` writes our pending DDL as a Prisma
//! migration folder, for teams whose Prisma applies every DDL statement (then
//! `database.migrate = false`, and the daemon checks at start that what it needs is there).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::db::{self, prisma};
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct PrismaArgs {
    #[command(subcommand)]
    pub command: PrismaCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PrismaCommand {
    /// Print our tables as schema.prisma blocks (models, enums), matching the database as it is.
    Schema,
    /// Write our pending DDL as Prisma migration folders under DIR (e.g. prisma/migrations).
    Migration {
        /// The Prisma migrations folder.
        dir: PathBuf,
        /// The folder name's timestamp (default: now, UTC, as YYYYMMDDHHMMSS).
        #[arg(long, value_name = "YYYYMMDDHHMMSS")]
        timestamp: Option<String>,
    },
}

pub async fn run(pool: &db::Pool, args: &PrismaArgs) -> anyhow::Result<u8> {
    match &args.command {
        PrismaCommand::Schema => {
            let catalog = prisma::introspect(pool.pg())
                .await
                .context("reading the schema")?;
            if !catalog.tables.iter().any(|t| t.name == "OutboundJob") {
                eprintln!(
                    "outbound-runner: no \"OutboundJob\" table in this database: run `outbound-runner migrate` \
                     (or `adopt`) first"
                );
                return Ok(exit::CHECK_FAILED);
            }
            print!("{}", prisma::render(&catalog));
            Ok(exit::OK)
        }
        PrismaCommand::Migration { dir, timestamp } => {
            let stamp = match timestamp {
                Some(t) if t.len() == 14 && t.bytes().all(|b| b.is_ascii_digit()) => t.clone(),
                Some(_) => {
                    eprintln!("outbound-runner: --timestamp: expected 14 digits, YYYYMMDDHHMMSS");
                    return Ok(exit::USAGE);
                }
                None => chrono::Utc::now().format("%Y%m%d%H%M%S").to_string(),
            };
            let plan = db::prisma_migration::plan(pool.pg())
                .await
                .context("planning the migration")?;
            if plan.is_empty() {
                println!("nothing to write: the schema is current");
                return Ok(exit::OK);
            }
            for (folder, sql) in plan.folders(&stamp) {
                let path = write_folder(dir, &folder, &sql)?;
                println!("wrote {}", path.display());
            }
            for note in &plan.notes {
                println!("note: {note}");
            }
            Ok(exit::OK)
        }
    }
}

fn write_folder(dir: &Path, folder: &str, sql: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(folder);
    if path.exists() {
        anyhow::bail!("{} exists already", path.display());
    }
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    let file = path.join("migration.sql");
    std::fs::write(&file, sql).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}
