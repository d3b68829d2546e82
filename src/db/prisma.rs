//! Our tables as Prisma sees them, for apps whose Prisma Migrate shares the database with us
//! (docs/prisma.md).
//!
//! Prisma Migrate compares its migration history with the database and offers to reset the
//! schema when they differ ("drift"). Our tables, columns, indexes and foreign keys are drift to
//! it unless the app's `schema.prisma` describes them exactly, relation actions included, and a
//! baseline migration records them. [`introspect`] reads what is there from `pg_catalog` (the
//! database as it is, after `migrate` or `adopt`, whatever the app's id and timestamp types), and
//! [`render`] prints it as Prisma would: the same types, `@db.*` attributes, defaults, `@map`s,
//! indexes and relations that `prisma db pull` would print, so the app's model plus these blocks
//! leaves Prisma nothing to report. What Prisma does not see at all is left out on purpose:
//! partial and expression indexes, CHECK constraints (a warning only), triggers, functions and
//! storage parameters.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sqlx::PgPool;

/// The tables we create (every name starting with `Outbound`) and our migrations' bookkeeping.
const OUR_TABLE_PREFIX: &str = "Outbound";
pub const BOOKKEEPING_TABLE: &str = "_sqlx_migrations";

/// `"OutboundJob"`'s columns as our migrations make them: any other column is the app's.
pub const OUR_JOB_COLUMNS: &[&str] = &[
    "id",
    "status",
    "payload",
    "requestId",
    "idempotencyKey",
    "priority",
    "runAt",
    "attempts",
    "maxAttempts",
    "lockedBy",
    "lockedAt",
    "leaseUntil",
    "composed",
    "lastError",
    "lastErrorCode",
    "createdAt",
    "updatedAt",
    "startedAt",
    "completedAt",
    "history",
    "cancelRequestedAt",
];

/// The columns of ours an app's `OutboundJob` does not have: the first of them (by position)
/// ends the app's own columns, marked "yours" in the printed model.
const ADDED_JOB_COLUMNS: &[&str] = &[
    "priority",
    "runAt",
    "maxAttempts",
    "lockedBy",
    "lockedAt",
    "leaseUntil",
    "composed",
    "lastErrorCode",
    "startedAt",
    "history",
    "cancelRequestedAt",
];

/// What `pg_catalog` says about our tables.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: Vec<Table>,
    /// Enum types our tables' columns use: name and labels in order.
    pub enums: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// The primary key's name and columns.
    pub primary_key: Option<(String, Vec<String>)>,
    /// Indexes Prisma sees: no predicate, no expression (primary key excluded).
    pub indexes: Vec<Index>,
    pub foreign_keys: Vec<ForeignKey>,
}

#[derive(Debug, Clone, Default)]
pub struct Column {
    pub name: String,
    /// `format_type()`: `timestamp(3) without time zone`, `character varying(20)`, …
    pub sql_type: String,
    /// The type's own name (`pg_type.typname`), e.g. the enum's.
    pub type_name: String,
    pub is_enum: bool,
    pub not_null: bool,
    /// `pg_get_expr()` of the default.
    pub default: Option<String>,
    pub identity: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Index {
    pub name: String,
    pub columns: Vec<String>,
    pub unique: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ForeignKey {
    pub name: String,
    pub columns: Vec<String>,
    pub references_table: String,
    pub references_columns: Vec<String>,
    /// `pg_constraint.confdeltype` / `confupdtype`: a, r, c, n, d.
    pub on_delete: String,
    pub on_update: String,
}

type Oid = sqlx::postgres::types::Oid;
/// Table, name, type, type name, enum, not null, default, identity.
type ColumnRow = (
    Oid,
    String,
    String,
    String,
    bool,
    bool,
    Option<String>,
    bool,
);
/// Table, name, columns, referenced table, referenced columns, on delete, on update.
type ForeignKeyRow = (
    Oid,
    String,
    Vec<String>,
    String,
    Vec<String>,
    String,
    String,
);

/// Reads our tables (and the enums they use) from the current schema.
pub async fn introspect(pool: &PgPool) -> sqlx::Result<Catalog> {
    let tables: Vec<(sqlx::postgres::types::Oid, String)> = sqlx::query_as(
        r#"SELECT c.oid, c.relname::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
             AND (starts_with(c.relname::text, $1) OR c.relname = $2)
           ORDER BY c.relname"#,
    )
    .bind(OUR_TABLE_PREFIX)
    .bind(BOOKKEEPING_TABLE)
    .fetch_all(pool)
    .await?;
    let oids: Vec<sqlx::postgres::types::Oid> = tables.iter().map(|(o, _)| *o).collect();
    let mut by_oid: BTreeMap<u32, Table> = tables
        .iter()
        .map(|(oid, name)| {
            (
                oid.0,
                Table {
                    name: name.clone(),
                    ..Table::default()
                },
            )
        })
        .collect();

    let columns: Vec<ColumnRow> = sqlx::query_as(
        r#"SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod),
                  t.typname::text, t.typtype = 'e', a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid), a.attidentity <> ''
           FROM pg_attribute a
           JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attrelid, a.attnum"#,
    )
    .bind(&oids)
    .fetch_all(pool)
    .await?;
    let mut enum_names = Vec::new();
    for (oid, name, sql_type, type_name, is_enum, not_null, default, identity) in columns {
        if is_enum && !enum_names.contains(&type_name) {
            enum_names.push(type_name.clone());
        }
        if let Some(t) = by_oid.get_mut(&oid.0) {
            t.columns.push(Column {
                name,
                sql_type,
                type_name,
                is_enum,
                not_null,
                default,
                identity,
            });
        }
    }

    let indexes: Vec<(
        sqlx::postgres::types::Oid,
        String,
        bool,
        bool,
        bool,
        Vec<String>,
    )> = sqlx::query_as(
        r#"SELECT i.indrelid, ic.relname::text, i.indisunique, i.indisprimary,
                  -- Prisma leaves out partial and expression indexes, and exclusion constraints.
                  i.indpred IS NULL AND i.indexprs IS NULL AND NOT i.indisexclusion
                    AND i.indisvalid,
                  ARRAY(SELECT a.attname::text
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                        WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
           FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
           WHERE i.indrelid = ANY($1)
           ORDER BY i.indrelid, ic.relname"#,
    )
    .bind(&oids)
    .fetch_all(pool)
    .await?;
    for (oid, name, unique, primary, seen, columns) in indexes {
        let Some(t) = by_oid.get_mut(&oid.0) else {
            continue;
        };
        if primary {
            t.primary_key = Some((name, columns));
        } else if seen {
            t.indexes.push(Index {
                name,
                columns,
                unique,
            });
        }
    }

    let fks: Vec<ForeignKeyRow> = sqlx::query_as(
        r#"SELECT c.conrelid, c.conname::text,
                  ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                        ORDER BY k.o),
                  r.relname::text,
                  ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
                        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                        ORDER BY k.o),
                  c.confdeltype::text, c.confupdtype::text
           FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid
           WHERE c.contype = 'f' AND c.conrelid = ANY($1)
           ORDER BY c.conrelid, c.conname"#,
    )
    .bind(&oids)
    .fetch_all(pool)
    .await?;
    for (oid, name, columns, references_table, references_columns, on_delete, on_update) in fks {
        if let Some(t) = by_oid.get_mut(&oid.0) {
            t.foreign_keys.push(ForeignKey {
                name,
                columns,
                references_table,
                references_columns,
                on_delete,
                on_update,
            });
        }
    }

    let enums: Vec<(String, Vec<String>)> = sqlx::query_as(
        r#"SELECT t.typname::text, array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
           FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
           JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE n.nspname = current_schema() AND t.typname = ANY($1)
           GROUP BY t.typname ORDER BY t.typname"#,
    )
    .bind(&enum_names)
    .fetch_all(pool)
    .await?;

    let mut tables: Vec<Table> = by_oid.into_values().collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Catalog { tables, enums })
}

/// The `schema.prisma` blocks for `catalog`: one model per table, the enums they use.
pub fn render(catalog: &Catalog) -> String {
    let mut out = String::new();
    out.push_str(
        "// outbound-runner's tables as they are in this database (`outbound-runner prisma schema`).\n\
         // Add these blocks to schema.prisma; for \"OutboundJob\" keep your own lines for the fields your\n\
         // model already has (marked \"yours\": your @default(cuid()), @updatedAt and the like) and add\n\
         // the others. Then baseline (docs/prisma.md): Prisma then sees no drift.\n",
    );
    // Back-relations: the parent model gets a list field per foreign key that points at it.
    let mut back: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for t in &catalog.tables {
        for fk in &t.foreign_keys {
            back.entry(fk.references_table.clone())
                .or_default()
                .push((back_field_name(&t.name), model_name(&t.name)));
        }
    }
    for t in &catalog.tables {
        out.push('\n');
        render_model(
            &mut out,
            t,
            back.get(&t.name).map(Vec::as_slice).unwrap_or(&[]),
        );
    }
    for (name, labels) in &catalog.enums {
        out.push('\n');
        let model = model_name(name);
        let _ = writeln!(out, "enum {model} {{");
        for label in labels {
            if is_identifier(label) {
                let _ = writeln!(out, "  {label}");
            } else {
                let _ = writeln!(out, "  {} @map(\"{}\")", identifier(label), escape(label));
            }
        }
        if model != *name {
            let _ = writeln!(out, "\n  @@map(\"{}\")", escape(name));
        }
        out.push_str("}\n");
    }
    out
}

fn render_model(out: &mut String, t: &Table, back: &[(String, String)]) {
    let model = model_name(&t.name);
    let is_job = t.name == "OutboundJob";
    let _ = writeln!(out, "model {model} {{");
    let single_pk = match &t.primary_key {
        Some((_, cols)) if cols.len() == 1 => Some(cols[0].as_str()),
        _ => None,
    };
    // Lines as (field, type, attributes, comment), aligned like `prisma format`.
    let mut lines: Vec<(String, String, String, String)> = Vec::new();
    // The app's columns come first: `adopt` (like our first migration) adds ours after them.
    let first_of_ours = t
        .columns
        .iter()
        .position(|c| ADDED_JOB_COLUMNS.contains(&c.name.as_str()))
        .unwrap_or(t.columns.len());
    for (position, c) in t.columns.iter().enumerate() {
        let field = identifier(&c.name);
        let (prisma_type, native) = prisma_type(c);
        let mut ty = prisma_type;
        if !c.not_null {
            ty.push('?');
        }
        let mut attrs: Vec<String> = Vec::new();
        if single_pk == Some(c.name.as_str()) {
            let (pk_name, _) = t.primary_key.as_ref().expect("single_pk");
            if *pk_name == format!("{}_pkey", t.name) {
                attrs.push("@id".into());
            } else {
                attrs.push(format!("@id(map: \"{}\")", escape(pk_name)));
            }
        }
        if let Some(d) = default_attribute(c) {
            attrs.push(d);
        }
        if let Some(ix) = t
            .indexes
            .iter()
            .find(|i| i.unique && i.columns.len() == 1 && i.columns[0] == c.name)
        {
            if ix.name == default_index_name(&t.name, &ix.columns, "key") {
                attrs.push("@unique".into());
            } else {
                attrs.push(format!("@unique(map: \"{}\")", escape(&ix.name)));
            }
        }
        if let Some(native) = native {
            attrs.push(native);
        }
        if field != c.name {
            attrs.push(format!("@map(\"{}\")", escape(&c.name)));
        }
        let comment = if is_job && !OUR_JOB_COLUMNS.contains(&c.name.as_str()) {
            "// yours (outbound-runner does not use it)".to_string()
        } else if is_job && position < first_of_ours {
            "// yours".to_string()
        } else {
            String::new()
        };
        lines.push((field, ty, attrs.join(" "), comment));
    }
    for fk in &t.foreign_keys {
        let parent = model_name(&fk.references_table);
        let fields: Vec<String> = fk.columns.iter().map(|c| identifier(c)).collect();
        let references: Vec<String> = fk
            .references_columns
            .iter()
            .map(|c| identifier(c))
            .collect();
        let optional = fk
            .columns
            .iter()
            .any(|c| t.columns.iter().any(|col| col.name == *c && !col.not_null));
        let mut rel = format!(
            "@relation(fields: [{}], references: [{}], onDelete: {}, onUpdate: {}",
            fields.join(", "),
            references.join(", "),
            action(&fk.on_delete),
            action(&fk.on_update)
        );
        if fk.name != default_index_name(&t.name, &fk.columns, "fkey") {
            let _ = write!(rel, ", map: \"{}\"", escape(&fk.name));
        }
        rel.push(')');
        lines.push((
            relation_field_name(&fk.references_table),
            format!("{parent}{}", if optional { "?" } else { "" }),
            rel,
            String::new(),
        ));
    }
    for (field, child) in back {
        lines.push((
            field.clone(),
            format!("{child}[]"),
            String::new(),
            String::new(),
        ));
    }
    let w_field = lines.iter().map(|l| l.0.len()).max().unwrap_or(0);
    let w_type = lines.iter().map(|l| l.1.len()).max().unwrap_or(0);
    let w_attrs = lines.iter().map(|l| l.2.len()).max().unwrap_or(0);
    for (field, ty, attrs, comment) in &lines {
        let line = if comment.is_empty() {
            format!("  {field:w_field$} {ty:w_type$} {attrs}")
        } else {
            format!("  {field:w_field$} {ty:w_type$} {attrs:w_attrs$} {comment}")
        };
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let mut blocks: Vec<String> = Vec::new();
    if let Some((name, cols)) = &t.primary_key {
        if cols.len() > 1 {
            let fields: Vec<String> = cols.iter().map(|c| identifier(c)).collect();
            if *name == format!("{}_pkey", t.name) {
                blocks.push(format!("@@id([{}])", fields.join(", ")));
            } else {
                blocks.push(format!(
                    "@@id([{}], map: \"{}\")",
                    fields.join(", "),
                    escape(name)
                ));
            }
        }
    }
    for ix in &t.indexes {
        if ix.unique && ix.columns.len() == 1 {
            continue; // `@unique` on the field
        }
        let fields: Vec<String> = ix.columns.iter().map(|c| identifier(c)).collect();
        let (attr, suffix) = if ix.unique {
            ("@@unique", "key")
        } else {
            ("@@index", "idx")
        };
        if ix.name == default_index_name(&t.name, &ix.columns, suffix) {
            blocks.push(format!("{attr}([{}])", fields.join(", ")));
        } else {
            blocks.push(format!(
                "{attr}([{}], map: \"{}\")",
                fields.join(", "),
                escape(&ix.name)
            ));
        }
    }
    if model != t.name {
        blocks.push(format!("@@map(\"{}\")", escape(&t.name)));
    }
    if !blocks.is_empty() {
        out.push('\n');
        for b in blocks {
            let _ = writeln!(out, "  {b}");
        }
    }
    out.push_str("}\n");
}

/// The Prisma scalar type and the `@db.*` attribute (none when it is Prisma's default for the
/// scalar), as `prisma db pull` prints them.
fn prisma_type(c: &Column) -> (String, Option<String>) {
    if c.is_enum {
        return (model_name(&c.type_name), None);
    }
    let t = c.sql_type.as_str();
    let (base, args) = match t.find('(') {
        Some(open) => {
            let close = t[open..].find(')').map_or(t.len(), |i| open + i);
            let rest = format!("{}{}", &t[..open], &t[(close + 1).min(t.len())..]);
            (rest, Some(t[open + 1..close].to_string()))
        }
        None => (t.to_string(), None),
    };
    let s = |x: &str| (x.to_string(), None);
    let n = |x: &str, a: String| (x.to_string(), Some(a));
    match (base.as_str(), args) {
        ("text", None) => s("String"),
        ("character varying", None) => n("String", "@db.VarChar".into()),
        ("character varying", Some(a)) => n("String", format!("@db.VarChar({a})")),
        ("character", Some(a)) => n("String", format!("@db.Char({a})")),
        ("uuid", None) => n("String", "@db.Uuid".into()),
        ("integer", None) => s("Int"),
        ("smallint", None) => n("Int", "@db.SmallInt".into()),
        ("bigint", None) => s("BigInt"),
        ("boolean", None) => s("Boolean"),
        ("jsonb", None) => s("Json"),
        ("json", None) => n("Json", "@db.Json".into()),
        ("double precision", None) => s("Float"),
        ("real", None) => n("Float", "@db.Real".into()),
        ("numeric", Some(a)) => n("Decimal", format!("@db.Decimal({})", a.replace(',', ", "))),
        ("bytea", None) => s("Bytes"),
        ("date", None) => n("DateTime", "@db.Date".into()),
        ("timestamp without time zone", Some(p)) if p == "3" => s("DateTime"),
        ("timestamp without time zone", Some(p)) => n("DateTime", format!("@db.Timestamp({p})")),
        ("timestamp without time zone", None) => n("DateTime", "@db.Timestamp(6)".into()),
        ("timestamp with time zone", Some(p)) => n("DateTime", format!("@db.Timestamptz({p})")),
        ("timestamp with time zone", None) => n("DateTime", "@db.Timestamptz(6)".into()),
        _ => (format!("Unsupported(\"{}\")", escape(t)), None),
    }
}

/// `@default(…)` as `prisma db pull` reads a column's default.
fn default_attribute(c: &Column) -> Option<String> {
    if c.identity {
        return Some("@default(autoincrement())".into());
    }
    let d = c.default.as_deref()?.trim();
    if d.starts_with("nextval(") {
        return Some("@default(autoincrement())".into());
    }
    if d == "now()" || d == "CURRENT_TIMESTAMP" {
        return Some("@default(now())".into());
    }
    if d == "true" || d == "false" {
        return Some(format!("@default({d})"));
    }
    let number = d.trim_start_matches('(').trim_end_matches(')');
    if !number.is_empty() && number.parse::<f64>().is_ok() {
        return Some(format!("@default({number})"));
    }
    if let Some(literal) = string_literal(d) {
        if c.is_enum {
            return Some(format!("@default({})", identifier(&literal)));
        }
        if literal.parse::<f64>().is_ok() && !c.sql_type.contains("char") && c.sql_type != "text" {
            return Some(format!("@default({literal})"));
        }
        return Some(format!("@default(\"{}\")", escape(&literal)));
    }
    Some(format!("@default(dbgenerated(\"{}\"))", escape(d)))
}

/// `'it''s'::text` → `it's` (a quoted literal with an optional cast).
fn string_literal(d: &str) -> Option<String> {
    let rest = d.strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            let tail: String = chars.collect();
            return (tail.is_empty() || tail.starts_with("::")).then_some(out);
        }
        out.push(ch);
    }
    None
}

fn action(code: &str) -> &'static str {
    match code {
        "r" => "Restrict",
        "c" => "Cascade",
        "n" => "SetNull",
        "d" => "SetDefault",
        _ => "NoAction",
    }
}

/// Prisma's default name of an index (`idx`), unique index (`key`) or foreign key (`fkey`):
/// `Table_col1_col2_suffix`, cut to PostgreSQL's 63 bytes as Prisma cuts it.
fn default_index_name(table: &str, columns: &[String], suffix: &str) -> String {
    let base = format!("{table}_{}", columns.join("_"));
    let max = 63 - suffix.len() - 1;
    let mut cut = base.len().min(max);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{suffix}", &base[..cut])
}

/// A model (or enum) name Prisma accepts: `_sqlx_migrations` → `sqlx_migrations` (with `@@map`).
fn model_name(table: &str) -> String {
    identifier(table)
}

/// A field or model name Prisma accepts: letters, digits and `_`, starting with a letter.
fn identifier(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_start_matches(|c: char| !c.is_ascii_alphabetic())
        .to_string();
    if out.is_empty() {
        out = "field".into();
    }
    out
}

fn is_identifier(name: &str) -> bool {
    identifier(name) == name
}

/// The field on a child model for its foreign key: `OutboundJob` → `job`.
fn relation_field_name(parent: &str) -> String {
    lower_first(parent.strip_prefix(OUR_TABLE_PREFIX).unwrap_or(parent))
}

/// The list field on a parent model for a child's foreign key: `OutboundMessage` → `messages`.
fn back_field_name(child: &str) -> String {
    format!(
        "{}s",
        lower_first(child.strip_prefix(OUR_TABLE_PREFIX).unwrap_or(child))
    )
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// A Prisma string literal's contents.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, sql_type: &str, not_null: bool, default: Option<&str>) -> Column {
        Column {
            name: name.into(),
            sql_type: sql_type.into(),
            type_name: sql_type.into(),
            not_null,
            default: default.map(Into::into),
            ..Column::default()
        }
    }

    #[test]
    fn types_and_defaults_read_as_prisma_reads_them() {
        let c = col(
            "a",
            "timestamp(3) without time zone",
            true,
            Some("CURRENT_TIMESTAMP"),
        );
        assert_eq!(prisma_type(&c), ("DateTime".into(), None));
        assert_eq!(default_attribute(&c).as_deref(), Some("@default(now())"));
        let c = col("a", "timestamp with time zone", true, Some("now()"));
        assert_eq!(prisma_type(&c).1.as_deref(), Some("@db.Timestamptz(6)"));
        let c = col("a", "smallint", true, Some("0"));
        assert_eq!(prisma_type(&c).1.as_deref(), Some("@db.SmallInt"));
        assert_eq!(default_attribute(&c).as_deref(), Some("@default(0)"));
        let c = col("a", "jsonb", true, Some("'[]'::jsonb"));
        assert_eq!(default_attribute(&c).as_deref(), Some("@default(\"[]\")"));
        let c = col("a", "text", true, Some("'it''s'::text"));
        assert_eq!(default_attribute(&c).as_deref(), Some("@default(\"it's\")"));
        let c = col(
            "a",
            "integer",
            true,
            Some("nextval('\"T_id_seq\"'::regclass)"),
        );
        assert_eq!(
            default_attribute(&c).as_deref(),
            Some("@default(autoincrement())")
        );
        let c = col("a", "uuid", true, Some("gen_random_uuid()"));
        assert_eq!(
            default_attribute(&c).as_deref(),
            Some("@default(dbgenerated(\"gen_random_uuid()\"))")
        );
        let mut c = col(
            "s",
            "\"OutboundJobStatus\"",
            true,
            Some("'queued'::\"OutboundJobStatus\""),
        );
        c.is_enum = true;
        c.type_name = "OutboundJobStatus".into();
        assert_eq!(prisma_type(&c).0, "OutboundJobStatus");
        assert_eq!(default_attribute(&c).as_deref(), Some("@default(queued)"));
    }

    #[test]
    fn names_follow_prismas_defaults_and_maps_where_they_differ() {
        assert_eq!(
            default_index_name("OutboundMessage", &["jobId".into()], "fkey"),
            "OutboundMessage_jobId_fkey"
        );
        assert_eq!(model_name("_sqlx_migrations"), "sqlx_migrations");
        assert_eq!(relation_field_name("OutboundJob"), "job");
        assert_eq!(back_field_name("OutboundMessage"), "messages");
        let catalog = Catalog {
            tables: vec![Table {
                name: "_sqlx_migrations".into(),
                columns: vec![col("version", "bigint", true, None)],
                primary_key: Some(("_sqlx_migrations_pkey".into(), vec!["version".into()])),
                ..Table::default()
            }],
            enums: vec![],
        };
        let text = render(&catalog);
        assert!(text.contains("model sqlx_migrations {"), "{text}");
        assert!(text.contains("version BigInt @id"), "{text}");
        assert!(text.contains("@@map(\"_sqlx_migrations\")"), "{text}");
    }
}
