//! Statements written for both engines (see [`crate::exec`]), run on PostgreSQL.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, Transaction};

use crate::StoreError;
use crate::exec::{Arg, Exec, Finish};

/// Binds `args` as the next parameters of `query`, each as the type its variant names.
pub(super) fn bind<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    args: &'q [Arg<'_>],
) -> Query<'q, Postgres, PgArguments> {
    for arg in args {
        query = match arg {
            Arg::Uuid(v) => query.bind(*v),
            Arg::Text(v) => query.bind(v.as_deref()),
            Arg::Int(v) => query.bind(*v),
            Arg::Int4(v) => query.bind(*v),
            Arg::Int2(v) => query.bind(*v),
            Arg::Time(v) => query.bind(*v),
            Arg::Bytes(v) => query.bind(v.as_deref()),
            Arg::Json(v) => query.bind(v.as_deref().map(Json)),
            Arg::Texts(v) => query.bind(v.iter().map(|s| s.as_ref()).collect::<Vec<&str>>()),
            Arg::OptTexts(v) => query.bind(v.iter().map(|s| s.as_deref()).collect::<Vec<_>>()),
            Arg::Uuids(v) => query.bind(v.as_slice()),
            Arg::Ints(v) => query.bind(v.as_slice()),
            Arg::Int4s(v) => query.bind(v.as_slice()),
            Arg::Times(v) => query.bind(v.as_slice()),
            Arg::ByteLists(v) => query.bind(v.as_slice()),
        };
    }
    query
}

async fn execute(
    connection: &mut PgConnection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<u64, StoreError> {
    Ok(bind(sqlx::query(sql), args)
        .execute(connection)
        .await?
        .rows_affected())
}

async fn fetch_all(
    connection: &mut PgConnection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<Vec<PgRow>, StoreError> {
    Ok(bind(sqlx::query(sql), args).fetch_all(connection).await?)
}

async fn fetch_optional(
    connection: &mut PgConnection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<Option<PgRow>, StoreError> {
    Ok(bind(sqlx::query(sql), args)
        .fetch_optional(connection)
        .await?)
}

/// Implements [`Exec`] for what dereferences to a PostgreSQL connection. (The signatures repeat
/// SQLite's implementation in `sqlite::sql`: they are the trait's; the bodies differ.)
macro_rules! exec_on_connection {
    ($(<$($life:lifetime),*> $type:ty),*) => {$(
        impl<$($life),*> Exec for $type {
            const ENGINE: crate::Engine = crate::Engine::Postgres;
            type Row = PgRow;

            fn execute(
                &mut self,
                sql: &str,
                args: &[Arg<'_>],
            ) -> impl Future<Output = Result<u64, StoreError>> + Send {
                execute(self, sql, args)
            }

            fn fetch_all(
                &mut self,
                sql: &str,
                args: &[Arg<'_>],
            ) -> impl Future<Output = Result<Vec<PgRow>, StoreError>> + Send {
                fetch_all(self, sql, args)
            }

            fn fetch_optional(
                &mut self,
                sql: &str,
                args: &[Arg<'_>],
            ) -> impl Future<Output = Result<Option<PgRow>, StoreError>> + Send {
                fetch_optional(self, sql, args)
            }
        }
    )*};
}

exec_on_connection!(
    <> PgConnection,
    <> PoolConnection<Postgres>,
    <'c> Transaction<'c, Postgres>
);

impl Finish for Transaction<'_, Postgres> {
    async fn commit(self) -> Result<(), StoreError> {
        Ok(Transaction::commit(self).await?)
    }

    async fn rollback(self) -> Result<(), StoreError> {
        Ok(Transaction::rollback(self).await?)
    }
}
