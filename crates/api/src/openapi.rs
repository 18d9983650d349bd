//! The OpenAPI 3.1 document, generated from the handlers' annotations, and Swagger UI served
//! from files compiled into the binary (no network access needed).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::routes::{books, dead_letters, health, inventory, orders, products, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally", description = "Event-driven commerce backend: orders, stock and payments, exactly once."),
    paths(
        products::create_product, products::get_product, products::update::update_product,
        inventory::adjust, inventory::get_inventory,
        orders::place_order, orders::get_order, orders::list_orders,
        orders::cancel_order, orders::return_order,
        webhooks::carrier,
        books::account, books::audit,
        dead_letters::list, dead_letters::retry, dead_letters::discard,
        health::livez, health::readyz,
    ),
    components(schemas(crate::problem::Problem, crate::problem::FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "catalog", description = "Products, variants and prices (scope 'admin')"),
        (name = "inventory", description = "Stock per SKU and location (scope 'admin')"),
        (name = "orders", description = "Order intake and queries (scope 'orders')"),
        (name = "ledger", description = "Ledger accounts and the audit trail (scope 'admin')"),
        (name = "operations", description = "Dead letters (scope 'admin')"),
        (name = "webhooks", description = "Signed partner webhooks"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `/docs` (Swagger UI) and `/openapi.json`.
pub fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi())
}
