//! Reads and maintenance outside a command transaction, written once for both engines over
//! [`Exec`]; [`crate::backend`] runs each on the connection its engine gives it.

use std::collections::{BTreeSet, HashMap, HashSet};

use tally_domain::ids::{EventId, OrderId, TenantId};
use uuid::Uuid;

use crate::exec::{Arg, Exec, args, int_or_zero, pick};
use crate::records::*;
use crate::rows::{self, Fields};
use crate::{Engine, StoreError};

pub(crate) async fn find_api_key<X: Exec>(
    x: &mut X,
    key_hash: &[u8; 32],
) -> Result<Option<ApiKeyRecord>, StoreError> {
    let row = x
        .fetch_optional(
            "SELECT id, tenant_id, scopes, revoked_at IS NOT NULL AS revoked \
             FROM api_keys WHERE key_hash = $1",
            &args![&key_hash[..]],
        )
        .await?;
    row.as_ref().map(rows::api_key).transpose()
}

/// Stock of a SKU at every location, or `None` when the tenant has no such SKU.
pub(crate) async fn stock_levels<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    sku: &str,
) -> Result<Option<Vec<StockRecord>>, StoreError> {
    let key = args![tenant.as_uuid(), sku];
    let known = x
        .fetch_optional(
            "SELECT 1 AS known FROM variants WHERE tenant_id = $1 AND sku = $2",
            &key,
        )
        .await?;
    if known.is_none() {
        return Ok(None);
    }
    let rows = x
        .fetch_all(
            "SELECT location, on_hand, reserved, updated_at FROM stock_levels \
             WHERE tenant_id = $1 AND sku = $2 ORDER BY location",
            &key,
        )
        .await?;
    rows.iter()
        .map(rows::stock_record)
        .collect::<Result<Vec<_>, StoreError>>()
        .map(Some)
}

pub(crate) async fn order<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: OrderId,
) -> Result<Option<OrderRecord>, StoreError> {
    let row = x
        .fetch_optional(
            concat!(rows::select_order!(), " WHERE tenant_id = $1 AND id = $2"),
            &args![tenant.as_uuid(), id.as_uuid()],
        )
        .await?;
    row.as_ref().map(rows::order).transpose()
}

/// Every event about `subject`, oldest first: in log order on SQLite, where an event has its
/// position once committed, and in insertion order on PostgreSQL, where it may not have one
/// yet.
pub(crate) async fn timeline<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    subject: &str,
) -> Result<Vec<TimelineEntry>, StoreError> {
    let sql = pick::<X>(
        "SELECT id, type, time FROM events WHERE tenant_id = $1 AND subject = $2 \
         ORDER BY position",
        "SELECT id, type, time FROM events WHERE tenant_id = $1 AND subject = $2 ORDER BY seq",
    );
    let rows = x.fetch_all(sql, &args![tenant.as_uuid(), subject]).await?;
    rows.iter().map(rows::timeline_entry).collect()
}

/// The order and its timeline, on one reader (one snapshot on SQLite).
pub(crate) async fn order_and_timeline<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: OrderId,
) -> Result<Option<(OrderRecord, Vec<TimelineEntry>)>, StoreError> {
    let Some(record) = order(x, tenant, id).await? else {
        return Ok(None);
    };
    let timeline = timeline(x, tenant, &id.to_string()).await?;
    Ok(Some((record, timeline)))
}

/// Orders matching `filter`, newest first. Each filter is `$n IS NULL OR column = $n`, so one
/// prepared statement serves every combination; the primary key (tenant_id, id) drives the
/// newest-first scan.
pub(crate) async fn orders<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    filter: &OrderFilter,
    limit: u32,
) -> Result<Vec<OrderRecord>, StoreError> {
    let sql = concat!(
        rows::select_order!(),
        " WHERE tenant_id = $1 \
         AND ($2 IS NULL OR customer_id = $2) \
         AND ($3 IS NULL OR status = $3) \
         AND ($4 IS NULL OR channel = $4) \
         AND ($5 IS NULL OR created_at >= $5) \
         AND ($6 IS NULL OR created_at < $6) \
         AND ($7 IS NULL OR id < $7) \
         ORDER BY id DESC LIMIT $8"
    );
    let rows = x
        .fetch_all(
            sql,
            &args![
                tenant.as_uuid(),
                filter.customer_id.as_deref(),
                filter.status.as_deref(),
                filter.channel.as_deref(),
                filter.created_from,
                filter.created_before,
                filter.before_id.map(|id| id.as_uuid()),
                limit
            ],
        )
        .await?;
    rows.iter().map(rows::order).collect()
}

/// Events after `after` in log order, of one partition or of all.
pub(crate) async fn read_log<X: Exec>(
    x: &mut X,
    partition: Option<u32>,
    after: i64,
    limit: u32,
) -> Result<Vec<LogEvent>, StoreError> {
    let rows = match partition {
        Some(partition) => {
            x.fetch_all(
                concat!(
                    rows::select_log_event!(),
                    " WHERE partition = $1 AND position > $2 ORDER BY position LIMIT $3"
                ),
                &[Arg::int4(partition)?, after.into(), limit.into()],
            )
            .await?
        }
        None => {
            x.fetch_all(
                concat!(
                    rows::select_log_event!(),
                    " WHERE position > $1 ORDER BY position LIMIT $2"
                ),
                &args![after, limit],
            )
            .await?
        }
    };
    rows.iter().map(rows::log_event).collect()
}

pub(crate) async fn consumer_offset<X: Exec>(
    x: &mut X,
    group: &str,
    partition: u32,
) -> Result<i64, StoreError> {
    int_or_zero(
        x,
        "SELECT position FROM consumer_offsets WHERE group_name = $1 AND partition = $2",
        &[group.into(), Arg::int4(partition)?],
        "position",
    )
    .await
}

pub(crate) const UPSERT_OFFSET: &str = "INSERT INTO consumer_offsets (group_name, partition, \
     position, updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (group_name, partition) \
     DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

/// The last log position of `partition` whose event happened before `time` (0 if none).
pub(crate) async fn position_before<X: Exec>(
    x: &mut X,
    partition: u32,
    time: chrono::DateTime<chrono::Utc>,
) -> Result<i64, StoreError> {
    int_or_zero(
        x,
        "SELECT max(position) AS position FROM events \
         WHERE partition = $1 AND time < $2 AND position IS NOT NULL",
        &[Arg::int4(partition)?, time.into()],
        "position",
    )
    .await
}

/// Outbox rows not yet in the log: none on SQLite, whose events are positioned as inserted.
pub(crate) async fn outbox_pending<X: Exec>(x: &mut X) -> Result<i64, StoreError> {
    let sql = pick::<X>(
        "SELECT 0 AS pending",
        "SELECT count(*) AS pending FROM events WHERE position IS NULL",
    );
    int_or_zero(x, sql, &[], "pending").await
}

/// Events past `group`'s offsets, over `partitions`, counted up to
/// [`crate::log::BACKLOG_COUNT_MAX`] per partition.
pub(crate) async fn log_backlog<X: Exec>(
    x: &mut X,
    group: &str,
    partitions: u32,
) -> Result<i64, StoreError> {
    let mut backlog = 0;
    for partition in 0..partitions {
        backlog += int_or_zero(
            x,
            "SELECT count(*) AS n FROM (SELECT 1 FROM events WHERE partition = $1 AND position > \
             coalesce((SELECT position FROM consumer_offsets \
             WHERE group_name = $2 AND partition = $1), 0) LIMIT $3) capped",
            &[
                Arg::int4(partition)?,
                group.into(),
                crate::log::BACKLOG_COUNT_MAX.into(),
            ],
            "n",
        )
        .await?;
    }
    Ok(backlog)
}

pub(crate) async fn event<X: Exec>(x: &mut X, id: EventId) -> Result<Option<LogEvent>, StoreError> {
    let row = x
        .fetch_optional(
            concat!(rows::select_log_event!(), " WHERE id = $1"),
            &args![id.as_uuid()],
        )
        .await?;
    row.as_ref().map(rows::log_event).transpose()
}

/// Which of `events` `group` has applied. On SQLite one look-up per event, each a step down an
/// index in memory. On PostgreSQL one statement with one look-up by the whole key per event,
/// whatever the planner believes of the table: `event_id = ANY($2)` let it scan the group's
/// every row and test each against the array (with statistics that had the inbox small and a
/// hundred events in a batch, 10 ms a call at 40,000 rows, growing with the inbox); a lateral
/// subquery with a limit is never flattened into a join, so each event is an index probe.
pub(crate) async fn inbox_holds<X: Exec>(
    x: &mut X,
    group: &str,
    events: &[EventId],
) -> Result<HashSet<EventId>, StoreError> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let mut held = HashSet::new();
    if X::ENGINE == Engine::Postgres {
        let rows = x
            .fetch_all(
                "SELECT w.event_id FROM unnest($2::uuid[]) AS w(event_id) \
                 CROSS JOIN LATERAL (SELECT 1 FROM inbox i \
                 WHERE i.group_name = $1 AND i.event_id = w.event_id LIMIT 1) AS held",
                &[
                    group.into(),
                    Arg::Uuids(events.iter().map(|e| e.as_uuid()).collect()),
                ],
            )
            .await?;
        for row in rows {
            held.insert(EventId::from_uuid(row.uuid("event_id")?));
        }
        return Ok(held);
    }
    for event in events {
        let found = x
            .fetch_optional(
                "SELECT 1 AS held FROM inbox WHERE group_name = $1 AND event_id = $2",
                &args![group, event.as_uuid()],
            )
            .await?;
        if found.is_some() {
            held.insert(*event);
        }
    }
    Ok(held)
}

/// Whether `group` parked `event` as a dead letter that is open or being retried: the unique
/// key (group_name, event_id) finds it.
pub(crate) async fn dead_letter_unsettled<X: Exec>(
    x: &mut X,
    group: &str,
    event: EventId,
) -> Result<bool, StoreError> {
    let found = x
        .fetch_optional(
            "SELECT 1 AS unsettled FROM dead_letters WHERE group_name = $1 AND event_id = $2 \
             AND status IN ('open', 'retrying')",
            &args![group, event.as_uuid()],
        )
        .await?;
    Ok(found.is_some())
}

pub(crate) async fn dead_letters<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let rows = x
        .fetch_all(
            concat!(
                rows::select_dead_letter!(),
                " WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2) \
                 ORDER BY created_at DESC LIMIT $3"
            ),
            &args![tenant.as_uuid(), status, limit],
        )
        .await?;
    rows.iter().map(rows::dead_letter).collect()
}

pub(crate) async fn dead_letter<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<DeadLetterRecord>, StoreError> {
    let row = x
        .fetch_optional(
            concat!(
                rows::select_dead_letter!(),
                " WHERE tenant_id = $1 AND id = $2"
            ),
            &args![tenant.as_uuid(), id],
        )
        .await?;
    row.as_ref().map(rows::dead_letter).transpose()
}

/// Moves a letter from `from` to `to` in the transaction `x` runs in; `false` when it was not
/// in `from`. A discarded event is settled for its group in the same transaction: its inbox row
/// makes a re-delivery (the log read again after a crash) skip it rather than apply it.
pub(crate) async fn set_dead_letter_status<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    id: Uuid,
    from: &str,
    to: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<bool, StoreError> {
    let moved = x
        .execute(
            "UPDATE dead_letters SET status = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND id = $4 AND status = $5",
            &args![to, now, tenant.as_uuid(), id, from],
        )
        .await?;
    if moved == 1 && to == crate::DISCARDED {
        x.execute(
            "INSERT INTO inbox (group_name, event_id, applied_at) \
             SELECT group_name, event_id, $1 FROM dead_letters WHERE tenant_id = $2 AND id = $3 \
             ON CONFLICT DO NOTHING",
            &args![now, tenant.as_uuid(), id],
        )
        .await?;
    }
    Ok(moved == 1)
}

pub(crate) async fn dead_letters_to_retry<X: Exec>(
    x: &mut X,
    group: &str,
    limit: u32,
) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let rows = x
        .fetch_all(
            concat!(
                rows::select_dead_letter!(),
                " WHERE group_name = $1 AND status = 'retrying' ORDER BY position LIMIT $2"
            ),
            &args![group, limit],
        )
        .await?;
    rows.iter().map(rows::dead_letter).collect()
}

/// A tenant's audit chain head, if it has sealed anything.
pub(crate) async fn audit_head<X: Exec>(
    x: &mut X,
    tenant: TenantId,
) -> Result<Option<tally_audit::ChainHead>, StoreError> {
    let head = x
        .fetch_optional(
            "SELECT sequence, hash FROM audit_heads WHERE tenant_id = $1",
            &args![tenant.as_uuid()],
        )
        .await?;
    head.as_ref().map(rows::audit_head).transpose()
}

/// The unsealed audit drafts (up to `limit`, in insertion order) and the heads of their
/// tenants' chains, read in the transaction or snapshot `x` runs in, so that the heads are
/// those the rows follow.
pub(crate) async fn audit_drafts<X: Exec>(
    x: &mut X,
    limit: u32,
) -> Result<
    (
        Vec<crate::audit::Unsealed>,
        HashMap<TenantId, tally_audit::ChainHead>,
    ),
    StoreError,
> {
    let rows = x
        .fetch_all(
            "SELECT seq, tenant_id, id FROM audit_records WHERE sequence IS NULL \
             ORDER BY seq LIMIT $1",
            &args![limit],
        )
        .await?
        .iter()
        .map(rows::draft_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
    let kept = crate::audit::kept_bytes(&rows);
    // Drafts whose bytes this process did not keep (made elsewhere, or before a restart):
    // one statement for all of them on PostgreSQL, one look-up each on SQLite.
    let missing = crate::audit::unkept(&rows, &kept);
    let mut read = HashMap::new();
    if !missing.is_empty() {
        let bodies = match X::ENGINE {
            Engine::Postgres => {
                x.fetch_all(
                    "SELECT seq, body FROM audit_records WHERE seq = ANY($1)",
                    &[Arg::Ints(missing.clone())],
                )
                .await?
            }
            Engine::Sqlite => {
                let mut bodies = Vec::with_capacity(missing.len());
                for seq in &missing {
                    bodies.extend(
                        x.fetch_optional(
                            "SELECT seq, body FROM audit_records WHERE seq = $1",
                            &args![*seq],
                        )
                        .await?,
                    );
                }
                bodies
            }
        };
        for row in &bodies {
            read.insert(row.int("seq")?, row.json("body")?);
        }
        if let Some(seq) = missing.iter().find(|seq| !read.contains_key(seq)) {
            return Err(StoreError::Corrupt(format!("audit draft {seq} vanished")));
        }
    }
    let unsealed = crate::audit::unsealed(rows, kept, read)?;
    let mut heads = HashMap::new();
    for tenant in unsealed.iter().map(|u| u.tenant).collect::<BTreeSet<_>>() {
        if let Some(head) = audit_head(x, tenant).await? {
            heads.insert(tenant, head);
        }
    }
    Ok((unsealed, heads))
}

/// A tenant's sealed chain, its head and how many of its records are unsealed, from the one
/// snapshot `x` reads: read apart, a seal committed in between shows a head past the chain's
/// end, a break that is not there.
pub(crate) async fn audit_chain<X: Exec>(
    x: &mut X,
    tenant: TenantId,
) -> Result<AuditChain, StoreError> {
    let rows = x
        .fetch_all(
            "SELECT sequence, body, prev_hash, hash FROM audit_records \
             WHERE tenant_id = $1 AND sequence IS NOT NULL ORDER BY sequence",
            &args![tenant.as_uuid()],
        )
        .await?;
    let records = rows
        .iter()
        .map(rows::sealed_audit_record)
        .collect::<Result<Vec<_>, StoreError>>()?;
    let head = audit_head(x, tenant).await?;
    let unsealed = int_or_zero(
        x,
        "SELECT count(*) AS n FROM audit_records WHERE tenant_id = $1 AND sequence IS NULL",
        &args![tenant.as_uuid()],
        "n",
    )
    .await?;
    Ok(AuditChain {
        records,
        head,
        unsealed,
    })
}

pub(crate) async fn audit_of<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    entity_type: &str,
    entity_id: &str,
) -> Result<Vec<AuditRow>, StoreError> {
    let rows = x
        .fetch_all(
            concat!(
                rows::select_audit_row!(),
                " WHERE tenant_id = $1 AND entity_type = $2 AND entity_id = $3 ORDER BY seq"
            ),
            &args![tenant.as_uuid(), entity_type, entity_id],
        )
        .await?;
    rows.iter().map(rows::audit_row).collect()
}

pub(crate) async fn tenants<X: Exec>(x: &mut X) -> Result<Vec<TenantId>, StoreError> {
    let rows = x
        .fetch_all("SELECT id FROM tenants ORDER BY id", &[])
        .await?;
    rows.iter()
        .map(|row| Ok(TenantId::from_uuid(row.uuid("id")?)))
        .collect()
}

/// Every journal entry of a tenant with its postings, in insertion order.
pub(crate) async fn journal<X: Exec>(
    x: &mut X,
    tenant: TenantId,
) -> Result<Vec<StoredEntry>, StoreError> {
    let entries = x
        .fetch_all(
            "SELECT id, kind, pending_id, body, order_id, created_at FROM journal_entries \
             WHERE tenant_id = $1 ORDER BY created_at, id",
            &args![tenant.as_uuid()],
        )
        .await?;
    let postings = x
        .fetch_all(
            "SELECT entry_id, account, currency, amount_minor FROM postings \
             WHERE tenant_id = $1 ORDER BY entry_id, line",
            &args![tenant.as_uuid()],
        )
        .await?;
    rows::journal(tenant, &entries, &postings)
}

pub(crate) async fn account_postings<X: Exec>(
    x: &mut X,
    tenant: TenantId,
    account: &str,
) -> Result<Vec<AccountPosting>, StoreError> {
    let rows = x
        .fetch_all(
            "SELECT p.entry_id, e.kind, e.pending_id, p.currency, p.amount_minor, e.created_at \
             FROM postings p JOIN journal_entries e ON e.tenant_id = p.tenant_id \
             AND e.id = p.entry_id WHERE p.tenant_id = $1 AND p.account = $2 \
             ORDER BY e.created_at, p.entry_id",
            &args![tenant.as_uuid(), account],
        )
        .await?;
    rows.iter().map(rows::account_posting).collect()
}

pub(crate) async fn settled_orders<X: Exec>(
    x: &mut X,
    tenant: TenantId,
) -> Result<Vec<(OrderId, String)>, StoreError> {
    let rows = x
        .fetch_all(
            "SELECT id, currency FROM orders WHERE tenant_id = $1 \
             AND status IN ('completed', 'cancelled', 'refunded')",
            &args![tenant.as_uuid()],
        )
        .await?;
    rows.iter().map(rows::settled_order).collect()
}

pub(crate) async fn stock_reconciliation<X: Exec>(
    x: &mut X,
) -> Result<Vec<StockReconciliation>, StoreError> {
    let levels = x
        .fetch_all(
            "SELECT tenant_id, sku, location, on_hand, reserved FROM stock_levels \
             ORDER BY tenant_id, sku, location",
            &[],
        )
        .await?;
    let sums = x
        .fetch_all(
            "SELECT tenant_id, sku, location, kind, CAST(sum(quantity) AS BIGINT) AS total \
             FROM stock_movements GROUP BY tenant_id, sku, location, kind",
            &[],
        )
        .await?;
    rows::stock_reconciliation(&levels, &sums)
}

pub(crate) async fn order_status_counts<X: Exec>(
    x: &mut X,
    tenant: TenantId,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = x
        .fetch_all(
            "SELECT status, count(*) AS n FROM orders WHERE tenant_id = $1 \
             GROUP BY status ORDER BY status",
            &args![tenant.as_uuid()],
        )
        .await?;
    rows.iter().map(rows::status_count).collect()
}
