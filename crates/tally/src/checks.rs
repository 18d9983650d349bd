//! Invariant checks over a store at rest: the ledger (`tally ledger check`), the audit chains
//! (`tally audit verify`) and stock conservation. Each returns every violation it finds, named,
//! rather than stopping at the first.

use std::collections::BTreeMap;

use tally_domain::money::Currency;
use tally_ledger::{AccountId, EntryKind, JournalEntry, OrderSettlement, Posting};
use tally_store::{Store, StoredEntry};

/// A stored entry as a ledger entry, or why it is not one.
fn entry_of(stored: &StoredEntry) -> Result<JournalEntry, String> {
    let record = &stored.record;
    let pending = || {
        record
            .pending_id
            .clone()
            .ok_or_else(|| format!("entry {} has no pending id", record.id))
    };
    let kind = match record.kind.as_str() {
        "posted" => EntryKind::Posted,
        "pending" => EntryKind::Pending,
        "post_pending" => EntryKind::PostPending {
            pending_id: pending()?,
        },
        "void_pending" => EntryKind::VoidPending {
            pending_id: pending()?,
        },
        other => return Err(format!("entry {} has unknown kind {other}", record.id)),
    };
    let postings = stored
        .postings
        .iter()
        .map(|p| {
            Ok(Posting {
                account: AccountId::parse(&p.account)
                    .map_err(|e| format!("entry {}: {e}", record.id))?,
                amount_minor: p.amount_minor,
                currency: Currency::parse(&p.currency)
                    .map_err(|e| format!("entry {}: {e}", record.id))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    JournalEntry::from_parts(record.id.clone(), kind, postings)
        .map_err(|e| format!("entry {}: {e}", record.id))
}

/// Every entry balances, every currency sums to zero, every pending entry is resolved at most
/// once, and every settled order's receivable is zero; per tenant.
pub async fn ledger(store: &dyn Store) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    for tenant in store.tenants().await? {
        let stored = store.journal(tenant).await?;
        let mut entries = Vec::with_capacity(stored.len());
        for entry in &stored {
            match entry_of(entry) {
                Ok(entry) => entries.push(entry),
                Err(malformed) => violations.push(format!("tenant {tenant}: {malformed}")),
            }
        }
        let settled = store
            .settled_orders(tenant)
            .await?
            .into_iter()
            .filter_map(|(order_id, currency)| {
                Some(OrderSettlement {
                    order_id,
                    currency: Currency::parse(&currency).ok()?,
                })
            })
            .collect::<Vec<_>>();
        violations.extend(
            tally_ledger::check(&entries, &settled)
                .into_iter()
                .map(|v| format!("tenant {tenant}: {v}")),
        );
    }
    Ok(violations)
}

/// Every tenant's audit chain verifies from its first record to its stored head. Returns the
/// violations and the number of records verified.
pub async fn audit(store: &dyn Store) -> anyhow::Result<(Vec<String>, usize)> {
    let mut violations = Vec::new();
    let mut verified = 0;
    for tenant in store.tenants().await? {
        let chain = store.audit_chain(tenant).await?;
        verified += chain.records.len();
        if let Err(breaks) = tally_audit::verify_segment(
            &tally_audit::ChainHead::GENESIS,
            &chain.records,
            chain.head.as_ref(),
        ) {
            violations.extend(breaks.into_iter().map(|b| format!("tenant {tenant}: {b}")));
        }
    }
    Ok((violations, verified))
}

/// Per SKU and location: on hand = received − removed − shipped + returned, reserved =
/// reserved − released − shipped, and available is never below zero.
pub async fn stock(store: &dyn Store) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    for row in store.stock_reconciliation().await? {
        let sum = |kind: &str| row.movements.get(kind).copied().unwrap_or(0);
        let on_hand = sum("received") - sum("removed") - sum("shipped") + sum("returned");
        let reserved = sum("reserved") - sum("released") - sum("shipped");
        let place = format!(
            "tenant {} SKU {} at {}",
            row.tenant_id, row.sku, row.location
        );
        if on_hand != row.on_hand {
            violations.push(format!(
                "{place}: on hand is {} but movements give {on_hand}",
                row.on_hand
            ));
        }
        if reserved != row.reserved {
            violations.push(format!(
                "{place}: reserved is {} but movements give {reserved}",
                row.reserved
            ));
        }
        if row.on_hand - row.reserved < 0 {
            violations.push(format!(
                "{place}: available is {}",
                row.on_hand - row.reserved
            ));
        }
    }
    Ok(violations)
}

/// How many orders are in each status, over all tenants.
pub async fn order_statuses(store: &dyn Store) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut counts = BTreeMap::new();
    for tenant in store.tenants().await? {
        for (status, count) in store.order_status_counts(tenant).await? {
            *counts.entry(status).or_insert(0) += count;
        }
    }
    Ok(counts)
}
