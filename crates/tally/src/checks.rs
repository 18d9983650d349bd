//! Invariant checks over a store at rest: the ledger (`tally ledger check`), the audit chains
//! (`tally audit verify`), stock conservation, every order's timeline and, given the partner
//! sandbox's records, that every partner effect was applied exactly once. Each returns every
//! violation it finds, named, rather than stopping at the first; [`all`] runs them all.
//!
//! The order rules are pure functions of an order, its events and its effects
//! ([`order_violations`], [`effect_violations`]), derived from the code that writes orders:
//! placement (`tally_domain::order`), the checkout saga (`tally_checkout::saga`), carrier
//! webhooks (`tally_store::webhook`) and the cancel and return commands (`tally_store::command`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use tally_domain::checkout::{cancellable, returnable};
use tally_domain::event::EventType;
use tally_domain::ids::{OrderId, TenantId};
use tally_domain::money::Currency;
use tally_domain::order::OrderStatus;
use tally_ledger::{AccountId, EntryKind, JournalEntry, OrderSettlement, Posting};
use tally_sandbox::{Effect, EffectKind};
use tally_store::{OrderFilter, OrderRecord, Store, StoredEntry};

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

/// What partners know an order by, as `tally_checkout::saga` sends it: tenant and order.
fn partner_reference(tenant: TenantId, order: OrderId) -> String {
    format!("{tenant}/{order}")
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
                let reference = partner_reference(tenant, order.id);
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

/// What an order event does to its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    To(OrderStatus),
    /// A client asked to cancel: only a flag changes; the saga cancels at its next step.
    CancellationRequested,
    NotAboutAnOrder,
}

fn move_of(event: EventType) -> Move {
    match event {
        EventType::OrderPlaced => Move::To(OrderStatus::Placed),
        EventType::OrderStockReserved => Move::To(OrderStatus::Reserved),
        EventType::OrderPaymentAuthorized => Move::To(OrderStatus::Authorized),
        EventType::OrderPaymentCaptured => Move::To(OrderStatus::Captured),
        EventType::OrderFulfillmentRequested => Move::To(OrderStatus::FulfillmentRequested),
        EventType::OrderShipped => Move::To(OrderStatus::Shipped),
        EventType::OrderDelivered => Move::To(OrderStatus::Delivered),
        EventType::OrderCompleted => Move::To(OrderStatus::Completed),
        EventType::OrderCancelled => Move::To(OrderStatus::Cancelled),
        EventType::OrderReturned => Move::To(OrderStatus::Returned),
        EventType::OrderRefunded => Move::To(OrderStatus::Refunded),
        EventType::OrderCancellationRequested => Move::CancellationRequested,
        EventType::ProductCreated | EventType::InventoryAdjusted => Move::NotAboutAnOrder,
    }
}

/// Whether some writer moves an order from `from` to `to`: the saga's steps one after the
/// other, the carrier's webhooks, cancellation (by the saga, from any cancellable status),
/// and return (by the command, from any returnable status). Placement starts an order.
fn may_move(from: OrderStatus, to: OrderStatus) -> bool {
    match to {
        OrderStatus::Placed => false,
        OrderStatus::Reserved => from == OrderStatus::Placed,
        OrderStatus::Authorized => from == OrderStatus::Reserved,
        OrderStatus::Captured => from == OrderStatus::Authorized,
        OrderStatus::FulfillmentRequested => from == OrderStatus::Captured,
        OrderStatus::Shipped => from == OrderStatus::FulfillmentRequested,
        OrderStatus::Delivered => from == OrderStatus::Shipped,
        OrderStatus::Completed => from == OrderStatus::Delivered,
        OrderStatus::Cancelled => cancellable(from),
        OrderStatus::Returned => returnable(from),
        OrderStatus::Refunded => from == OrderStatus::Returned,
    }
}

/// The violations of one order's stored status and saga state against its timeline (its
/// event types, oldest first): the first event is its placement; every event follows from the
/// status before it; no event happens twice; the last status event leaves the stored status;
/// and the saga's partner references and reservation hold fit what the events say.
pub fn order_violations(order: &OrderRecord, events: &[&str]) -> Vec<String> {
    let mut violations = Vec::new();
    let stored = OrderStatus::parse(&order.status).ok();
    if stored.is_none() {
        violations.push(format!("status '{}' is not an order status", order.status));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for event in events {
        *counts.entry(event).or_default() += 1;
    }
    for (event, count) in counts.iter().filter(|(_, count)| **count > 1) {
        violations.push(format!("{event} happened {count} times, not once"));
    }
    match events.first() {
        None => violations.push("has no events, not even its placement".to_owned()),
        Some(&first) if first != EventType::OrderPlaced.as_str() => violations.push(format!(
            "its first event is {first}, not {}",
            EventType::OrderPlaced.as_str()
        )),
        Some(_) => {}
    }
    let walked = walk(events, &mut violations);
    if let (Some(stored), Some(walked)) = (stored, walked)
        && stored != walked
    {
        violations.push(format!(
            "status is '{}' but its timeline leaves it '{}'",
            stored.as_str(),
            walked.as_str()
        ));
    }
    if let Some(stored) = stored {
        saga_violations(order, stored, events, &mut violations);
    }
    violations
}

/// Follows the first occurrence of each event (repeats are reported by the caller) and
/// returns the status the timeline leaves the order in.
fn walk(events: &[&str], violations: &mut Vec<String>) -> Option<OrderStatus> {
    let mut status: Option<OrderStatus> = None;
    for (index, &raw) in events.iter().enumerate() {
        if events[..index].contains(&raw) {
            continue;
        }
        let Some(event) = EventType::parse(raw) else {
            violations.push(format!("event {raw} is of no known type"));
            continue;
        };
        let at = status.map_or("before placement", OrderStatus::as_str);
        match (move_of(event), status) {
            (Move::NotAboutAnOrder, _) => {
                violations.push(format!("event {raw} is not about an order"));
            }
            (Move::CancellationRequested, Some(from)) if cancellable(from) => {}
            (Move::CancellationRequested, _) => {
                violations.push(format!("cancellation was requested at '{at}'"));
            }
            (Move::To(to), Some(from)) if !may_move(from, to) => {
                violations.push(format!(
                    "{raw} follows '{at}', from which no step moves an order to '{}'",
                    to.as_str()
                ));
                status = Some(to);
            }
            (Move::To(to), _) => status = Some(to),
        }
    }
    status
}

/// The saga records a partner reference exactly when the timeline has the event of its step
/// (a refund also when a captured order was cancelled), a cancel reason exactly when the order
/// was cancelled, and holds reservations exactly from reserving stock to handing the goods to
/// the carrier.
fn saga_violations(
    order: &OrderRecord,
    status: OrderStatus,
    events: &[&str],
    violations: &mut Vec<String>,
) {
    let has = |event: EventType| events.contains(&event.as_str());
    let saga = &order.saga;
    let cancelled_after_capture =
        status == OrderStatus::Cancelled && has(EventType::OrderPaymentCaptured);
    let refunded = has(EventType::OrderRefunded) || cancelled_after_capture;
    let holding = matches!(
        status,
        OrderStatus::Reserved
            | OrderStatus::Authorized
            | OrderStatus::Captured
            | OrderStatus::FulfillmentRequested
    );
    // (field, whether the saga records it, whether its step happened, the step).
    let fields = [
        (
            "authorization_id",
            saga.authorization_id.is_some(),
            has(EventType::OrderPaymentAuthorized),
            "the payment was authorized",
        ),
        (
            "capture_id",
            saga.capture_id.is_some(),
            has(EventType::OrderPaymentCaptured),
            "the payment was captured",
        ),
        (
            "shipment_id",
            saga.shipment_id.is_some(),
            has(EventType::OrderFulfillmentRequested),
            "fulfillment was requested",
        ),
        (
            "refund_id",
            saga.refund_id.is_some(),
            refunded,
            "the payment was refunded",
        ),
        (
            "cancel_reason",
            saga.cancel_reason.is_some(),
            has(EventType::OrderCancelled),
            "the order was cancelled",
        ),
    ];
    for (field, recorded, happened, step) in fields {
        if recorded && !happened {
            violations.push(format!("saga {field} is set, but nothing says {step}"));
        } else if happened && !recorded {
            violations.push(format!("saga {field} is unset, but {step}"));
        }
    }
    if saga.reservations_held != holding {
        let (is, holds) = if holding {
            ("unset", "holds")
        } else {
            ("set", "holds no")
        };
        violations.push(format!(
            "saga reservations_held is {is}, but status '{}' {holds} stock",
            status.as_str()
        ));
    }
}

fn kind_name(kind: EffectKind) -> &'static str {
    match kind {
        EffectKind::Authorization => "authorization",
        EffectKind::Capture => "capture",
        EffectKind::Void => "void",
        EffectKind::Refund => "refund",
        EffectKind::Shipment => "shipment",
        EffectKind::Notification => "notification",
    }
}

/// "2 capture, 1 shipment": what a list of effects holds.
fn kinds_of(effects: &[&Effect]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for effect in effects {
        *counts.entry(kind_name(effect.kind)).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.join(", ")
}

/// Whether a customer with an address hears of `event`, as `tally_checkout::notify` decides.
fn notifies(event: EventType) -> bool {
    match event {
        EventType::OrderPaymentCaptured
        | EventType::OrderShipped
        | EventType::OrderDelivered
        | EventType::OrderCancelled
        | EventType::OrderRefunded => true,
        EventType::ProductCreated
        | EventType::InventoryAdjusted
        | EventType::OrderPlaced
        | EventType::OrderStockReserved
        | EventType::OrderPaymentAuthorized
        | EventType::OrderFulfillmentRequested
        | EventType::OrderCompleted
        | EventType::OrderReturned
        | EventType::OrderCancellationRequested => false,
    }
}

/// An effect the partner applied. Any other answer (a 402 decline or failed capture) was an
/// attempt that moved no money and shipped nothing.
fn is_applied(effect: &Effect) -> bool {
    (200..300).contains(&effect.response_status)
}

/// The violations of one order's partner effects (the sandbox's records that name it) against
/// the order, its timeline and what the ledger `booked` for it. The saga makes each partner call
/// once per order, under a key derived from the event that asked for it: at most one
/// authorization, capture, void, refund and shipment, each for the order's total, and one
/// notification per event the customer hears of.
pub fn effect_violations(
    order: &OrderRecord,
    events: &[&str],
    effects: &[&Effect],
    booked: OrderMoney,
) -> Vec<String> {
    use EffectKind::{Authorization, Capture, Notification, Refund, Shipment, Void};
    let mut violations = Vec::new();
    let tally = Tally { effects };
    for kind in [Authorization, Capture, Void, Refund, Shipment] {
        if tally.tried(kind) > 1 {
            let keys: Vec<&str> = tally.of(kind).map(|e| e.idempotency_key.as_str()).collect();
            violations.push(format!(
                "{} {} effects (keys {}), not at most one",
                tally.tried(kind),
                kind_name(kind),
                keys.join(", ")
            ));
        }
    }
    for effect in effects.iter().filter(|e| e.amount_minor.is_some()) {
        let asked = (effect.amount_minor, effect.currency.as_deref());
        if asked != (Some(order.total_minor), Some(order.currency.as_str())) {
            violations.push(format!(
                "{} under key {} is for {} {}, not the order's {} {}",
                kind_name(effect.kind),
                effect.idempotency_key,
                effect.amount_minor.unwrap_or_default(),
                effect.currency.as_deref().unwrap_or("(no currency)"),
                order.total_minor,
                order.currency
            ));
        }
    }
    let authorized = tally.applied(Authorization) > 0;
    let captured = tally.applied(Capture) > 0;
    // Each partner call follows an applied step: no capture or void without an authorization,
    // no refund or shipment without a capture.
    let orphans = [
        (Capture, authorized, "an applied authorization"),
        (Void, authorized, "an applied authorization"),
        (Refund, captured, "an applied capture"),
        (Shipment, captured, "an applied capture"),
    ];
    for (kind, follows, step) in orphans {
        if tally.tried(kind) > 0 && !follows {
            violations.push(format!("a {} without {step}", kind_name(kind)));
        }
    }
    if tally.applied(Void) > 0 && captured {
        violations.push("the authorization was both captured and voided".to_owned());
    }
    if let Ok(status) = OrderStatus::parse(&order.status) {
        violations.extend(status_effect_violations(status, &tally));
    }
    let expected = match order.customer_email {
        Some(_) => events
            .iter()
            .filter(|e| EventType::parse(e).is_some_and(notifies))
            .count(),
        None => 0,
    };
    if tally.tried(Notification) != expected {
        violations.push(format!(
            "{} notifications for {expected} events the customer hears of",
            tally.tried(Notification)
        ));
    }
    let moved = (tally.moved(Capture), tally.moved(Refund));
    if (booked.captured_minor, booked.refunded_minor) != moved {
        violations.push(format!(
            "the ledger booked {} captured and {} refunded, the payment provider {} and {}",
            booked.captured_minor, booked.refunded_minor, moved.0, moved.1
        ));
    }
    violations
}

/// Counts over one order's effects.
#[derive(Debug, Clone, Copy)]
struct Tally<'a, 'e> {
    effects: &'a [&'e Effect],
}

impl<'e> Tally<'_, 'e> {
    fn of(&self, kind: EffectKind) -> impl Iterator<Item = &'e Effect> + '_ {
        self.effects.iter().copied().filter(move |e| e.kind == kind)
    }

    /// Effects of `kind`, attempts included.
    fn tried(&self, kind: EffectKind) -> usize {
        self.of(kind).count()
    }

    fn applied(&self, kind: EffectKind) -> usize {
        self.of(kind).filter(|e| is_applied(e)).count()
    }

    /// The money the applied effects of `kind` moved.
    fn moved(&self, kind: EffectKind) -> i64 {
        self.of(kind)
            .filter(|e| is_applied(e))
            .filter_map(|e| e.amount_minor)
            .sum()
    }
}

/// What an order's status requires of its effects. The saga calls a partner before it commits
/// the status that follows, so every rule holds even while the saga runs, except that a
/// `returned` order awaits its refund.
fn status_effect_violations(status: OrderStatus, tally: &Tally<'_, '_>) -> Vec<String> {
    use EffectKind::{Authorization, Capture, Refund, Shipment, Void};
    let mut found = Vec::new();
    let mut require = |holds: bool, what: String| {
        if !holds {
            found.push(format!("is '{}' but {what}", status.as_str()));
        }
    };
    let paid = matches!(
        status,
        OrderStatus::Captured
            | OrderStatus::FulfillmentRequested
            | OrderStatus::Shipped
            | OrderStatus::Delivered
            | OrderStatus::Completed
            | OrderStatus::Returned
            | OrderStatus::Refunded
    );
    if paid {
        for kind in [Authorization, Capture] {
            let n = tally.applied(kind);
            let kind = kind_name(kind);
            require(n == 1, format!("has {n} applied {kind} effects, not one"));
        }
    }
    if paid && status != OrderStatus::Captured {
        let n = tally.tried(Shipment);
        require(n == 1, format!("has {n} shipment effects, not one"));
    }
    let none_of = |kinds: &[EffectKind]| kinds.iter().all(|kind| tally.tried(*kind) == 0);
    let (captured, refunded) = (tally.moved(Capture), tally.moved(Refund));
    match status {
        OrderStatus::Placed => require(
            none_of(&[Authorization, Capture, Void, Refund, Shipment]),
            "a partner was called before its stock was reserved".to_owned(),
        ),
        OrderStatus::Reserved => require(
            none_of(&[Capture, Void, Refund, Shipment]),
            "a partner was called past the authorization".to_owned(),
        ),
        OrderStatus::Cancelled => {
            require(none_of(&[Shipment]), "it was shipped".to_owned());
            require(
                captured == refunded,
                format!("{captured} was captured and {refunded} refunded"),
            );
            let open = tally.applied(Authorization) > 0 && tally.applied(Capture) == 0;
            require(
                !open || tally.applied(Void) == 1,
                "its authorization was not voided".to_owned(),
            );
        }
        OrderStatus::Refunded => require(
            tally.applied(Refund) == 1 && refunded == captured,
            format!(
                "{captured} was captured and {refunded} refunded, in {} refunds",
                tally.applied(Refund)
            ),
        ),
        OrderStatus::FulfillmentRequested
        | OrderStatus::Shipped
        | OrderStatus::Delivered
        | OrderStatus::Completed => require(none_of(&[Refund]), "it was refunded".to_owned()),
        OrderStatus::Authorized | OrderStatus::Captured | OrderStatus::Returned => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use tally_domain::checkout::Saga;
    use tally_store::AddressRecord;

    use EventType::{
        OrderCancellationRequested as CancelRequested, OrderCancelled as Cancelled,
        OrderCompleted as Completed, OrderDelivered as Delivered,
        OrderFulfillmentRequested as Fulfil, OrderPaymentAuthorized as Authorized,
        OrderPaymentCaptured as Captured, OrderPlaced as Placed, OrderRefunded as Refunded,
        OrderReturned as Returned, OrderShipped as Shipped, OrderStockReserved as Reserved,
    };

    const TOTAL: i64 = 2_500;
    const COMPLETED: [EventType; 8] = [
        Placed, Reserved, Authorized, Captured, Fulfil, Shipped, Delivered, Completed,
    ];
    const SOLD: OrderMoney = OrderMoney {
        captured_minor: TOTAL,
        refunded_minor: 0,
    };

    /// An order in `status` whose saga recorded the partner ids named in `ids` ("auth", "cap",
    /// "shp", "re"), holds stock if `held`, and was cancelled for `reason`.
    fn order(status: OrderStatus, ids: &[&str], held: bool, reason: Option<&str>) -> OrderRecord {
        let id = |name: &str| ids.contains(&name).then(|| format!("{name}-1"));
        let saga = Saga {
            authorization_id: id("auth"),
            authorization_entry: id("auth"),
            capture_id: id("cap"),
            shipment_id: id("shp"),
            tracking_number: id("shp"),
            refund_id: id("re"),
            reservations_held: held,
            cancel_reason: reason.map(str::to_owned),
            ..Saga::default()
        };
        let text = |s: &str| s.to_owned();
        OrderRecord {
            id: OrderId::generate(),
            channel: text("web"),
            customer_id: text("c"),
            customer_email: Some(text("ada@example.com")),
            currency: text("USD"),
            total_minor: TOTAL,
            status: text(status.as_str()),
            lines: Vec::new(),
            shipping_address: AddressRecord {
                name: text("Ada"),
                line1: text("1 Main St"),
                line2: None,
                city: text("London"),
                region: None,
                postal_code: text("SW1"),
                country: text("GB"),
            },
            saga,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn events(types: &[EventType]) -> Vec<&'static str> {
        types.iter().map(|t| t.as_str()).collect()
    }

    fn completed() -> (OrderRecord, Vec<&'static str>) {
        let order = order(OrderStatus::Completed, &["auth", "cap", "shp"], false, None);
        (order, events(&COMPLETED))
    }

    /// Every path the saga, the webhooks and the commands take leaves a consistent order.
    #[test]
    fn every_path_the_writers_take_is_consistent() {
        use OrderStatus as S;
        let paid = ["auth", "cap", "shp"];
        let returned = [
            Placed, Reserved, Authorized, Captured, Fulfil, Shipped, Delivered,
        ];
        let paths = [
            (
                order(S::Cancelled, &[], false, Some("out_of_stock")),
                events(&[Placed, Cancelled]),
            ),
            (
                order(S::Cancelled, &[], false, Some("payment_declined")),
                events(&[Placed, Reserved, Cancelled]),
            ),
            (
                order(S::Cancelled, &["auth"], false, Some("capture_failed")),
                events(&[Placed, Reserved, Authorized, Cancelled]),
            ),
            (
                order(
                    S::Cancelled,
                    &["auth", "cap", "re"],
                    false,
                    Some("requested"),
                ),
                events(&[
                    Placed,
                    Reserved,
                    Authorized,
                    Captured,
                    CancelRequested,
                    Cancelled,
                ]),
            ),
            // A cancellation that found the authorization an unheard-of call made, and voided it.
            (
                order(S::Cancelled, &["auth"], false, Some("requested")),
                events(&[Placed, Reserved, CancelRequested, Authorized, Cancelled]),
            ),
            // A cancellation whose void was refused as captured, which found and refunded it.
            (
                order(
                    S::Cancelled,
                    &["auth", "cap", "re"],
                    false,
                    Some("requested"),
                ),
                events(&[
                    Placed,
                    Reserved,
                    Authorized,
                    CancelRequested,
                    Captured,
                    Cancelled,
                ]),
            ),
            (
                order(S::Completed, &paid, false, None),
                events(&[&COMPLETED[..4], &[CancelRequested], &COMPLETED[4..]].concat()),
            ),
            (
                order(S::Refunded, &["auth", "cap", "shp", "re"], false, None),
                events(&[&returned[..], &[Returned, Refunded]].concat()),
            ),
            (
                order(S::Captured, &["auth", "cap"], true, None),
                events(&COMPLETED[..4]),
            ),
            completed(),
        ];
        for (order, events) in paths {
            let found = order_violations(&order, &events);
            assert_eq!(found, Vec::<String>::new(), "{events:?}");
        }
    }

    /// A wrong status, a repeated, skipped or missing step and a late cancellation are named.
    #[test]
    fn a_broken_timeline_is_named_for_every_fault() {
        let (mut order, events) = completed();
        order.status = "shipped".into();
        let found = order_violations(&order, &events);
        assert_eq!(
            found,
            ["status is 'shipped' but its timeline leaves it 'completed'"]
        );
        order.status = "lost".into();
        let found = order_violations(&order, &events);
        assert_eq!(found, ["status 'lost' is not an order status"]);

        let (order, mut twice) = completed();
        twice.insert(4, Captured.as_str());
        let found = order_violations(&order, &twice);
        assert_eq!(
            found,
            [format!("{} happened 2 times, not once", Captured.as_str())]
        );

        let skipped = self::events(&[&COMPLETED[..5], &COMPLETED[6..]].concat());
        let found = order_violations(&order, &skipped);
        assert!(
            found[0].contains("follows 'fulfillment_requested'"),
            "{found:?}"
        );

        let headless = self::events(&COMPLETED[1..]);
        assert!(order_violations(&order, &headless)[0].contains("first event"));
        assert!(order_violations(&order, &[])[0].contains("no events"));

        let mut late = events.clone();
        late.insert(6, CancelRequested.as_str());
        let found = order_violations(&order, &late);
        assert_eq!(found, ["cancellation was requested at 'shipped'"]);
    }

    /// A cancelled captured order without a refund, and stock held past shipping, are named.
    #[test]
    fn a_saga_state_that_does_not_fit_its_timeline_is_named() {
        let unrefunded = order(
            OrderStatus::Cancelled,
            &["auth", "cap"],
            false,
            Some("requested"),
        );
        let path = events(&[
            Placed,
            Reserved,
            Authorized,
            Captured,
            CancelRequested,
            Cancelled,
        ]);
        let found = order_violations(&unrefunded, &path);
        assert_eq!(
            found,
            ["saga refund_id is unset, but the payment was refunded"]
        );

        let (mut still_held, events) = completed();
        still_held.saga.reservations_held = true;
        let found = order_violations(&still_held, &events);
        assert_eq!(
            found,
            ["saga reservations_held is set, but status 'completed' holds no stock"]
        );
    }

    fn effect(kind: EffectKind, key: &str, status: u16, amount: Option<i64>) -> Effect {
        Effect {
            kind,
            idempotency_key: key.into(),
            order_id: "tenant/order".into(),
            amount_minor: amount,
            currency: amount.map(|_| "USD".into()),
            deliveries: 1,
            response_status: status,
            at: Utc::now(),
        }
    }

    fn completed_effects() -> Vec<Effect> {
        vec![
            effect(EffectKind::Authorization, "a", 201, Some(TOTAL)),
            effect(EffectKind::Capture, "c", 200, Some(TOTAL)),
            effect(EffectKind::Notification, "n1", 202, None),
            effect(EffectKind::Shipment, "s", 201, None),
            effect(EffectKind::Notification, "n2", 202, None),
            effect(EffectKind::Notification, "n3", 202, None),
        ]
    }

    /// A completed order's effects pass, and a declined authorization is an attempt only.
    #[test]
    fn effects_applied_once_pass_and_a_decline_is_only_an_attempt() {
        let (order, events) = completed();
        let effects = completed_effects();
        let refs: Vec<&Effect> = effects.iter().collect();
        let found = effect_violations(&order, &events, &refs, SOLD);
        assert_eq!(found, Vec::<String>::new());

        let declined = self::order(OrderStatus::Cancelled, &[], false, Some("payment_declined"));
        let events = self::events(&[Placed, Reserved, Cancelled]);
        let effects = [
            effect(EffectKind::Authorization, "a", 402, Some(TOTAL)),
            effect(EffectKind::Notification, "n", 202, None),
        ];
        let refs: Vec<&Effect> = effects.iter().collect();
        let found = effect_violations(&declined, &events, &refs, OrderMoney::default());
        assert_eq!(found, Vec::<String>::new());
    }

    /// A second capture, a missing shipment and a capture without authorization are named.
    #[test]
    fn a_duplicate_or_missing_effect_is_named() {
        let (order, events) = completed();
        let mut effects = completed_effects();
        effects.push(effect(EffectKind::Capture, "c2", 200, Some(TOTAL)));
        let refs: Vec<&Effect> = effects.iter().collect();
        let found = effect_violations(&order, &events, &refs, SOLD);
        let expected = [
            "2 capture effects (keys c, c2), not at most one",
            "is 'completed' but has 2 applied capture effects, not one",
            "the ledger booked 2500 captured and 0 refunded, the payment provider 5000 and 0",
        ];
        assert_eq!(found, expected);

        let refs: Vec<&Effect> = effects[..5]
            .iter()
            .filter(|e| e.kind != EffectKind::Shipment)
            .collect();
        let found = effect_violations(&order, &events, &refs, SOLD);
        let expected = [
            "is 'completed' but has 0 shipment effects, not one",
            "2 notifications for 3 events the customer hears of",
        ];
        assert_eq!(found, expected);

        let refs = [&effects[1]];
        let found = effect_violations(&order, &events, &refs, SOLD);
        assert!(
            found.contains(&"a capture without an applied authorization".to_owned()),
            "{found:?}"
        );
    }
}
