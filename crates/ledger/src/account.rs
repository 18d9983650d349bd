//! Ledger accounts are named by a structured code, not a number, so that an entry read back from
//! the store says what it did without a lookup table. The tenant is not part of the code: every
//! ledger is one tenant's, and the store keeps the tenant id in its own column beside the code.
//!
//! The grammar is `segment(:segment){1,3}`, each segment 1 to [`ACCOUNT_SEGMENT_BYTES_MAX`]
//! characters of `a-z`, `0-9` and `-`. The first segment names the account's class or owner
//! (`order`, `psp`, `revenue`), the rest narrow it down. Lowercase only, so two codes name the same
//! account exactly when their bytes are equal, with no case folding in the store's unique index.

use serde::Serialize;
use tally_domain::ids::OrderId;

use crate::LedgerError;

/// Length limit of an account code, in bytes. The longest code Tally builds,
/// `order:{uuid}:receivable`, is 53 bytes; the limit leaves room for new schemes while keeping the
/// store's balance index narrow.
pub const ACCOUNT_ID_BYTES_MAX: usize = 128;

/// Length limit of one segment: a hyphenated UUID (36 bytes) fits with room to spare.
pub const ACCOUNT_SEGMENT_BYTES_MAX: usize = 64;

/// Fewest segments: a class alone (`revenue`) would be too coarse to post to.
pub const ACCOUNT_SEGMENT_COUNT_MIN: usize = 2;

/// Most segments: `class:owner:purpose` plus one qualifier is as deep as any scheme needs, and a
/// fixed depth keeps prefix queries (`order:%`) predictable.
pub const ACCOUNT_SEGMENT_COUNT_MAX: usize = 4;

const ORDER_CLASS: &str = "order";
const RECEIVABLE_PURPOSE: &str = "receivable";

/// A ledger account's code, such as `psp:clearing` or `order:{order_id}:receivable`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(raw: &str) -> Result<Self, LedgerError> {
        let invalid = |reason: &'static str| LedgerError::InvalidAccountId {
            raw: raw.chars().take(ACCOUNT_ID_BYTES_MAX).collect(),
            reason,
        };
        if raw.len() > ACCOUNT_ID_BYTES_MAX {
            return Err(invalid("is longer than 128 bytes"));
        }
        let segment_count = raw.split(':').count();
        if !(ACCOUNT_SEGMENT_COUNT_MIN..=ACCOUNT_SEGMENT_COUNT_MAX).contains(&segment_count) {
            return Err(invalid("must have 2 to 4 segments separated by ':'"));
        }
        for segment in raw.split(':') {
            if segment.is_empty() || segment.len() > ACCOUNT_SEGMENT_BYTES_MAX {
                return Err(invalid(
                    "has a segment that is empty or longer than 64 bytes",
                ));
            }
            let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            if !segment.chars().all(allowed) {
                return Err(invalid("may contain only 'a-z', '0-9', '-' and ':'"));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// `order:{order_id}:receivable`: what the customer owes for one order. The sale debits it
    /// and the captured payment credits it, so it is zero once an order is settled.
    pub fn order_receivable(order_id: OrderId) -> Self {
        Self(format!("{ORDER_CLASS}:{order_id}:{RECEIVABLE_PURPOSE}"))
    }

    /// `psp:clearing`: money the payment provider holds for the merchant, not yet paid out. An
    /// authorization is a pending debit here; a capture posts it; a refund credits it.
    pub fn psp_clearing() -> Self {
        Self("psp:clearing".to_owned())
    }

    /// `revenue:sales`: revenue earned by captured sales (credit-normal).
    pub fn sales_revenue() -> Self {
        Self("revenue:sales".to_owned())
    }

    /// `revenue:refunds`: money given back to customers. It is contra-revenue (debit-normal)
    /// rather than a debit to `revenue:sales`, so gross sales and refunds stay visible apart and
    /// net revenue is the sum of the two balances.
    pub fn refunds() -> Self {
        Self("revenue:refunds".to_owned())
    }

    /// Whether this is some order's receivable, the only account a settled order must leave at
    /// zero.
    pub fn is_order_receivable(&self) -> bool {
        let segments: Vec<&str> = self.0.split(':').collect();
        matches!(segments.as_slice(), [ORDER_CLASS, _, RECEIVABLE_PURPOSE])
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_grammar() {
        assert!(AccountId::parse("psp:clearing").is_ok());
        assert!(AccountId::parse("order:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b:receivable").is_ok());
        assert!(AccountId::parse("revenue").is_err(), "one segment");
        assert!(AccountId::parse("a:b:c:d:e").is_err(), "five segments");
        assert!(AccountId::parse("psp::clearing").is_err(), "empty segment");
        assert!(AccountId::parse("PSP:clearing").is_err(), "uppercase");
        assert!(AccountId::parse("psp:clear ing").is_err(), "space");
        assert!(AccountId::parse(&format!("a:{}", "b".repeat(65))).is_err());
        assert!(AccountId::parse(&format!("{0}:{0}:{0}", "c".repeat(60))).is_err());
    }

    #[test]
    fn built_accounts_parse_back_to_themselves() {
        let order_id = OrderId::generate();
        for account in [
            AccountId::order_receivable(order_id),
            AccountId::psp_clearing(),
            AccountId::sales_revenue(),
            AccountId::refunds(),
        ] {
            assert_eq!(AccountId::parse(account.as_str()), Ok(account));
        }
        assert!(AccountId::order_receivable(order_id).is_order_receivable());
        assert!(!AccountId::psp_clearing().is_order_receivable());
    }
}
