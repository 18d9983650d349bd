//! Tally's domain: the values a request is parsed into and the pure decisions made on them.
//!
//! Nothing here performs I/O. Every type that crosses a trust boundary (a SKU, a quantity, an
//! amount of money, an idempotency key) is a newtype with a checked constructor, so a value that
//! exists is a valid value ("parse, don't validate"). Decisions take the state they need as
//! arguments and return the new state plus the events it causes; the store surrounds them with
//! one database transaction.
//!
//! # Layout
//!
//! - [`money`]: ISO 4217 currencies and integer minor-unit amounts.
//! - [`ids`]: typed identifiers (UUIDv7) for tenants, products, orders, events and API keys.
//! - [`text`]: bounded, validated strings shared by several aggregates.
//! - [`catalog`]: SKUs, products, variants and their prices.
//! - [`inventory`]: stock per SKU and location, and the adjustment decision.
//! - [`order`]: quantities, order lines, statuses and the placement decision.
//! - [`checkout`]: the checkout saga's state, and every step and compensation it decides
//!   ([`checkout::decide`]).
//! - [`event`]: event types and the drafts a decision emits into the outbox.
//! - [`idempotency`]: idempotency keys and request fingerprints.
//! - [`clock`]: the injected clock, which also mints identifiers (seeded runs repeat them).
//!
//! A new business rule is a pure function here, next to the values it decides on, tested
//! without a store; the command (in `tally-commands`) or step (in `tally-checkout`) that applies
//! it calls it, and so does the checker (`tally check`) that verifies it at rest.

pub mod catalog;
pub mod checkout;
pub mod clock;
pub mod event;
pub mod idempotency;
pub mod ids;
pub mod inventory;
pub mod money;
pub mod order;
pub mod text;

/// A value that failed to parse, with the reason in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// What was wrong, phrased for the API client ("must be a positive integer").
    pub reason: String,
}

impl ParseError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}
