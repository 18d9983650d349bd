//! One order's partner effects against its status, its saga and the money booked for it.

use super::*;

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
pub(super) fn kinds_of(effects: &[&Effect]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for effect in effects {
        *counts.entry(kind_name(effect.kind)).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.join(", ")
}

/// Whether a customer with an address hears of `event`: the rule the notifications consumer
/// applies.
fn notifies(event: EventType) -> bool {
    event.customer_template().is_some()
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
