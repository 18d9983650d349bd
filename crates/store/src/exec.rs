//! Statements run the same way on both engines: a statement's text, its arguments as [`Arg`]s,
//! and an [`Exec`] that runs it on one engine's connection and hands back rows that read
//! through [`crate::rows::Fields`].
//!
//! Everything the store does is written once over [`Exec`] (see [`crate::read`] and
//! [`crate::write`]); an engine contributes only how it binds an argument, how it runs a
//! statement, and the few statements whose SQL differs (picked with [`pick`]). No crate fits:
//! `sqlx` covers both engines but its SQLite driver hands every statement to a connection
//! thread, which the embedded engine's single writer cannot afford (see `sqlite::sql`), and
//! `rusqlite` has no PostgreSQL side.
//!
//! Statement text uses PostgreSQL's numbered placeholders (`$1`, `$2`, …); the SQLite engine
//! reads them as its own `?1`, `?2`, ….

use std::borrow::Cow;
use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::rows::Fields;
use crate::{Engine, StoreError};

/// One argument of a statement. Every variant carries its type, so that a `NULL` is bound as
/// the type its column has (PostgreSQL checks), and lists are bound as arrays on PostgreSQL and
/// as one JSON array on SQLite (read there with `json_each`).
#[derive(Debug, Clone)]
pub(crate) enum Arg<'a> {
    Uuid(Option<Uuid>),
    Text(Option<Cow<'a, str>>),
    /// An eight-byte integer.
    Int(Option<i64>),
    /// A four-byte integer column (a partition); SQLite has one integer type.
    Int4(Option<i32>),
    /// A two-byte integer column (a status code).
    Int2(Option<i16>),
    Time(Option<DateTime<Utc>>),
    Bytes(Option<Cow<'a, [u8]>>),
    /// JSON text, checked to be JSON: `jsonb` on PostgreSQL, text on SQLite.
    Json(Option<Box<RawValue>>),
    Texts(Vec<Cow<'a, str>>),
    OptTexts(Vec<Option<Cow<'a, str>>>),
    Uuids(Vec<Uuid>),
    Ints(Vec<i64>),
    Int4s(Vec<i32>),
    Times(Vec<DateTime<Utc>>),
    ByteLists(Vec<Vec<u8>>),
}

impl Arg<'_> {
    /// A value as JSON; what cannot be written as JSON is an error of the store.
    pub(crate) fn json(value: &impl serde::Serialize) -> Result<Self, StoreError> {
        serde_json::value::to_raw_value(value)
            .map(|raw| Arg::Json(Some(raw)))
            .map_err(|e| crate::corrupt("a JSON argument", e))
    }

    /// JSON text the caller made, checked to be JSON.
    pub(crate) fn json_text(text: String) -> Result<Self, StoreError> {
        RawValue::from_string(text)
            .map(|raw| Arg::Json(Some(raw)))
            .map_err(|e| crate::corrupt("a JSON argument", e))
    }

    /// A partition, or any count that must fit a four-byte column.
    pub(crate) fn int4(value: u32) -> Result<Self, StoreError> {
        i32::try_from(value)
            .map(|value| Arg::Int4(Some(value)))
            .map_err(|e| crate::corrupt("a four-byte integer", e))
    }
}

impl From<Uuid> for Arg<'_> {
    fn from(value: Uuid) -> Self {
        Arg::Uuid(Some(value))
    }
}
impl From<Option<Uuid>> for Arg<'_> {
    fn from(value: Option<Uuid>) -> Self {
        Arg::Uuid(value)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(value: &'a str) -> Self {
        Arg::Text(Some(Cow::Borrowed(value)))
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(value: &'a String) -> Self {
        Arg::Text(Some(Cow::Borrowed(value)))
    }
}
impl From<String> for Arg<'_> {
    fn from(value: String) -> Self {
        Arg::Text(Some(Cow::Owned(value)))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Arg::Text(value.map(Cow::Borrowed))
    }
}
impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Arg::Int(Some(value))
    }
}
impl From<u32> for Arg<'_> {
    fn from(value: u32) -> Self {
        Arg::Int(Some(i64::from(value)))
    }
}
impl From<DateTime<Utc>> for Arg<'_> {
    fn from(value: DateTime<Utc>) -> Self {
        Arg::Time(Some(value))
    }
}
impl From<Option<DateTime<Utc>>> for Arg<'_> {
    fn from(value: Option<DateTime<Utc>>) -> Self {
        Arg::Time(value)
    }
}
impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(value: &'a [u8]) -> Self {
        Arg::Bytes(Some(Cow::Borrowed(value)))
    }
}

/// The arguments of one statement, in placeholder order: `args![tenant.as_uuid(), key]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        [$($crate::exec::Arg::from($value)),*]
    };
}
pub(crate) use args;

/// Runs statements on one engine's connection (a reader, a transaction, the writer).
///
/// Each call finishes the statement before it returns on SQLite (its futures are ready at once,
/// see `sqlite::sql`), and is one round trip on PostgreSQL.
pub(crate) trait Exec {
    /// The engine whose SQL this connection speaks.
    const ENGINE: Engine;
    type Row: Fields + Send;

    /// Runs a statement; the number of rows it changed.
    fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs a statement and returns every row.
    fn fetch_all(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send;

    /// Runs a statement and returns its first row, if any.
    fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Option<Self::Row>, StoreError>> + Send;
}

/// Ends a transaction an [`Exec`] runs in.
pub(crate) trait Finish: Sized {
    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Rolls back and waits for it, releasing every lock the transaction held.
    fn rollback(self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The statement of `X`'s engine, where the two engines' SQL differs.
pub(crate) const fn pick<X: Exec + ?Sized>(
    sqlite: &'static str,
    postgres: &'static str,
) -> &'static str {
    match X::ENGINE {
        Engine::Sqlite => sqlite,
        Engine::Postgres => postgres,
    }
}

/// The first column of the first row, as an integer (`count(*)`, `max(…)`); 0 for no row or
/// `NULL`.
pub(crate) async fn int_or_zero<X: Exec>(
    x: &mut X,
    sql: &str,
    args: &[Arg<'_>],
    column: &str,
) -> Result<i64, StoreError> {
    match x.fetch_optional(sql, args).await? {
        Some(row) => Ok(row.int_opt(column)?.unwrap_or(0)),
        None => Ok(0),
    }
}
