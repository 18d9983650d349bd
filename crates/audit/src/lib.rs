//! Tally's tamper-evident audit trail: every change to money, stock, orders or keys leaves an
//! [`AuditRecord`] saying who did it ([`Actor`]), to what (entity, before and after), why
//! ([`Cause`]: request, idempotency key, event, causation) and when.
//!
//! Records form one hash chain per tenant. Record `n` carries the hash of record `n - 1` and its
//! own hash over that link and all of its content, so editing, deleting, inserting or reordering
//! any record breaks the chain where it happened, and [`verify()`] names the place. The chain
//! makes tampering evident, not impossible: whoever can rewrite the table can recompute every
//! later hash, which only a [`ChainHead`] kept outside the database reveals.
//!
//! Nothing here performs I/O. The code that makes a change builds an [`AuditDraft`]; the store,
//! in the same database transaction, reads the tenant's chain head, calls [`seal`] (or
//! [`seal_after`], or [`seal_bytes_after`] on the draft's [`DraftBytes`], which hashes the same
//! without a JSON tree) and writes the record and the new head. Appends per tenant must be serialized
//! (the head row is locked, or the `(tenant, sequence)` key is unique and a loser retries), or
//! two records would claim the same place.
//!
//! # Layout
//!
//! - [`record`]: actors, causes, drafts, sealed records, chain heads and [`seal`].
//! - [`canonical`]: the byte encoding the hash commits to, documented field by field, and a
//!   draft's bytes with its place left open ([`DraftBytes`]).
//! - [`verify`](mod@verify): chain verification and the breaks it reports.

pub mod canonical;
pub mod record;
pub mod verify;

pub use canonical::DraftBytes;
pub use record::{
    AT_SUBSEC_DIGITS, Actor, AuditDraft, AuditRecord, Cause, ChainHead, GENESIS_PREV_HASH, Hash,
    seal, seal_after, seal_bytes_after,
};
pub use verify::{ChainBreak, verify, verify_segment};
