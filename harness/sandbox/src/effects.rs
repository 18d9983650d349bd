//! The record of effects: what the partners did, keyed by the caller's idempotency key.
//!
//! An effect is recorded once, by the first request with its key that got past the pre-effect
//! fault; every later request with that key replays the stored response and only counts a
//! delivery. This is what lets a test say "this order was charged once": it counts effects, and
//! `deliveries` shows how often the caller had to ask.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::exchange::Stored;

/// Effects kept at most. A sandbox serves tests and demos; a million effects is far beyond any
/// run and bounds its memory to a few hundred MB. When full, requests are refused with 507 and
/// nothing is applied.
pub const EFFECTS_COUNT_MAX: usize = 1_000_000;

/// One thing a partner did for a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub kind: EffectKind,
    pub idempotency_key: String,
    pub order_id: String,
    /// The money the effect moved or asked for: authorized, captured or refunded. `None` for
    /// voids, shipments and notifications.
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    /// How many requests carried this key: the first one and every retry that got past the
    /// pre-effect fault. One means the caller never had to retry.
    pub deliveries: u32,
    /// The status of the stored response, the one every retry gets. A fault injected after the
    /// effect changes only what the first caller saw, not this.
    pub response_status: u16,
    pub at: DateTime<Utc>,
}

/// What kind of partner call produced an effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    Authorization,
    Capture,
    Void,
    Refund,
    Shipment,
    Notification,
}

/// The fields of an effect that the partner decides; the store adds the key, the delivery
/// count, the status and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEffect {
    pub kind: EffectKind,
    pub order_id: String,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
}

/// A request's fingerprint: a digest of its method, path and canonical body. A key reused with
/// another fingerprint is a caller bug, refused with 422.
pub(crate) type Fingerprint = [u8; 32];

/// What the store knows about a key.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The key is unused: the request may apply its effect.
    New,
    /// The key was used by the same request: here is its response (the delivery is counted).
    Replay(Stored),
    /// The key was used by a different request.
    Conflict,
    /// The store holds `EFFECTS_COUNT_MAX` effects.
    Full,
}

#[derive(Debug)]
struct Entry {
    /// Insertion order, so that listings are stable.
    sequence: u64,
    fingerprint: Fingerprint,
    effect: Effect,
    response: Stored,
}

/// Effects by idempotency key. Callers hold the sandbox's one lock across `lookup` and
/// `insert`, so concurrent requests with one key apply once.
#[derive(Debug, Default)]
pub(crate) struct EffectStore {
    entries: HashMap<String, Entry>,
    sequence_next: u64,
}

impl EffectStore {
    pub fn lookup(&mut self, key: &str, fingerprint: &Fingerprint) -> Lookup {
        let full = self.entries.len() >= EFFECTS_COUNT_MAX;
        match self.entries.get_mut(key) {
            Some(entry) if entry.fingerprint == *fingerprint => {
                entry.effect.deliveries = entry.effect.deliveries.saturating_add(1);
                Lookup::Replay(entry.response.clone())
            }
            Some(_) => Lookup::Conflict,
            None if full => Lookup::Full,
            None => Lookup::New,
        }
    }

    /// Records the effect of the first request with `key`.
    pub fn insert(
        &mut self,
        key: &str,
        fingerprint: Fingerprint,
        effect: NewEffect,
        response: Stored,
        at: DateTime<Utc>,
    ) {
        let effect = Effect {
            kind: effect.kind,
            idempotency_key: key.to_owned(),
            order_id: effect.order_id,
            amount_minor: effect.amount_minor,
            currency: effect.currency,
            deliveries: 1,
            response_status: response.status.as_u16(),
            at,
        };
        let entry = Entry {
            sequence: self.sequence_next,
            fingerprint,
            effect,
            response,
        };
        self.sequence_next += 1;
        let previous = self.entries.insert(key.to_owned(), entry);
        assert!(previous.is_none(), "an idempotency key was applied twice");
    }

    /// Every effect, in the order they were applied.
    pub fn list(&self) -> Vec<Effect> {
        let mut entries: Vec<&Entry> = self.entries.values().collect();
        entries.sort_by_key(|entry| entry.sequence);
        entries.into_iter().map(|e| e.effect.clone()).collect()
    }
}
