//! Partners' wire contracts: the headers, bodies and signature schemes Tally and a partner
//! exchange, written once so that Tally's adapters and the partner sandboxes cannot drift
//! apart. Production code depends on this crate, never on the sandbox.
//!
//! # Layout
//!
//! - [`signature`]: the HMAC-SHA256 webhook signature scheme with its timestamp window.
//! - [`carrier_webhook`]: the carrier's shipment webhooks (headers, event types, body).
//!
//! A new partner's webhook or API gets a module of its own here; its adapter (in `checkout`,
//! or the API's ingress) and its sandbox both use it.

pub mod carrier_webhook;
pub mod signature;
