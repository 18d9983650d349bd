//! One module per resource; each holds its wire types, their parsing into domain commands, and
//! its handlers.

pub mod books;
pub mod dead_letters;
pub mod health;
pub mod inventory;
pub mod orders;
pub mod products;
pub mod webhooks;

use tally_commands::Outcome;
use tally_store::{NewEvent, StoredResponse};

/// Renders any command's outcome into the response stored under its idempotency key.
pub(crate) fn render(outcome: &Outcome, events: &[NewEvent]) -> StoredResponse {
    match outcome {
        Outcome::ProductCreated(product) => products::render_created(product),
        Outcome::ProductUpdated(product) => products::update::render(product),
        Outcome::StockAdjusted {
            sku,
            location,
            level,
        } => inventory::render_adjusted(sku, location, level),
        Outcome::OrderPlaced(order) => orders::render_placed(order, events),
        Outcome::OrderChanged(record) => orders::render_changed(record),
    }
}
