//! The idempotent command flow, written once for both engines.
//!
//! A command runs in one store transaction that (1) claims the idempotency key, (2) returns the
//! stored response if the key was used before, (3) otherwise decides the command with the pure
//! domain functions, (4) writes the new state and its events, and (5) stores the rendered
//! response under the key. Either all of it commits or none of it does.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tally_domain::catalog::{NewProduct, Product, Sku};
use tally_domain::checkout::{cancellable, returnable};
use tally_domain::clock::Clock;
use tally_domain::event::EventDraft;
use tally_domain::event::EventType;
use tally_domain::idempotency::{Fingerprint, IdempotencyKey};
use tally_domain::ids::{ApiKeyId, OrderId, ProductId, TenantId};
use tally_domain::inventory::{Adjustment, StockLevel};
use tally_domain::order::{NewOrder, Order, OrderStatus, PlacementRefused};
use tally_domain::text::Code;
use tokio::sync::Notify;

use crate::records::{
    MovementKind, NewEvent, NewIdempotencyRecord, OrderRecord, OrderState, StockMovement,
    StoredResponse,
};
use crate::{Store, StoreError, Tx};

/// What a client asked for, parsed and validated.
#[derive(Debug, Clone)]
pub enum Command {
    CreateProduct(NewProduct),
    AdjustStock(Adjustment),
    PlaceOrder(NewOrder),
    /// Ask the checkout saga to cancel the order, undoing what it did.
    CancelOrder(OrderId),
    /// The customer sent the goods back: restock and refund.
    ReturnOrder(OrderId),
}

/// What a command did, for the API to render into the response it stores.
#[derive(Debug, Clone)]
pub enum Outcome {
    ProductCreated(Product),
    StockAdjusted {
        sku: Sku,
        location: Code,
        level: StockLevel,
    },
    OrderPlaced(Box<Order>),
    /// The order after a cancellation request or a return.
    OrderChanged(Box<OrderRecord>),
}

/// A business rule refused the command; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    SkusTaken(Vec<Sku>),
    UnknownSku(Sku),
    InsufficientStock {
        available: i64,
    },
    Placement(PlacementRefused),
    OrderNotFound,
    /// The order is past the point where it can be cancelled (or already cancelled).
    NotCancellable {
        status: String,
    },
    NotReturnable {
        status: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Another request with the same key is being processed right now.
    #[error("a request with this idempotency key is in progress")]
    InFlight,
    /// The key was used before for a different request.
    #[error("the idempotency key was used for a different request")]
    KeyReused,
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    /// The command ran now; this is its response.
    Fresh(StoredResponse),
    /// The key was used before for the same request; this is the response stored then.
    Replayed(StoredResponse),
}

/// How a command transaction ends.
enum Step {
    /// The key was used before: roll back and answer with the stored response.
    Replay(Executed),
    /// The command was applied: commit, then answer with `response`.
    Commit {
        response: StoredResponse,
        appended: bool,
    },
}

/// Renders an outcome (and the events it caused) into the response stored under the idempotency key. It runs inside the
/// transaction, so the stored response and the state change commit together.
pub type Render = dyn Fn(&Outcome, &[NewEvent]) -> StoredResponse + Send + Sync;

/// Who asks, under which key, and how the answer is rendered.
pub struct CommandContext<'a> {
    pub tenant: TenantId,
    pub api_key: ApiKeyId,
    pub key: &'a IdempotencyKey,
    pub fingerprint: Fingerprint,
    /// The request id, recorded as the events' correlation id.
    pub request_id: &'a str,
    /// W3C trace context of the request, carried by the events it causes.
    pub traceparent: Option<&'a str>,
    pub render: &'a Render,
}

impl std::fmt::Debug for CommandContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandContext")
            .field("tenant", &self.tenant)
            .field("key", &self.key)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// Runs commands against a store. One per process, shared by all requests.
#[derive(Debug)]
pub struct Commands {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    /// Keys being processed by this process. A second request under a key in this set is
    /// answered 409 at once instead of queueing behind the first for the database's lock.
    in_flight: DashMap<(TenantId, String), ()>,
    /// Woken after every commit that appended events, so the relay need not poll hard.
    appended: Arc<Notify>,
}

impl Commands {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, retention: Duration) -> Self {
        Self {
            store,
            clock,
            retention,
            in_flight: DashMap::new(),
            appended: Arc::new(Notify::new()),
        }
    }

    /// Notified after each commit that appended events.
    pub fn appended(&self) -> Arc<Notify> {
        Arc::clone(&self.appended)
    }

    pub async fn execute(
        &self,
        ctx: &CommandContext<'_>,
        command: Command,
    ) -> Result<Executed, CommandError> {
        let now = self.clock.now();
        // A replay needs no write transaction: answer it from a plain read first.
        if let Some(record) = self
            .store
            .find_idempotency_record(ctx.tenant, ctx.key.as_str())
            .await?
            && record.expires_at > now
        {
            return replay(ctx, record.fingerprint, record.response);
        }
        let _claim = InFlightClaim::take(&self.in_flight, ctx.tenant, ctx.key.as_str())?;
        let mut tx = self.store.begin().await?;
        match self.run(tx.as_mut(), ctx, command, now).await {
            Ok(Step::Commit { response, appended }) => {
                tx.commit().await?;
                if appended {
                    self.appended.notify_one();
                }
                Ok(Executed::Fresh(response))
            }
            // Roll back now rather than on drop: a dropped transaction is rolled back later, in
            // the background, and until then it holds the key's lock, so the client's corrected
            // retry would be told 409.
            Ok(Step::Replay(executed)) => {
                tx.rollback().await?;
                Ok(executed)
            }
            Err(error) => match tx.rollback().await {
                // The refusal was decided on writes of commands committed together with this
                // one (SQLite's group commit), which did not commit: it does not stand.
                Err(StoreError::CommitFailed(failed)) => {
                    Err(CommandError::Store(StoreError::CommitFailed(failed)))
                }
                Err(rollback) => {
                    // The connection is discarded either way; the command's own error is the
                    // one the caller must see.
                    tracing::warn!(error = %rollback, "rolling back a refused command failed");
                    Err(error)
                }
                Ok(()) => Err(error),
            },
        }
    }

    /// Everything between `BEGIN` and `COMMIT`; the caller ends the transaction.
    async fn run(
        &self,
        tx: &mut dyn Tx,
        ctx: &CommandContext<'_>,
        command: Command,
        now: DateTime<Utc>,
    ) -> Result<Step, CommandError> {
        if !tx
            .lock_idempotency_key(ctx.tenant, ctx.key.as_str())
            .await?
        {
            return Err(CommandError::InFlight);
        }
        if let Some(record) = tx
            .find_idempotency_record(ctx.tenant, ctx.key.as_str())
            .await?
        {
            if record.expires_at > now {
                return replay(ctx, record.fingerprint, record.response).map(Step::Replay);
            }
            tx.delete_idempotency_record(ctx.tenant, ctx.key.as_str())
                .await?;
        }
        let (outcome, drafts) = decide(tx, ctx.tenant, command, now).await?;
        let events: Vec<NewEvent> = drafts
            .into_iter()
            .map(|draft| self.envelope(ctx, draft, now))
            .collect();
        let response = (ctx.render)(&outcome, &events);
        let audit = audit_record(ctx, &outcome, &response, now);
        let retention = chrono::Duration::from_std(self.retention)
            .unwrap_or_else(|_| chrono::Duration::days(365));
        let record = NewIdempotencyRecord {
            key: ctx.key.as_str(),
            fingerprint: ctx.fingerprint.0,
            response: &response,
            created_at: now,
            expires_at: now + retention,
        };
        tx.record_command(&events, &audit, ctx.tenant, &record)
            .await?;
        Ok(Step::Commit {
            response,
            appended: !events.is_empty(),
        })
    }

    fn envelope(
        &self,
        ctx: &CommandContext<'_>,
        draft: EventDraft,
        now: DateTime<Utc>,
    ) -> NewEvent {
        let causes = crate::log::Causes {
            correlation_id: Some(ctx.request_id.to_owned()),
            causation_id: Some(format!("idempotency-key:{}", ctx.key.as_str())),
            traceparent: ctx.traceparent.map(str::to_owned),
        };
        crate::log::envelope(draft, ctx.tenant, self.store.log_partitions(), now, &causes)
    }
}

/// The audit record of a command: the client's key is the actor, the stored response is the
/// state after, the request id and idempotency key are the cause.
fn audit_record(
    ctx: &CommandContext<'_>,
    outcome: &Outcome,
    response: &StoredResponse,
    now: DateTime<Utc>,
) -> crate::records::NewAuditRecord {
    let (entity_type, entity_id, action) = match outcome {
        Outcome::ProductCreated(product) => ("product", product.id.to_string(), "created"),
        Outcome::StockAdjusted { sku, location, .. } => {
            ("stock", format!("{sku}@{location}"), "adjusted")
        }
        Outcome::OrderPlaced(order) => ("order", order.id.to_string(), "placed"),
        Outcome::OrderChanged(record) => ("order", record.id.to_string(), "changed"),
    };
    let change = crate::audit::Change {
        entity_type,
        entity_id,
        action,
        before: None,
        after: serde_json::from_slice(&response.body).ok(),
    };
    let cause = crate::audit::Cause {
        request_id: Some(ctx.request_id.to_owned()),
        idempotency_key: Some(ctx.key.as_str().to_owned()),
        event_id: None,
        causation_id: None,
    };
    let actor = crate::audit::Actor::ApiKey(ctx.api_key.as_uuid());
    crate::audit::record(ctx.tenant, now, actor, change, cause)
}

fn replay(
    ctx: &CommandContext<'_>,
    fingerprint: [u8; 32],
    response: StoredResponse,
) -> Result<Executed, CommandError> {
    if fingerprint == ctx.fingerprint.0 {
        Ok(Executed::Replayed(response))
    } else {
        Err(CommandError::KeyReused)
    }
}

/// Applies a command's decision inside the transaction and returns what it did.
async fn decide(
    tx: &mut dyn Tx,
    tenant: TenantId,
    command: Command,
    now: DateTime<Utc>,
) -> Result<(Outcome, Vec<EventDraft>), CommandError> {
    match command {
        Command::CreateProduct(new_product) => {
            let skus: Vec<Sku> = new_product.variants.iter().map(|v| v.sku.clone()).collect();
            let taken = tx.existing_skus(tenant, &skus).await?;
            if !taken.is_empty() {
                return Err(CommandError::Refused(Refusal::SkusTaken(taken)));
            }
            let (product, event) = new_product.create(ProductId::generate(), now);
            match tx.insert_product(tenant, &product).await {
                Err(e) if e.is_unique_violation() => {
                    // Another transaction took one of the SKUs between the check and the insert.
                    return Err(CommandError::Refused(Refusal::SkusTaken(skus)));
                }
                other => other?,
            }
            Ok((Outcome::ProductCreated(product), vec![event]))
        }
        Command::AdjustStock(adjustment) => {
            let before = tx
                .lock_stock_level(tenant, &adjustment.sku, &adjustment.location, now)
                .await?
                .ok_or_else(|| {
                    CommandError::Refused(Refusal::UnknownSku(adjustment.sku.clone()))
                })?;
            let (after, event) = adjustment.apply(before).map_err(|refused| {
                CommandError::Refused(Refusal::InsufficientStock {
                    available: refused.available,
                })
            })?;
            let delta = adjustment.delta.get();
            let movement = StockMovement {
                sku: adjustment.sku.as_str().to_owned(),
                location: adjustment.location.as_str().to_owned(),
                kind: if delta > 0 {
                    MovementKind::Received
                } else {
                    MovementKind::Removed
                },
                quantity: delta.abs(),
                order_id: None,
                at: now,
            };
            // The row is locked and the change was checked against it: the store's own guard
            // can only agree.
            let change = crate::stock::delta(movement.kind, movement.quantity);
            if !tx.shift_stock(tenant, change, &movement).await? {
                return Err(CommandError::Store(StoreError::Corrupt(format!(
                    "stock row {}@{} refused a checked adjustment",
                    adjustment.sku, adjustment.location
                ))));
            }
            let outcome = Outcome::StockAdjusted {
                sku: adjustment.sku,
                location: adjustment.location,
                level: after,
            };
            Ok((outcome, vec![event]))
        }
        Command::PlaceOrder(new_order) => {
            let prices = tx.catalog_prices(tenant, &new_order.skus()).await?;
            let (order, event) = new_order
                .place(OrderId::generate(), now, &prices)
                .map_err(|refused| CommandError::Refused(Refusal::Placement(refused)))?;
            tx.insert_order(tenant, &order).await?;
            Ok((Outcome::OrderPlaced(Box::new(order)), vec![event]))
        }
        Command::CancelOrder(id) => request_cancellation(tx, tenant, id, now).await,
        Command::ReturnOrder(id) => return_order(tx, tenant, id, now).await,
    }
}

fn status_of(state: &OrderState) -> Result<OrderStatus, CommandError> {
    OrderStatus::parse(&state.record.status)
        .map_err(|e| CommandError::Store(StoreError::Corrupt(e.reason)))
}

fn order_event(event_type: EventType, order: OrderId, data: serde_json::Value) -> EventDraft {
    let key = order.to_string();
    EventDraft::new(event_type, key.clone(), key, &data)
}

/// Marks the order for cancellation; the saga, which owns every partner call of the order,
/// cancels it at its next step and undoes what it did.
async fn request_cancellation(
    tx: &mut dyn Tx,
    tenant: TenantId,
    id: OrderId,
    now: DateTime<Utc>,
) -> Result<(Outcome, Vec<EventDraft>), CommandError> {
    let mut state = tx
        .lock_order(tenant, id)
        .await?
        .ok_or(CommandError::Refused(Refusal::OrderNotFound))?;
    let status = status_of(&state)?;
    if !cancellable(status) || state.saga.cancel_requested {
        return Err(CommandError::Refused(Refusal::NotCancellable {
            status: state.record.status,
        }));
    }
    state.saga.cancel_requested = true;
    tx.update_order(tenant, id, status.as_str(), &state.saga, now)
        .await?;
    state.record.saga = state.saga;
    state.record.updated_at = now;
    let event = order_event(
        EventType::OrderCancellationRequested,
        id,
        serde_json::json!({"order_id": id}),
    );
    Ok((Outcome::OrderChanged(Box::new(state.record)), vec![event]))
}

/// Restocks a delivered order's goods; the saga refunds the payment on the event.
async fn return_order(
    tx: &mut dyn Tx,
    tenant: TenantId,
    id: OrderId,
    now: DateTime<Utc>,
) -> Result<(Outcome, Vec<EventDraft>), CommandError> {
    let state = tx
        .lock_order(tenant, id)
        .await?
        .ok_or(CommandError::Refused(Refusal::OrderNotFound))?;
    let status = status_of(&state)?;
    if !returnable(status) {
        return Err(CommandError::Refused(Refusal::NotReturnable {
            status: state.record.status,
        }));
    }
    crate::stock::restock(tx, tenant, id, &state.saga, now).await?;
    tx.update_order(tenant, id, OrderStatus::Returned.as_str(), &state.saga, now)
        .await?;
    let mut record = state.record;
    record.status = OrderStatus::Returned.as_str().to_owned();
    record.updated_at = now;
    let event = order_event(
        EventType::OrderReturned,
        id,
        serde_json::json!({"order_id": id}),
    );
    Ok((Outcome::OrderChanged(Box::new(record)), vec![event]))
}

/// This process's claim on an idempotency key, released when dropped.
struct InFlightClaim<'a> {
    map: &'a DashMap<(TenantId, String), ()>,
    entry: (TenantId, String),
}

impl<'a> InFlightClaim<'a> {
    fn take(
        map: &'a DashMap<(TenantId, String), ()>,
        tenant: TenantId,
        key: &str,
    ) -> Result<Self, CommandError> {
        let entry = (tenant, key.to_owned());
        match map.entry(entry.clone()) {
            dashmap::Entry::Occupied(_) => Err(CommandError::InFlight),
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(());
                Ok(Self { map, entry })
            }
        }
    }
}

impl Drop for InFlightClaim<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.entry);
    }
}
