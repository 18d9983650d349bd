//! Journal entries: immutable, balanced by construction, and named by their idempotency key.
//!
//! Every public constructor ends in [`JournalEntry::from_parts`], which checks the whole entry
//! and then asserts that it balances. So a `JournalEntry` that exists balances, and the store can
//! rebuild one from its rows only through the same checks.

use std::collections::BTreeMap;

use serde::Serialize;
use tally_domain::money::{AMOUNT_MINOR_MAX, Currency};

use crate::{AccountId, LedgerError};

/// Length limit of an entry id, in bytes. Ids are derived from (consumer, event id, step), which
/// is well under 100 bytes; the limit matches the idempotency key's and bounds the unique index.
pub const ENTRY_ID_BYTES_MAX: usize = 255;

/// Fewest postings: one debit and one credit is the smallest balanced movement.
pub const POSTINGS_PER_ENTRY_MIN: usize = 2;

/// Most postings in one entry. A checkout step posts two, a multi-currency or split entry a
/// handful; the limit bounds an entry's row batch and keeps any sum of its amounts (each at most
/// [`AMOUNT_MINOR_MAX`]) far from `i64::MAX`.
pub const POSTINGS_PER_ENTRY_MAX: usize = 16;

/// One leg of an entry: a signed amount on one account in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Posting {
    pub account: AccountId,
    /// Debit positive, credit negative, never zero, magnitude at most [`AMOUNT_MINOR_MAX`].
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Posting {
    /// A debit of a positive `amount_minor`.
    pub fn debit(account: AccountId, amount_minor: i64, currency: Currency) -> Self {
        Self {
            account,
            amount_minor,
            currency,
        }
    }

    /// A credit of a positive `amount_minor` (stored negated). `i64::MIN` saturates to a value
    /// out of range, which the entry then refuses, rather than wrapping.
    pub fn credit(account: AccountId, amount_minor: i64, currency: Currency) -> Self {
        Self {
            account,
            amount_minor: amount_minor.saturating_neg(),
            currency,
        }
    }
}

/// What an entry does to balances. The two-phase kinds follow TigerBeetle's pending, post-pending
/// and void-pending transfers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    /// Moves its amounts into the accounts' posted balances at once.
    Posted,
    /// Reserves its amounts: they count in the accounts' pending balances until a later entry
    /// posts or voids them. A pending entry is a single transfer (one debit, one credit).
    Pending,
    /// Posts the pending entry `pending_id` for the same accounts and an amount up to the
    /// pending one (a partial capture), and releases the whole pending amount.
    PostPending { pending_id: String },
    /// Releases the pending entry `pending_id` without posting anything. Its postings repeat the
    /// pending ones, so the entry records what was released and still balances.
    VoidPending { pending_id: String },
}

impl EntryKind {
    /// The pending entry this one posts or voids.
    pub fn pending_id(&self) -> Option<&str> {
        match self {
            EntryKind::Posted | EntryKind::Pending => None,
            EntryKind::PostPending { pending_id } | EntryKind::VoidPending { pending_id } => {
                Some(pending_id)
            }
        }
    }
}

/// An immutable, balanced journal entry. Its `id` is its idempotency key: writing the same entry
/// again is a no-op, writing a different entry under the same id is an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    id: String,
    kind: EntryKind,
    /// Sorted by (account, currency), so an entry rebuilt from rows in any order is equal to the
    /// one that was written.
    postings: Vec<Posting>,
}

impl JournalEntry {
    /// A posted entry with any number of legs that sum to zero in every currency.
    pub fn posted(id: impl Into<String>, postings: Vec<Posting>) -> Result<Self, LedgerError> {
        Self::from_parts(id.into(), EntryKind::Posted, postings)
    }

    /// A posted transfer of a positive `amount_minor` from `credit` to `debit`.
    pub fn transfer(
        id: impl Into<String>,
        debit: AccountId,
        credit: AccountId,
        amount_minor: i64,
        currency: Currency,
    ) -> Result<Self, LedgerError> {
        let id = id.into();
        let postings = transfer_postings(&id, debit, credit, amount_minor, currency)?;
        Self::from_parts(id, EntryKind::Posted, postings)
    }

    /// A pending transfer of a positive `amount_minor`, to be posted with [`post`] or released
    /// with [`void`].
    pub fn pending(
        id: impl Into<String>,
        debit: AccountId,
        credit: AccountId,
        amount_minor: i64,
        currency: Currency,
    ) -> Result<Self, LedgerError> {
        let id = id.into();
        let postings = transfer_postings(&id, debit, credit, amount_minor, currency)?;
        Self::from_parts(id, EntryKind::Pending, postings)
    }

    /// Checks and builds an entry from its stored parts. The store rebuilds entries this way, so
    /// a row that breaks a rule comes back as an error naming the entry, never as a value.
    pub fn from_parts(
        id: String,
        kind: EntryKind,
        mut postings: Vec<Posting>,
    ) -> Result<Self, LedgerError> {
        check_entry_id(&id)?;
        if let Some(pending_id) = kind.pending_id() {
            check_entry_id(pending_id)?;
            if pending_id == id {
                return Err(LedgerError::InvalidEntryId {
                    id,
                    reason: "cannot post or void itself",
                });
            }
        }
        check_postings(&id, &postings)?;
        let single_transfer = postings.len() == POSTINGS_PER_ENTRY_MIN;
        if kind != EntryKind::Posted && !single_transfer {
            return Err(LedgerError::NotATransfer { entry_id: id });
        }
        postings.sort_by(|a, b| (&a.account, a.currency).cmp(&(&b.account, b.currency)));
        let entry = Self { id, kind, postings };
        entry.assert_balanced();
        Ok(entry)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> &EntryKind {
        &self.kind
    }

    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    /// The amount a single-transfer entry moves (its debit), or `None` for a multi-leg entry.
    pub fn amount_minor(&self) -> Option<i64> {
        self.legs().map(|(debit, _)| debit.amount_minor)
    }

    /// Panics unless the entry has 2 to [`POSTINGS_PER_ENTRY_MAX`] non-zero, in-range postings
    /// summing to zero in every currency. Every constructor checked this already; an entry that
    /// still fails is a bug in this crate, and money must not move past it.
    pub fn assert_balanced(&self) {
        let count = self.postings.len();
        assert!(
            (POSTINGS_PER_ENTRY_MIN..=POSTINGS_PER_ENTRY_MAX).contains(&count),
            "journal entry '{}' has {count} postings",
            self.id
        );
        for posting in &self.postings {
            assert!(
                amount_in_range(posting.amount_minor),
                "journal entry '{}' posts {} to '{}'",
                self.id,
                posting.amount_minor,
                posting.account
            );
        }
        for (currency, sum_minor) in currency_sums(&self.postings) {
            assert_eq!(
                sum_minor, 0,
                "journal entry '{}' does not balance in {currency}",
                self.id
            );
        }
    }

    /// An entry that skips every check, for tests of the checks that run after a read.
    #[cfg(test)]
    pub(crate) fn forged(id: &str, kind: EntryKind, postings: Vec<Posting>) -> Self {
        Self {
            id: id.to_owned(),
            kind,
            postings,
        }
    }

    /// The (debit, credit) legs of a single-transfer entry.
    pub(crate) fn legs(&self) -> Option<(&Posting, &Posting)> {
        match self.postings.as_slice() {
            [a, b] if a.amount_minor > 0 => Some((a, b)),
            [a, b] => Some((b, a)),
            _ => None,
        }
    }
}

/// Posts `amount_minor` of a pending entry (a capture). The amount may be smaller than the
/// pending one (partial capture); the rest is released. Whether the pending entry is still open
/// is the ledger's to decide ([`crate::Ledger::apply`]), since this function sees only the entry.
pub fn post(
    pending: &JournalEntry,
    amount_minor: i64,
    id: impl Into<String>,
) -> Result<JournalEntry, LedgerError> {
    let id = id.into();
    let (debit, credit) = pending_legs(pending, &id)?;
    let pending_minor = debit.amount_minor;
    if amount_minor > pending_minor {
        return Err(LedgerError::PostExceedsPending {
            entry_id: id,
            pending_id: pending.id.clone(),
            amount_minor,
            pending_minor,
        });
    }
    let currency = debit.currency;
    let postings = transfer_postings(
        &id,
        debit.account.clone(),
        credit.account.clone(),
        amount_minor,
        currency,
    )?;
    let kind = EntryKind::PostPending {
        pending_id: pending.id.clone(),
    };
    JournalEntry::from_parts(id, kind, postings)
}

/// Voids a pending entry (releases an authorization). The new entry repeats the pending postings
/// and moves no posted balance.
pub fn void(pending: &JournalEntry, id: impl Into<String>) -> Result<JournalEntry, LedgerError> {
    let id = id.into();
    pending_legs(pending, &id)?;
    let kind = EntryKind::VoidPending {
        pending_id: pending.id.clone(),
    };
    JournalEntry::from_parts(id, kind, pending.postings.clone())
}

/// Why a post-pending or void-pending entry does not fit its pending entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolutionError {
    /// The target is not a pending entry.
    NotPending,
    /// Other accounts or currency, or a void of another amount than was reserved.
    Mismatch,
    /// A post of more than was reserved.
    Exceeds {
        amount_minor: i64,
        pending_minor: i64,
    },
}

impl ResolutionError {
    pub(crate) fn into_ledger_error(
        self,
        pending: &JournalEntry,
        entry: &JournalEntry,
    ) -> LedgerError {
        let entry_id = entry.id.clone();
        let pending_id = pending.id.clone();
        match self {
            ResolutionError::NotPending => LedgerError::NotPending {
                entry_id,
                target_id: pending_id,
            },
            ResolutionError::Mismatch => LedgerError::PendingMismatch {
                entry_id,
                pending_id,
            },
            ResolutionError::Exceeds {
                amount_minor,
                pending_minor,
            } => LedgerError::PostExceedsPending {
                entry_id,
                pending_id,
                amount_minor,
                pending_minor,
            },
        }
    }
}

/// Checks that `resolution` (a post-pending or void-pending entry) fits `pending`: the target
/// is pending, the accounts and currency are the same, a post is at most the pending amount and
/// a void repeats it. Shared by the ledger fold and the check, so both judge alike.
pub(crate) fn check_resolution(
    pending: &JournalEntry,
    resolution: &JournalEntry,
) -> Result<(), ResolutionError> {
    if pending.kind != EntryKind::Pending {
        return Err(ResolutionError::NotPending);
    }
    let (Some((pending_debit, pending_credit)), Some((debit, credit))) =
        (pending.legs(), resolution.legs())
    else {
        return Err(ResolutionError::Mismatch);
    };
    let same_legs = debit.account == pending_debit.account
        && credit.account == pending_credit.account
        && debit.currency == pending_debit.currency;
    if !same_legs {
        return Err(ResolutionError::Mismatch);
    }
    let (amount_minor, pending_minor) = (debit.amount_minor, pending_debit.amount_minor);
    match resolution.kind {
        EntryKind::PostPending { .. } if amount_minor > pending_minor => {
            Err(ResolutionError::Exceeds {
                amount_minor,
                pending_minor,
            })
        }
        EntryKind::PostPending { .. } => Ok(()),
        EntryKind::VoidPending { .. } if amount_minor == pending_minor => Ok(()),
        EntryKind::VoidPending { .. } | EntryKind::Posted | EntryKind::Pending => {
            Err(ResolutionError::Mismatch)
        }
    }
}

/// Sums of the postings per currency, in `i128` so that no input can overflow the sum itself.
pub(crate) fn currency_sums(postings: &[Posting]) -> BTreeMap<Currency, i128> {
    let mut sums = BTreeMap::new();
    for posting in postings {
        *sums.entry(posting.currency).or_insert(0) += i128::from(posting.amount_minor);
    }
    sums
}

fn pending_legs<'a>(
    pending: &'a JournalEntry,
    referring_id: &str,
) -> Result<(&'a Posting, &'a Posting), LedgerError> {
    let not_pending = || LedgerError::NotPending {
        entry_id: referring_id.to_owned(),
        target_id: pending.id.clone(),
    };
    if pending.kind != EntryKind::Pending {
        return Err(not_pending());
    }
    pending.legs().ok_or_else(not_pending)
}

fn transfer_postings(
    id: &str,
    debit: AccountId,
    credit: AccountId,
    amount_minor: i64,
    currency: Currency,
) -> Result<Vec<Posting>, LedgerError> {
    // A non-positive amount would silently swap debit and credit, so it is refused here rather
    // than left to the balance check, which it would pass.
    if amount_minor <= 0 || amount_minor > AMOUNT_MINOR_MAX {
        return Err(LedgerError::AmountOutOfRange {
            entry_id: id.to_owned(),
            account: debit,
            amount_minor,
        });
    }
    Ok(vec![
        Posting::debit(debit, amount_minor, currency),
        Posting::credit(credit, amount_minor, currency),
    ])
}

fn check_entry_id(id: &str) -> Result<(), LedgerError> {
    let invalid = |reason: &'static str| LedgerError::InvalidEntryId {
        id: id.chars().take(ENTRY_ID_BYTES_MAX).collect(),
        reason,
    };
    if id.is_empty() || id.len() > ENTRY_ID_BYTES_MAX {
        return Err(invalid("must be 1 to 255 bytes"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid("must contain only printable ASCII without spaces"));
    }
    Ok(())
}

fn check_postings(id: &str, postings: &[Posting]) -> Result<(), LedgerError> {
    if !(POSTINGS_PER_ENTRY_MIN..=POSTINGS_PER_ENTRY_MAX).contains(&postings.len()) {
        return Err(LedgerError::PostingCount {
            entry_id: id.to_owned(),
            count: postings.len(),
        });
    }
    for (index, posting) in postings.iter().enumerate() {
        if !amount_in_range(posting.amount_minor) {
            return Err(LedgerError::AmountOutOfRange {
                entry_id: id.to_owned(),
                account: posting.account.clone(),
                amount_minor: posting.amount_minor,
            });
        }
        // One leg per (account, currency) keeps entries canonical: two legs on the same account
        // would be one leg of their sum, or a no-op that still looks like a movement.
        let repeated = postings[..index]
            .iter()
            .any(|p| p.account == posting.account && p.currency == posting.currency);
        if repeated {
            return Err(LedgerError::RepeatedAccount {
                entry_id: id.to_owned(),
                account: posting.account.clone(),
                currency: posting.currency,
            });
        }
    }
    for (currency, sum_minor) in currency_sums(postings) {
        if sum_minor != 0 {
            return Err(LedgerError::Unbalanced {
                entry_id: id.to_owned(),
                currency,
                sum_minor,
            });
        }
    }
    Ok(())
}

fn amount_in_range(amount_minor: i64) -> bool {
    amount_minor != 0 && amount_minor.unsigned_abs() <= AMOUNT_MINOR_MAX.unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD is ISO 4217")
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR is ISO 4217")
    }

    fn account(code: &str) -> AccountId {
        AccountId::parse(code).expect("valid account code")
    }

    fn auth(amount_minor: i64) -> JournalEntry {
        JournalEntry::pending("auth", account("a:x"), account("b:y"), amount_minor, usd())
            .expect("valid pending entry")
    }

    #[test]
    fn constructors_refuse_entries_that_do_not_balance() {
        let legs = |a: i64, b: i64| {
            vec![
                Posting::debit(account("a:x"), a, usd()),
                Posting::debit(account("b:y"), b, usd()),
            ]
        };
        assert!(JournalEntry::posted("e", legs(5, -5)).is_ok());
        assert!(matches!(
            JournalEntry::posted("e", legs(5, -4)),
            Err(LedgerError::Unbalanced { sum_minor: 1, .. })
        ));
        assert!(matches!(
            JournalEntry::posted("e", legs(0, 0)),
            Err(LedgerError::AmountOutOfRange { .. })
        ));
        let too_big = AMOUNT_MINOR_MAX + 1;
        assert!(JournalEntry::posted("e", legs(too_big, -too_big)).is_err());
        assert!(JournalEntry::posted("e", legs(i64::MIN, i64::MIN)).is_err());
        assert!(matches!(
            JournalEntry::posted("e", vec![Posting::debit(account("a:x"), 0, usd())]),
            Err(LedgerError::PostingCount { count: 1, .. })
        ));
    }

    #[test]
    fn every_currency_must_balance_on_its_own() {
        let fx = vec![
            Posting::debit(account("a:x"), 100, usd()),
            Posting::credit(account("b:y"), 100, eur()),
        ];
        assert!(matches!(
            JournalEntry::posted("fx", fx),
            Err(LedgerError::Unbalanced { .. })
        ));
        let fx = vec![
            Posting::debit(account("a:x"), 100, usd()),
            Posting::credit(account("fx:usd"), 100, usd()),
            Posting::debit(account("fx:eur"), 90, eur()),
            Posting::credit(account("b:y"), 90, eur()),
        ];
        assert!(JournalEntry::posted("fx", fx).is_ok());
    }

    #[test]
    fn ids_amounts_and_repeated_accounts_are_checked() {
        let transfer = |id: &str, amount| {
            JournalEntry::transfer(id, account("a:x"), account("b:y"), amount, usd())
        };
        assert!(transfer("", 1).is_err());
        assert!(transfer("has space", 1).is_err());
        assert!(transfer(&"k".repeat(ENTRY_ID_BYTES_MAX + 1), 1).is_err());
        assert!(
            transfer("e", -1).is_err(),
            "a negative amount would swap the legs"
        );
        let same = JournalEntry::transfer("e", account("a:x"), account("a:x"), 1, usd());
        assert!(matches!(same, Err(LedgerError::RepeatedAccount { .. })));
    }

    #[test]
    fn postings_are_stored_in_canonical_order() {
        let forward = vec![
            Posting::debit(account("a:x"), 7, usd()),
            Posting::credit(account("b:y"), 7, usd()),
        ];
        let mut backward = forward.clone();
        backward.reverse();
        assert_eq!(
            JournalEntry::posted("e", forward),
            JournalEntry::posted("e", backward)
        );
    }

    #[test]
    fn a_capture_may_be_partial_but_never_exceeds_the_authorization() {
        let pending = auth(1_000);
        let capture = post(&pending, 600, "capture").expect("partial capture");
        assert_eq!(capture.amount_minor(), Some(600));
        assert_eq!(check_resolution(&pending, &capture), Ok(()));
        assert!(matches!(
            post(&pending, 1_001, "capture"),
            Err(LedgerError::PostExceedsPending { .. })
        ));
        assert!(post(&pending, 0, "capture").is_err());
        assert!(post(&pending, -5, "capture").is_err());
    }

    #[test]
    fn only_pending_entries_can_be_posted_or_voided() {
        let posted = JournalEntry::transfer("t", account("a:x"), account("b:y"), 5, usd())
            .expect("valid transfer");
        assert!(matches!(
            post(&posted, 5, "p"),
            Err(LedgerError::NotPending { .. })
        ));
        assert!(matches!(
            void(&posted, "v"),
            Err(LedgerError::NotPending { .. })
        ));
        let pending = auth(5);
        let voided = void(&pending, "v").expect("void");
        assert_eq!(voided.postings(), pending.postings());
        assert!(post(&voided, 5, "p").is_err(), "a void is not pending");
    }

    #[test]
    fn a_resolution_must_match_its_pending_entry() {
        let pending = auth(100);
        let other_accounts = JournalEntry::from_parts(
            "p".to_owned(),
            EntryKind::PostPending {
                pending_id: "auth".to_owned(),
            },
            vec![
                Posting::debit(account("a:x"), 50, usd()),
                Posting::credit(account("c:z"), 50, usd()),
            ],
        )
        .expect("well-formed on its own");
        assert_eq!(
            check_resolution(&pending, &other_accounts),
            Err(ResolutionError::Mismatch)
        );
        let partial_void = JournalEntry::from_parts(
            "v".to_owned(),
            EntryKind::VoidPending {
                pending_id: "auth".to_owned(),
            },
            vec![
                Posting::debit(account("a:x"), 50, usd()),
                Posting::credit(account("b:y"), 50, usd()),
            ],
        )
        .expect("well-formed on its own");
        assert!(check_resolution(&pending, &partial_void).is_err());
    }

    #[test]
    fn two_phase_entries_are_single_transfers() {
        let legs = vec![
            Posting::debit(account("a:x"), 2, usd()),
            Posting::credit(account("b:y"), 1, usd()),
            Posting::credit(account("c:z"), 1, usd()),
        ];
        assert!(matches!(
            JournalEntry::from_parts("e".to_owned(), EntryKind::Pending, legs),
            Err(LedgerError::NotATransfer { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "does not balance")]
    fn an_unbalanced_entry_stops_the_process() {
        let entry = JournalEntry::forged(
            "forged",
            EntryKind::Posted,
            vec![
                Posting::debit(account("a:x"), 5, usd()),
                Posting::credit(account("b:y"), 4, usd()),
            ],
        );
        entry.assert_balanced();
    }
}
