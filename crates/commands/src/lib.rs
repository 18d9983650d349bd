//! Tally's commands: what a client, a partner or Tally itself asks to change, each decided and
//! written in one store transaction with its events, its audit record and the response stored
//! under its idempotency key (see [`Commands`]).
//!
//! # Layout
//!
//! - [`flow`]: the idempotent flow every command runs through (claim the key, replay or decide,
//!   write, record the response), and the [`CommandContext`] naming who asks ([`Actor`]).
//! - One file per command, each parsing nothing (its caller hands it validated domain values),
//!   deciding with the domain's pure rules and writing through [`tally_store::Tx`]:
//!   [`create_product`], [`update_product`], [`adjust_stock`], [`place_order`],
//!   [`cancel_order`], [`return_order`].
//!
//! A new command is a file of its own with a type implementing [`Decide`], and one line in the
//! `commands!` list below; its route in `tally-api` builds it from the request. A new table it
//! writes gets its statements in `tally-store`'s `write` module and a migration per engine.

pub mod adjust_stock;
pub mod cancel_order;
pub mod create_product;
pub mod flow;
pub mod place_order;
pub mod return_order;
pub mod update_product;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_domain::catalog::{Product, Sku};
use tally_domain::event::EventDraft;
use tally_domain::ids::TenantId;
use tally_domain::inventory::StockLevel;
use tally_domain::order::{Order, PlacementRefused};
use tally_domain::text::Code;
use tally_store::{OrderRecord, StoreError, Tx};

pub use flow::{Actor, CommandContext, Commands, Executed, Render};

/// A command decided and written in a transaction: what it did, the events it caused, and the
/// entity its audit record is about.
#[derive(Debug)]
pub struct Decision {
    pub outcome: Outcome,
    pub events: Vec<EventDraft>,
    pub audit: Audited,
}

/// What the audit record of a command names: the entity and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited {
    pub entity_type: &'static str,
    pub entity_id: String,
    pub action: &'static str,
}

/// Where and when a command is decided: the tenant, the moment, and the clock that mints the
/// ids of what it creates (injected, so that a seeded run mints the same ones).
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub tenant: TenantId,
    pub now: DateTime<Utc>,
    pub clock: &'a dyn tally_domain::clock::Clock,
}

/// One command: decides with the domain's rules on what `tx` finds, and writes its change.
#[async_trait]
pub trait Decide: Send {
    async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError>;
}

/// Lists every command once: the [`Command`] enum and its dispatch to each one's [`Decide`].
macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident($type:ty),)*) => {
        /// What a client asked for, parsed and validated.
        #[derive(Debug, Clone)]
        pub enum Command {
            $($(#[$doc])* $variant($type),)*
        }

        impl Command {
            async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError> {
                match self {
                    $(Command::$variant(command) => command.decide(tx, at).await,)*
                }
            }
        }
    };
}

commands! {
    CreateProduct(create_product::CreateProduct),
    /// Rename a product or reprice its variants.
    UpdateProduct(update_product::UpdateProduct),
    AdjustStock(adjust_stock::AdjustStock),
    PlaceOrder(place_order::PlaceOrder),
    /// Ask the checkout saga to cancel the order, undoing what it did.
    CancelOrder(cancel_order::CancelOrder),
    /// The customer sent the goods back: restock and refund.
    ReturnOrder(return_order::ReturnOrder),
}

/// What a command did, for the caller to render into the response it stores.
#[derive(Debug, Clone)]
pub enum Outcome {
    ProductCreated(Product),
    ProductUpdated(Product),
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
    ProductNotFound,
    /// A change names SKUs the product does not have.
    NotVariantsOf(Vec<Sku>),
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

impl CommandError {
    /// Data the store holds that does not parse back into the domain's values.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        CommandError::Store(StoreError::Corrupt(what.to_string()))
    }
}

/// An order's status as stored, parsed.
pub(crate) fn status_of(
    state: &tally_store::OrderState,
) -> Result<tally_domain::order::OrderStatus, CommandError> {
    tally_domain::order::OrderStatus::parse(&state.record.status)
        .map_err(|e| CommandError::corrupt(e.reason))
}

/// An event about an order, keyed by it.
pub(crate) fn order_event(
    event_type: tally_domain::event::EventType,
    order: tally_domain::ids::OrderId,
) -> EventDraft {
    let key = order.to_string();
    EventDraft::new(
        event_type,
        key.clone(),
        key,
        &serde_json::json!({"order_id": order}),
    )
}
