//! The consumer groups that move an order from placed to completed: the checkout saga
//! ([`saga`]) and customer notifications ([`notify`]), with the partner adapters they call
//! ([`partners`]) and the ledger and audit writes of each step ([`books`]).
//!
//! # Layout
//!
//! - [`saga`]: reserve, authorize, capture, request fulfillment, complete; and compensations.
//! - [`notify`]: one notification per significant order event.
//! - [`partners`]: HTTP adapters of the payment provider, the carrier and the notifier.
//! - [`books`]: journal entries, audit records and events of one saga step.
//!
//! A new step of the order lifecycle is a decision in `tally_domain::checkout::decide` and its
//! partner call here in [`saga`]; a new partner is an adapter in [`partners`] over its wire
//! contract in `tally-wire`, with a sandbox speaking the same contract in `harness/sandbox`.

mod books;
pub mod notify;
pub mod partners;
pub mod saga;

pub use notify::Notifications;
pub use partners::{PartnerUrls, Partners};
pub use saga::{CHECKOUT_GROUP, Checkout};
