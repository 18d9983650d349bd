//! Tally's double-entry ledger rules: which accounts exist, what a journal entry may contain, how
//! a payment authorization is reserved and later posted or voided, and the invariant check
//! behind `tally ledger check`.
//!
//! Nothing here performs I/O. The store persists entries and calls these functions inside the
//! same database transaction as the state change that caused them; a simulation can drive them
//! from a seed. Amounts are `i64` minor units, debit positive and credit negative, per currency;
//! there is no floating point and no implicit conversion between currencies.
//!
//! Every ledger belongs to one tenant. The tenant id is not part of any account code or entry:
//! the store keeps it in a column beside them, and folds and checks run per tenant.
//!
//! # Accounts
//!
//! An [`AccountId`] is a lowercase code of 2 to 4 `:`-separated segments, class or owner first:
//!
//! | account | code | meaning |
//! |---|---|---|
//! | order receivable | `order:{order_id}:receivable` | what the customer owes for one order |
//! | PSP clearing | `psp:clearing` | money the payment provider holds for the merchant |
//! | sales revenue | `revenue:sales` | revenue earned by captured sales |
//! | refunds | `revenue:refunds` | contra-revenue: money given back to customers |
//!
//! # What each payment step posts
//!
//! Amounts are `A` authorized, `C ≤ A` captured, `R` refunded; "Dr" adds to an account, "Cr"
//! takes from it. The recipes are in [`payment`].
//!
//! | step | entries |
//! |---|---|
//! | authorize | pending: Dr `psp:clearing` A, Cr `order:…:receivable` A |
//! | capture | post of the authorization for C (Dr clearing C, Cr receivable C; the whole A is released), and posted sale: Dr receivable C, Cr `revenue:sales` C |
//! | void | void of the authorization: A released, nothing posted |
//! | refund | posted: Dr `revenue:refunds` R, Cr `psp:clearing` R |
//!
//! So the pending figure of `psp:clearing` is what is authorized but not yet captured, and an
//! order's receivable returns to zero after a capture or a void: a settled order with a non-zero
//! receivable means a step wrote half its entries, which [`check()`] reports.
//!
//! # Two-phase entries
//!
//! As in TigerBeetle, a [`EntryKind::Pending`] entry counts only in the accounts' pending
//! balances. A later [`EntryKind::PostPending`] entry (built by [`post`]) moves up to the pending
//! amount into the posted balances and releases the rest; a [`EntryKind::VoidPending`] entry
//! (built by [`void`]) releases it all. A pending entry is resolved at most once, which
//! [`Ledger::apply`] enforces and [`check()`] proves.
//!
//! # Layout
//!
//! - [`account`]: account codes and the accounts the checkout saga uses.
//! - [`entry`]: postings, journal entries and their constructors, [`post`] and [`void`].
//! - [`ledger`]: the in-memory fold into balances, with idempotent [`Ledger::apply`].
//! - [`check`](mod@check): every invariant over a tenant's stored entries.
//! - [`payment`]: the entries of authorize, capture and refund.

pub mod account;
pub mod check;
pub mod entry;
pub mod ledger;
pub mod payment;

pub use account::AccountId;
pub use check::{Figure, OrderSettlement, Violation, check};
pub use entry::{EntryKind, JournalEntry, Posting, post, void};
pub use ledger::{Applied, Balance, Ledger, PendingStatus};

use tally_domain::money::{AMOUNT_MINOR_MAX, Currency};

/// Why the ledger refused to build or apply an entry. Every variant names the entry (or account
/// code) so that the message alone locates the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("account code '{raw}' {reason}")]
    InvalidAccountId { raw: String, reason: &'static str },
    #[error("entry id '{id}' {reason}")]
    InvalidEntryId { id: String, reason: &'static str },
    #[error("entry '{entry_id}' has {count} postings; an entry has 2 to 16")]
    PostingCount { entry_id: String, count: usize },
    #[error(
        "entry '{entry_id}' posts {amount_minor} to '{account}'; an amount is non-zero and at \
         most {AMOUNT_MINOR_MAX} either way (and positive where a transfer amount is given)"
    )]
    AmountOutOfRange {
        entry_id: String,
        account: AccountId,
        amount_minor: i64,
    },
    #[error("entry '{entry_id}' posts to '{account}' in {currency} more than once")]
    RepeatedAccount {
        entry_id: String,
        account: AccountId,
        currency: Currency,
    },
    #[error("entry '{entry_id}' does not balance: its {currency} postings sum to {sum_minor}")]
    Unbalanced {
        entry_id: String,
        currency: Currency,
        sum_minor: i128,
    },
    #[error(
        "two-phase entry '{entry_id}' must be a single transfer: one debit and one credit in one \
         currency"
    )]
    NotATransfer { entry_id: String },
    #[error("entry '{entry_id}' refers to '{target_id}', which is not a pending entry")]
    NotPending { entry_id: String, target_id: String },
    #[error("entry '{entry_id}' refers to pending entry '{pending_id}', which does not exist")]
    UnknownPending {
        entry_id: String,
        pending_id: String,
    },
    #[error(
        "entry '{entry_id}' does not match the accounts, currency or amount of pending entry \
         '{pending_id}'"
    )]
    PendingMismatch {
        entry_id: String,
        pending_id: String,
    },
    #[error(
        "entry '{entry_id}' posts {amount_minor} of pending entry '{pending_id}', which reserved \
         only {pending_minor}"
    )]
    PostExceedsPending {
        entry_id: String,
        pending_id: String,
        amount_minor: i64,
        pending_minor: i64,
    },
    #[error("pending entry '{pending_id}' was already posted or voided by '{by_entry_id}'")]
    PendingResolved {
        pending_id: String,
        by_entry_id: String,
    },
    #[error("entry id '{entry_id}' is already used by an entry with different content")]
    IdReused { entry_id: String },
    #[error("entry '{entry_id}' would overflow the balance of '{account}' in {currency}")]
    BalanceOverflow {
        entry_id: String,
        account: AccountId,
        currency: Currency,
    },
    #[error("entry '{entry_id}' is not a payment authorization of an order")]
    NotAnAuthorization { entry_id: String },
}
