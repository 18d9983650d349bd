use super::*;
use chrono::Utc;
use tally_domain::checkout::Saga;
use tally_store::AddressRecord;

use EventType::{
    OrderCancellationRequested as CancelRequested, OrderCancelled as Cancelled,
    OrderCompleted as Completed, OrderDelivered as Delivered, OrderFulfillmentRequested as Fulfil,
    OrderPaymentAuthorized as Authorized, OrderPaymentCaptured as Captured, OrderPlaced as Placed,
    OrderRefunded as Refunded, OrderReturned as Returned, OrderShipped as Shipped,
    OrderStockReserved as Reserved,
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
