//! A job's id as the app's table defines it. The app's `"OutboundJob".id` may be a cuid or UUID
//! in `TEXT`, a `uuid`, a `SERIAL` or a `bigint` (docs/adoption.md): the runner never does
//! arithmetic on it, so in Rust it is an opaque string, and the id's type lives only in the
//! database.
//!
//! - Read: [`JobId`] decodes from any of those column types (`RETURNING id`, `m."jobId"`), so a
//!   statement that returns ids needs no cast.
//! - Written: it binds as `TEXT` (`TEXT[]` for a `Vec`), and every statement converts with the
//!   database's `outbound_job_id(text)` (migration 20261206000001, or `adopt`), which gives the
//!   id's own type, NULL for text that is not an id of that type: a bad id matches nothing.
//! - JSON: a string (`"42"` on our own `bigint` table, the cuid on an app's).

use std::fmt;
use std::sync::Arc;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgTypeKind, PgValueFormat, PgValueRef, Postgres,
};
use sqlx::{Decode, Encode, Type, TypeInfo, ValueRef};

/// The longest id an operator may name (bytes).
pub const MAX_LEN: usize = 200;

/// A job's id, rendered as the database renders it (decimal for integers, lowercase hyphenated
/// for UUIDs, the text itself for text ids).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(Arc<str>);

/// Why a string given by an operator is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadId {
    #[error("{0}: an id must not be empty")]
    Empty(String),
    #[error("{0}: an id is at most {MAX_LEN} bytes")]
    TooLong(String),
    #[error("{0}: an id must not contain control characters")]
    Control(String),
}

impl JobId {
    /// An id from an operator (a command's argument, an admin API path or body): non-empty, at
    /// most [`MAX_LEN`] bytes, no control characters. `what` names the parameter in the error.
    pub fn parse(what: &str, raw: &str) -> Result<Self, BadId> {
        if raw.is_empty() {
            return Err(BadId::Empty(what.to_string()));
        }
        if raw.len() > MAX_LEN {
            return Err(BadId::TooLong(what.to_string()));
        }
        if raw.chars().any(char::is_control) {
            return Err(BadId::Control(what.to_string()));
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`: a width (`{:>8}`, tables) applies.
        f.pad(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for JobId {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<i64> for JobId {
    fn from(n: i64) -> Self {
        Self(n.to_string().into())
    }
}

/// An integer id equals its decimal text (our own `bigint` table, a `SERIAL` one).
impl PartialEq<i64> for JobId {
    fn eq(&self, other: &i64) -> bool {
        self.0.parse::<i64>().ok() == Some(*other) && *self.0 == *other.to_string()
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

const UUID_OID: u32 = 2950;

fn is_uuid(ty: &PgTypeInfo) -> bool {
    ty.oid().is_some_and(|o| o.0 == UUID_OID) || ty.name() == "UUID"
}

impl Type<Postgres> for JobId {
    fn type_info() -> PgTypeInfo {
        <str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <i64 as Type<Postgres>>::compatible(ty)
            || <i32 as Type<Postgres>>::compatible(ty)
            || <i16 as Type<Postgres>>::compatible(ty)
            || <str as Type<Postgres>>::compatible(ty)
            || is_uuid(ty)
    }
}

impl PgHasArrayType for JobId {
    fn array_type_info() -> PgTypeInfo {
        <&str as PgHasArrayType>::array_type_info()
    }

    fn array_compatible(ty: &PgTypeInfo) -> bool {
        match ty.kind() {
            PgTypeKind::Array(element) => <JobId as Type<Postgres>>::compatible(element),
            _ => false,
        }
    }
}

impl Encode<'_, Postgres> for JobId {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(&*self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for JobId {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.format() == PgValueFormat::Text {
            return Ok(Self(value.as_str()?.into()));
        }
        let ty = value.type_info().into_owned();
        let bytes = value.as_bytes()?;
        let text = match ty.name() {
            "INT8" => i64::from_be_bytes(bytes.try_into()?).to_string(),
            "INT4" => i32::from_be_bytes(bytes.try_into()?).to_string(),
            "INT2" => i16::from_be_bytes(bytes.try_into()?).to_string(),
            _ if is_uuid(&ty) => uuid_text(bytes)?,
            _ => std::str::from_utf8(bytes)?.to_string(),
        };
        Ok(Self(text.into()))
    }
}

/// A UUID's 16 bytes as PostgreSQL prints it: lowercase, hyphenated.
fn uuid_text(bytes: &[u8]) -> Result<String, BoxDynError> {
    if bytes.len() != 16 {
        return Err(format!("a uuid is 16 bytes, not {}", bytes.len()).into());
    }
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_input_is_checked_and_names_the_parameter() {
        assert_eq!(JobId::parse("id", "clx1").unwrap().as_str(), "clx1");
        assert_eq!(
            JobId::parse("id", "").unwrap_err().to_string(),
            "id: an id must not be empty"
        );
        assert!(JobId::parse("id", &"a".repeat(201)).is_err());
        assert!(JobId::parse("id", &"a".repeat(200)).is_ok());
        assert!(JobId::parse("jobIds", "a\0b").is_err());
        assert!(JobId::parse("id", "a\nb").is_err());
        // Ids with ':' (callback ids) and non-ASCII text are ids.
        assert!(JobId::parse("id", "a:b:ü").is_ok());
    }

    #[test]
    fn display_pads_like_a_str() {
        assert_eq!(format!("{:>5}|", JobId::from(42)), "   42|");
        assert_eq!(JobId::from(42), 42);
        assert_ne!(JobId::from("042"), 42);
    }

    #[test]
    fn json_is_a_string() {
        let id = JobId::from(42);
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""42""#);
        let back: JobId = serde_json::from_str(r#""clx9""#).unwrap();
        assert_eq!(back.as_str(), "clx9");
    }

    #[test]
    fn uuid_bytes_render_like_postgres() {
        let b: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            uuid_text(&b).unwrap(),
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        assert!(uuid_text(&b[..3]).is_err());
    }
}
