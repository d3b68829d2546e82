//! One integration binary (one link, shared helpers). Every test gets its own fresh database
//! on the PostgreSQL named by `TEST_DATABASE_URL` (default: postgres on 127.0.0.1:5432).

mod admin;
mod adopt;
mod budget;
mod cli;
mod console;
mod delivery;
mod embedded;
mod guide_sql;
mod hostile;
mod http;
mod logs;
mod numbers;
mod pooler;
mod prisma;
mod queue;
mod support;
mod systemd;
mod webhooks;
