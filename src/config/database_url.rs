//! Prisma's parameters in a PostgreSQL URL (`pgbouncer`, `connection_limit`, `schema`, …):
//! which sqlx understands, which are dropped, and whether the URL names a transaction-mode
//! pooler. Used by validation (`config`) and by connecting (`db::pooler`, docs/operations.md
//! "Poolers").

/// URL query parameters sqlx understands; anything else is removed before sqlx sees the URL
/// (sqlx would log an unknown parameter with its value, and Prisma's `sslpassword` is a secret).
const SQLX_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// A database URL with the parameters only Prisma understands taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanUrl {
    /// The URL to give sqlx.
    pub url: String,
    /// `pgbouncer=true` was in the query: a transaction-mode pooler (as Prisma reads it).
    pub pgbouncer: bool,
    /// The names (never the values) of the parameters removed, besides `pgbouncer`.
    pub removed: Vec<String>,
}

/// Takes Prisma's parameters (`pgbouncer`, `connection_limit`, `pool_timeout`, `schema=public`,
/// …) out of `text`. A `schema` other than `public` is an error: we do not follow it, and the
/// tables would silently land somewhere else. Errors never quote the URL.
pub fn clean_url(text: &str) -> Result<CleanUrl, String> {
    let mut url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if url.query().is_none() {
        return Ok(CleanUrl {
            url: text.to_string(),
            pgbouncer: false,
            removed: Vec::new(),
        });
    }
    let mut pgbouncer = false;
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "pgbouncer" => pgbouncer = value.eq_ignore_ascii_case("true") || value == "1",
            "schema" if value != "public" => {
                return Err(format!(
                    "schema={value}: outbound-runner uses the role's search_path, not Prisma's \
                     schema parameter; run ALTER ROLE … SET search_path TO {value} and remove it \
                     from the URL"
                ));
            }
            k if SQLX_PARAMS.contains(&k) || k.starts_with("options[") => {
                kept.push((key.into_owned(), value.into_owned()))
            }
            _ => removed.push(key.into_owned()),
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(CleanUrl {
        url: url.to_string(),
        pgbouncer,
        removed,
    })
}
