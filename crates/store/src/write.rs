//! The statements of one command transaction, written once for both engines over [`Exec`]:
//! what [`crate::Tx`] is made of ([`crate::tx::EngineTx`] calls these), and what an effect
//! writes (see [`crate::effect::write_with`]).
//!
//! Where the engines' SQL differs, [`pick`] chooses: PostgreSQL locks rows (`FOR UPDATE`) where
//! SQLite's single writer holds them all already, and takes lists as arrays in one statement
//! where SQLite, whose statements cost no round trip, runs one per row.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use tally_domain::catalog::{Product, Sku};
use tally_domain::checkout::Saga;
use tally_domain::ids::{EventId, OrderId, ProductId, TenantId};
use tally_domain::inventory::StockLevel;
use tally_domain::order::Order;
use tally_domain::text::Code;

use crate::exec::{Arg, Exec, args, pick};
use crate::records::{
    DeadLetterRecord, IdempotencyRecord, LockedStock, NewIdempotencyRecord, NewJournalEntry,
    OrderState, ProductRecord, StockMovement,
};
use crate::rows::{self, Fields};
use crate::tx::CatalogPrices;
use crate::{Engine, StoreError, corrupt};

use crate::postgres::LOCK_CLASS_IDEMPOTENCY_KEY;

mod outbox;
pub(crate) use outbox::{append_events, insert_audit, partition_lock_ids, record_command};

pub(crate) const SELECT_IDEMPOTENCY_RECORD_BY_KEY: &str = concat!(
    rows::select_idempotency_record!(),
    " WHERE tenant_id = $1 AND key = $2"
);

fn sku_list(skus: &[Sku]) -> Arg<'_> {
    Arg::Texts(skus.iter().map(|s| Cow::Borrowed(s.as_str())).collect())
}

fn string_list(skus: &[String]) -> Arg<'_> {
    Arg::Texts(skus.iter().map(|s| Cow::Borrowed(s.as_str())).collect())
}

/// Makes this transaction the only one working under `key` until it ends; `false` when another
/// holds it. On SQLite the transaction runs on the only writer: no other command can be under
/// way.
pub(crate) async fn lock_idempotency_key<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    key: &str,
) -> Result<bool, StoreError> {
    if X::ENGINE == Engine::Sqlite {
        return Ok(true);
    }
    // A try-lock, not a wait: a second request under the same key, from any process, is told
    // 409 at once rather than held behind the first.
    let lock_id = crate::log::key_lock_id(&format!("{tenant}/{key}"));
    let row = x
        .fetch_optional(
            "SELECT pg_try_advisory_xact_lock($1, $2) AS locked",
            &[
                Arg::Int4(Some(LOCK_CLASS_IDEMPOTENCY_KEY)),
                Arg::Int4(Some(lock_id)),
            ],
        )
        .await?;
    row.map_or(Ok(false), |row| row.boolean("locked"))
}

pub(crate) async fn find_idempotency_record<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let row = x
        .fetch_optional(
            SELECT_IDEMPOTENCY_RECORD_BY_KEY,
            &args![tenant.as_uuid(), key],
        )
        .await?;
    row.as_ref().map(rows::idempotency_record).transpose()
}

pub(crate) async fn delete_idempotency_record<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    key: &str,
) -> Result<(), StoreError> {
    x.execute(
        "DELETE FROM idempotency_records WHERE tenant_id = $1 AND key = $2",
        &args![tenant.as_uuid(), key],
    )
    .await?;
    Ok(())
}

/// The eight parameters of an idempotency record: tenant, key, fingerprint, status code,
/// location, response body, creation and expiry times.
fn idempotency_args<'a>(tenant: TenantId, record: &'a NewIdempotencyRecord<'_>) -> [Arg<'a>; 8] {
    [
        tenant.as_uuid().into(),
        record.key.into(),
        record.fingerprint[..].into(),
        Arg::Int2(Some(
            i16::try_from(record.response.status).unwrap_or(i16::MAX),
        )),
        record.response.location.as_deref().into(),
        record.response.body[..].into(),
        record.created_at.into(),
        record.expires_at.into(),
    ]
}

pub(crate) async fn insert_idempotency_record<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    record: &NewIdempotencyRecord<'_>,
) -> Result<(), StoreError> {
    x.execute(
        "INSERT INTO idempotency_records (tenant_id, key, fingerprint, status_code, location, \
         response_body, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &idempotency_args(tenant, record),
    )
    .await?;
    Ok(())
}

/// Each SKU a statement asks for (`$2`, a list), joined to a lateral subquery that probes the
/// tenant's key for it (`$1`). Asked as `sku = ANY($2)`, a hundred SKUs or more (an order may
/// have 100 lines) let PostgreSQL's planner use the key for the tenant alone and test its whole
/// catalog against the array (11.8 ms for 200 SKUs of a 50,000-variant catalog, where probes
/// take under 1 ms); a lateral subquery with a `LIMIT` or `OFFSET` is never flattened into a
/// join, so each SKU is one probe of the key whatever the statistics say. SQLite reads the list
/// as a JSON array.
macro_rules! each_wanted_sku {
    () => {
        "(SELECT DISTINCT unnest($2::text[]) AS sku) AS w CROSS JOIN LATERAL"
    };
}

pub(crate) async fn existing_skus<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    skus: &[Sku],
) -> Result<Vec<Sku>, StoreError> {
    let sql = pick::<X>(
        "SELECT sku FROM variants WHERE tenant_id = $1 \
         AND sku IN (SELECT value FROM json_each($2)) ORDER BY sku",
        concat!(
            "SELECT v.sku FROM ",
            each_wanted_sku!(),
            " (SELECT sku FROM variants WHERE tenant_id = $1 AND sku = w.sku LIMIT 1) AS v \
             ORDER BY v.sku"
        ),
    );
    let rows = x
        .fetch_all(sql, &[tenant.as_uuid().into(), sku_list(skus)])
        .await?;
    rows.iter()
        .map(|row| Sku::parse(&row.text("sku")?).map_err(|e| corrupt("sku", e)))
        .collect()
}

pub(crate) async fn insert_product<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    product: &Product,
) -> Result<(), StoreError> {
    x.execute(
        "INSERT INTO products (tenant_id, id, name, created_at) VALUES ($1, $2, $3, $4)",
        &args![
            tenant.as_uuid(),
            product.id.as_uuid(),
            product.name.as_str(),
            product.created_at
        ],
    )
    .await?;
    let prices = |variant: &tally_domain::catalog::Variant| {
        crate::codec::prices_json(&variant.prices).to_string()
    };
    match X::ENGINE {
        Engine::Postgres => {
            x.execute(
                "INSERT INTO variants (tenant_id, sku, product_id, prices, position) \
                 SELECT $1, sku, $2, prices::jsonb, position::int - 1 \
                 FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS v(sku, prices, position)",
                &[
                    tenant.as_uuid().into(),
                    product.id.as_uuid().into(),
                    Arg::Texts(
                        product
                            .variants
                            .iter()
                            .map(|v| Cow::Borrowed(v.sku.as_str()))
                            .collect(),
                    ),
                    Arg::Texts(product.variants.iter().map(|v| prices(v).into()).collect()),
                ],
            )
            .await?;
        }
        Engine::Sqlite => {
            for (position, variant) in product.variants.iter().enumerate() {
                x.execute(
                    "INSERT INTO variants (tenant_id, sku, product_id, prices, position) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        tenant.as_uuid().into(),
                        variant.sku.as_str().into(),
                        product.id.as_uuid().into(),
                        Arg::json_text(prices(variant))?,
                        Arg::Int(Some(i64::try_from(position).unwrap_or(i64::MAX))),
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// A product with its variants; with `lock`, its row locked for the rest of the transaction
/// (SQLite's single writer holds it already).
pub(crate) async fn product<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: ProductId,
    lock: bool,
) -> Result<Option<ProductRecord>, StoreError> {
    let sql = match (X::ENGINE, lock) {
        (Engine::Postgres, true) => {
            "SELECT name, created_at FROM products WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        }
        _ => "SELECT name, created_at FROM products WHERE tenant_id = $1 AND id = $2",
    };
    let key = args![tenant.as_uuid(), id.as_uuid()];
    let Some(row) = x.fetch_optional(sql, &key).await? else {
        return Ok(None);
    };
    let variants = x
        .fetch_all(
            "SELECT sku, prices FROM variants WHERE tenant_id = $1 AND product_id = $2 \
             ORDER BY position",
            &key,
        )
        .await?;
    rows::product(id, &row, &variants).map(Some)
}

/// Stores a product's name and every variant's prices.
pub(crate) async fn update_product<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    product: &Product,
) -> Result<(), StoreError> {
    x.execute(
        "UPDATE products SET name = $1 WHERE tenant_id = $2 AND id = $3",
        &args![
            product.name.as_str(),
            tenant.as_uuid(),
            product.id.as_uuid()
        ],
    )
    .await?;
    for variant in &product.variants {
        x.execute(
            "UPDATE variants SET prices = $1 WHERE tenant_id = $2 AND sku = $3 AND product_id = $4",
            &[
                Arg::json_text(crate::codec::prices_json(&variant.prices).to_string())?,
                tenant.as_uuid().into(),
                variant.sku.as_str().into(),
                product.id.as_uuid().into(),
            ],
        )
        .await?;
    }
    Ok(())
}

pub(crate) async fn catalog_prices<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    skus: &[Sku],
) -> Result<CatalogPrices, StoreError> {
    let sql = pick::<X>(
        "SELECT sku, prices FROM variants WHERE tenant_id = $1 \
         AND sku IN (SELECT value FROM json_each($2))",
        concat!(
            "SELECT v.sku, v.prices FROM ",
            each_wanted_sku!(),
            " (SELECT sku, prices FROM variants WHERE tenant_id = $1 AND sku = w.sku LIMIT 1) AS v"
        ),
    );
    let rows = x
        .fetch_all(sql, &[tenant.as_uuid().into(), sku_list(skus)])
        .await?;
    rows.iter().map(rows::catalog_price).collect()
}

pub(crate) async fn lock_stock_level<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    sku: &Sku,
    location: &Code,
    now: DateTime<Utc>,
) -> Result<Option<StockLevel>, StoreError> {
    x.execute(
        "INSERT INTO stock_levels (tenant_id, sku, location, on_hand, reserved, updated_at) \
         SELECT tenant_id, sku, $1, 0, 0, $2 FROM variants WHERE tenant_id = $3 AND sku = $4 \
         ON CONFLICT (tenant_id, sku, location) DO NOTHING",
        &args![location.as_str(), now, tenant.as_uuid(), sku.as_str()],
    )
    .await?;
    let sql = pick::<X>(
        "SELECT on_hand, reserved FROM stock_levels \
         WHERE tenant_id = $1 AND sku = $2 AND location = $3",
        "SELECT on_hand, reserved FROM stock_levels \
         WHERE tenant_id = $1 AND sku = $2 AND location = $3 FOR UPDATE",
    );
    let row = x
        .fetch_optional(
            sql,
            &args![tenant.as_uuid(), sku.as_str(), location.as_str()],
        )
        .await?;
    row.as_ref().map(rows::stock_level).transpose()
}

pub(crate) async fn insert_order<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    order: &Order,
) -> Result<(), StoreError> {
    x.execute(
        "INSERT INTO orders (tenant_id, id, channel, customer_id, customer_email, currency, \
         total_minor, status, lines, shipping_address, saga, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        &[
            tenant.as_uuid().into(),
            order.id.as_uuid().into(),
            order.channel.as_str().into(),
            order.customer.id.as_str().into(),
            order.customer.email.as_ref().map(|e| e.as_str()).into(),
            order.currency.code().into(),
            order.total_minor.into(),
            order.status.as_str().into(),
            Arg::json(&order.lines)?,
            Arg::json(&order.shipping_address)?,
            // The saga as the steps write it, not the column's default `{}`: an effect checks
            // that the order is still as a step read it by comparing the stored saga with the
            // one the step expects (on PostgreSQL as `jsonb`), and `{}` is not equal to the
            // default saga written out.
            Arg::json(&Saga::default())?,
            order.created_at.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Records that `group` applied `event`; `false` when it already had (a duplicate delivery).
pub(crate) async fn insert_inbox<X: Exec>(
    x: &mut X,
    group: &str,
    event: EventId,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = x
        .execute(
            "INSERT INTO inbox (group_name, event_id, applied_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            &args![group, event.as_uuid(), now],
        )
        .await?;
    Ok(done == 1)
}

/// Parks an event as a dead letter of its group, or updates the group's letter for it; a
/// letter an operator discarded stays as it is.
pub(crate) async fn upsert_dead_letter<X: Exec>(
    x: &mut X,
    letter: &DeadLetterRecord,
) -> Result<(), StoreError> {
    x.execute(
        "INSERT INTO dead_letters (id, tenant_id, group_name, event_id, partition, position, \
         event_type, subject, error, attempts, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (group_name, event_id) DO UPDATE SET error = excluded.error, \
         attempts = excluded.attempts, status = excluded.status, updated_at = excluded.updated_at \
         WHERE dead_letters.status <> $14",
        &[
            letter.id.into(),
            letter.tenant_id.as_uuid().into(),
            letter.group.as_str().into(),
            letter.event_id.as_uuid().into(),
            Arg::int4(letter.partition)?,
            letter.position.into(),
            letter.event_type.as_str().into(),
            letter.subject.as_str().into(),
            letter.error.as_str().into(),
            Arg::json(&letter.attempts)?,
            letter.status.as_str().into(),
            letter.created_at.into(),
            letter.updated_at.into(),
            crate::DISCARDED.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Records a partner's webhook delivery; `false` when it was recorded before.
pub(crate) async fn insert_webhook_delivery<X: Exec>(
    x: &mut X,
    source: &str,
    delivery_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = x
        .execute(
            "INSERT INTO webhook_deliveries (source, delivery_id, received_at) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &args![source, delivery_id, now],
        )
        .await?;
    Ok(done == 1)
}

/// Locks an order for the rest of the transaction and tells whether it is still in `status`
/// with `saga` (`false` also when it does not exist). SQLite's single writer holds the lock
/// already.
pub(crate) async fn order_still<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: OrderId,
    status: &str,
    saga: &Saga,
) -> Result<bool, StoreError> {
    let sql = pick::<X>(
        "SELECT status, saga FROM orders WHERE tenant_id = $1 AND id = $2",
        "SELECT status, saga FROM orders WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    );
    let Some(row) = x
        .fetch_optional(sql, &args![tenant.as_uuid(), id.as_uuid()])
        .await?
    else {
        return Ok(false);
    };
    if row.text("status")? != status {
        return Ok(false);
    }
    Ok(row.json::<Saga>("saga")? == *saga)
}

/// Locks an order and its saga state for the rest of the transaction.
pub(crate) async fn lock_order<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: OrderId,
) -> Result<Option<OrderState>, StoreError> {
    let sql = pick::<X>(
        concat!(rows::select_order!(), " WHERE tenant_id = $1 AND id = $2"),
        concat!(
            rows::select_order!(),
            " WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        ),
    );
    let row = x
        .fetch_optional(sql, &args![tenant.as_uuid(), id.as_uuid()])
        .await?;
    row.as_ref().map(rows::order_state).transpose()
}

pub(crate) async fn update_order<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: OrderId,
    status: &str,
    saga: &Saga,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    x.execute(
        "UPDATE orders SET status = $1, saga = $2, updated_at = $3 \
         WHERE tenant_id = $4 AND id = $5",
        &[
            status.into(),
            Arg::json(saga)?,
            now.into(),
            tenant.as_uuid().into(),
            id.as_uuid().into(),
        ],
    )
    .await?;
    Ok(())
}

/// The stock rows of `skus` as last committed, by SKU and location, without locking them.
pub(crate) async fn read_stock<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    skus: &[String],
) -> Result<Vec<LockedStock>, StoreError> {
    let sql = pick::<X>(
        "SELECT sku, location, on_hand, reserved FROM stock_levels \
         WHERE tenant_id = $1 AND sku IN (SELECT value FROM json_each($2)) ORDER BY sku, location",
        // A row per location, so `OFFSET 0` rather than a limit keeps the subquery apart.
        concat!(
            "SELECT s.sku, s.location, s.on_hand, s.reserved FROM ",
            each_wanted_sku!(),
            " (SELECT sku, location, on_hand, reserved FROM stock_levels WHERE tenant_id = $1 \
             AND sku = w.sku OFFSET 0) AS s ORDER BY s.sku, s.location"
        ),
    );
    let rows = x
        .fetch_all(sql, &[tenant.as_uuid().into(), string_list(skus)])
        .await?;
    rows.iter().map(rows::locked_stock).collect()
}

/// Locks every stock row of `skus`, in (SKU, location) order so concurrent reservations cannot
/// deadlock. SQLite's single writer holds every row already.
pub(crate) async fn lock_stock<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    skus: &[String],
) -> Result<Vec<LockedStock>, StoreError> {
    if X::ENGINE == Engine::Sqlite {
        return read_stock(x, tenant, skus).await;
    }
    let rows = x
        .fetch_all(
            "SELECT sku, location, on_hand, reserved FROM stock_levels \
             WHERE tenant_id = $1 AND sku = ANY($2) \
             ORDER BY sku COLLATE \"C\", location COLLATE \"C\" FOR UPDATE",
            &[tenant.as_uuid().into(), string_list(skus)],
        )
        .await?;
    rows.iter().map(rows::locked_stock).collect()
}

/// Adds `delta` to a stock row, with the movement that explains it, unless that would take its
/// reserved or available units below zero; whether it did (on PostgreSQL in one statement).
pub(crate) async fn shift_stock<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    delta: StockLevel,
    movement: &StockMovement,
) -> Result<bool, StoreError> {
    let order = movement.order_id.map(|id| id.as_uuid());
    let (sku, location) = (movement.sku.as_str(), movement.location.as_str());
    if X::ENGINE == Engine::Postgres {
        let written = x
            .execute(
                "WITH level AS (UPDATE stock_levels SET on_hand = on_hand + $1, \
                 reserved = reserved + $2, updated_at = $3 \
                 WHERE tenant_id = $4 AND sku = $5 AND location = $6 \
                 AND reserved + $2 >= 0 AND on_hand + $1 - (reserved + $2) >= 0 RETURNING 1) \
                 INSERT INTO stock_movements (tenant_id, sku, location, kind, quantity, \
                 order_id, at) SELECT $4, $5, $6, $7, $8, $9, $3 FROM level",
                &args![
                    delta.on_hand,
                    delta.reserved,
                    movement.at,
                    tenant.as_uuid(),
                    sku,
                    location,
                    movement.kind.as_str(),
                    movement.quantity,
                    order
                ],
            )
            .await?;
        return Ok(written == 1);
    }
    let shifted = x
        .execute(
            "UPDATE stock_levels SET on_hand = on_hand + $1, reserved = reserved + $2, \
             updated_at = $3 WHERE tenant_id = $4 AND sku = $5 AND location = $6 \
             AND reserved + $2 >= 0 AND on_hand + $1 - (reserved + $2) >= 0",
            &args![
                delta.on_hand,
                delta.reserved,
                movement.at,
                tenant.as_uuid(),
                sku,
                location
            ],
        )
        .await?;
    if shifted != 1 {
        return Ok(false);
    }
    x.execute(
        "INSERT INTO stock_movements (tenant_id, sku, location, kind, quantity, order_id, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &args![
            tenant.as_uuid(),
            sku,
            location,
            movement.kind.as_str(),
            movement.quantity,
            order,
            movement.at
        ],
    )
    .await?;
    Ok(true)
}

/// Writes an entry and its postings; the database refuses one that does not balance.
pub(crate) async fn insert_journal_entry<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    entry: &NewJournalEntry,
) -> Result<(), StoreError> {
    match X::ENGINE {
        Engine::Postgres => {
            x.execute(
                "INSERT INTO postings (tenant_id, entry_id, line, account, currency, amount_minor) \
                 SELECT $1, $2, line::int - 1, account, currency, amount \
                 FROM unnest($3::text[], $4::text[], $5::bigint[]) \
                 WITH ORDINALITY AS p(account, currency, amount, line)",
                &[
                    tenant.as_uuid().into(),
                    entry.id.as_str().into(),
                    Arg::Texts(
                        entry
                            .postings
                            .iter()
                            .map(|p| Cow::Borrowed(p.account.as_str()))
                            .collect(),
                    ),
                    Arg::Texts(
                        entry
                            .postings
                            .iter()
                            .map(|p| Cow::Borrowed(p.currency.as_str()))
                            .collect(),
                    ),
                    Arg::Ints(entry.postings.iter().map(|p| p.amount_minor).collect()),
                ],
            )
            .await?;
        }
        Engine::Sqlite => {
            for (line, posting) in entry.postings.iter().enumerate() {
                x.execute(
                    "INSERT INTO postings (tenant_id, entry_id, line, account, currency, \
                     amount_minor) VALUES ($1, $2, $3, $4, $5, $6)",
                    &args![
                        tenant.as_uuid(),
                        entry.id.as_str(),
                        i64::try_from(line).unwrap_or(i64::MAX),
                        posting.account.as_str(),
                        posting.currency.as_str(),
                        posting.amount_minor
                    ],
                )
                .await?;
            }
        }
    }
    x.execute(
        "INSERT INTO journal_entries (tenant_id, id, kind, pending_id, body, order_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            tenant.as_uuid().into(),
            entry.id.as_str().into(),
            entry.kind.as_str().into(),
            entry.pending_id.as_deref().into(),
            Arg::json(&entry.body)?,
            entry.order_id.map(|id| id.as_uuid()).into(),
            entry.created_at.into(),
        ],
    )
    .await?;
    Ok(())
}

/// Moves a tenant's audit chain head to `head`.
pub(crate) async fn upsert_audit_head<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    head: &tally_audit::ChainHead,
) -> Result<(), StoreError> {
    x.execute(
        "INSERT INTO audit_heads (tenant_id, sequence, hash) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id) DO UPDATE SET sequence = excluded.sequence, hash = excluded.hash",
        &args![tenant.as_uuid(), head.sequence, &head.hash[..]],
    )
    .await?;
    Ok(())
}
