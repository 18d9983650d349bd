//! Invariant checks over a store at rest: the ledger (`tally ledger check`), the audit chains
//! (`tally audit verify`), stock conservation, every order's timeline and, given the partner
//! sandbox's records, that every partner effect was applied exactly once. Each returns every
//! violation it finds, named, rather than stopping at the first; [`all`] runs them all.
//!
//! The order rules are pure functions of an order, its events and its effects
//! ([`order_violations`], [`effect_violations`]), derived from the code that writes orders:
//! placement (`tally_domain::order`), the checkout saga (`tally_checkout::saga`), carrier
//! webhooks (`tally_store::webhook`) and the cancel and return commands (`tally_commands`).
//!
//! # Layout
//!
//! - this file: the checks over the store (ledger, audit, stock, order statuses), [`all`] and
//!   its [`CheckReport`], and the walk over every tenant's orders.
//! - [`order`]: one order's status and saga state against its timeline.
//! - [`effects`]: one order's partner effects against its status and its booked money.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use tally_domain::checkout::cancellable;
use tally_domain::event::EventType;
use tally_domain::ids::{OrderId, TenantId};
use tally_domain::money::Currency;
use tally_domain::order::OrderStatus;
use tally_ledger::{AccountId, EntryKind, JournalEntry, OrderSettlement, Posting};
use tally_sandbox::{Effect, EffectKind};
use tally_store::{OrderFilter, OrderRecord, Store, StoredEntry};

mod effects;
mod order;
#[cfg(test)]
mod tests;

pub use effects::effect_violations;
use effects::kinds_of;
pub use order::order_violations;

/// Orders read per page of the listing: 10,000 orders take 20 queries, and one page of orders
/// with their lines and saga state stays within a few megabytes.
pub const ORDER_PAGE_COUNT_MAX: u32 = 500;

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
        violations.extend(tenant_ledger(store, tenant, &stored).await?);
    }
    Ok(violations)
}

/// [`ledger`] of one tenant, whose journal is `stored`.
async fn tenant_ledger(
    store: &dyn Store,
    tenant: TenantId,
    stored: &[StoredEntry],
) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut entries = Vec::with_capacity(stored.len());
    for entry in stored {
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
    Ok(stock_rows(store).await?.0)
}

/// [`stock`], with the number of stock rows reconciled.
async fn stock_rows(store: &dyn Store) -> anyhow::Result<(Vec<String>, usize)> {
    let mut violations = Vec::new();
    let rows = store.stock_reconciliation().await?;
    for row in &rows {
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
    Ok((violations, rows.len()))
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

/// What [`all`] found and how much it looked at. `Display` prints the counts; print
/// `violations` one per line beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every violation, each naming its tenant and the order, entry, record or SKU at fault.
    pub violations: Vec<String>,
    pub tenants: usize,
    /// Orders checked against their timelines, by stored status.
    pub orders_by_status: BTreeMap<String, usize>,
    pub timeline_events: usize,
    pub journal_entries: usize,
    pub audit_records_verified: usize,
    pub stock_rows: usize,
    /// Partner effects checked; `None` when no effects were given.
    pub partner_effects: Option<usize>,
}

impl CheckReport {
    pub fn orders(&self) -> usize {
        self.orders_by_status.values().sum()
    }

    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statuses: Vec<String> = self
            .orders_by_status
            .iter()
            .map(|(status, count)| format!("{status} {count}"))
            .collect();
        writeln!(f, "tenants                 {}", self.tenants)?;
        writeln!(
            f,
            "orders                  {} ({})",
            self.orders(),
            statuses.join(", ")
        )?;
        writeln!(f, "timeline events         {}", self.timeline_events)?;
        writeln!(f, "journal entries         {}", self.journal_entries)?;
        writeln!(f, "audit records verified  {}", self.audit_records_verified)?;
        writeln!(f, "stock rows              {}", self.stock_rows)?;
        match self.partner_effects {
            Some(count) => writeln!(f, "partner effects         {count}")?,
            None => writeln!(f, "partner effects         not checked")?,
        }
        write!(f, "violations              {}", self.violations.len())
    }
}

/// Runs every check on a store at rest: ledger, stock, audit chains, every order's timeline
/// and saga state and, when `effects` (the partner sandbox's records) are given, that each
/// partner effect was applied exactly once and agrees with the order and the ledger.
pub async fn all(store: &dyn Store, effects: Option<&[Effect]>) -> anyhow::Result<CheckReport> {
    let mut report = CheckReport {
        partner_effects: effects.map(<[Effect]>::len),
        ..CheckReport::default()
    };
    let mut unclaimed = effects.map(|effects| effects_by_order(effects, &mut report.violations));
    for tenant in store.tenants().await? {
        report.tenants += 1;
        let journal = store.journal(tenant).await?;
        report.journal_entries += journal.len();
        report
            .violations
            .extend(tenant_ledger(store, tenant, &journal).await?);
        let partners = unclaimed.as_mut().map(|by_order| Partners {
            by_order,
            booked: booked_by_order(&journal),
        });
        tenant_orders(store, tenant, partners, &mut report).await?;
    }
    if let Some(unclaimed) = unclaimed {
        let mut unclaimed: Vec<_> = unclaimed.into_iter().collect();
        unclaimed.sort_by(|a, b| a.0.cmp(&b.0));
        for (reference, effects) in unclaimed {
            report.violations.push(format!(
                "partner effects for '{reference}' ({}), which is no order in the store",
                kinds_of(&effects)
            ));
        }
    }
    let (violations, verified) = audit(store).await?;
    report.audit_records_verified = verified;
    report.violations.extend(violations);
    let (violations, rows) = stock_rows(store).await?;
    report.stock_rows = rows;
    report.violations.extend(violations);
    Ok(report)
}

/// The partner effects not yet matched to an order, and one tenant's ledger by order.
#[derive(Debug)]
struct Partners<'a, 'e> {
    by_order: &'a mut HashMap<String, Vec<&'e Effect>>,
    booked: HashMap<OrderId, OrderMoney>,
}

/// Effects by the order they name. Two effects under one idempotency key would be a partner
/// applying a key twice: each such key is a violation.
fn effects_by_order<'e>(
    effects: &'e [Effect],
    violations: &mut Vec<String>,
) -> HashMap<String, Vec<&'e Effect>> {
    let mut by_order: HashMap<String, Vec<&Effect>> = HashMap::new();
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for effect in effects {
        by_order
            .entry(effect.order_id.clone())
            .or_default()
            .push(effect);
        *by_key.entry(&effect.idempotency_key).or_default() += 1;
    }
    for (key, count) in by_key.into_iter().filter(|(_, count)| *count > 1) {
        violations.push(format!(
            "idempotency key '{key}' has {count} partner effects: a key is applied once"
        ));
    }
    by_order
}

/// What the ledger booked for one order's payment, in minor units of its currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderMoney {
    /// Recognised as sales: the credits of `revenue:sales`.
    pub captured_minor: i64,
    /// Given back: the debits of `revenue:refunds`.
    pub refunded_minor: i64,
}

/// Per order, what the journal booked as captured and refunded.
fn booked_by_order(journal: &[StoredEntry]) -> HashMap<OrderId, OrderMoney> {
    let sales = AccountId::sales_revenue();
    let refunds = AccountId::refunds();
    let mut booked: HashMap<OrderId, OrderMoney> = HashMap::new();
    for entry in journal {
        let Some(order) = entry.record.order_id else {
            continue;
        };
        for posting in &entry.postings {
            let money = booked.entry(order).or_default();
            if posting.account == sales.as_str() {
                money.captured_minor -= posting.amount_minor;
            } else if posting.account == refunds.as_str() {
                money.refunded_minor += posting.amount_minor;
            }
        }
    }
    booked
}

/// Checks every order of `tenant`, newest first, a page at a time: one timeline query each.
async fn tenant_orders(
    store: &dyn Store,
    tenant: TenantId,
    mut partners: Option<Partners<'_, '_>>,
    report: &mut CheckReport,
) -> anyhow::Result<()> {
    let mut filter = OrderFilter::default();
    loop {
        let page = store.orders(tenant, &filter, ORDER_PAGE_COUNT_MAX).await?;
        for order in &page {
            let timeline = store.timeline(tenant, &order.id.to_string()).await?;
            report.timeline_events += timeline.len();
            *report
                .orders_by_status
                .entry(order.status.clone())
                .or_default() += 1;
            let events: Vec<&str> = timeline.iter().map(|e| e.event_type.as_str()).collect();
            let mut found = order_violations(order, &events);
            if let Some(partners) = partners.as_mut() {
                let reference = tally_domain::order::partner_reference(tenant, order.id);
                let effects = partners.by_order.remove(&reference).unwrap_or_default();
                let booked = partners.booked.get(&order.id).copied().unwrap_or_default();
                found.extend(effect_violations(order, &events, &effects, booked));
            }
            report.violations.extend(
                found
                    .into_iter()
                    .map(|v| format!("tenant {tenant} order {}: {v}", order.id)),
            );
        }
        let full = page.len() == ORDER_PAGE_COUNT_MAX as usize;
        match page.last() {
            Some(last) if full => {
                // Ids only fall from page to page, so the walk ends even if orders are added.
                anyhow::ensure!(
                    filter.before_id.is_none_or(|cursor| last.id < cursor),
                    "the order listing of tenant {tenant} did not advance past {}",
                    last.id
                );
                filter.before_id = Some(last.id);
            }
            _ => return Ok(()),
        }
    }
}
