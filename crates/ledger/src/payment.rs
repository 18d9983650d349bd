//! The entries the checkout saga writes for a payment, built in one place so that every worker
//! posts the same accounts the same way. The table in the crate doc says what each step posts.
//!
//! A void needs no recipe of its own: it is [`crate::void`] of the authorization.

use tally_domain::ids::{EventId, OrderId};
use tally_domain::money::Currency;

use crate::{AccountId, JournalEntry, LedgerError, post};

/// The entry id of one step of one consumer for one event: `{consumer}:{event_id}:{step}`. A
/// retry of the step derives the same id, which is what makes the ledger write idempotent.
pub fn entry_id(consumer: &str, event_id: EventId, step: &str) -> String {
    tally_domain::idempotency::step_key(consumer, event_id, step)
}

/// The payment provider reserved `amount_minor` on the customer's card for an order: a pending
/// debit of PSP clearing and credit of the order's receivable.
pub fn authorize(
    id: impl Into<String>,
    order_id: OrderId,
    amount_minor: i64,
    currency: Currency,
) -> Result<JournalEntry, LedgerError> {
    JournalEntry::pending(
        id,
        AccountId::psp_clearing(),
        AccountId::order_receivable(order_id),
        amount_minor,
        currency,
    )
}

/// The two entries of a capture. The store writes both in one database transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Posts the authorization for the captured amount: the provider now holds the money.
    pub post: JournalEntry,
    /// Recognises the sale: the customer owes the captured amount and the merchant earned it.
    pub sale: JournalEntry,
}

/// The provider captured `amount_minor` of an authorization (all of it, or less for a partial
/// capture). After both entries the order's receivable is back to zero.
pub fn capture(
    authorization: &JournalEntry,
    amount_minor: i64,
    post_id: impl Into<String>,
    sale_id: impl Into<String>,
) -> Result<Capture, LedgerError> {
    let post_entry = post(authorization, amount_minor, post_id)?;
    let receivable = receivable_of(authorization)?;
    let sale = JournalEntry::transfer(
        sale_id,
        receivable,
        AccountId::sales_revenue(),
        amount_minor,
        authorization_currency(authorization)?,
    )?;
    Ok(Capture {
        post: post_entry,
        sale,
    })
}

/// The provider returned `amount_minor` of captured money to the customer: a posted debit of
/// refunds (contra-revenue) and credit of PSP clearing.
pub fn refund(
    id: impl Into<String>,
    amount_minor: i64,
    currency: Currency,
) -> Result<JournalEntry, LedgerError> {
    JournalEntry::transfer(
        id,
        AccountId::refunds(),
        AccountId::psp_clearing(),
        amount_minor,
        currency,
    )
}

/// The order receivable an authorization credits, refusing any other pending entry: capturing
/// an unrelated reservation as a sale would book revenue against the wrong account.
fn receivable_of(authorization: &JournalEntry) -> Result<AccountId, LedgerError> {
    let not_authorization = || LedgerError::NotAnAuthorization {
        entry_id: authorization.id().to_owned(),
    };
    let (debit, credit) = authorization.legs().ok_or_else(not_authorization)?;
    if debit.account != AccountId::psp_clearing() || !credit.account.is_order_receivable() {
        return Err(not_authorization());
    }
    Ok(credit.account.clone())
}

fn authorization_currency(authorization: &JournalEntry) -> Result<Currency, LedgerError> {
    authorization
        .legs()
        .map(|(debit, _)| debit.currency)
        .ok_or_else(|| LedgerError::NotAnAuthorization {
            entry_id: authorization.id().to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Balance, Ledger, OrderSettlement, check, void};

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD is ISO 4217")
    }

    /// Applies entries to a fresh ledger, asserting each is new.
    fn ledger_of(entries: &[JournalEntry]) -> Ledger {
        let mut ledger = Ledger::new();
        for entry in entries {
            assert_eq!(ledger.apply(entry.clone()), Ok(crate::Applied::Recorded));
        }
        ledger
    }

    #[test]
    fn a_partial_capture_then_a_refund_leaves_the_receivable_at_zero() {
        let order_id = OrderId::generate();
        let auth = authorize("auth", order_id, 10_000, usd()).expect("authorize");
        let Capture { post, sale } = capture(&auth, 8_000, "post", "sale").expect("capture");
        let refund = refund("refund", 3_000, usd()).expect("refund");
        let entries = [auth, post, sale, refund];
        let ledger = ledger_of(&entries);

        let balance = |account: AccountId| ledger.balance(&account, usd());
        assert_eq!(
            balance(AccountId::order_receivable(order_id)),
            Balance::default()
        );
        assert_eq!(balance(AccountId::psp_clearing()).posted_minor, 5_000);
        assert_eq!(balance(AccountId::sales_revenue()).posted_minor, -8_000);
        assert_eq!(balance(AccountId::refunds()).posted_minor, 3_000);
        let settled = [OrderSettlement {
            order_id,
            currency: usd(),
        }];
        assert_eq!(check(&entries, &settled), vec![]);
    }

    #[test]
    fn a_void_releases_the_authorization_and_posts_nothing() {
        let order_id = OrderId::generate();
        let auth = authorize("auth", order_id, 2_500, usd()).expect("authorize");
        let void = void(&auth, "void").expect("void");
        let ledger = ledger_of(&[auth.clone(), void.clone()]);
        for (_, _, balance) in ledger.balances() {
            assert_eq!(balance, Balance::default());
        }
        let settled = [OrderSettlement {
            order_id,
            currency: usd(),
        }];
        assert_eq!(check(&[auth, void], &settled), vec![]);
    }

    #[test]
    fn only_an_authorization_can_be_captured_as_a_sale() {
        let reservation = JournalEntry::pending(
            "hold",
            AccountId::psp_clearing(),
            AccountId::sales_revenue(),
            100,
            usd(),
        )
        .expect("valid pending entry");
        assert!(matches!(
            capture(&reservation, 100, "post", "sale"),
            Err(LedgerError::NotAnAuthorization { .. })
        ));
    }

    #[test]
    fn entry_ids_are_derived_from_consumer_event_and_step() {
        let event_id = EventId::generate();
        let id = entry_id("payments", event_id, "capture");
        assert_eq!(id, format!("payments:{event_id}:capture"));
        assert!(
            refund(id, 1, usd()).is_ok(),
            "a derived id is a valid entry id"
        );
    }
}
