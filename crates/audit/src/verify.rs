//! Chain verification behind `tally audit verify`: recompute every hash, follow every link, and
//! report every break, not only the first.
//!
//! An edited record no longer matches its own hash. A deleted, inserted or moved record breaks
//! the run of sequences or the link from a record to its predecessor's hash. Two breaks are out
//! of reach of the chain alone: records cut from the end, and a chain rewritten from some record
//! onwards with every later hash recomputed. Checking the end against a [`ChainHead`] kept
//! outside the database ([`verify_segment`] with an `end`) catches both.

use uuid::Uuid;

use crate::{AuditRecord, ChainHead};

/// One place where a tenant's chain does not hold, naming the record and sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error(
        "audit record {id} (sequence {sequence}) was edited: its content does not match its hash"
    )]
    Edited { sequence: i64, id: Uuid },
    #[error(
        "the chain breaks at sequence {expected}: record {id} has sequence {found} there, so a \
         record was deleted, inserted or moved"
    )]
    SequenceMismatch { expected: i64, found: i64, id: Uuid },
    #[error(
        "the chain breaks at sequence {sequence}: record {id} does not link to the hash of the \
         record before it"
    )]
    Unlinked { sequence: i64, id: Uuid },
    #[error("audit record {id} (sequence {sequence}) belongs to tenant {found}, not {expected}")]
    ForeignTenant {
        sequence: i64,
        id: Uuid,
        expected: Uuid,
        found: Uuid,
    },
    #[error(
        "the chain ends at sequence {found_sequence} but its recorded head is sequence \
         {head_sequence} with another hash: records at the end were deleted or rewritten"
    )]
    HeadMismatch {
        head_sequence: i64,
        found_sequence: i64,
    },
}

impl ChainBreak {
    /// The sequence where the chain breaks.
    pub fn sequence(&self) -> i64 {
        match self {
            ChainBreak::Edited { sequence, .. }
            | ChainBreak::Unlinked { sequence, .. }
            | ChainBreak::ForeignTenant { sequence, .. } => *sequence,
            ChainBreak::SequenceMismatch { expected, .. } => *expected,
            ChainBreak::HeadMismatch { found_sequence, .. } => *found_sequence,
        }
    }

    /// The record found at the break, if the break is at a record.
    pub fn record_id(&self) -> Option<Uuid> {
        match self {
            ChainBreak::Edited { id, .. }
            | ChainBreak::SequenceMismatch { id, .. }
            | ChainBreak::Unlinked { id, .. }
            | ChainBreak::ForeignTenant { id, .. } => Some(*id),
            ChainBreak::HeadMismatch { .. } => None,
        }
    }
}

/// Verifies one tenant's whole chain, `records` in sequence order from the first. At most three
/// breaks are reported per record, so the report is bounded by the input.
pub fn verify(records: &[AuditRecord]) -> Result<(), Vec<ChainBreak>> {
    verify_segment(&ChainHead::GENESIS, records, None)
}

/// Verifies a run of one tenant's records that follows `start` (the head after the record just
/// before the run; [`ChainHead::GENESIS`] for the first). With `end`, also checks that the run
/// ends at that head. A verifier reads the chain in pages this way, passing each page's last
/// [`AuditRecord::head`] as the next page's `start`, so memory stays bounded by the page.
pub fn verify_segment(
    start: &ChainHead,
    records: &[AuditRecord],
    end: Option<&ChainHead>,
) -> Result<(), Vec<ChainBreak>> {
    let mut breaks = Vec::new();
    let mut previous = *start;
    let tenant_id = records.first().map(|record| record.tenant_id);
    for record in records {
        if let Some(expected) = tenant_id
            && record.tenant_id != expected
        {
            breaks.push(ChainBreak::ForeignTenant {
                sequence: record.sequence,
                id: record.id,
                expected,
                found: record.tenant_id,
            });
        }
        if record.compute_hash() != record.hash {
            breaks.push(ChainBreak::Edited {
                sequence: record.sequence,
                id: record.id,
            });
        }
        if let Some(link_break) = check_link(&previous, record) {
            breaks.push(link_break);
        }
        previous = record.head();
    }
    if let Some(end) = end
        && previous != *end
    {
        breaks.push(ChainBreak::HeadMismatch {
            head_sequence: end.sequence,
            found_sequence: previous.sequence,
        });
    }
    if breaks.is_empty() {
        Ok(())
    } else {
        Err(breaks)
    }
}

/// The break between a record and the head before it, if any. A wrong sequence is reported
/// alone: the link's hash is then meaningless, and one gap should read as one break.
fn check_link(previous: &ChainHead, record: &AuditRecord) -> Option<ChainBreak> {
    let expected = previous.sequence.saturating_add(1);
    if record.sequence != expected {
        return Some(ChainBreak::SequenceMismatch {
            expected,
            found: record.sequence,
            id: record.id,
        });
    }
    if record.prev_hash != previous.hash {
        return Some(ChainBreak::Unlinked {
            sequence: record.sequence,
            id: record.id,
        });
    }
    None
}
