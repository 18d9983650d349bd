//! Held responses: a test's way to pin an interleaving without sleeping.
//!
//! [`crate::Sandbox::hold_next`] arms a hold for one kind of effect. The next request that
//! applies a new effect of that kind keeps it applied and stored, tells the test ([`Held::applied`])
//! and waits; the test does what must happen while the call is in flight (a cancellation, say),
//! then [`Held::release`]s the response as stored or as a 500 whose effect stays applied, which
//! is what a provider that answered too late or lost its answer looks like to the caller. The
//! random faults of [`crate::faults`] cannot time a fault against another request; this can.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::effects::EffectKind;
use crate::exchange::{Problem, Stored};
use crate::lock;

/// How many holds may be armed at once; a test pins a few calls, never a backlog.
pub const HOLDS_ARMED_MAX: usize = 16;

/// How a held response goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The stored response, as if it had only been slow.
    Respond,
    /// A 500 in its place; the effect stays applied and a retry under the key replays it.
    ServerError,
}

/// The test's end of an armed hold.
#[derive(Debug)]
pub struct Held {
    kind: EffectKind,
    applied: oneshot::Receiver<()>,
    release: oneshot::Sender<Release>,
}

impl Held {
    /// Waits until a request of the held kind applied its effect; its response now waits for
    /// [`Held::release`]. Panics if the sandbox stopped first, which fails the test that waits.
    pub async fn applied(&mut self) {
        let kind = self.kind;
        (&mut self.applied)
            .await
            .unwrap_or_else(|_| panic!("the sandbox stopped before a {kind:?} was held"));
    }

    /// Lets the held response go as `release` says. Dropping an unreleased hold lets it go as
    /// stored.
    pub fn release(self, release: Release) {
        // The request's task has gone only if the sandbox stopped: nothing is left to answer.
        let _ = self.release.send(release);
    }
}

/// The sandbox's end of an armed hold.
#[derive(Debug)]
pub(crate) struct Hold {
    applied: oneshot::Sender<()>,
    release: oneshot::Receiver<Release>,
}

impl Hold {
    /// Tells the test the effect is applied, waits for its word, and answers accordingly.
    pub async fn serve(self, stored: Stored, shutdown: &CancellationToken) -> Response {
        // A test that dropped its end wants no hold any more: answer at once.
        let _ = self.applied.send(());
        let release = tokio::select! {
            released = self.release => released.unwrap_or(Release::Respond),
            () = shutdown.cancelled() => Release::Respond,
        };
        match release {
            Release::Respond => stored.respond(false),
            Release::ServerError => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "held by a test: the request was applied but its response was lost",
            )
            .into_response(),
        }
    }
}

/// The armed holds, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    armed: Mutex<VecDeque<(EffectKind, Hold)>>,
}

impl Holds {
    /// Arms a hold for the next new effect of `kind`.
    pub fn arm(&self, kind: EffectKind) -> Held {
        let (applied_tx, applied_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        let mut armed = lock(&self.armed);
        assert!(
            armed.len() < HOLDS_ARMED_MAX,
            "at most {HOLDS_ARMED_MAX} holds may be armed at once"
        );
        armed.push_back((
            kind,
            Hold {
                applied: applied_tx,
                release: release_rx,
            },
        ));
        Held {
            kind,
            applied: applied_rx,
            release: release_tx,
        }
    }

    /// The oldest hold armed for `kind`, disarmed; `None` when there is none.
    pub fn take(&self, kind: EffectKind) -> Option<Hold> {
        let mut armed = lock(&self.armed);
        let index = armed
            .iter()
            .position(|(armed_kind, _)| *armed_kind == kind)?;
        armed.remove(index).map(|(_, hold)| hold)
    }
}
