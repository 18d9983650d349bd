//! What each order is: its lines, how it is sent (once, re-sent, or by concurrent duplicates)
//! and how its payment should end. Every choice is drawn from the seed and the order's index
//! alone, so a run's mix does not depend on timing and a failure can be replayed from its seed.
//!
//! Prices steer the partner sandbox's documented rules: it declines an authorization whose
//! amount ends in 13 minor units and fails a capture whose amount ends in 17. Ordinary variants
//! cost whole units (a multiple of 100), so any sum of them avoids both rules; an order meant to
//! be declined adds one unit of a variant priced ..13, one meant to fail capture one of ..17.

use serde_json::{Value, json};

/// Unit prices of the ordinary variants, in USD cents: multiples of 100, see the module doc.
/// Variant `i` costs `PRICES_MINOR[i % 4]`.
pub const PRICES_MINOR: [i64; 4] = [1_200, 2_500, 4_900, 9_900];
/// How many ordinary variants orders are spread over unless told otherwise: few, so that every
/// reservation contends for the same stock rows, as in a flash sale.
pub const SKUS_DEFAULT: usize = PRICES_MINOR.len();
/// Unit price of the variant that makes an order's authorization be declined.
pub const DECLINE_PRICE_MINOR: i64 = 1_013;
/// Unit price of the variant that makes an order's capture fail.
pub const CAPTURE_FAILURE_PRICE_MINOR: i64 = 1_017;
/// The sandbox's rule: authorizations of amounts with this remainder mod 100 are declined.
pub const DECLINE_REMAINDER: i64 = 13;
/// The sandbox's rule: captures of amounts with this remainder mod 100 fail.
pub const CAPTURE_FAILURE_REMAINDER: i64 = 17;
/// Most ordinary lines per order; small, so one order stays a cheap, typical request.
pub const LINES_PER_ORDER_MAX: u64 = 3;
/// Most units per line.
pub const QUANTITY_PER_LINE_MAX: u64 = 3;
/// How many distinct customers orders are spread over.
pub const CUSTOMERS_COUNT: u64 = 1_000;
/// The fewest and most concurrent copies of a duplicated order.
pub const DUPLICATE_COPIES_MIN: u64 = 2;
pub const DUPLICATE_COPIES_MAX: u64 = 3;

/// SplitMix64: a tiny, well-mixed generator whose output is fixed by its algorithm, not by a
/// library version, so a seed means the same mix in every build.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Uniform in [low, high]; the tiny modulo bias is irrelevant for a load mix.
    pub fn next_in(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }
}

/// The shares of the mix, each from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Shares {
    pub retry: f64,
    pub duplicate: f64,
    pub decline: f64,
    pub capture_failure: f64,
    /// Orders the channel asks to cancel once created.
    pub cancel: f64,
    /// Orders polled for settlement while the load runs.
    pub settle_sample: f64,
}

/// How an order is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// One request.
    Single,
    /// One request, then the same key and body again once it is answered.
    Retry,
    /// This many concurrent requests with the same key and body.
    Duplicate { copies: u64 },
}

/// How the order's payment is meant to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payment {
    Approve,
    Decline,
    CaptureFailure,
}

impl Payment {
    /// The terminal status an order with this payment must reach, unless it is cancelled.
    pub fn expected(self) -> &'static [&'static str] {
        match self {
            Payment::Approve => &["completed"],
            Payment::Decline | Payment::CaptureFailure => &["cancelled"],
        }
    }
}

/// Which variant a line orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// An ordinary variant, by its index in the run's catalog.
    Ordinary(usize),
    Decline,
    CaptureFailure,
}

impl Item {
    pub fn price_minor(self) -> i64 {
        match self {
            Item::Ordinary(i) => PRICES_MINOR[i % PRICES_MINOR.len()],
            Item::Decline => DECLINE_PRICE_MINOR,
            Item::CaptureFailure => CAPTURE_FAILURE_PRICE_MINOR,
        }
    }
}

/// One order of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPlan {
    pub intake: Intake,
    pub payment: Payment,
    /// `(item, quantity)`, one line per distinct item.
    pub lines: Vec<(Item, u64)>,
    pub customer: u64,
    /// Whether the order is polled for settlement while the load runs.
    pub sampled: bool,
    /// Whether the channel asks to cancel the order as soon as it is created.
    pub cancel: bool,
}

impl OrderPlan {
    pub fn total_minor(&self) -> i64 {
        self.lines
            .iter()
            .map(|(item, quantity)| item.price_minor() * *quantity as i64)
            .sum()
    }
}

/// Draws every order's plan from the seed.
#[derive(Debug, Clone)]
pub struct Mix {
    shares: Shares,
    seed: u64,
    skus: usize,
}

impl Mix {
    pub fn new(shares: Shares, seed: u64) -> Self {
        Self {
            shares,
            seed,
            skus: SKUS_DEFAULT,
        }
    }

    /// Spreads orders over `skus` ordinary variants (at least 1) instead of [`SKUS_DEFAULT`].
    pub fn over_skus(self, skus: usize) -> Self {
        assert!(skus >= 1, "a catalog has at least one SKU");
        Self { skus, ..self }
    }

    /// The plan of order `index`: a function of the seed and the index only.
    pub fn plan(&self, index: u64) -> OrderPlan {
        // One independent stream per order: mixing the index in through a first draw keeps
        // neighbouring indexes from sharing a sequence.
        let mut rng = SplitMix64::new(SplitMix64::new(self.seed ^ index).next_u64() ^ index);
        let draw = rng.next_unit();
        let intake = if draw < self.shares.retry {
            Intake::Retry
        } else if draw < self.shares.retry + self.shares.duplicate {
            let copies = rng.next_in(DUPLICATE_COPIES_MIN, DUPLICATE_COPIES_MAX);
            Intake::Duplicate { copies }
        } else {
            Intake::Single
        };
        let draw = rng.next_unit();
        let payment = if draw < self.shares.decline {
            Payment::Decline
        } else if draw < self.shares.decline + self.shares.capture_failure {
            Payment::CaptureFailure
        } else {
            Payment::Approve
        };
        let skus = self.skus as u64;
        let count = rng.next_in(1, LINES_PER_ORDER_MAX.min(skus)) as usize;
        let first = rng.next_in(0, skus - 1) as usize;
        let mut lines: Vec<(Item, u64)> = (0..count)
            .map(|k| {
                let item = Item::Ordinary((first + k) % self.skus);
                (item, rng.next_in(1, QUANTITY_PER_LINE_MAX))
            })
            .collect();
        match payment {
            Payment::Approve => {}
            Payment::Decline => lines.push((Item::Decline, 1)),
            Payment::CaptureFailure => lines.push((Item::CaptureFailure, 1)),
        }
        let customer = rng.next_in(0, CUSTOMERS_COUNT - 1);
        let sampled = rng.next_unit() < self.shares.settle_sample;
        // Drawn last, so that adding it left every earlier draw of a seed as it was.
        let cancel = rng.next_unit() < self.shares.cancel;
        let plan = OrderPlan {
            intake,
            payment,
            lines,
            customer,
            sampled,
            cancel,
        };
        let remainder = plan.total_minor() % 100;
        match payment {
            Payment::Approve => {
                assert!(remainder != DECLINE_REMAINDER && remainder != CAPTURE_FAILURE_REMAINDER);
            }
            Payment::Decline => assert_eq!(remainder, DECLINE_REMAINDER),
            Payment::CaptureFailure => assert_eq!(remainder, CAPTURE_FAILURE_REMAINDER),
        }
        plan
    }
}

/// The SKUs of one run's product, unique per run so that runs never share stock.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub ordinary: Vec<String>,
    pub decline: String,
    pub capture_failure: String,
}

impl Catalog {
    /// The catalog of run `run_tag` with `skus` ordinary variants.
    pub fn new(run_tag: &str, skus: usize) -> Self {
        Self {
            ordinary: (0..skus).map(|i| format!("bench-{run_tag}-{i}")).collect(),
            decline: format!("bench-{run_tag}-decline"),
            capture_failure: format!("bench-{run_tag}-capture-failure"),
        }
    }

    pub fn sku(&self, item: Item) -> &str {
        match item {
            Item::Ordinary(i) => &self.ordinary[i],
            Item::Decline => &self.decline,
            Item::CaptureFailure => &self.capture_failure,
        }
    }

    /// Every SKU with its unit price.
    pub fn priced(&self) -> Vec<(&str, i64)> {
        let mut priced: Vec<(&str, i64)> = (0..self.ordinary.len())
            .map(|i| (self.sku(Item::Ordinary(i)), Item::Ordinary(i).price_minor()))
            .collect();
        priced.push((&self.decline, DECLINE_PRICE_MINOR));
        priced.push((&self.capture_failure, CAPTURE_FAILURE_PRICE_MINOR));
        priced
    }

    /// The `POST /v1/orders` body of `plan`.
    pub fn order_body(&self, plan: &OrderPlan) -> Value {
        let lines: Vec<Value> = plan
            .lines
            .iter()
            .map(|(item, quantity)| json!({"sku": self.sku(*item), "quantity": quantity}))
            .collect();
        json!({
            "channel": "bench",
            "customer": {"id": format!("bench-{}", plan.customer), "email": "bench@example.com"},
            "lines": lines,
            "currency": "USD",
            "shipping_address": {
                "name": "Ada Lovelace",
                "line1": "12 St James's Square",
                "city": "London",
                "postal_code": "SW1Y 4JH",
                "country": "GB"
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(retry: f64, duplicate: f64, decline: f64) -> Shares {
        Shares {
            retry,
            duplicate,
            decline,
            ..Shares::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_mix_and_another_seed_another() {
        let mix = Mix::new(shares(0.1, 0.05, 0.02), 42);
        let again = Mix::new(shares(0.1, 0.05, 0.02), 42);
        let other = Mix::new(shares(0.1, 0.05, 0.02), 43);
        let plans: Vec<OrderPlan> = (0..1_000).map(|i| mix.plan(i)).collect();
        assert_eq!(plans, (0..1_000).map(|i| again.plan(i)).collect::<Vec<_>>());
        assert_ne!(plans, (0..1_000).map(|i| other.plan(i)).collect::<Vec<_>>());
        // Order in which plans are drawn does not matter.
        assert_eq!(mix.plan(999), plans[999]);
    }

    #[test]
    fn shares_are_met_over_many_orders() {
        let mix = Mix::new(shares(0.1, 0.05, 0.2), 7);
        let plans: Vec<OrderPlan> = (0..20_000).map(|i| mix.plan(i)).collect();
        let share = |f: &dyn Fn(&OrderPlan) -> bool| {
            plans.iter().filter(|p| f(p)).count() as f64 / plans.len() as f64
        };
        let retry = share(&|p| p.intake == Intake::Retry);
        let duplicate = share(&|p| matches!(p.intake, Intake::Duplicate { .. }));
        let decline = share(&|p| p.payment == Payment::Decline);
        assert!((retry - 0.1).abs() < 0.01, "retry share {retry}");
        assert!(
            (duplicate - 0.05).abs() < 0.01,
            "duplicate share {duplicate}"
        );
        assert!((decline - 0.2).abs() < 0.015, "decline share {decline}");
        assert_eq!(share(&|p| p.payment == Payment::CaptureFailure), 0.0);
        assert!(plans.iter().all(|p| match p.intake {
            Intake::Duplicate { copies } => (2..=3).contains(&copies),
            _ => true,
        }));
    }

    #[test]
    fn totals_steer_the_sandbox_only_when_asked() {
        let all = Shares {
            decline: 0.3,
            capture_failure: 0.3,
            ..Shares::default()
        };
        let mix = Mix::new(all, 1);
        for index in 0..5_000 {
            let plan = mix.plan(index);
            let remainder = plan.total_minor() % 100;
            match plan.payment {
                Payment::Approve => assert_eq!(remainder, 0),
                Payment::Decline => assert_eq!(remainder, DECLINE_REMAINDER),
                Payment::CaptureFailure => assert_eq!(remainder, CAPTURE_FAILURE_REMAINDER),
            }
            let ordinary = plan
                .lines
                .iter()
                .filter(|(item, _)| matches!(item, Item::Ordinary(_)));
            assert!((1..=3).contains(&ordinary.count()));
        }
    }

    #[test]
    fn orders_spread_over_the_skus_asked_for_and_name_each_once() {
        for skus in [1, 2, 50] {
            let mix = Mix::new(Shares::default(), 3).over_skus(skus);
            let mut used = std::collections::BTreeSet::new();
            for index in 0..2_000 {
                let plan = mix.plan(index);
                let mut named = std::collections::BTreeSet::new();
                for (item, _) in &plan.lines {
                    let Item::Ordinary(i) = item else {
                        panic!("only ordinary lines without failure shares");
                    };
                    assert!(*i < skus, "SKU {i} of {skus}");
                    assert!(named.insert(*i), "SKU {i} named twice");
                    used.insert(*i);
                }
                assert_eq!(plan.total_minor() % 100, 0);
            }
            assert_eq!(used.len(), skus, "every SKU is ordered");
        }
        let catalog = Catalog::new("t1", 50);
        assert_eq!(catalog.priced().len(), 52);
        assert_eq!(catalog.priced()[5], ("bench-t1-5", PRICES_MINOR[1]));
    }

    #[test]
    fn an_order_body_names_each_sku_once() {
        let catalog = Catalog::new("t1", SKUS_DEFAULT);
        let plan = OrderPlan {
            intake: Intake::Single,
            payment: Payment::Decline,
            lines: vec![(Item::Ordinary(3), 2), (Item::Decline, 1)],
            customer: 5,
            sampled: false,
            cancel: false,
        };
        let body = catalog.order_body(&plan);
        assert_eq!(
            body["lines"][0],
            json!({"sku": "bench-t1-3", "quantity": 2})
        );
        assert_eq!(body["lines"][1]["sku"], "bench-t1-decline");
        assert_eq!(body["customer"]["id"], "bench-5");
        assert_eq!(plan.total_minor(), 2 * 9_900 + 1_013);
        assert_eq!(catalog.priced().len(), 6);
    }
}
