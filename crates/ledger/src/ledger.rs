//! The in-memory fold of one tenant's journal entries into balances. The store runs the same
//! fold over the entries it holds (or keeps its result in balance rows) and calls
//! [`Ledger::apply`] before writing an entry, so a refused entry is never written.

use std::collections::BTreeMap;

use tally_domain::money::Currency;

use crate::entry::check_resolution;
use crate::{AccountId, EntryKind, JournalEntry, LedgerError};

/// An account's balance in one currency, debit positive. `posted_minor` is money that moved;
/// `pending_minor` is money reserved by pending entries that are neither posted nor voided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    pub posted_minor: i64,
    pub pending_minor: i64,
}

/// What [`Ledger::apply`] did with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry is new and its amounts are now in the balances.
    Recorded,
    /// An identical entry with the same id was applied before: nothing changed. This is how a
    /// retried step finds its own earlier write.
    AlreadyApplied,
}

/// Where a pending entry stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingStatus {
    Open,
    Posted {
        by_entry_id: String,
        amount_minor: i64,
    },
    Voided {
        by_entry_id: String,
    },
}

/// One tenant's entries and the balances they add up to.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Every applied entry by id: the idempotency record that tells a retry from an id reuse.
    entries: BTreeMap<String, JournalEntry>,
    /// Pending id → the id of the entry that posted or voided it. A pending entry is resolved
    /// at most once.
    resolutions: BTreeMap<String, String>,
    /// Keyed by (account, currency). A `BTreeMap`, not a hash map, so iteration order is the
    /// same in every run and a simulation replays exactly.
    balances: BTreeMap<(AccountId, Currency), Balance>,
}

/// A change to one balance that an entry would make.
struct Delta<'a> {
    account: &'a AccountId,
    currency: Currency,
    posted_minor: i64,
    pending_minor: i64,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies an entry, or refuses it and changes nothing. Same id and same content is
    /// [`Applied::AlreadyApplied`]; same id and other content is [`LedgerError::IdReused`]; a
    /// post or void must fit an open pending entry this ledger holds.
    pub fn apply(&mut self, entry: JournalEntry) -> Result<Applied, LedgerError> {
        if let Some(existing) = self.entries.get(entry.id()) {
            if *existing == entry {
                return Ok(Applied::AlreadyApplied);
            }
            return Err(LedgerError::IdReused {
                entry_id: entry.id().to_owned(),
            });
        }
        let deltas = self.deltas(&entry)?;
        // Every new balance is computed before any is stored, so an overflow in the last leg
        // leaves the ledger exactly as it was. A post touches each account twice (release the
        // pending amount, post the captured one), so changes accumulate per key.
        let mut updated: BTreeMap<(AccountId, Currency), Balance> = BTreeMap::new();
        for delta in &deltas {
            let key = (delta.account.clone(), delta.currency);
            let before = match updated.get(&key) {
                Some(balance) => *balance,
                None => self.balance(delta.account, delta.currency),
            };
            let after = add(before, delta).ok_or_else(|| LedgerError::BalanceOverflow {
                entry_id: entry.id().to_owned(),
                account: delta.account.clone(),
                currency: delta.currency,
            })?;
            updated.insert(key, after);
        }
        self.balances.extend(updated);
        if let Some(pending_id) = entry.kind().pending_id() {
            self.resolutions
                .insert(pending_id.to_owned(), entry.id().to_owned());
        }
        self.entries.insert(entry.id().to_owned(), entry);
        Ok(Applied::Recorded)
    }

    /// The balance of `account` in `currency`; zero for an account never posted to.
    pub fn balance(&self, account: &AccountId, currency: Currency) -> Balance {
        self.balances
            .get(&(account.clone(), currency))
            .copied()
            .unwrap_or_default()
    }

    /// Every (account, currency, balance) with at least one entry, in account order.
    pub fn balances(&self) -> impl Iterator<Item = (&AccountId, Currency, Balance)> {
        self.balances
            .iter()
            .map(|((account, currency), balance)| (account, *currency, *balance))
    }

    pub fn entry(&self, id: &str) -> Option<&JournalEntry> {
        self.entries.get(id)
    }

    /// Where the pending entry `pending_id` stands, or `None` when the ledger holds no pending
    /// entry by that id.
    pub fn pending_status(&self, pending_id: &str) -> Option<PendingStatus> {
        let pending = self.entries.get(pending_id)?;
        if *pending.kind() != EntryKind::Pending {
            return None;
        }
        let Some(by_entry_id) = self.resolutions.get(pending_id) else {
            return Some(PendingStatus::Open);
        };
        let resolution = self.entries.get(by_entry_id)?;
        let by_entry_id = by_entry_id.clone();
        match resolution.kind() {
            EntryKind::PostPending { .. } => Some(PendingStatus::Posted {
                by_entry_id,
                amount_minor: resolution.amount_minor()?,
            }),
            EntryKind::VoidPending { .. } => Some(PendingStatus::Voided { by_entry_id }),
            EntryKind::Posted | EntryKind::Pending => None,
        }
    }

    /// The balance changes `entry` makes, after checking it against the pending entry it
    /// resolves, if any.
    fn deltas<'a>(&'a self, entry: &'a JournalEntry) -> Result<Vec<Delta<'a>>, LedgerError> {
        let legs = |entry: &'a JournalEntry, posted_sign: i64, pending_sign: i64| {
            entry.postings().iter().map(move |p| Delta {
                account: &p.account,
                currency: p.currency,
                posted_minor: posted_sign * p.amount_minor,
                pending_minor: pending_sign * p.amount_minor,
            })
        };
        let deltas = match entry.kind() {
            EntryKind::Posted => legs(entry, 1, 0).collect(),
            EntryKind::Pending => legs(entry, 0, 1).collect(),
            EntryKind::PostPending { pending_id } => {
                let pending = self.open_pending(entry, pending_id)?;
                // TigerBeetle's rule: posting releases the whole pending amount and posts the
                // captured part; the uncaptured rest simply stops being reserved.
                legs(pending, 0, -1).chain(legs(entry, 1, 0)).collect()
            }
            EntryKind::VoidPending { pending_id } => {
                let pending = self.open_pending(entry, pending_id)?;
                legs(pending, 0, -1).collect()
            }
        };
        Ok(deltas)
    }

    fn open_pending(
        &self,
        entry: &JournalEntry,
        pending_id: &str,
    ) -> Result<&JournalEntry, LedgerError> {
        let pending = self
            .entries
            .get(pending_id)
            .ok_or_else(|| LedgerError::UnknownPending {
                entry_id: entry.id().to_owned(),
                pending_id: pending_id.to_owned(),
            })?;
        check_resolution(pending, entry)
            .map_err(|error| error.into_ledger_error(pending, entry))?;
        if let Some(by_entry_id) = self.resolutions.get(pending_id) {
            return Err(LedgerError::PendingResolved {
                pending_id: pending_id.to_owned(),
                by_entry_id: by_entry_id.clone(),
            });
        }
        Ok(pending)
    }
}

/// `balance + delta`, or `None` on overflow.
fn add(balance: Balance, delta: &Delta<'_>) -> Option<Balance> {
    Some(Balance {
        posted_minor: balance.posted_minor.checked_add(delta.posted_minor)?,
        pending_minor: balance.pending_minor.checked_add(delta.pending_minor)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{post, void};

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD is ISO 4217")
    }

    fn account(code: &str) -> AccountId {
        AccountId::parse(code).expect("valid account code")
    }

    fn auth(id: &str, amount_minor: i64) -> JournalEntry {
        JournalEntry::pending(id, account("a:x"), account("b:y"), amount_minor, usd())
            .expect("valid pending entry")
    }

    #[test]
    fn a_pending_entry_reserves_and_a_partial_capture_posts_and_releases() {
        let mut ledger = Ledger::new();
        let pending = auth("auth", 1_000);
        assert_eq!(ledger.apply(pending.clone()), Ok(Applied::Recorded));
        let reserved = Balance {
            posted_minor: 0,
            pending_minor: 1_000,
        };
        assert_eq!(ledger.balance(&account("a:x"), usd()), reserved);
        assert_eq!(ledger.pending_status("auth"), Some(PendingStatus::Open));

        let capture = post(&pending, 600, "capture").expect("partial capture");
        assert_eq!(ledger.apply(capture), Ok(Applied::Recorded));
        let captured = Balance {
            posted_minor: 600,
            pending_minor: 0,
        };
        assert_eq!(ledger.balance(&account("a:x"), usd()), captured);
        assert_eq!(ledger.balance(&account("b:y"), usd()).posted_minor, -600);
        assert!(matches!(
            ledger.pending_status("auth"),
            Some(PendingStatus::Posted {
                amount_minor: 600,
                ..
            })
        ));
    }

    #[test]
    fn a_retry_is_a_no_op_and_a_different_entry_under_the_same_id_is_refused() {
        let mut ledger = Ledger::new();
        assert_eq!(ledger.apply(auth("auth", 5)), Ok(Applied::Recorded));
        assert_eq!(ledger.apply(auth("auth", 5)), Ok(Applied::AlreadyApplied));
        assert_eq!(ledger.balance(&account("a:x"), usd()).pending_minor, 5);
        assert_eq!(
            ledger.apply(auth("auth", 6)),
            Err(LedgerError::IdReused {
                entry_id: "auth".to_owned()
            })
        );
    }

    #[test]
    fn a_pending_entry_is_posted_or_voided_once() {
        let mut ledger = Ledger::new();
        let pending = auth("auth", 100);
        ledger.apply(pending.clone()).expect("pending");
        ledger
            .apply(post(&pending, 100, "capture").expect("post"))
            .expect("first post");
        let second_post = post(&pending, 1, "capture-2").expect("post");
        assert!(matches!(
            ledger.apply(second_post),
            Err(LedgerError::PendingResolved { .. })
        ));
        let late_void = void(&pending, "void").expect("void");
        assert!(matches!(
            ledger.apply(late_void),
            Err(LedgerError::PendingResolved { .. })
        ));
        // The capture's own retry is still fine.
        let retry = post(&pending, 100, "capture").expect("post");
        assert_eq!(ledger.apply(retry), Ok(Applied::AlreadyApplied));
    }

    #[test]
    fn a_void_releases_without_posting() {
        let mut ledger = Ledger::new();
        let pending = auth("auth", 100);
        ledger.apply(pending.clone()).expect("pending");
        ledger
            .apply(void(&pending, "void").expect("void"))
            .expect("void applies");
        assert_eq!(ledger.balance(&account("a:x"), usd()), Balance::default());
        let late_post = post(&pending, 100, "capture").expect("post");
        assert!(ledger.apply(late_post).is_err());
    }

    #[test]
    fn a_resolution_of_an_unknown_pending_entry_is_refused() {
        let mut ledger = Ledger::new();
        let capture = post(&auth("elsewhere", 10), 10, "capture").expect("post");
        assert!(matches!(
            ledger.apply(capture),
            Err(LedgerError::UnknownPending { .. })
        ));
        assert_eq!(ledger.balances().count(), 0);
    }

    #[test]
    fn an_overflowing_balance_is_refused_and_changes_nothing() {
        let max = tally_domain::money::AMOUNT_MINOR_MAX;
        let mut ledger = Ledger::new();
        let mut index = 0;
        let refusal = loop {
            // i64::MAX / AMOUNT_MINOR_MAX is 9_223, so the loop ends well before this bound.
            assert!(index < 10_000, "the balance never overflowed");
            let entry = JournalEntry::transfer(
                format!("t{index}"),
                account("a:x"),
                account("b:y"),
                max,
                usd(),
            )
            .expect("valid transfer");
            index += 1;
            let before = ledger.balance(&account("b:y"), usd());
            if let Err(error) = ledger.apply(entry) {
                assert_eq!(ledger.balance(&account("b:y"), usd()), before);
                break error;
            }
        };
        assert!(matches!(refusal, LedgerError::BalanceOverflow { .. }));
    }
}
