//! Orders: what a channel sends, how it is priced from the catalog, and the statuses it moves
//! through. Placement is a pure function of the request and the catalog's prices.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ParseError;
use crate::catalog::Sku;
use crate::event::{EventDraft, EventType};
use crate::ids::OrderId;
use crate::money::{Currency, Money};
use crate::text::{Code, Text};

/// The largest quantity of one line. Larger quantities are a wholesale process, not a channel
/// order, and the limit keeps `quantity × price` far from overflow.
pub const QUANTITY_MAX: u32 = 10_000;
/// How many lines one order may have; bounds the order's single transaction.
pub const LINES_COUNT_MAX: usize = 100;
/// Length limit of an e-mail address (RFC 5321 path limit).
pub const EMAIL_BYTES_MAX: usize = 254;

/// A positive whole number of units, at most [`QUANTITY_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    pub fn parse(raw: i64) -> Result<Self, ParseError> {
        match u32::try_from(raw) {
            Ok(q) if (1..=QUANTITY_MAX).contains(&q) => Ok(Self(q)),
            _ => Err(ParseError::new(format!(
                "must be a whole number from 1 to {QUANTITY_MAX}"
            ))),
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

/// An e-mail address, checked only for shape: delivery is the notification provider's concern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let shape_ok = raw.len() <= EMAIL_BYTES_MAX
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(raw.split_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@'));
        if !shape_ok {
            return Err(ParseError::new("must be an e-mail address"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CountryCode(String);

impl CountryCode {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.len() != 2 || !raw.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ParseError::new(
                "must be an ISO 3166-1 alpha-2 country code such as 'US'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Customer {
    /// The channel's own reference for the customer; orders can be listed by it.
    pub id: Code,
    pub email: Option<Email>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub name: Text,
    pub line1: Text,
    pub line2: Option<Text>,
    pub city: Text,
    pub region: Option<Text>,
    pub postal_code: Text,
    pub country: CountryCode,
}

/// A line as the channel sends it: which SKU and how many, never a price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRequest {
    pub sku: Sku,
    pub quantity: Quantity,
}

/// A validated order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub channel: Code,
    pub customer: Customer,
    pub lines: Vec<LineRequest>,
    pub currency: Currency,
    pub shipping_address: Address,
}

impl NewOrder {
    /// Checks the limits that span lines: 1 to [`LINES_COUNT_MAX`] lines, each SKU once.
    pub fn parse(
        channel: Code,
        customer: Customer,
        lines: Vec<LineRequest>,
        currency: Currency,
        shipping_address: Address,
    ) -> Result<Self, ParseError> {
        if lines.is_empty() || lines.len() > LINES_COUNT_MAX {
            return Err(ParseError::new(format!(
                "an order needs 1 to {LINES_COUNT_MAX} lines"
            )));
        }
        let mut seen = BTreeSet::new();
        if let Some(twice) = lines.iter().find(|line| !seen.insert(&line.sku)) {
            return Err(ParseError::new(format!(
                "SKU '{}' appears on more than one line; send one line with the total quantity",
                twice.sku
            )));
        }
        Ok(Self {
            channel,
            customer,
            lines,
            currency,
            shipping_address,
        })
    }

    /// The SKUs whose prices placement needs.
    pub fn skus(&self) -> Vec<Sku> {
        self.lines.iter().map(|line| line.sku.clone()).collect()
    }

    /// Prices every line from the catalog and places the order.
    ///
    /// `catalog` maps each known SKU of the tenant to its prices; a SKU missing from it is
    /// unknown, a SKU without a price in the order's currency cannot be sold in it.
    pub fn place(
        self,
        id: OrderId,
        now: DateTime<Utc>,
        catalog: &HashMap<Sku, HashMap<Currency, Money>>,
    ) -> Result<(Order, EventDraft), PlacementRefused> {
        let unknown: Vec<Sku> = self
            .lines
            .iter()
            .filter(|line| !catalog.contains_key(&line.sku))
            .map(|line| line.sku.clone())
            .collect();
        if !unknown.is_empty() {
            return Err(PlacementRefused::UnknownSkus(unknown));
        }
        let mut unpriced = Vec::new();
        let mut lines = Vec::with_capacity(self.lines.len());
        let mut total =
            Money::parse(0, self.currency).map_err(|_| PlacementRefused::TotalTooLarge)?;
        for line in self.lines {
            let Some(unit_price) = catalog.get(&line.sku).and_then(|p| p.get(&self.currency))
            else {
                unpriced.push(line.sku);
                continue;
            };
            let line_total = unit_price
                .times(line.quantity.get())
                .ok_or(PlacementRefused::TotalTooLarge)?;
            total = total
                .plus(line_total)
                .ok_or(PlacementRefused::TotalTooLarge)?;
            lines.push(OrderLine {
                sku: line.sku,
                quantity: line.quantity,
                unit_price_minor: unit_price.minor,
                line_total_minor: line_total.minor,
            });
        }
        if !unpriced.is_empty() {
            return Err(PlacementRefused::NoPrice {
                currency: self.currency,
                skus: unpriced,
            });
        }
        let order = Order {
            id,
            channel: self.channel,
            customer: self.customer,
            lines,
            currency: self.currency,
            total_minor: total.minor,
            shipping_address: self.shipping_address,
            status: OrderStatus::Placed,
            created_at: now,
        };
        debug_assert_eq!(
            order.lines.iter().map(|l| l.line_total_minor).sum::<i64>(),
            order.total_minor
        );
        let event = EventDraft::new(
            EventType::OrderPlaced,
            id.to_string(),
            id.to_string(),
            &order,
        );
        Ok((order, event))
    }
}

/// Why an order could not be placed; nothing is written in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementRefused {
    #[error("unknown SKUs")]
    UnknownSkus(Vec<Sku>),
    #[error("no price in {currency}")]
    NoPrice { currency: Currency, skus: Vec<Sku> },
    #[error("order total exceeds the largest allowed amount")]
    TotalTooLarge,
}

/// A priced line: the unit price is the catalog's at the time of placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub id: OrderId,
    pub channel: Code,
    pub customer: Customer,
    pub lines: Vec<OrderLine>,
    pub currency: Currency,
    pub total_minor: i64,
    pub shipping_address: Address,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
}

/// Where an order is in its life. The checkout saga moves it forward; cancellation, return and
/// refund are the branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Reserved,
    Authorized,
    Captured,
    FulfillmentRequested,
    Shipped,
    Delivered,
    Completed,
    Cancelled,
    Returned,
    Refunded,
}

impl OrderStatus {
    /// Where the status stands on an order's forward path (a later step ranks higher); `None`
    /// for a cancelled order, which leaves the path. A partner's update that follows a later
    /// step than the order has reached is not ready; one for an earlier step is a repeat.
    pub const fn lifecycle_rank(self) -> Option<u8> {
        match self {
            OrderStatus::Placed => Some(0),
            OrderStatus::Reserved => Some(1),
            OrderStatus::Authorized => Some(2),
            OrderStatus::Captured => Some(3),
            OrderStatus::FulfillmentRequested => Some(4),
            OrderStatus::Shipped => Some(5),
            OrderStatus::Delivered => Some(6),
            OrderStatus::Completed => Some(7),
            OrderStatus::Returned => Some(8),
            OrderStatus::Refunded => Some(9),
            OrderStatus::Cancelled => None,
        }
    }

    pub const ALL: [OrderStatus; 11] = [
        OrderStatus::Placed,
        OrderStatus::Reserved,
        OrderStatus::Authorized,
        OrderStatus::Captured,
        OrderStatus::FulfillmentRequested,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
        OrderStatus::Returned,
        OrderStatus::Refunded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Authorized => "authorized",
            OrderStatus::Captured => "captured",
            OrderStatus::FulfillmentRequested => "fulfillment_requested",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Returned => "returned",
            OrderStatus::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| ParseError::new(format!("'{raw}' is not an order status")))
    }
}

/// What the carrier reports about an order's shipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipmentUpdate {
    Shipped,
    Delivered,
}

impl ShipmentUpdate {
    /// The status the update moves an order from, the one it moves it to, and the event that
    /// says so.
    pub const fn transition(self) -> (OrderStatus, OrderStatus, crate::event::EventType) {
        use crate::event::EventType;
        match self {
            ShipmentUpdate::Shipped => (
                OrderStatus::FulfillmentRequested,
                OrderStatus::Shipped,
                EventType::OrderShipped,
            ),
            ShipmentUpdate::Delivered => (
                OrderStatus::Shipped,
                OrderStatus::Delivered,
                EventType::OrderDelivered,
            ),
        }
    }
}

/// What partners know an order by (the payment provider, the carrier, the notifier): its
/// tenant and id, so that their webhooks find their way back.
pub fn partner_reference(tenant: crate::ids::TenantId, order: OrderId) -> String {
    format!("{tenant}/{order}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD")
    }

    fn request(lines: Vec<(&str, i64)>) -> NewOrder {
        let text = |s: &str| Text::parse(s).expect("text");
        let lines = lines
            .into_iter()
            .map(|(sku, q)| LineRequest {
                sku: Sku::parse(sku).expect("sku"),
                quantity: Quantity::parse(q).expect("quantity"),
            })
            .collect();
        let address = Address {
            name: text("Ada"),
            line1: text("1 Main St"),
            line2: None,
            city: text("Springfield"),
            region: None,
            postal_code: text("12345"),
            country: CountryCode::parse("US").expect("country"),
        };
        let customer = Customer {
            id: Code::parse("c-1").expect("code"),
            email: None,
        };
        NewOrder::parse(
            Code::parse("web").expect("code"),
            customer,
            lines,
            usd(),
            address,
        )
        .expect("valid order")
    }

    fn catalog(entries: &[(&str, i64)]) -> HashMap<Sku, HashMap<Currency, Money>> {
        entries
            .iter()
            .map(|(sku, minor)| {
                let price = Money::parse(*minor, usd()).expect("price");
                (
                    Sku::parse(sku).expect("sku"),
                    HashMap::from([(usd(), price)]),
                )
            })
            .collect()
    }

    #[test]
    fn quantity_must_be_positive_and_bounded() {
        assert!(Quantity::parse(0).is_err());
        assert!(Quantity::parse(-3).is_err());
        assert!(Quantity::parse(i64::from(QUANTITY_MAX) + 1).is_err());
        assert_eq!(Quantity::parse(2).map(Quantity::get), Ok(2));
    }

    #[test]
    fn unknown_and_unpriced_skus_refuse_placement() {
        let order = request(vec![("A", 1), ("B", 1)]);
        let refused = order.place(OrderId::generate(), Utc::now(), &catalog(&[("A", 100)]));
        assert!(matches!(refused, Err(PlacementRefused::UnknownSkus(skus)) if skus.len() == 1));
    }

    proptest! {
        /// The order total is always the exact sum of catalog price × quantity over its lines.
        #[test]
        fn total_is_the_sum_of_priced_lines(prices in proptest::collection::vec((0i64..1_000_000, 1i64..=i64::from(QUANTITY_MAX)), 1..20)) {
            let skus: Vec<String> = (0..prices.len()).map(|i| format!("SKU-{i}")).collect();
            let order = request(skus.iter().zip(&prices).map(|(s, (_, q))| (s.as_str(), *q)).collect());
            let cat = catalog(&skus.iter().zip(&prices).map(|(s, (p, _))| (s.as_str(), *p)).collect::<Vec<_>>());
            let (placed, event) = order.place(OrderId::generate(), Utc::now(), &cat).expect("placeable");
            let expected: i64 = prices.iter().map(|(p, q)| p * q).sum();
            prop_assert_eq!(placed.total_minor, expected);
            prop_assert_eq!(event.partition_key, placed.id.to_string());
        }
    }
}
