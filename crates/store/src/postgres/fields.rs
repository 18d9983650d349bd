//! PostgreSQL's forms of values, for the rows read back in [`crate::rows`]: `timestamptz`,
//! `jsonb`, and integers of two, four or eight bytes.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Column, Row, TypeInfo};
use uuid::Uuid;

use crate::StoreError;
use crate::rows::Fields;

/// The width in bytes of an integer column, by its type's name.
fn width(row: &PgRow, column: &str) -> Result<u8, StoreError> {
    Ok(match row.try_column(column)?.type_info().name() {
        "INT2" => 2,
        "INT4" => 4,
        _ => 8,
    })
}

impl Fields for PgRow {
    fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn uuid_opt(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn text_opt(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(match width(self, column)? {
            2 => i64::from(self.try_get::<i16, _>(column)?),
            4 => i64::from(self.try_get::<i32, _>(column)?),
            _ => self.try_get(column)?,
        })
    }
    fn int_opt(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(match width(self, column)? {
            2 => self.try_get::<Option<i16>, _>(column)?.map(i64::from),
            4 => self.try_get::<Option<i32>, _>(column)?.map(i64::from),
            _ => self.try_get(column)?,
        })
    }
    fn boolean(&self, column: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn bytes_opt(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        let Json(value) = self
            .try_get::<Json<T>, _>(column)
            .map_err(|e| crate::corrupt(column, e))?;
        Ok(value)
    }
}
