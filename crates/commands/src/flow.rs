//! The idempotent command flow, written once for every command.
//!
//! A command runs in one store transaction that (1) claims the idempotency key, (2) returns the
//! stored response if the key was used before, (3) otherwise decides the command with the pure
//! domain functions, (4) writes the new state and its events, and (5) stores the rendered
//! response under the key. Either all of it commits or none of it does.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tally_domain::clock::Clock;
use tally_domain::event::EventDraft;
use tally_domain::idempotency::{Fingerprint, IdempotencyKey};
use tally_domain::ids::{ApiKeyId, TenantId};
use tokio::sync::Notify;

use tally_store::{NewEvent, NewIdempotencyRecord, Store, StoreError, StoredResponse, Tx};

use crate::{Command, CommandError, Decision, Outcome};

/// Who issues a command, as its audit record names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A caller of the HTTP API, by its key's id.
    ApiKey(ApiKeyId),
    /// A partner's webhook, by the partner's name (`carrier`, `shopify`).
    Partner(&'static str),
    /// A consumer inside Tally, by its consumer group.
    Consumer(&'static str),
    /// A job of the job queue, by its kind.
    Job(&'static str),
}

impl Actor {
    fn audited(self) -> tally_store::audit::Actor {
        match self {
            Actor::ApiKey(id) => tally_store::audit::Actor::ApiKey(id.as_uuid()),
            Actor::Partner(name) => tally_store::audit::Actor::Partner(name.to_owned()),
            Actor::Consumer(name) | Actor::Job(name) => {
                tally_store::audit::Actor::System(name.to_owned())
            }
        }
    }
}

/// The result of an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    /// The command ran now; this is its response.
    Fresh(StoredResponse),
    /// The key was used before for the same request; this is the response stored then.
    Replayed(StoredResponse),
}

/// How a command transaction ends.
enum Step {
    /// The key was used before: roll back and answer with the stored response.
    Replay(Executed),
    /// The command was applied: commit, then answer with `response`.
    Commit {
        response: StoredResponse,
        appended: bool,
    },
}

/// Renders an outcome (and the events it caused) into the response stored under the idempotency key. It runs inside the
/// transaction, so the stored response and the state change commit together.
pub type Render = dyn Fn(&Outcome, &[NewEvent]) -> StoredResponse + Send + Sync;

/// Who asks, under which key, and how the answer is rendered.
pub struct CommandContext<'a> {
    pub tenant: TenantId,
    pub actor: Actor,
    pub key: &'a IdempotencyKey,
    pub fingerprint: Fingerprint,
    /// The request id, recorded as the events' correlation id.
    pub request_id: &'a str,
    /// W3C trace context of the request, carried by the events it causes.
    pub traceparent: Option<&'a str>,
    pub render: &'a Render,
}

impl std::fmt::Debug for CommandContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandContext")
            .field("tenant", &self.tenant)
            .field("actor", &self.actor)
            .field("key", &self.key)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// Runs commands against a store. One per process, shared by all requests.
#[derive(Debug)]
pub struct Commands {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    /// Keys being processed by this process. A second request under a key in this set is
    /// answered 409 at once instead of queueing behind the first for the database's lock.
    in_flight: DashMap<(TenantId, String), ()>,
    /// Woken after every commit that appended events, so the relay need not poll hard.
    appended: Arc<Notify>,
}

impl Commands {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, retention: Duration) -> Self {
        Self {
            store,
            clock,
            retention,
            in_flight: DashMap::new(),
            appended: Arc::new(Notify::new()),
        }
    }

    /// Notified after each commit that appended events.
    pub fn appended(&self) -> Arc<Notify> {
        Arc::clone(&self.appended)
    }

    pub async fn execute(
        &self,
        ctx: &CommandContext<'_>,
        command: Command,
    ) -> Result<Executed, CommandError> {
        let now = self.clock.now();
        // A replay needs no write transaction: answer it from a plain read first.
        if let Some(record) = self
            .store
            .find_idempotency_record(ctx.tenant, ctx.key.as_str())
            .await?
            && record.expires_at > now
        {
            return replay(ctx, record.fingerprint, record.response);
        }
        let _claim = InFlightClaim::take(&self.in_flight, ctx.tenant, ctx.key.as_str())?;
        let mut tx = self.store.begin().await?;
        match self.run(tx.as_mut(), ctx, command, now).await {
            Ok(Step::Commit { response, appended }) => {
                tx.commit().await?;
                if appended {
                    self.appended.notify_one();
                }
                Ok(Executed::Fresh(response))
            }
            // Roll back now rather than on drop: a dropped transaction is rolled back later, in
            // the background, and until then it holds the key's lock, so the client's corrected
            // retry would be told 409.
            Ok(Step::Replay(executed)) => {
                tx.rollback().await?;
                Ok(executed)
            }
            Err(error) => match tx.rollback().await {
                // The refusal was decided on writes of commands committed together with this
                // one (SQLite's group commit), which did not commit: it does not stand.
                Err(StoreError::CommitFailed(failed)) => {
                    Err(CommandError::Store(StoreError::CommitFailed(failed)))
                }
                Err(rollback) => {
                    // The connection is discarded either way; the command's own error is the
                    // one the caller must see.
                    tracing::warn!(error = %rollback, "rolling back a refused command failed");
                    Err(error)
                }
                Ok(()) => Err(error),
            },
        }
    }

    /// Everything between `BEGIN` and `COMMIT`; the caller ends the transaction.
    async fn run(
        &self,
        tx: &mut dyn Tx,
        ctx: &CommandContext<'_>,
        command: Command,
        now: DateTime<Utc>,
    ) -> Result<Step, CommandError> {
        if !tx
            .lock_idempotency_key(ctx.tenant, ctx.key.as_str())
            .await?
        {
            return Err(CommandError::InFlight);
        }
        if let Some(record) = tx
            .find_idempotency_record(ctx.tenant, ctx.key.as_str())
            .await?
        {
            if record.expires_at > now {
                return replay(ctx, record.fingerprint, record.response).map(Step::Replay);
            }
            tx.delete_idempotency_record(ctx.tenant, ctx.key.as_str())
                .await?;
        }
        let Decision {
            outcome,
            events: drafts,
            audit,
        } = command
            .decide(
                tx,
                crate::At {
                    tenant: ctx.tenant,
                    now,
                    clock: self.clock.as_ref(),
                },
            )
            .await?;
        let events: Vec<NewEvent> = drafts
            .into_iter()
            .map(|draft| self.envelope(ctx, draft, now))
            .collect();
        let response = (ctx.render)(&outcome, &events);
        let audit = audit_record(ctx, audit, &response, now, self.clock.fresh_id());
        let retention = chrono::Duration::from_std(self.retention)
            .unwrap_or_else(|_| chrono::Duration::days(365));
        let record = NewIdempotencyRecord {
            key: ctx.key.as_str(),
            fingerprint: ctx.fingerprint.0,
            response: &response,
            created_at: now,
            expires_at: now + retention,
        };
        tx.record_command(&events, &audit, ctx.tenant, &record)
            .await?;
        Ok(Step::Commit {
            response,
            appended: !events.is_empty(),
        })
    }

    fn envelope(
        &self,
        ctx: &CommandContext<'_>,
        draft: EventDraft,
        now: DateTime<Utc>,
    ) -> NewEvent {
        let causes = tally_store::log::Causes {
            correlation_id: Some(ctx.request_id.to_owned()),
            causation_id: Some(format!("idempotency-key:{}", ctx.key.as_str())),
            traceparent: ctx.traceparent.map(str::to_owned),
        };
        let id = tally_domain::ids::EventId::from_uuid(self.clock.fresh_id());
        tally_store::log::envelope(
            id,
            draft,
            ctx.tenant,
            self.store.log_partitions(),
            now,
            &causes,
        )
    }
}

/// The audit record of a command: its actor, the stored response as the state after, the
/// request id and idempotency key as the cause.
fn audit_record(
    ctx: &CommandContext<'_>,
    audited: crate::Audited,
    response: &StoredResponse,
    now: DateTime<Utc>,
    id: uuid::Uuid,
) -> tally_store::NewAuditRecord {
    let change = tally_store::audit::Change {
        entity_type: audited.entity_type,
        entity_id: audited.entity_id,
        action: audited.action,
        before: None,
        after: serde_json::from_slice(&response.body).ok(),
    };
    let cause = tally_store::audit::Cause {
        request_id: Some(ctx.request_id.to_owned()),
        idempotency_key: Some(ctx.key.as_str().to_owned()),
        event_id: None,
        causation_id: None,
    };
    tally_store::audit::record(id, ctx.tenant, now, ctx.actor.audited(), change, cause)
}

fn replay(
    ctx: &CommandContext<'_>,
    fingerprint: [u8; 32],
    response: StoredResponse,
) -> Result<Executed, CommandError> {
    if fingerprint == ctx.fingerprint.0 {
        Ok(Executed::Replayed(response))
    } else {
        Err(CommandError::KeyReused)
    }
}

/// This process's claim on an idempotency key, released when dropped.
struct InFlightClaim<'a> {
    map: &'a DashMap<(TenantId, String), ()>,
    entry: (TenantId, String),
}

impl<'a> InFlightClaim<'a> {
    fn take(
        map: &'a DashMap<(TenantId, String), ()>,
        tenant: TenantId,
        key: &str,
    ) -> Result<Self, CommandError> {
        let entry = (tenant, key.to_owned());
        match map.entry(entry.clone()) {
            dashmap::Entry::Occupied(_) => Err(CommandError::InFlight),
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(());
                Ok(Self { map, entry })
            }
        }
    }
}

impl Drop for InFlightClaim<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.entry);
    }
}
