//! Statements on a SQLite connection, run on the calling thread.
//!
//! A statement on SQLite's page cache takes microseconds; handing each one to a connection's own
//! thread and waking the caller again cost more than running it, and made the single writer
//! wait on thread switches rather than on work. So the engine's connections are plain
//! `rusqlite` connections used in place: a query is built with its arguments bound, run, and its
//! rows come back owned, so that no statement outlives the call that ran it. Statements are
//! prepared once per connection and kept in its cache.

use rusqlite::types::{FromSql, Value, ValueRef};
#[cfg(test)]
use rusqlite::types::{ToSql, ToSqlOutput};
use rusqlite::{Connection, params_from_iter};

use crate::StoreError;
use crate::exec::Arg;

/// Prepared statements kept per connection: every statement text the engine issues fits, so a
/// busy connection never prepares one twice.
pub(super) const STATEMENT_CACHE_CAPACITY: usize = 128;

/// A statement with its arguments, ready to run on a connection.
#[must_use = "a query does nothing until it is run"]
pub(super) struct Query<'q> {
    sql: std::borrow::Cow<'q, str>,
    arguments: Vec<Value>,
    /// An argument that could not be bound: running the query reports it.
    unbound: Option<rusqlite::Error>,
}

/// Builds a query over `sql`; arguments bind in order, to `?` placeholders.
pub(super) fn query(sql: &str) -> Query<'_> {
    Query {
        sql: std::borrow::Cow::Borrowed(sql),
        arguments: Vec::new(),
        unbound: None,
    }
}

impl<'q> Query<'q> {
    /// Binds the next argument (tests build statements this way; the store binds
    /// [`Arg`]s).
    #[cfg(test)]
    pub(super) fn bind<T: ToSql>(mut self, value: T) -> Self {
        match value.to_sql() {
            Ok(ToSqlOutput::Borrowed(value)) => self.arguments.push(Value::from(value)),
            Ok(ToSqlOutput::Owned(value)) => self.arguments.push(value),
            Ok(_) => {
                self.unbound
                    .get_or_insert(rusqlite::Error::ToSqlConversionFailure(
                        "an argument of a kind the engine does not bind".into(),
                    ));
            }
            Err(error) => {
                self.unbound.get_or_insert(error);
            }
        }
        self
    }

    /// The statement, prepared, with the arguments to run it with.
    fn prepare<'c>(
        self,
        connection: &'c Connection,
    ) -> Result<(rusqlite::CachedStatement<'c>, Vec<Value>), StoreError> {
        if let Some(error) = self.unbound {
            return Err(error.into());
        }
        Ok((connection.prepare_cached(&self.sql)?, self.arguments))
    }

    /// Runs the statement; the number of rows it changed.
    pub(super) fn execute(self, connection: &Connection) -> Result<u64, StoreError> {
        let (mut statement, arguments) = self.prepare(connection)?;
        let changed = statement.execute(params_from_iter(arguments.iter()))?;
        Ok(u64::try_from(changed).unwrap_or(u64::MAX))
    }

    /// Runs the statement and returns every row.
    pub(super) fn fetch_all(self, connection: &Connection) -> Result<Vec<Row>, StoreError> {
        self.fetch_up_to(connection, usize::MAX)
    }

    /// Runs the statement and returns its first `count` rows.
    fn fetch_up_to(self, connection: &Connection, count: usize) -> Result<Vec<Row>, StoreError> {
        let (mut statement, arguments) = self.prepare(connection)?;
        let columns: std::sync::Arc<[String]> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut rows = statement.query(params_from_iter(arguments.iter()))?;
        let mut all = Vec::new();
        while all.len() < count
            && let Some(row) = rows.next()?
        {
            let values = (0..columns.len())
                .map(|index| owned(row.get_ref(index)?))
                .collect::<Result<Vec<_>, StoreError>>()?;
            all.push(Row {
                columns: std::sync::Arc::clone(&columns),
                values,
            });
        }
        Ok(all)
    }

    /// Runs the statement and returns its first row, if any.
    pub(super) fn fetch_optional(self, connection: &Connection) -> Result<Option<Row>, StoreError> {
        Ok(self.fetch_up_to(connection, 1)?.into_iter().next())
    }

    /// Runs the statement and returns its first row, which must exist.
    pub(super) fn fetch_one(self, connection: &Connection) -> Result<Row, StoreError> {
        self.fetch_optional(connection)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The first column of the first row.
    pub(super) fn fetch_scalar<T: FromSql>(self, connection: &Connection) -> Result<T, StoreError> {
        self.fetch_one(connection)?.try_get(0)
    }

    /// The first column of the first row, if there is a row.
    #[cfg(test)]
    pub(super) fn fetch_optional_scalar<T: FromSql>(
        self,
        connection: &Connection,
    ) -> Result<Option<T>, StoreError> {
        self.fetch_optional(connection)?
            .map(|row| row.try_get(0))
            .transpose()
    }

    /// The first column of every row.
    #[cfg(test)]
    pub(super) fn fetch_all_scalar<T: FromSql>(
        self,
        connection: &Connection,
    ) -> Result<Vec<T>, StoreError> {
        self.fetch_all(connection)?
            .iter()
            .map(|row| row.try_get(0))
            .collect()
    }
}

/// A statement written for both engines, its `$n` placeholders read as SQLite's `?n`: the same
/// numbered parameter in either spelling. (`$` before anything but a digit, as in a JSON path
/// `'$.a'`, is left as it is.)
pub(super) fn placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    let bytes = sql.as_bytes();
    if !bytes
        .windows(2)
        .any(|pair| pair[0] == b'$' && pair[1].is_ascii_digit())
    {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// An argument as SQLite holds it: times as microseconds, UUIDs as 16-byte blobs, JSON as
/// text, a list of text as one JSON array.
fn value(arg: &Arg<'_>) -> Result<Value, &'static str> {
    fn or_null<T>(value: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
        value.map_or(Value::Null, f)
    }
    Ok(match arg {
        Arg::Uuid(v) => or_null(*v, |v| Value::Blob(v.as_bytes().to_vec())),
        Arg::Text(v) => or_null(v.as_ref(), |v| Value::Text(v.to_string())),
        Arg::Int(v) => or_null(*v, Value::Integer),
        Arg::Int4(v) => or_null(*v, |v| Value::Integer(i64::from(v))),
        Arg::Int2(v) => or_null(*v, |v| Value::Integer(i64::from(v))),
        Arg::Time(v) => or_null(*v, |v| Value::Integer(crate::to_micros(v))),
        Arg::Bytes(v) => or_null(v.as_ref(), |v| Value::Blob(v.to_vec())),
        Arg::Json(v) => or_null(v.as_ref(), |v| Value::Text(v.get().to_owned())),
        Arg::Texts(v) => Value::Text(
            serde_json::Value::from(v.iter().map(|s| s.as_ref()).collect::<Vec<&str>>())
                .to_string(),
        ),
        Arg::OptTexts(_)
        | Arg::Uuids(_)
        | Arg::Ints(_)
        | Arg::Int4s(_)
        | Arg::Times(_)
        | Arg::ByteLists(_) => {
            return Err("a list argument of a kind SQLite statements do not take");
        }
    })
}

/// A statement written for both engines, with its arguments, as a query on this engine.
fn statement<'q>(sql: &'q str, args: &[Arg<'_>]) -> Query<'q> {
    let mut query = Query {
        sql: placeholders(sql),
        arguments: Vec::with_capacity(args.len()),
        unbound: None,
    };
    for arg in args {
        match value(arg) {
            Ok(value) => query.arguments.push(value),
            Err(message) => {
                query
                    .unbound
                    .get_or_insert(rusqlite::Error::ToSqlConversionFailure(message.into()));
            }
        }
    }
    query
}

/// What statements run on: a reader, a command's transaction, the writer as a queued job has
/// it. Each runs to its end before the call returns, so the futures [`Exec`] hands back are
/// ready at once and hold only the result.
pub(crate) trait OnSqlite {
    fn connection(&self) -> Result<&Connection, StoreError>;
}

impl<T: OnSqlite> crate::exec::Exec for T {
    const ENGINE: crate::Engine = crate::Engine::Sqlite;
    type Row = Row;

    fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(
            self.connection()
                .and_then(|connection| statement(sql, args).execute(connection)),
        )
    }

    fn fetch_all(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl std::future::Future<Output = Result<Vec<Row>, StoreError>> + Send {
        std::future::ready(
            self.connection()
                .and_then(|connection| statement(sql, args).fetch_all(connection)),
        )
    }

    fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl std::future::Future<Output = Result<Option<Row>, StoreError>> + Send {
        std::future::ready(
            self.connection()
                .and_then(|connection| statement(sql, args).fetch_optional(connection)),
        )
    }
}

/// The writer connection as a job of the writer's queue sees it (see `group`): the statements
/// of an effect run back to back on it, polled once (they never wait).
pub(super) struct OnConnection<'c>(pub(super) &'c Connection);

impl OnSqlite for OnConnection<'_> {
    fn connection(&self) -> Result<&Connection, StoreError> {
        Ok(self.0)
    }
}

/// A column's value, copied out of the statement. Text that is not UTF-8 (written by something
/// other than Tally) is an error, not a panic.
fn owned(value: ValueRef<'_>) -> Result<Value, StoreError> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(integer) => Value::Integer(integer),
        ValueRef::Real(real) => Value::Real(real),
        ValueRef::Text(text) => Value::Text(
            std::str::from_utf8(text)
                .map_err(|e| StoreError::Corrupt(format!("stored text is not UTF-8: {e}")))?
                .to_owned(),
        ),
        ValueRef::Blob(blob) => Value::Blob(blob.to_vec()),
    })
}

/// One result row, owned.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    columns: std::sync::Arc<[String]>,
    values: Vec<Value>,
}

/// A column by name or by position.
pub(super) trait Column {
    fn position(&self, columns: &[String]) -> Option<usize>;
}

impl Column for &str {
    fn position(&self, columns: &[String]) -> Option<usize> {
        columns
            .iter()
            .position(|name| name.eq_ignore_ascii_case(self))
    }
}

impl Column for usize {
    fn position(&self, columns: &[String]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
}

impl Row {
    /// The value of one column, converted.
    pub(super) fn try_get<T: FromSql>(&self, column: impl Column) -> Result<T, StoreError> {
        let Some((index, value)) = column
            .position(&self.columns)
            .and_then(|index| Some((index, self.values.get(index)?)))
        else {
            return Err(StoreError::Corrupt("a query's column is missing".into()));
        };
        let value = ValueRef::from(value);
        T::column_result(value).map_err(|error| {
            StoreError::Corrupt(format!("column {}: {error}", self.columns[index]))
        })
    }
}

/// SQLite's forms of values: times as microseconds since the epoch, JSON as text, UUIDs as
/// 16-byte blobs.
impl crate::rows::Fields for Row {
    fn uuid(&self, column: &str) -> Result<uuid::Uuid, StoreError> {
        self.try_get(column)
    }
    fn uuid_opt(&self, column: &str) -> Result<Option<uuid::Uuid>, StoreError> {
        self.try_get(column)
    }
    fn text(&self, column: &str) -> Result<String, StoreError> {
        self.try_get(column)
    }
    fn text_opt(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.try_get(column)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.try_get(column)
    }
    fn int_opt(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(column)
    }
    fn boolean(&self, column: &str) -> Result<bool, StoreError> {
        self.try_get(column)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        self.try_get(column)
    }
    fn bytes_opt(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.try_get(column)
    }
    fn time(&self, column: &str) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
        crate::from_micros(self.try_get(column)?)
    }
    fn json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        let Some(Value::Text(text)) = column
            .position(&self.columns)
            .and_then(|index| self.values.get(index))
        else {
            return Err(StoreError::Corrupt(format!(
                "column {column} is not JSON text"
            )));
        };
        serde_json::from_str(text).map_err(|e| crate::corrupt(column, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        let connection = Connection::open_in_memory().expect("open");
        connection
            .execute_batch("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
            .expect("schema");
        connection
    }

    #[test]
    fn arguments_bind_in_order_and_columns_read_by_name_or_position() {
        let connection = connection();
        for (id, name) in [(1, "one"), (2, "two"), (3, "three")] {
            let changed = query("INSERT INTO item (id, name, data) VALUES (?, ?, ?)")
                .bind(id)
                .bind(name)
                .bind(&[7_u8, 8][..])
                .execute(&connection)
                .expect("insert");
            assert_eq!(changed, 1);
        }
        let rows = query("SELECT id, name, data FROM item WHERE id >= ? ORDER BY id")
            .bind(2)
            .fetch_all(&connection)
            .expect("select");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].try_get::<i64>("id").expect("id"), 2);
        assert_eq!(rows[1].try_get::<String>(1).expect("name"), "three");
        assert_eq!(
            rows[1].try_get::<Vec<u8>>("DATA").expect("data"),
            vec![7, 8]
        );
        let first: Option<String> = query("SELECT name FROM item ORDER BY id DESC")
            .fetch_optional_scalar(&connection)
            .expect("first");
        assert_eq!(first.as_deref(), Some("three"));
        let none: Option<i64> = query("SELECT id FROM item WHERE id = ?")
            .bind(99)
            .fetch_optional_scalar(&connection)
            .expect("none");
        assert_eq!(none, None);
    }

    #[test]
    fn a_missing_row_column_or_argument_is_an_error_not_a_null() {
        let connection = connection();
        let missing_row = query("SELECT id FROM item").fetch_scalar::<i64>(&connection);
        assert!(matches!(
            missing_row,
            Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
        ));
        query("INSERT INTO item (id, name) VALUES (1, NULL)")
            .execute(&connection)
            .expect("insert");
        let row = query("SELECT id, name FROM item")
            .fetch_one(&connection)
            .expect("row");
        assert!(matches!(
            row.try_get::<i64>("nope"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            row.try_get::<String>(5),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(row.try_get::<Option<String>>("name").expect("null"), None);
        assert!(matches!(
            row.try_get::<String>("name"),
            Err(StoreError::Corrupt(_))
        ));
        // An integer SQLite cannot hold fails the statement rather than binding NULL.
        let too_big = query("INSERT INTO item (id, name) VALUES (?, 'x')")
            .bind(u64::MAX)
            .execute(&connection);
        assert!(matches!(too_big, Err(StoreError::Sqlite(_))), "{too_big:?}");
        let stored: i64 = query("SELECT count(*) FROM item")
            .fetch_scalar(&connection)
            .expect("count");
        assert_eq!(stored, 1);
        // Text that is not UTF-8, written behind Tally's back, reads as corrupt data.
        query("INSERT INTO item (id, name) VALUES (2, CAST(x'ff' AS TEXT))")
            .execute(&connection)
            .expect("insert");
        let bad = query("SELECT name FROM item WHERE id = 2").fetch_all(&connection);
        assert!(matches!(bad, Err(StoreError::Corrupt(_))), "{bad:?}");
    }

    /// A statement written for both engines runs with `$n` read as `?n`, and an argument SQLite
    /// cannot bind fails the statement instead of shifting the arguments after it.
    #[test]
    fn shared_statements_bind_typed_arguments_or_fail_whole() {
        let connection = connection();
        let insert = "INSERT INTO item (id, name, data) VALUES ($1, $2, $3)";
        let args = [Arg::Int(Some(1)), Arg::from("one"), Arg::Bytes(None)];
        assert_eq!(
            statement(insert, &args)
                .execute(&connection)
                .expect("insert"),
            1
        );
        let listed = [
            Arg::Int(Some(2)),
            Arg::Uuids(vec![uuid::Uuid::nil()]),
            Arg::from("x"),
        ];
        let refused = statement(insert, &listed).execute(&connection);
        assert!(matches!(refused, Err(StoreError::Sqlite(_))), "{refused:?}");
        let rows = statement("SELECT name FROM item WHERE id >= $1", &[Arg::Int(Some(1))])
            .fetch_all(&connection)
            .expect("select");
        assert_eq!(rows.len(), 1, "the refused insert wrote nothing");
        assert_eq!(rows[0].try_get::<String>("name").expect("name"), "one");
        assert_eq!(placeholders("SELECT '$.a', $12"), "SELECT '$.a', ?12");
    }
}
