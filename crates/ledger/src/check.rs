//! The invariant check behind `tally ledger check`: it reads a tenant's entries as stored and
//! reports every rule they break, not only the first, so an operator sees the whole damage.
//!
//! The check does not trust the order the store returns entries in: it indexes them by id first
//! and resolves two-phase references through the index. It sums in `i128`, so no stored data can
//! overflow the check itself.

use std::collections::BTreeMap;

use tally_domain::ids::OrderId;
use tally_domain::money::Currency;

use crate::entry::{ResolutionError, check_resolution, currency_sums};
use crate::{AccountId, EntryKind, JournalEntry, LedgerError};

/// An order in a terminal state (completed, cancelled, refunded): everything the customer owed
/// for it has been paid or released, so its receivable must be zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSettlement {
    pub order_id: OrderId,
    /// The order's currency. Its receivable must be zero in this currency and, since an order
    /// has one currency, in every other one too; both are checked.
    pub currency: Currency,
}

/// Which balance figure a sum is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Posted,
    Pending,
}

/// A broken ledger invariant, naming the entry, account or order where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A stored entry that [`JournalEntry::from_parts`] refused. The store builds this variant
    /// while reading rows, so one report covers rows that are not even entries.
    #[error("entry '{entry_id}' is malformed: {error}")]
    Malformed {
        entry_id: String,
        error: LedgerError,
    },
    /// An entry whose postings do not sum to zero in `currency`.
    #[error("entry '{entry_id}' does not balance: its {currency} postings sum to {sum_minor}")]
    Unbalanced {
        entry_id: String,
        currency: Currency,
        sum_minor: i128,
    },
    /// Two entries share an id, which must be unique (it is the idempotency key).
    #[error("entry id '{entry_id}' is used by more than one entry")]
    DuplicateId { entry_id: String },
    /// The whole ledger's `figure` does not sum to zero in `currency`.
    #[error("{figure:?} balances in {currency} sum to {sum_minor} across the ledger, not zero")]
    CurrencyNotZero {
        currency: Currency,
        figure: Figure,
        sum_minor: i128,
    },
    /// A post or void refers to an entry id that is not in the ledger.
    #[error("entry '{entry_id}' resolves pending entry '{pending_id}', which does not exist")]
    UnknownPending {
        entry_id: String,
        pending_id: String,
    },
    /// A post or void refers to an entry that is not pending.
    #[error("entry '{entry_id}' resolves entry '{target_id}', which is not pending")]
    NotPending { entry_id: String, target_id: String },
    /// A post or void moves other accounts or currency than its pending entry, or a void
    /// releases another amount than was reserved.
    #[error(
        "entry '{entry_id}' does not match the accounts, currency or amount of pending \
         entry '{pending_id}'"
    )]
    PendingMismatch {
        entry_id: String,
        pending_id: String,
    },
    /// A post moves more than its pending entry reserved.
    #[error(
        "entry '{entry_id}' posts {posted_minor} of pending entry '{pending_id}', which \
         reserved {pending_minor}"
    )]
    PostExceedsPending {
        entry_id: String,
        pending_id: String,
        posted_minor: i64,
        pending_minor: i64,
    },
    /// A pending entry was posted or voided more than once (including posted and voided).
    #[error(
        "pending entry '{pending_id}' is resolved by both \
         '{first_entry_id}' and '{second_entry_id}'"
    )]
    PendingResolvedTwice {
        pending_id: String,
        first_entry_id: String,
        second_entry_id: String,
    },
    /// A settled order still has money owed or reserved on its receivable.
    #[error(
        "settled order {order_id} has receivable 'order:{order_id}:receivable' at \
         {posted_minor} posted and {pending_minor} pending in {currency}"
    )]
    SettledReceivableNotZero {
        order_id: OrderId,
        currency: Currency,
        posted_minor: i128,
        pending_minor: i128,
    },
}

/// Posted and pending sums of one account in one currency.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    posted_minor: i128,
    pending_minor: i128,
}

/// Checks one tenant's entries and settled orders and returns every violation found, in the
/// order: per entry, two-phase, ledger-wide sums, settled orders. Empty means the ledger holds.
pub fn check(entries: &[JournalEntry], settled_orders: &[OrderSettlement]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_id: BTreeMap<&str, &JournalEntry> = BTreeMap::new();
    for entry in entries {
        if by_id.insert(entry.id(), entry).is_some() {
            violations.push(Violation::DuplicateId {
                entry_id: entry.id().to_owned(),
            });
        }
        // The constructors already refuse unbalanced entries; this is the paired check after
        // the read, which holds even if a constructor is ever wrong.
        for (currency, sum_minor) in currency_sums(entry.postings()) {
            if sum_minor != 0 {
                violations.push(Violation::Unbalanced {
                    entry_id: entry.id().to_owned(),
                    currency,
                    sum_minor,
                });
            }
        }
    }
    let resolutions = check_two_phase(entries, &by_id, &mut violations);
    let balances = fold(entries, &resolutions);
    check_currency_sums(&balances, &mut violations);
    check_settled(&balances, settled_orders, &mut violations);
    violations
}

/// Checks every post and void against its pending entry and returns pending id → the id of the
/// first entry that resolved it.
fn check_two_phase<'a>(
    entries: &'a [JournalEntry],
    by_id: &BTreeMap<&str, &'a JournalEntry>,
    violations: &mut Vec<Violation>,
) -> BTreeMap<&'a str, &'a str> {
    let mut resolutions: BTreeMap<&str, &str> = BTreeMap::new();
    for entry in entries {
        let Some(pending_id) = entry.kind().pending_id() else {
            continue;
        };
        let Some(pending) = by_id.get(pending_id) else {
            violations.push(Violation::UnknownPending {
                entry_id: entry.id().to_owned(),
                pending_id: pending_id.to_owned(),
            });
            continue;
        };
        if let Err(error) = check_resolution(pending, entry) {
            violations.push(resolution_violation(error, pending, entry));
        }
        if let Some(first) = resolutions.get(pending_id) {
            violations.push(Violation::PendingResolvedTwice {
                pending_id: pending_id.to_owned(),
                first_entry_id: (*first).to_owned(),
                second_entry_id: entry.id().to_owned(),
            });
        } else {
            resolutions.insert(pending_id, entry.id());
        }
    }
    resolutions
}

fn resolution_violation(
    error: ResolutionError,
    pending: &JournalEntry,
    entry: &JournalEntry,
) -> Violation {
    let entry_id = entry.id().to_owned();
    let pending_id = pending.id().to_owned();
    match error {
        ResolutionError::NotPending => Violation::NotPending {
            entry_id,
            target_id: pending_id,
        },
        ResolutionError::Mismatch => Violation::PendingMismatch {
            entry_id,
            pending_id,
        },
        ResolutionError::Exceeds {
            amount_minor,
            pending_minor,
        } => Violation::PostExceedsPending {
            entry_id,
            pending_id,
            posted_minor: amount_minor,
            pending_minor,
        },
    }
}

/// Balances as the stored entries say, resolved or not: posted entries and posts count as
/// posted; a pending entry counts as pending until something resolves it.
fn fold(
    entries: &[JournalEntry],
    resolutions: &BTreeMap<&str, &str>,
) -> BTreeMap<AccountId, BTreeMap<Currency, Figures>> {
    let mut balances: BTreeMap<AccountId, BTreeMap<Currency, Figures>> = BTreeMap::new();
    for entry in entries {
        for posting in entry.postings() {
            let figures = balances
                .entry(posting.account.clone())
                .or_default()
                .entry(posting.currency)
                .or_default();
            let amount_minor = i128::from(posting.amount_minor);
            match entry.kind() {
                EntryKind::Posted | EntryKind::PostPending { .. } => {
                    figures.posted_minor += amount_minor;
                }
                EntryKind::Pending if !resolutions.contains_key(entry.id()) => {
                    figures.pending_minor += amount_minor;
                }
                EntryKind::Pending | EntryKind::VoidPending { .. } => {}
            }
        }
    }
    balances
}

fn check_currency_sums(
    balances: &BTreeMap<AccountId, BTreeMap<Currency, Figures>>,
    violations: &mut Vec<Violation>,
) {
    let mut sums: BTreeMap<Currency, Figures> = BTreeMap::new();
    for (currency, figures) in balances.values().flatten() {
        let sum = sums.entry(*currency).or_default();
        sum.posted_minor += figures.posted_minor;
        sum.pending_minor += figures.pending_minor;
    }
    for (currency, sum) in sums {
        for (figure, sum_minor) in [
            (Figure::Posted, sum.posted_minor),
            (Figure::Pending, sum.pending_minor),
        ] {
            if sum_minor != 0 {
                violations.push(Violation::CurrencyNotZero {
                    currency,
                    figure,
                    sum_minor,
                });
            }
        }
    }
}

fn check_settled(
    balances: &BTreeMap<AccountId, BTreeMap<Currency, Figures>>,
    settled_orders: &[OrderSettlement],
    violations: &mut Vec<Violation>,
) {
    for settlement in settled_orders {
        let receivable = AccountId::order_receivable(settlement.order_id);
        let Some(by_currency) = balances.get(&receivable) else {
            continue;
        };
        for (currency, figures) in by_currency {
            if figures.posted_minor != 0 || figures.pending_minor != 0 {
                violations.push(Violation::SettledReceivableNotZero {
                    order_id: settlement.order_id,
                    currency: *currency,
                    posted_minor: figures.posted_minor,
                    pending_minor: figures.pending_minor,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::{self, Capture};
    use crate::{Posting, post, void};

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD is ISO 4217")
    }

    fn settled(order_id: OrderId) -> OrderSettlement {
        OrderSettlement {
            order_id,
            currency: usd(),
        }
    }

    /// An authorization and its full capture for a fresh order.
    fn captured_order() -> (OrderId, Vec<JournalEntry>) {
        let order_id = OrderId::generate();
        let auth = payment::authorize("auth", order_id, 500, usd()).expect("authorize");
        let Capture { post, sale } =
            payment::capture(&auth, 500, "capture", "sale").expect("capture");
        (order_id, vec![auth, post, sale])
    }

    #[test]
    fn a_sound_ledger_has_no_violations_in_any_entry_order() {
        let (order_id, mut entries) = captured_order();
        assert_eq!(check(&entries, &[settled(order_id)]), vec![]);
        entries.reverse();
        assert_eq!(check(&entries, &[settled(order_id)]), vec![]);
    }

    #[test]
    fn a_pending_entry_resolved_twice_is_reported_with_both_resolutions() {
        let (order_id, mut entries) = captured_order();
        entries.push(void(&entries[0], "void").expect("void"));
        entries.push(post(&entries[0], 1, "capture-again").expect("post"));
        let violations = check(&entries, &[settled(order_id)]);
        let twice = |second: &str| Violation::PendingResolvedTwice {
            pending_id: "auth".to_owned(),
            first_entry_id: "capture".to_owned(),
            second_entry_id: second.to_owned(),
        };
        assert!(violations.contains(&twice("void")), "{violations:?}");
        assert!(
            violations.contains(&twice("capture-again")),
            "{violations:?}"
        );
    }

    #[test]
    fn a_post_beyond_its_pending_amount_is_reported() {
        let order_id = OrderId::generate();
        let auth = payment::authorize("auth", order_id, 100, usd()).expect("authorize");
        let (debit, credit) = auth.legs().expect("single transfer");
        let greedy = JournalEntry::from_parts(
            "greedy".to_owned(),
            EntryKind::PostPending {
                pending_id: "auth".to_owned(),
            },
            vec![
                Posting::debit(debit.account.clone(), 150, usd()),
                Posting::credit(credit.account.clone(), 150, usd()),
            ],
        )
        .expect("well-formed on its own");
        let violations = check(&[auth, greedy], &[]);
        assert_eq!(
            violations,
            vec![Violation::PostExceedsPending {
                entry_id: "greedy".to_owned(),
                pending_id: "auth".to_owned(),
                posted_minor: 150,
                pending_minor: 100,
            }]
        );
        assert!(violations[0].to_string().contains("'greedy'"));
    }

    #[test]
    fn a_settled_order_with_an_open_authorization_or_half_a_capture_is_reported() {
        let open_order = OrderId::generate();
        let open_auth = payment::authorize("open", open_order, 300, usd()).expect("authorize");
        let (half_order, mut half) = captured_order();
        half.pop(); // the sale entry is missing
        let mut entries = vec![open_auth];
        entries.extend(half);
        let violations = check(&entries, &[settled(open_order), settled(half_order)]);
        assert_eq!(
            violations,
            vec![
                Violation::SettledReceivableNotZero {
                    order_id: open_order,
                    currency: usd(),
                    posted_minor: 0,
                    pending_minor: -300,
                },
                Violation::SettledReceivableNotZero {
                    order_id: half_order,
                    currency: usd(),
                    posted_minor: -500,
                    pending_minor: 0,
                },
            ]
        );
        assert!(violations[1].to_string().contains(&half_order.to_string()));
    }

    #[test]
    fn every_violation_is_reported_not_only_the_first() {
        let (_, mut entries) = captured_order();
        entries.push(entries[2].clone()); // duplicate id "sale"
        let orphan = post(
            &payment::authorize("elsewhere", OrderId::generate(), 5, usd()).expect("authorize"),
            5,
            "orphan",
        )
        .expect("post");
        entries.push(orphan);
        entries.push(JournalEntry::forged(
            "forged",
            EntryKind::Posted,
            vec![
                Posting::debit(AccountId::psp_clearing(), 7, usd()),
                Posting::credit(AccountId::sales_revenue(), 4, usd()),
            ],
        ));
        entries.push(JournalEntry::forged(
            "not-a-target",
            EntryKind::VoidPending {
                pending_id: "sale".to_owned(),
            },
            entries[2].postings().to_vec(),
        ));
        let violations = check(&entries, &[]);
        let has = |wanted: &dyn Fn(&Violation) -> bool| violations.iter().any(wanted);
        assert!(has(
            &|v| matches!(v, Violation::DuplicateId { entry_id } if entry_id == "sale")
        ));
        assert!(has(
            &|v| matches!(v, Violation::UnknownPending { entry_id, .. } if entry_id == "orphan")
        ));
        assert!(has(
            &|v| matches!(v, Violation::Unbalanced { entry_id, sum_minor: 3, .. } if entry_id == "forged")
        ));
        assert!(has(
            &|v| matches!(v, Violation::NotPending { target_id, .. } if target_id == "sale")
        ));
        assert!(has(&|v| matches!(
            v,
            Violation::CurrencyNotZero {
                figure: Figure::Posted,
                ..
            }
        )));
    }
}
