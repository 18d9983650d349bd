//! A prepared effect stored in one round trip: a call of the `write_effect` function (migration
//! `0003_one_round_trip.sql`), which runs the statements of [`crate::effect::write_in`] in the
//! server, in the call's own transaction. Through [`crate::Tx`] the same effect takes a dozen
//! round trips (begin, the once row, the order's lock, the update, each journal entry, the
//! audit record, the partition locks, the events, each stock row, commit), and on two cores the
//! client's and the server's share of each round trip is what bounds PostgreSQL's throughput.

use sqlx::postgres::PgDatabaseError;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::LOCK_CLASS_PARTITION_KEY;
use super::columns::{EventColumns, bind_audit, partition_lock_ids};
use crate::effect::{EffectOutcome, Once, OrderChange};
use crate::{StoreError, corrupt};

/// The SQLSTATEs `write_effect` raises when a stock row refuses a move: of the order's own
/// hold, and of a reservation.
const STOCK_REFUSED: &str = "TL001";
const STOCK_TAKEN: &str = "TL002";

const CALL: &str = "SELECT write_effect($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
     $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, \
     $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50)";

/// Stores `change`, made once by `once`, in one call.
pub(super) async fn write(
    pool: &PgPool,
    once: &Once,
    change: &OrderChange,
) -> Result<EffectOutcome, StoreError> {
    let (group, event, source, delivery) = match once {
        Once::Inbox { group, event } => (Some(*group), Some(event.as_uuid()), None, None),
        Once::Webhook { source, delivery } => (None, None, Some(*source), Some(delivery.as_str())),
    };
    let journal = &change.journal;
    let postings = || {
        journal
            .iter()
            .flat_map(|e| e.postings.iter().map(move |p| (e, p)))
    };
    let events = &change.events;
    let stock = &change.stock;
    let deltas: Vec<_> = stock.iter().map(|m| m.kind.delta(m.quantity)).collect();
    let call = sqlx::query(CALL)
        .bind(group)
        .bind(event)
        .bind(source)
        .bind(delivery)
        .bind(change.tenant.as_uuid())
        .bind(change.order.as_uuid())
        .bind(&change.expected_status)
        .bind(Json(&change.expected_saga))
        .bind(&change.status)
        .bind(Json(&change.saga))
        .bind(change.at)
        .bind(journal.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
        .bind(journal.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(
            journal
                .iter()
                .map(|e| e.pending_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            journal
                .iter()
                .map(|e| e.body.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            journal
                .iter()
                .map(|e| e.order_id.map(|id| id.as_uuid()))
                .collect::<Vec<Option<Uuid>>>(),
        )
        .bind(journal.iter().map(|e| e.created_at).collect::<Vec<_>>())
        .bind(postings().map(|(e, _)| e.id.as_str()).collect::<Vec<_>>())
        .bind(posting_lines(journal)?)
        .bind(
            postings()
                .map(|(_, p)| p.account.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            postings()
                .map(|(_, p)| p.currency.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(postings().map(|(_, p)| p.amount_minor).collect::<Vec<_>>());
    let call = bind_audit(call, &change.audit)
        .bind(LOCK_CLASS_PARTITION_KEY)
        .bind(partition_lock_ids(events));
    let outcome = EventColumns::of(events)?
        .bind(call)
        .bind(stock.iter().map(|m| m.sku.as_str()).collect::<Vec<_>>())
        .bind(
            stock
                .iter()
                .map(|m| m.location.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(stock.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>())
        .bind(stock.iter().map(|m| m.quantity).collect::<Vec<_>>())
        .bind(
            stock
                .iter()
                .map(|m| m.order_id.map(|id| id.as_uuid()))
                .collect::<Vec<Option<Uuid>>>(),
        )
        .bind(stock.iter().map(|m| m.at).collect::<Vec<_>>())
        .bind(deltas.iter().map(|d| d.on_hand).collect::<Vec<_>>())
        .bind(deltas.iter().map(|d| d.reserved).collect::<Vec<_>>())
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<String, _>(0));
    match outcome {
        Ok(outcome) => match outcome.as_str() {
            "written" => Ok(EffectOutcome::Written),
            "applied" => Ok(EffectOutcome::AlreadyApplied),
            "changed" => Ok(EffectOutcome::OrderChanged),
            other => Err(StoreError::Corrupt(format!(
                "write_effect returned '{other}'"
            ))),
        },
        Err(error) => refused_move(error, change),
    }
}

/// Each posting's line within its entry.
fn posting_lines(journal: &[crate::records::NewJournalEntry]) -> Result<Vec<i32>, StoreError> {
    let mut lines = Vec::new();
    for entry in journal {
        for line in 0..entry.postings.len() {
            lines.push(i32::try_from(line).map_err(|e| corrupt("posting line", e))?);
        }
    }
    Ok(lines)
}

/// What a failed call means: a refused stock move (found by the index the function gives)
/// as [`crate::effect::refusal`] reads it, or the database's error.
fn refused_move(error: sqlx::Error, change: &OrderChange) -> Result<EffectOutcome, StoreError> {
    let refused = match &error {
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some(STOCK_REFUSED | STOCK_TAKEN)) =>
        {
            db.try_downcast_ref::<PgDatabaseError>()
                .and_then(PgDatabaseError::detail)
                .and_then(|detail| detail.parse::<usize>().ok())
                .and_then(|index| change.stock.get(index.checked_sub(1)?))
        }
        _ => None,
    };
    match refused {
        Some(movement) => crate::effect::refusal(movement),
        None => Err(StoreError::Database(error)),
    }
}
