//! Property tests over the public API: random sequences of payment steps, as retries and
//! out-of-order deliveries would produce them, never break a ledger invariant.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally_domain::ids::OrderId;
use tally_domain::money::{AMOUNT_MINOR_MAX, Currency};
use tally_ledger::payment::{self, Capture};
use tally_ledger::{
    AccountId, Applied, Balance, JournalEntry, Ledger, LedgerError, OrderSettlement, PendingStatus,
    Posting, check, void,
};

/// Orders a generated sequence acts on: few enough that steps collide on the same order.
const ORDER_COUNT: usize = 4;

/// Steps per generated sequence: long enough to authorize, capture, refund and retry each order
/// several times.
const STEP_COUNT_MAX: usize = 60;

#[derive(Debug, Clone)]
enum Step {
    Authorize { order: usize, amount_minor: i64 },
    Capture { order: usize, amount_minor: i64 },
    Void { order: usize },
    Refund { order: usize, amount_minor: i64 },
    Reapply { index: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let order = 0..ORDER_COUNT;
    let amount = 1..=100_000i64;
    prop_oneof![
        (order.clone(), amount.clone()).prop_map(|(order, amount_minor)| Step::Authorize {
            order,
            amount_minor
        }),
        (order.clone(), amount.clone()).prop_map(|(order, amount_minor)| Step::Capture {
            order,
            amount_minor
        }),
        order.clone().prop_map(|order| Step::Void { order }),
        (order, amount).prop_map(|(order, amount_minor)| Step::Refund {
            order,
            amount_minor
        }),
        any::<usize>().prop_map(|index| Step::Reapply { index }),
    ]
}

/// What the test knows about one order, so it can tell which steps the ledger must accept.
#[derive(Debug)]
struct OrderState {
    id: OrderId,
    currency: Currency,
    authorizations: Vec<JournalEntry>,
    captured_minor: i64,
    refunded_minor: i64,
}

struct Run {
    ledger: Ledger,
    orders: Vec<OrderState>,
    applied: Vec<JournalEntry>,
}

impl Run {
    fn new() -> Self {
        let codes = ["USD", "EUR", "JPY"];
        let orders = (0..ORDER_COUNT)
            .map(|index| OrderState {
                id: OrderId::generate(),
                currency: Currency::parse(codes[index % codes.len()]).expect("ISO 4217"),
                authorizations: Vec::new(),
                captured_minor: 0,
                refunded_minor: 0,
            })
            .collect();
        Self {
            ledger: Ledger::new(),
            orders,
            applied: Vec::new(),
        }
    }

    fn record(&mut self, entry: JournalEntry) -> Result<Applied, LedgerError> {
        let applied = self.ledger.apply(entry.clone())?;
        if applied == Applied::Recorded {
            self.applied.push(entry);
        }
        Ok(applied)
    }

    fn run(&mut self, number: usize, step: &Step) -> Result<(), TestCaseError> {
        match *step {
            Step::Authorize {
                order,
                amount_minor,
            } => {
                let state = &self.orders[order];
                let id = format!("auth-{number}");
                let entry = payment::authorize(id, state.id, amount_minor, state.currency)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(self.record(entry.clone()), Ok(Applied::Recorded));
                self.orders[order].authorizations.push(entry);
            }
            Step::Capture {
                order,
                amount_minor,
            } => self.capture(number, order, amount_minor)?,
            Step::Void { order } => {
                let Some(auth) = self.orders[order].authorizations.last().cloned() else {
                    return Ok(());
                };
                let open = self.ledger.pending_status(auth.id()) == Some(PendingStatus::Open);
                let entry = void(&auth, format!("void-{number}"))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(self.record(entry).is_ok(), open);
            }
            Step::Refund {
                order,
                amount_minor,
            } => {
                let state = &self.orders[order];
                // The saga refunds only what it captured; the ledger itself does not know.
                if amount_minor > state.captured_minor - state.refunded_minor {
                    return Ok(());
                }
                let entry =
                    payment::refund(format!("refund-{number}"), amount_minor, state.currency)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(self.record(entry), Ok(Applied::Recorded));
                self.orders[order].refunded_minor += amount_minor;
            }
            Step::Reapply { index } => {
                if self.applied.is_empty() {
                    return Ok(());
                }
                let entry = self.applied[index % self.applied.len()].clone();
                let before = balances(&self.ledger);
                prop_assert_eq!(self.ledger.apply(entry), Ok(Applied::AlreadyApplied));
                prop_assert_eq!(balances(&self.ledger), before);
            }
        }
        Ok(())
    }

    fn capture(
        &mut self,
        number: usize,
        order: usize,
        amount_minor: i64,
    ) -> Result<(), TestCaseError> {
        let Some(auth) = self.orders[order].authorizations.last().cloned() else {
            return Ok(());
        };
        let pending_minor = auth
            .amount_minor()
            .expect("an authorization is one transfer");
        let built = payment::capture(
            &auth,
            amount_minor,
            format!("capture-{number}"),
            format!("sale-{number}"),
        );
        let Ok(Capture { post, sale }) = built else {
            prop_assert!(
                amount_minor > pending_minor,
                "refused a capture within the authorization"
            );
            return Ok(());
        };
        prop_assert!(
            amount_minor <= pending_minor,
            "built a capture beyond the authorization"
        );
        let open = self.ledger.pending_status(auth.id()) == Some(PendingStatus::Open);
        let posted = self.record(post);
        prop_assert_eq!(posted.is_ok(), open);
        if posted.is_ok() {
            prop_assert_eq!(self.record(sale), Ok(Applied::Recorded));
            self.orders[order].captured_minor += amount_minor;
        }
        Ok(())
    }

    /// Checks every invariant the ledger promises, after any step.
    fn assert_invariants(&self) -> Result<(), TestCaseError> {
        let mut sums: BTreeMap<Currency, Balance> = BTreeMap::new();
        for (_, currency, balance) in self.ledger.balances() {
            let sum = sums.entry(currency).or_default();
            sum.posted_minor += balance.posted_minor;
            sum.pending_minor += balance.pending_minor;
        }
        for (currency, sum) in sums {
            prop_assert_eq!(sum, Balance::default(), "{} does not sum to zero", currency);
        }
        let mut settled = Vec::new();
        let mut open_by_currency: BTreeMap<Currency, i64> = BTreeMap::new();
        for order in &self.orders {
            let mut all_resolved = !order.authorizations.is_empty();
            let mut open_minor = 0;
            for auth in &order.authorizations {
                let pending_minor = auth.amount_minor().expect("one transfer");
                match self.ledger.pending_status(auth.id()) {
                    Some(PendingStatus::Posted { amount_minor, .. }) => {
                        prop_assert!(amount_minor <= pending_minor, "posted beyond pending");
                    }
                    Some(PendingStatus::Voided { .. }) => {}
                    Some(PendingStatus::Open) => {
                        all_resolved = false;
                        open_minor += pending_minor;
                    }
                    None => prop_assert!(false, "an applied authorization is unknown"),
                }
            }
            // A capture writes its post and its sale together, so the receivable never holds a
            // posted amount, and it reserves exactly what is authorized and still open.
            let receivable = AccountId::order_receivable(order.id);
            let expected = Balance {
                posted_minor: 0,
                pending_minor: -open_minor,
            };
            prop_assert_eq!(self.ledger.balance(&receivable, order.currency), expected);
            *open_by_currency.entry(order.currency).or_default() += open_minor;
            if all_resolved {
                settled.push(OrderSettlement {
                    order_id: order.id,
                    currency: order.currency,
                });
            }
        }
        for (currency, open_minor) in open_by_currency {
            let clearing = self.ledger.balance(&AccountId::psp_clearing(), currency);
            prop_assert_eq!(
                clearing.pending_minor,
                open_minor,
                "clearing pending in {}",
                currency
            );
        }
        let violations = check(&self.applied, &settled);
        prop_assert!(violations.is_empty(), "{:?}", violations);
        Ok(())
    }
}

fn balances(ledger: &Ledger) -> Vec<(AccountId, Currency, Balance)> {
    ledger
        .balances()
        .map(|(account, currency, balance)| (account.clone(), currency, balance))
        .collect()
}

proptest! {
    /// Any sequence of authorize, capture, void, refund and retry keeps every currency summing
    /// to zero, never posts more than was authorized, settles every resolved order's receivable,
    /// and passes the check.
    #[test]
    fn payment_steps_keep_the_ledger_exact(steps in prop::collection::vec(step(), 1..STEP_COUNT_MAX)) {
        let mut run = Run::new();
        for (number, step) in steps.iter().enumerate() {
            run.run(number, step)?;
            run.assert_invariants()?;
        }
    }

    /// Re-applying every entry, in any order, changes nothing and is reported as a retry.
    #[test]
    fn reapplying_any_entry_is_idempotent(
        steps in prop::collection::vec(step(), 1..STEP_COUNT_MAX),
        order_seed in any::<u64>(),
    ) {
        let mut run = Run::new();
        for (number, step) in steps.iter().enumerate() {
            run.run(number, step)?;
        }
        let before = balances(&run.ledger);
        let count = run.applied.len();
        let start = usize::try_from(order_seed % 1_000).unwrap_or(0);
        for offset in 0..count {
            // Backwards from a random start: every entry once, not in the order applied.
            let index = (start + count - offset) % count;
            prop_assert_eq!(run.ledger.apply(run.applied[index].clone()), Ok(Applied::AlreadyApplied));
        }
        prop_assert_eq!(balances(&run.ledger), before);
    }

    /// Whatever postings are offered, a constructed entry balances in every currency.
    #[test]
    fn entries_balance_by_construction(
        legs in prop::collection::vec(
            (0..4usize, 0..2usize, -AMOUNT_MINOR_MAX - 1..=AMOUNT_MINOR_MAX + 1),
            0..6,
        ),
        close in any::<bool>(),
    ) {
        let accounts = ["a:x", "b:y", "c:z", "d:w"];
        let currencies = ["USD", "EUR"].map(|code| Currency::parse(code).expect("ISO 4217"));
        let mut postings: Vec<Posting> = legs
            .iter()
            .map(|&(account, currency, amount_minor)| Posting {
                account: AccountId::parse(accounts[account]).expect("valid code"),
                amount_minor,
                currency: currencies[currency],
            })
            .collect();
        if close {
            // Without a closing leg random amounts almost never balance; with one they often do,
            // so both the refusals and the acceptances get exercised.
            for currency in currencies {
                let sum: i128 = postings
                    .iter()
                    .filter(|p| p.currency == currency)
                    .map(|p| i128::from(p.amount_minor))
                    .sum();
                if let Ok(amount_minor) = i64::try_from(-sum) && amount_minor != 0 {
                    let account = AccountId::parse("e:v").expect("valid code");
                    postings.push(Posting { account, amount_minor, currency });
                }
            }
        }
        if let Ok(entry) = JournalEntry::posted("e", postings) {
            let mut sums: BTreeMap<Currency, i128> = BTreeMap::new();
            for posting in entry.postings() {
                prop_assert!(posting.amount_minor != 0);
                *sums.entry(posting.currency).or_default() += i128::from(posting.amount_minor);
            }
            prop_assert!(sums.values().all(|sum| *sum == 0));
            prop_assert!(entry.postings().len() >= 2);
        }
    }
}
